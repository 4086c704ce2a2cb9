"""ort, openvino, openvino-stateful and tvm agree on FP32 step graphs: greedy tokens and logits."""
import numpy as np
import pytest

from edgelin.runtime import Session, generate

MODELS = ["gla-tiny", "hybrid-tiny"]  # as in conftest.py

BACKENDS = ["openvino", "openvino-stateful", "tvm"]
DECODE_STEPS = 64
TOL = 1e-4  # max |logits - ORT logits|, FP32


def rms_ratio(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.sqrt(np.mean((ref - out) ** 2)) / max(np.sqrt(np.mean(ref ** 2)), 1e-6))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_greedy_tokens_and_logits_match_ort(fp_packages, name, backend):
    pkg = fp_packages[name]
    ort, other = Session(pkg, threads=1), Session(pkg, backend=backend, threads=1, trust_native_code=True)
    prompt = list(b"ROMEO: Wherefore art thou")  # 25 tokens: one prefill chunk of 16, then 9 decode steps
    want = list(generate(ort, prompt, DECODE_STEPS))
    got = list(generate(other, prompt, DECODE_STEPS))
    assert got == want, f"{name} {backend}: greedy tokens differ from ORT"
    ids = np.array([prompt + want], np.int64)
    ref, ref_state = ort.forward(ids, ort.new_state())
    out, state = other.forward(ids, other.new_state())
    worst = float(np.abs(ref - out).max())
    assert worst <= TOL, f"{name} {backend}: max |logits - ORT| = {worst:.2e}, rms ratio {rms_ratio(ref, out):.2e}"
    for key in ref_state:
        assert np.abs(ref_state[key] - state[key]).max() <= TOL, key


def test_stateless_backends_refuse_missing_graphs(tmp_path):
    from edgelin.errors import EdgelinError
    from edgelin.exporters.package import export_package
    from edgelin.models import LM, ZOO

    pkg = export_package(LM(ZOO["gla-tiny"]).init_weights(), tmp_path / "bare", prefill_tokens=4)
    for backend, hint in (("openvino", "--backend openvino"), ("tvm", "--backend tvm")):
        with pytest.raises(EdgelinError, match=hint):
            Session(pkg, backend=backend, trust_native_code=True)
