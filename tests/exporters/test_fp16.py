"""`--fp16`: the weight matrices stored as float16 (half the weights file) and read through a Cast to float32;
the logits within 1e-2 of FP32 (relative to their range), on ONNX Runtime, OpenVINO and in onnxruntime-genai."""
import json

import numpy as np
import onnx
import pytest

from cli_helpers import assert_user_error, run
from edgelin.runtime import GREEDY, Session, generate, read_package
from hf_checkpoint import chat_package, export_checkpoint

pytest.importorskip("transformers")

TOLERANCE = 1e-2  # max |FP16 - FP32| over max |FP32|; measured 2e-4 here, 1.1e-3 on a random-init gla-10m (docs/DESIGN.md)


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """(FP32, FP16) packages of the tiny LFM2 chat checkpoint (a short convolution, full attention)."""
    checkpoint, fp32 = chat_package(tmp_path_factory)
    return fp32, export_checkpoint(checkpoint, tmp_path_factory.mktemp("fp16") / "chat", fp16=True)


def relative_error(a, b):
    return float(np.abs(a - b).max() / np.abs(a).max())


def test_half_the_weights_same_signature(packages):
    fp32, fp16 = packages
    assert (fp16 / "weights.bin").stat().st_size < 0.55 * (fp32 / "weights.bin").stat().st_size
    manifest = read_package(fp16).raw
    assert manifest["precision"] == {"scheme": "fp16", "weights": "float16", "compute": "float32"}
    assert {t["dtype"] for t in manifest["weights"]["tensors"]} == {"float16"}
    for graph in ("decode.onnx", "prefill.onnx"):
        protos = [onnx.load(str(p / graph), load_external_data=False) for p in packages]
        assert [str(v.type) for v in protos[0].graph.input] == [str(v.type) for v in protos[1].graph.input]
        assert [str(v.type) for v in protos[0].graph.output] == [str(v.type) for v in protos[1].graph.output]
        assert sum(n.op_type == "Cast" for n in protos[1].graph.node) > sum(n.op_type == "Cast" for n in protos[0].graph.node)


def test_logits_and_states_match_fp32(packages):
    """Batch 2, 21 tokens (two prefill chunks and five decode steps), then one more step."""
    sessions = [Session(p, threads=1) for p in packages]
    ids = np.random.default_rng(0).integers(0, sessions[0].vocab_size, (2, 21))
    (want, want_state), (got, got_state) = (s.forward(ids, s.new_state(2)) for s in sessions)
    assert relative_error(want, got) < TOLERANCE
    (want, _), (got, _) = (s.forward(ids[:, :1], st) for s, st in zip(sessions, (want_state, got_state)))
    assert relative_error(want, got) < TOLERANCE


def test_runs_on_openvino(packages):
    """OpenVINO reads the float16 weights of the step graphs (what `edgelin compile` converts) and computes
    what ONNX Runtime computes."""
    ov = pytest.importorskip("openvino")
    session = Session(packages[1], threads=1)
    ids = np.random.default_rng(1).integers(0, session.vocab_size, (1, 8))
    state = {k: np.random.default_rng(2).standard_normal(v.shape).astype(v.dtype) * 0.1
             for k, v in session.new_state(1).items()}
    for s in session.manifest.states:
        if s.kind == "seen":  # a window ring's token count: a whole number (5 slots filled)
            state[s.input] = np.full_like(state[s.input], 5)
    want, _ = session.run_graph("prefill", ids, state)
    model = ov.Core().compile_model(str(packages[1] / "prefill.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = model({"input_ids": ids, **state})
    assert relative_error(want["logits"], got["logits"]) < 1e-4


def test_genai_layout_gives_edgelin_greedy_tokens(packages):
    og = pytest.importorskip("onnxruntime_genai")
    package = packages[1]
    end = json.loads((package / "genai_config.json").read_text())["model"]["eos_token_id"]
    prompt = list(range(5, 25))
    want = list(generate(Session(package, threads=1), prompt, 12, GREEDY, stop_ids=end if isinstance(end, list) else [end]))
    model = og.Model(str(package))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 12, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array(prompt, np.int32))
    got = []
    while not generator.is_done():
        generator.generate_next_token()
        got.append(int(generator.get_next_tokens()[0]))
    assert got[:len(want)] == want and len(want) > 2


def test_fp16_goes_without_a_scheme_or_profile():
    assert_user_error(run("export", "gla-tiny", "--fp16", "--int8"), "--fp16", "without a quantization scheme")
    assert_user_error(run("export", "gla-tiny", "--fp16", "--profile", "ort-cpu"), "--fp16", "--profile")
