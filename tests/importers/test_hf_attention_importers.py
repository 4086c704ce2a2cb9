"""Transformers softmax-attention checkpoints (Llama, Qwen2, Qwen3, GPT-2) made here with transformers' own
classes and save_pretrained(safe_serialization=True), imported: the chunked form's and the step form's logits
equal transformers' forward. `edgelin export` of a Llama and a GPT-2: ONNX Runtime's logits over a prefill and
decode steps equal transformers', and the package (GPT-2's position counter included) runs as it is in ONNX
Runtime GenAI, and after `edgelin compile --backend openvino` in OpenVINO and OpenVINO GenAI."""
import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from cli_helpers import run  # noqa: E402
from edgelin.models.loading import load_model  # noqa: E402
from edgelin.runtime import Session, generate  # noqa: E402

VOCAB, SEQ, TOL = 128, 48, 1e-4
MAX_CONTEXT = 64  # the KV cache of full attention; every sequence here stays below it, so everything is exact
PREFILL, PROMPT, STEPS = 8, 20, 12  # the package's chunk; a prompt of 2 chunks + 4 decode steps, then 12 steps
IDS = dict(bos_token_id=1, eos_token_id=2)
LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}  # head_dim 16: wavelengths 6 to 2e4, so all three bands are hit


def llama(**changes):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{
        "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "max_position_embeddings": 128, **IDS, **changes}))


def gpt2(**changes):
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**{
        "vocab_size": VOCAB, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 80, **IDS, **changes}))


def qwen(cls, config, **changes):
    return cls(config(**{"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, **IDS, **changes}))


FAMILIES = {
    # grouped heads (4 on 2), biases on q/k/v/o and on the MLP, Llama 3's rope rescale, an own LM head
    "llama-bias-llama3": lambda: llama(num_key_value_heads=2, attention_bias=True, mlp_bias=True, rope_parameters=LLAMA3,
                                       tie_word_embeddings=False),
    # one kv head, no biases, plain rope of another theta, tied embeddings
    "llama-tied": lambda: llama(num_key_value_heads=1, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                                tie_word_embeddings=True),
    "qwen2": lambda: qwen(transformers.Qwen2ForCausalLM, transformers.Qwen2Config, tie_word_embeddings=True),
    # head_dim 24, not 64 / 4
    "qwen3": lambda: qwen(transformers.Qwen3ForCausalLM, transformers.Qwen3Config, head_dim=24),
    "gpt2": lambda: gpt2(),  # gelu_new, tied
    "gpt2-gelu": lambda: gpt2(activation_function="gelu", n_inner=96, tie_word_embeddings=False, reorder_and_upcast_attn=True),
    "gpt2-pytorch-tanh": lambda: gpt2(activation_function="gelu_pytorch_tanh"),
}
LAYOUTS = {"llama": "hf-llama", "qwen2": "hf-qwen2", "qwen3": "hf-qwen3", "gpt2": "hf-gpt2"}


def scale_up(model):
    """Random weights large enough that the logits are O(1) and a mismatch cannot hide in small numbers;
    norm scales and every bias moved off their init so that a wrong map shows."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * (0.1 if p.dim() >= 2 else 0.2))
    return model.eval()


def make(family, path):
    torch.manual_seed(0)
    hf = scale_up(FAMILIES[family]())
    hf.save_pretrained(path, safe_serialization=True)
    return hf


@pytest.fixture(scope="module", params=list(FAMILIES))
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / request.param
    return request.param, make(request.param, path), path


def step_by_step(model, ids):
    state, out = None, []
    for t in range(ids.shape[1]):
        logits, state = model.step(ids[:, t : t + 1], state)
        out.append(logits)
    return torch.cat(out, 1)


def test_logits_equal_transformers_forward(checkpoint):
    family, hf, path = checkpoint
    loaded = load_model(str(path), max_context=MAX_CONTEXT)
    assert loaded.source_layout == LAYOUTS[family.split("-")[0]]
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
    ref = hf(ids).logits
    assert ref.abs().max() > 1.0, "logits too small for the comparison to mean anything"
    for form, ours in (("chunked", loaded.model(ids)[0]), ("step", step_by_step(loaded.model, ids))):
        diff = (ref - ours).abs().max().item()
        assert diff <= TOL, f"{family} {form}: max |edgelin - transformers| = {diff:.2e}"


def test_older_config_fields_import_the_same(tmp_path):
    """transformers 4's config.json of the same Llama 3 model (rope_theta at the top, `rope_scaling` with
    `type`) and GPT-2's generic names (hidden_size, num_hidden_layers, ...) read as the current fields do."""
    ids = torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(2))
    hf = make("llama-bias-llama3", tmp_path / "llama")
    cfg = json.loads((tmp_path / "llama" / "config.json").read_text())
    rope = {k: v for k, v in cfg.pop("rope_parameters").items() if k not in ("rope_type", "rope_theta")}
    cfg.update(rope_theta=10000.0, rope_scaling={"type": "llama3", **rope})
    (tmp_path / "llama" / "config.json").write_text(json.dumps(cfg))
    assert (hf(ids).logits - load_model(str(tmp_path / "llama")).model(ids)[0]).abs().max() <= TOL
    hf = make("gpt2", tmp_path / "gpt2")
    cfg = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    for ours, theirs in (("n_embd", "hidden_size"), ("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"),
                         ("n_positions", "max_position_embeddings")):
        cfg[theirs] = cfg.pop(ours)
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(cfg))
    assert (hf(ids).logits - load_model(str(tmp_path / "gpt2")).model(ids)[0]).abs().max() <= TOL


