"""ONNX Runtime runs the exported step graphs exactly like the torch model, in constant memory."""
import dataclasses

import numpy as np
import onnx
import pytest
import torch

from edgelin.exporters.onnx import FORBIDDEN_OPS
from edgelin.exporters.package import export_package
from edgelin.models import LM, ZOO
from edgelin.runtime import Session

DECODE_STEPS = 256
TOL = 1e-4


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """Every zoo model, exported once (prefill chunk 16 so the 130M graph stays quick to build)."""
    made = {}
    for name, config in ZOO.items():
        model = LM(dataclasses.replace(config, init_std=0.1 if "tiny" in name else config.init_std)).init_weights().eval()
        out = tmp_path_factory.mktemp("pkg") / name
        export_package(model, out, prefill_tokens=16)
        made[name] = (model, out)
    return made


def test_no_control_flow_and_checker_passes(packages):
    for name, (_, out) in packages.items():
        for graph in ("decode.onnx", "prefill.onnx"):
            onnx.checker.check_model(str(out / graph))  # by path: reads the shared weights.bin
            proto = onnx.load(str(out / graph), load_external_data=False)
            assert not FORBIDDEN_OPS & {n.op_type for n in proto.graph.node}, (name, graph)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(ZOO))
def test_ort_decode_equals_torch(packages, name, batch):
    model, out = packages[name]
    session = Session(out, threads=2)
    steps = DECODE_STEPS if "130m" not in name else 32  # the 130M model is slow in eager torch on 2 cores
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.config.vocab_size, (batch, steps + 16))
    ort_state = session.new_state(batch)
    ort_logits, ort_state = session.forward(ids[:, :16], ort_state)  # one prefill chunk
    torch_state = None
    with torch.no_grad():
        ref, torch_state = model(torch.from_numpy(ids[:, :16]), torch_state)
        worst = np.abs(ort_logits - ref.numpy()).max()
        for t in range(16, 16 + steps):
            logits, ort_state = session.forward(ids[:, t : t + 1], ort_state)
            ref, torch_state = model.step(torch.from_numpy(ids[:, t : t + 1]), torch_state)
            worst = max(worst, np.abs(logits - ref.numpy()).max())
    assert worst <= TOL, f"{name} batch {batch}: max |ORT - torch| = {worst:.2e}"
    for spec in session.manifest.states:
        layer = torch_state[spec.layer][spec.kind].numpy()
        assert np.abs(ort_state[spec.input] - layer).max() <= TOL, spec.input


@pytest.mark.parametrize("name", ["gla-tiny", "hybrid-tiny", "mamba2-tiny", "gated-delta-tiny", "retention-tiny"])
def test_state_bytes_constant_over_10k_tokens(packages, name):
    _, out = packages[name]
    session = Session(out, threads=2)
    ids = np.random.default_rng(1).integers(0, 256, (1, 10_000))
    _, after_10 = session.forward(ids[:, :10], session.new_state(1))
    _, after_10k = session.forward(ids, session.new_state(1))
    assert {k: (v.shape, v.dtype, v.nbytes) for k, v in after_10.items()} == {
        k: (v.shape, v.dtype, v.nbytes) for k, v in after_10k.items()
    }
    assert all(np.isfinite(v).all() for v in after_10k.values())
