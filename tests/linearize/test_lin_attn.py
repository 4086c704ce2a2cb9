"""The linearized attention mixer: exact step form, and a student that starts where its teacher is."""
import pytest
import torch

from edgelin.linearize import attention_transfer, student_config, to_student, TransferConfig
from edgelin.models.config import LMConfig
from edgelin.models.lm import LM
from edgelin.train.data import ByteData
from edgelin.train.loop import distillation_loss
from registry_helpers import check_steps_equal_step

OPTIONS = [
    {"window": 0, "feature_map": "identity"},
    {"window": 0, "feature_map": "hedgehog", "rope_theta": 0.0},
    {"window": 8, "feature_map": "identity", "bias": True},
    {"window": 8, "feature_map": "hedgehog", "n_kv_heads": 1, "qk_norm": True},
]


def _perturbed(options: dict) -> LM:
    """A lin_attn model whose linear branches are not at their (special) starting point."""
    torch.manual_seed(0)
    model = LM(LMConfig(d_model=64, n_layers=2, n_heads=2, pattern=["lin_attn"], mixers={"lin_attn": options})).init_weights()
    with torch.no_grad():
        for block in model.blocks:
            for p in block.mixer.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
def test_step_equals_parallel_from_a_state(options):
    model = _perturbed(options)
    x = torch.randint(0, 256, (2, 29))
    with torch.no_grad():
        _, start = model(torch.randint(0, 256, (2, 11)))
        logits, state = model(x, start)
        steps, s = [], start
        for t in range(x.shape[1]):
            out, s = model.step(x[:, t : t + 1], s)
            steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(state, s):
        for kind in a:
            torch.testing.assert_close(b[kind], a[kind], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
def test_steps_equal_k_steps(options):
    """The verify graph's form (window and recurrence position by position) equals K step calls."""
    check_steps_equal_step(_perturbed(options), 5)


def _teacher(**swa) -> LM:
    torch.manual_seed(1)
    options = {"window": 64, "full_attention": True, **swa}
    return LM(LMConfig(d_model=64, n_layers=3, n_heads=4, pattern=["short_conv", "swa"], mixers={"swa": options})).init_weights().eval()


@pytest.mark.parametrize("swa", [{}, {"n_kv_heads": 2, "qk_norm": True, "bias": True}, {"rope_theta": 0.0}])
def test_gla_swa_student_starts_as_its_teacher(swa):
    """mix starts at 0, so within the window the student is the teacher, weight for weight."""
    teacher = _teacher(**swa)
    config = student_config(teacher.config, "gla+swa", window=16)
    assert config.pattern == ["short_conv", "lin_attn"] and config.mixers["lin_attn"]["window"] == 16
    student = to_student(teacher, config).eval()
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(student(x)[0], teacher(x)[0], atol=1e-5, rtol=1e-5)


def test_attention_transfer_fits_the_teacher():
    teacher = _teacher()
    with torch.no_grad():  # peaked attention, which identity-initialised features do not reproduce at first
        teacher.blocks[1].mixer.q_proj.weight.mul_(10)
    window = torch.randint(0, 256, (33,), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    data = ByteData(train=window, val=window, source="one window")  # every step sees the same batch
    student = to_student(teacher, student_config(teacher.config, "gla"))
    before = {n: p.clone() for n, p in student.named_parameters()}
    log = attention_transfer(teacher, student, data, TransferConfig(steps=40, batch_size=2, seq_len=32, log_every=5), device="cpu")
    assert log["loss"][-1] < 0.5 * log["loss"][0], log["loss"]
    changed = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("blocks.1.mixer.") for n in changed), changed  # the linearized layer alone


def test_distillation_loss_is_zero_against_itself():
    teacher = _teacher()
    x = torch.randint(0, 256, (2, 12))
    logits, _ = teacher(x)
    assert distillation_loss(logits, teacher, x, torch.device("cpu")).abs().item() < 1e-6
    assert distillation_loss(torch.zeros_like(logits), teacher, x, torch.device("cpu")).item() > 0.01