def test_gpt2_cache_stops_at_its_positions(tmp_path):
    """GPT-2 has embeddings for n_positions tokens: its KV cache (max_context) is never longer."""
    path = tmp_path / "gpt2"
    make("gpt2", path)
    model = load_model(str(path), max_context=4096).model
    assert {b.mixer.max_context for b in model.blocks} == {80}
    assert {b.mixer.max_context for b in load_model(str(path), max_context=32).model.blocks} == {32}


@pytest.fixture(scope="module", params=["llama-bias-llama3", "gpt2"])
def exported(request, tmp_path_factory):
    """`edgelin export` of the checkpoint: FP32, prefill chunk 8, full attention capped at 64 tokens."""
    base = tmp_path_factory.mktemp("export")
    hf = make(request.param, base / "hf")
    result = run("export", base / "hf", "-o", base / "pkg", "--prefill-tokens", PREFILL, "--max-context", MAX_CONTEXT)
    assert result.exit_code == 0, result.output
    return request.param, hf, base / "pkg"


def test_exported_package_equals_transformers(exported):
    """ONNX Runtime: a prompt of two prefill chunks and four decode steps, then twelve decode steps, each
    step's logits equal transformers' forward over the whole sequence; batch 2."""
    family, hf, pkg = exported
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert manifest["source_layout"] == LAYOUTS[family.split("-")[0]] and manifest["max_context"] == MAX_CONTEXT
    if family == "gpt2":
        position = next(s for s in manifest["states"] if s["kind"] == "position")
        assert position["layer"] == 0 and position["shape"] == ["batch", 1] and position["policy"] == "float"
    ids = np.random.default_rng(3).integers(0, VOCAB, (2, PROMPT + STEPS))
    ref = hf(torch.from_numpy(ids)).logits.numpy()
    session = Session(pkg, threads=2)
    logits, state = session.forward(ids[:, :PROMPT], session.new_state(2))
    worst = np.abs(logits - ref[:, :PROMPT]).max()
    for t in range(PROMPT, PROMPT + STEPS):
        logits, state = session.forward(ids[:, t : t + 1], state)
        worst = max(worst, np.abs(logits[:, 0] - ref[:, t]).max())
    assert worst <= TOL, f"{family}: max |ONNX Runtime - transformers| = {worst:.2e}"
    if family == "gpt2":
        assert state["past_key_values.0.position"].tolist() == [[PROMPT + STEPS]] * 2


