"""ONNX Runtime GenAI runs exported packages as they are (genai_config.json, genai.onnx, tokenizer files):
the prompt graph equals the step graphs, its greedy tokens equal edgelin's from a multi-token prompt
(FP32, INT8, INT4), and its tokenizer round-trips text. Packages with attention layers get no layout."""
import json
import shutil

import numpy as np
import pytest

from edgelin.exporters.genai import CONFIG, GRAPH, attach_genai, genai_support
from edgelin.exporters.package import export_package
from edgelin.models.layers import MIXERS
from edgelin.runtime import Session, generate, read_package
from edgelin.runtime.package import rewrite_package
from edgelin.runtime.tokenizer import ByteTokenizer
from registry_helpers import tiny_zoo_name, zoo_model

og = pytest.importorskip("onnxruntime_genai")

PREFILL = 8
PROMPT = list(b"ROMEO: wherefore art thou?")  # 26 tokens: 3 prefill chunks, then 2 decode steps
NEW_TOKENS = 24
# no NUL: onnxruntime-genai passes text as a C string, which ends there
TEXTS = ["ROMEO: Wherefore art thou?\n\tO, swear not", "héllo wörld — ✓ 🙂", " two  spaces", "\r\n\x7f\x01"]


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """Every tiny zoo model (one per registered mixer), exported once with a prefill chunk of 8."""
    return {name: export_package(zoo_model(name, 0.1), tmp_path_factory.mktemp("genai") / name, prefill_tokens=PREFILL)
            for name in sorted({tiny_zoo_name(m) for m in MIXERS})}


def end_token(package) -> int:
    return json.loads((package / CONFIG).read_text())["model"]["eos_token_id"]


def genai_greedy(package, prompt: list[int], n: int) -> list[int]:
    """Greedy tokens from onnxruntime-genai (the whole prompt appended in one call), without the end token."""
    model = og.Model(str(package))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + n, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array(prompt, dtype=np.int32))
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out[:-1] if out and out[-1] == end_token(package) else out


def edgelin_greedy(package, prompt: list[int], n: int) -> list[int]:
    """edgelin's greedy tokens, ending where onnxruntime-genai ends: at the package's end token."""
    return list(generate(Session(package, threads=2), prompt, n, stop_ids={end_token(package)}))


def window_of(state: dict[str, np.ndarray], manifest) -> dict[str, np.ndarray]:
    """A state with each attention ring as the window it holds: its filled entries oldest first,
    and `seen` as the number filled (the genai graph lays a ring out from slot 0; both read the same)."""
    out = dict(state)
    for s in manifest.states:
        if s.kind == "seen":
            ring = state[s.input.replace(".seen", ".key")]
            count, window = int(state[s.input][0, 0]), ring.shape[2]
            filled = min(count, window)
            order = (count % window + np.arange(window)) % window
            for kind in ("key", "value"):
                name = s.input.replace(".seen", f".{kind}")
                out[name] = state[name][:, :, order[window - filled:]]
            out[s.input] = np.full_like(state[s.input], filled)
    return out