def test_exported_package_runs_in_onnxruntime_genai(exported):
    """genai.onnx fed as onnxruntime-genai feeds it (the KV caches grown by each run, from empty), runs of 7,
    1, 8, 19 and 1 tokens: each run's last logits equal Session.forward's (GPT-2's positions come from the
    cache's length); and onnxruntime-genai itself, fed a prompt and then one token at a time, gives edgelin's
    logits at every step."""
    og = pytest.importorskip("onnxruntime_genai")
    import onnxruntime as ort

    family, _, pkg = exported
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert "onnxruntime-genai" in manifest["backends"]
    session = Session(pkg, threads=2)
    graph = ort.InferenceSession(str(pkg / "genai.onnx"), providers=["CPUExecutionProvider"])
    outer = {i.name: np.zeros([2 if d == "batch" else 0 if d == "past_sequence_length" else d for d in i.shape], np.float32)
             for i in graph.get_inputs() if i.name != "input_ids"}
    assert not any("position" in name for name in outer)
    state, rng = session.new_state(2), np.random.default_rng(4)
    for tokens in (7, 1, 8, 19, 1):
        ids = rng.integers(0, VOCAB, (2, tokens))
        want, state = session.forward(ids, state, logits="last")
        got = dict(zip([o.name for o in graph.get_outputs()], graph.run(None, {"input_ids": ids, **outer})))
        assert np.abs(got["logits"] - want).max() <= 1e-5, (family, tokens)
        outer = {name: got[name.replace("past_key_values", "present")] for name in outer}
    ids = rng.integers(3, VOCAB, (1, PROMPT + STEPS))  # no end token: onnxruntime-genai would stop there
    model = og.Model(str(pkg))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=PROMPT + STEPS, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids[0, :PROMPT].astype(np.int32))
    want, state = session.forward(ids[:, :PROMPT], session.new_state(1), logits="last")
    worst = np.abs(generator.get_logits().reshape(-1) - want.reshape(-1)).max()
    for t in range(PROMPT, PROMPT + STEPS - 1):
        generator.append_tokens(ids[0, t : t + 1].astype(np.int32))
        want, state = session.forward(ids[:, t : t + 1], state)
        worst = max(worst, np.abs(generator.get_logits().reshape(-1) - want.reshape(-1)).max())
    assert worst <= 1e-5, f"{family}: max |onnxruntime-genai - edgelin| = {worst:.2e}"


def test_exported_package_runs_in_openvino(exported, tmp_path):
    """`edgelin compile --backend openvino` of GPT-2: the stateless and stateful IR give ONNX Runtime's logits
    over a prompt and decode steps (the position input survives OpenVINO's simplifications), and OpenVINO
    GenAI's LLMPipeline gives edgelin's greedy tokens."""
    ov_genai = pytest.importorskip("openvino_genai")
    ov = pytest.importorskip("openvino")
    import shutil

    family, _, pkg = exported
    if family != "gpt2":
        pytest.skip("GPT-2's position state is the new kind of state; Llama's graphs hold only known ops (15 s saved)")
    pkg = shutil.copytree(pkg, tmp_path / "pkg")  # the fixture's package stays as exported
    result = run("compile", pkg, "--backend", "openvino")
    assert result.exit_code == 0, result.output
    ids = np.random.default_rng(5).integers(3, VOCAB, (1, PROMPT + STEPS))
    runs = [ids[:, :PROMPT], *(ids[:, t : t + 1] for t in range(PROMPT, PROMPT + STEPS))]
    logits = {}
    for backend in ("ort", "openvino", "openvino-stateful"):
        session = Session(pkg, backend=backend, threads=2)
        state, out = session.new_state(1), []
        for chunk in runs:
            step, state = session.forward(chunk, state)
            out.append(step)
        logits[backend] = np.concatenate(out, 1)
    for backend in ("openvino", "openvino-stateful"):
        worst = np.abs(logits[backend] - logits["ort"]).max()
        assert worst <= TOL, f"{family} {backend}: max |OpenVINO - ONNX Runtime| = {worst:.2e}"
    pipe = ov_genai.LLMPipeline(str(pkg / "openvino"), "CPU", INFERENCE_PRECISION_HINT="f32", INFERENCE_NUM_THREADS=2)
    config = pipe.get_generation_config()
    config.max_new_tokens, config.do_sample = STEPS, False
    got = list(pipe.generate(ov.Tensor(ids[:, :PROMPT].astype(np.int64)), config).tokens[0])
    want = list(generate(Session(pkg, threads=2), ids[0, :PROMPT].tolist(), STEPS, stop_ids={IDS["eos_token_id"]}))
    assert len(want) > 4 and got[: len(want)] == want, (got, want)