def as_step_state(outer: dict[str, np.ndarray], manifest) -> dict[str, np.ndarray]:
    """The step graphs' states, each ring as the window it holds (`window_of`), from genai.onnx's:
    the KV cache's last `window` entries and their count, and the flattened states cut back to their shapes."""
    state = {}
    for s in manifest.states:
        batch = next(iter(outer.values())).shape[0]
        if s.kind in ("key", "value", "seen"):
            cache = outer[f"present.{s.layer}.key" if s.kind == "seen" else s.output]
            window = next(o for o in manifest.states if o.layer == s.layer and o.kind == "key").shape[2]
            filled = min(cache.shape[2], window)
            if s.kind == "seen":
                state[s.input] = np.full((batch, 1), filled, s.np_dtype)
            else:
                state[s.input] = cache[:, :, cache.shape[2] - filled:].astype(s.np_dtype)
        else:  # packed one after another into conv_state / recurrent_state, in manifest order
            slot = "conv_state" if s.kind == "conv_state" else "recurrent_state"
            start = sum(int(np.prod(o.shape[1:])) for o in manifest.states[:manifest.states.index(s)]
                        if o.layer == s.layer and o.kind not in ("key", "value", "seen")
                        and (o.kind == "conv_state") == (slot == "conv_state"))
            n = int(np.prod(s.shape[1:]))
            state[s.input] = outer[f"present.{s.layer}.{slot}"][:, start:start + n].reshape(s.shape_for(batch))
    return state


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_prompt_graph_equals_the_step_graphs(packages, mixer):
    """genai.onnx fed as onnxruntime-genai feeds it (states from zero, each run's outputs fed back),
    runs of 7, 1, 8, 19 and 1 tokens (no chunk, whole chunks, chunks and a remainder, past a
    sliding window), batch 2: each run's last logits and the states it carries equal Session.forward's."""
    import onnxruntime as ort

    package = packages[tiny_zoo_name(mixer)]
    session = Session(package, threads=2)
    graph = ort.InferenceSession(str(package / GRAPH), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    outer = {}
    for i in graph.get_inputs():
        if i.name != "input_ids":
            dims = [2 if d == "batch" else 0 if d == "past_sequence_length" else d for d in i.shape]
            outer[i.name] = np.zeros(dims, {"tensor(float)": np.float32, "tensor(int16)": np.int16}[i.type])
    state = session.new_state(2)
    for tokens in (7, 1, 8, 19, 1):
        ids = rng.integers(0, session.vocab_size, (2, tokens))
        want, state = session.forward(ids, state, logits="last")
        got = dict(zip([o.name for o in graph.get_outputs()], graph.run(None, {"input_ids": ids, **outer})))
        assert np.abs(got["logits"] - want).max() <= 1e-5, tokens
        outer = {name.replace("past_key_values", "present"): got[name.replace("past_key_values", "present")] for name in outer}
        windows = window_of(state, session.manifest)
        for name, value in as_step_state(outer, session.manifest).items():
            assert value.shape == windows[name].shape, (tokens, name)
            assert np.abs(value - windows[name]).max() <= 1e-5, (tokens, name)
        outer = {name.replace("present", "past_key_values"): value for name, value in outer.items()}


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_generator_gives_edgelin_greedy_tokens(packages, mixer):
    package = packages[tiny_zoo_name(mixer)]
    want = edgelin_greedy(package, PROMPT, NEW_TOKENS)
    assert len(want) > 4, "the model ends at once: nothing is compared"
    assert genai_greedy(package, PROMPT, NEW_TOKENS) == want


def test_prompt_graph_of_a_package_without_prefill(packages, tmp_path):
    """Only a decode graph: one loop over every token of the prompt."""
    import onnx
    import onnxruntime as ort

    from edgelin.exporters.genai import prompt_graph

    package = packages[tiny_zoo_name("gla")]
    m = read_package(package)
    shutil.copy(package / "weights.bin", tmp_path / "weights.bin")  # the loop body reads it beside the graph
    decode = onnx.load(str(package / "decode.onnx"), load_external_data=False)
    onnx.save(prompt_graph({"decode": decode}, m.raw["states"], m.vocab_size, None), str(tmp_path / GRAPH))
    graph = ort.InferenceSession(str(tmp_path / GRAPH), providers=["CPUExecutionProvider"])
    session = Session(package, threads=2)
    ids = np.array([PROMPT[:PREFILL - 1]])
    state = session.new_state(1)
    want, want_state = session.forward(ids, state, logits="last")  # shorter than a chunk: decode only
    got = dict(zip([o.name for o in graph.get_outputs()], graph.run(None, {"input_ids": ids, **state})))
    assert np.array_equal(got["logits"], want)
    assert all(np.array_equal(got[s.output], want_state[s.input]) for s in session.manifest.states)


def test_unsupported_states_get_no_layout_and_say_why(packages, tmp_path):
    """Attention layers whose KV shapes differ, or with a key and no value, do not fit (other states of an
    attention layer are packed like any layer's: lin_attn's test above)."""
    manifest = read_package(packages[tiny_zoo_name("swa")]).raw
    first = next(s for s in manifest["states"] if s["kind"] == "key")
    states = [{**s, "shape": [*s["shape"][:3], s["shape"][3] * 2]} if s is first else s for s in manifest["states"]]
    assert "key / value shapes differ" in genai_support({**manifest, "states": states})
    keys_only = [s for s in manifest["states"] if s["kind"] != "value"]
    assert "no key / value" in genai_support({**manifest, "states": keys_only})


def test_tokenizer_round_trips_text(packages):
    package = packages[tiny_zoo_name("gla")]
    tokenizer = og.Tokenizer(og.Model(str(package)))
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert list(ids) == ByteTokenizer().encode(text), text
        assert tokenizer.decode(ids) == text


def test_layout_is_recorded_and_checked(packages):
    package = packages[tiny_zoo_name("gla")]
    m = read_package(package)  # every file listed with its checksum
    entry = m.raw["backends"]["onnxruntime-genai"]["decoder"]
    assert entry["config"] == CONFIG and entry["model"] == GRAPH
    assert set(entry["files"]) <= set(m.files)
    assert entry["source"] == {name: m.files[g.file] for name, g in m.graphs.items()}
    assert m.tokenizer == {"type": "bytes"}  # edgelin keeps its own byte tokenizer


def test_attach_genai_gives_a_package_its_layout_again(packages, tmp_path):
    """A package without the layout (written before it existed, or rewritten) gets it from attach_genai."""
    bare = rewrite_package(packages[tiny_zoo_name("gla")], tmp_path / "bare", drop_fields=("backends",))
    assert not (bare / GRAPH).exists()
    attach_genai(bare)
    assert genai_greedy(bare, PROMPT, NEW_TOKENS) == edgelin_greedy(bare, PROMPT, NEW_TOKENS)


@pytest.fixture(scope="module", params=["w8a8", "w4a16"])
def quantized(request, packages, tmp_path_factory):
    """INT8 (QDQ, INT16 states) and INT4 (MatMulNBits) packages of gla-tiny: quantizing writes the layout."""
    from edgelin.calibration import calibrate_package, default_text
    from edgelin.quantize.package import quantize_package
    from edgelin.quantize.schemes import SCHEMES

    fp = packages[tiny_zoo_name("gla")]
    table = calibrate_package(fp, default_text()[:20000], streams=1, tokens=256)
    out = quantize_package(fp, tmp_path_factory.mktemp("q") / request.param, SCHEMES[request.param](), table)
    entry = read_package(out).raw["backends"]["onnxruntime-genai"]["decoder"]
    assert entry["source"] == {name: read_package(out).files[g.file] for name, g in read_package(out).graphs.items()}
    return out, request.param


def test_quantized_packages_run_as_edgelin_runs_them(quantized):
    import onnx

    package, scheme = quantized
    graph = onnx.load(str(package / GRAPH), load_external_data=False)
    ops = {n.op_type for loop in graph.graph.node if loop.op_type == "Loop" for n in loop.attribute[0].g.node}
    assert ("MatMulNBits" if scheme == "w4a16" else "QuantizeLinear") in ops
    # edgelin's ORT back end runs its prefill session without weight prepacking (to share the weights),
    # and ORT computes the 4-bit layers it fuses from QDQ in float there but in int8 when prepacked, as
    # in decode and in every loop of genai.onnx: an INT4 prompt stays within one chunk to compare
    # like with like (the FP32 and INT8 prompts cross chunks).
    prompt = PROMPT[:PREFILL - 1] if scheme == "w4a16" else PROMPT
    want = edgelin_greedy(package, prompt, NEW_TOKENS)
    assert len(want) > 4
    assert genai_greedy(package, prompt, NEW_TOKENS) == want


def test_rewritten_graphs_take_the_stale_layout_away(packages, tmp_path):
    """A rewrite that replaces the step graphs (here the loop-free NPU profile) drops genai.onnx, which
    was built from the old ones: no package keeps a layout that runs other graphs than its own."""
    from edgelin.exporters.profiles import apply_profile

    out = apply_profile(packages[tiny_zoo_name("gla")], "qnn-htp", tmp_path / "htp")
    assert "backends" not in read_package(out).raw
    assert not (out / GRAPH).exists() and not (out / CONFIG).exists()


def test_imported_model_runs_with_its_own_tokenizer(imported):
    from edgelin.runtime.tokenizer import load_tokenizer

    tokenizer = og.Tokenizer(og.Model(str(imported)))
    own = load_tokenizer(imported, read_package(imported))
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert list(ids) == own.encode(text), text
        assert tokenizer.decode(ids) == text
    prompt = own.encode("To be, or not to be, that is")
    assert len(prompt) > PREFILL
    want = edgelin_greedy(imported, prompt, NEW_TOKENS)
    assert len(want) > 4 and genai_greedy(imported, prompt, NEW_TOKENS) == want
