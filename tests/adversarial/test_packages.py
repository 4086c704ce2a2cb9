"""Hostile packages: every one ends in a one-line EdgelinError (or loads and runs correctly), never another exception."""
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from edgelin.errors import EdgelinError
from edgelin.runtime import Manifest, Session, generate, load_state, read_package, save_state
from edgelin.runtime.package import rewrite_package
from edgelin.runtime.schema import json_depth

DROP = object()
HEX = "0" * 64
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


def put(doc, path, value):
    """Set (or with DROP delete) the field at `path`: "a>0>b" or a tuple of keys (list indexes are numbers)."""
    keys = path if isinstance(path, tuple) else path.split(">")
    *head, last = [int(p) if isinstance(p, str) and p.isdigit() else p for p in keys]
    for p in head:
        doc = doc[p]
    if value is DROP:
        del doc[last]
    else:
        doc[last] = value


def error_of(fn, *args, **kw):
    """The EdgelinError message of fn(*args); fails on success or any other exception."""
    with pytest.raises(EdgelinError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg and msg, msg
    return msg


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


MUTATIONS = [
    ("format_version", "2"), ("format_version", 2.0), ("format_version", None), ("format_version", True),
    ("format_version", 99), ("format_version", [2]),
    ("vocab_size", -1), ("vocab_size", 0), ("vocab_size", 2.5), ("vocab_size", "256"), ("vocab_size", True),
    ("vocab_size", None), ("vocab_size", 2 ** 70), ("vocab_size", 10 ** 9), ("vocab_size", DROP),
    ("graphs", []), ("graphs", "decode.onnx"), ("graphs", {}), ("graphs>decode", DROP), ("graphs>decode", "x"),
    ("graphs>decode>tokens", 2), ("graphs>decode>tokens", 0), ("graphs>decode>tokens", -1),
    ("graphs>decode>tokens", 1.0), ("graphs>decode>tokens", "1"), ("graphs>decode>tokens", True),
    ("graphs>prefill>tokens", 10 ** 9), ("graphs>decode>file", "../decode.onnx"),
    ("graphs>decode>file", "/etc/passwd"), ("graphs>decode>file", "absent.onnx"), ("graphs>decode>file", 5),
    ("graphs>decode>file", "./decode.onnx"), ("graphs>decode>file", "manifest.json"),
    ("graphs>decode>sites", "x"),
    ("states", {}), ("states", "x"), ("states", [1]), ("states", DROP), ("states>0>input", DROP),
    ("states>0>input", 5), ("states>0>input", ""), ("states>0>input", "input_ids"), ("states>0>output", "logits"),
    ("states>0>input", "a\nb"), ("states>0>layer", -1), ("states>0>layer", "0"), ("states>0>kind", None),
    ("states>0>shape", []), ("states>0>shape", ["batch"]), ("states>0>shape", [2, "batch", 16, 32]),
    ("states>0>shape", ["batch", -2, 16, 32]), ("states>0>shape", ["batch", 0, 16, 32]),
    ("states>0>shape", ["batch", 2.5, 16, 32]), ("states>0>shape", ["batch", True, 16, 32]),
    ("states>0>shape", ["batch", "2", 16, 32]), ("states>0>shape", ["batch", 2 ** 31, 2 ** 31]),
    ("states>0>shape", ["batch", 65536, 65536]), ("states>0>shape", ["batch", 2, 16, 32, 1, 1, 1, 1, 1]),
    ("states>0>shape", "batch"), ("states>0>dtype", "float128"), ("states>0>dtype", "object"),
    ("states>0>dtype", "int4"), ("states>0>dtype", 5), ("states>0>policy", "maybe"),
    ("files", []), ("files", {}), ("files>decode.onnx", "zz"), ("files>decode.onnx", "A" * 64),
    ("files>decode.onnx", 5), ("files>weights.bin", DROP),
    ("sizes", []), ("sizes", {"decode.onnx": 1}), ("sizes>decode.onnx", -1), ("sizes>decode.onnx", 1.5),
    ("sizes>decode.onnx", "9"), ("sizes>decode.onnx", 1), ("sizes>decode.onnx", 2 ** 80),
    ("weights", "weights.bin"), ("weights>file", "other.bin"), ("weights>file", "../weights.bin"),
    ("weights>tensors", "x"), ("weights>tensors>0", 5), ("weights>tensors>0>offset", -64),
    ("weights>tensors>0>offset", 3), ("weights>tensors>0>offset", 2 ** 62), ("weights>tensors>0>length", 7),
    ("weights>tensors>0>dtype", "complex64"), ("weights>tensors>0>dtype", "object"),
    ("weights>tensors>0>shape", [-256, 64]), ("weights>tensors>0>shape", "x"), ("weights>tensors>0>names", "x"),
    ("weights>graphs", "x"), ("weights>graphs>decode", "sha"),
    ("tokenizer", "bytes"), ("tokenizer>type", 5), ("tokenizer>bos_id", 256), ("tokenizer>bos_id", -1),
    ("tokenizer>eos_id", "1"), ("tokenizer>file", "../tokenizer.json"), ("tokenizer>file", "vocab.json"),
    ("producer", 5), ("architecture", "x"), ("precision", []), ("profile", {"batch": 0}),
    ("profile", {"batch": "1"}), ("max_context", 0), ("max_context", 2.5), ("backends", "x"),
]


@pytest.mark.parametrize("path, value", MUTATIONS, ids=[f"{p}={v if v is not DROP else 'DROP'!r:.30}" for p, v in MUTATIONS])
def test_bad_manifest_field(copy_pkg, path, value):
    pkg = copy_pkg(lambda d: put(d, path, value))
    error_of(Session, pkg, threads=1)


# fields that parse but contradict the graphs: caught at load, before any inference
MISMATCHES = [
    ("vocab_size", 512, "logits has shape"), ("vocab_size", 128, "logits has shape"),
    ("graphs>prefill>tokens", 9, "input_ids has shape"), ("states>0>shape", ["batch", 2, 16, 31], "has shape"),
    ("states>0>shape", ["batch", 2, 16, 32, 1], "has shape"), ("states>1>dtype", "float16", "is float32"),
    ("states>1>dtype", "int16", "is float32"), ("states>0>input", "past_key_values.9.x", "lacks input"),
    ("states>0>output", "present.9.x", "lacks output"),
]


@pytest.mark.parametrize("path, value, msg", MISMATCHES)
def test_manifest_contradicts_graphs(copy_pkg, path, value, msg):
    pkg = copy_pkg(lambda d: put(d, path, value))
    read_package(pkg)  # well-formed on its own
    assert msg in error_of(Session, pkg, threads=1)


def test_swapped_graphs_with_checksums_recomputed(copy_pkg, pkg, tmp_path):
    swapped = rewrite_package(pkg, tmp_path / "swapped", files={"decode.onnx": pkg / "prefill.onnx",
                                                                 "prefill.onnx": pkg / "decode.onnx"})
    assert "input_ids has shape [?, 8]; manifest.json says [?, 1]" in error_of(Session, swapped)


def test_state_dims_from_another_model(pkg, tmp_path):
    states = read_package(pkg).raw["states"]
    states = [{**s, "shape": ["batch", 4, 8, 32]} if s["kind"] == "recurrent_state" else s for s in states]
    other = rewrite_package(pkg, tmp_path / "other", update={"states": states})
    assert "recurrent_state has shape [?, 2, 16, 32]" in error_of(Session, other)


@pytest.mark.parametrize("text", [
    "[" * 200_000, "{\"a\":" * 100 + "1" + "}" * 100, "", "{oops", "\ufeff{}", "[]", "null", "5",
    '{"format_version": 2, "vocab_size": NaN}', '{"format_version": 2, "vocab_size": 1e400}',
    '{"format_version": 2, "vocab_size": ' + "9" * 5000 + "}",
])
def test_bad_manifest_json(copy_pkg, text):
    pkg = copy_pkg()
    (pkg / "manifest.json").write_text(text)
    error_of(read_package, pkg)


def test_deep_nesting_inside_a_field(copy_pkg):
    deep = {}
    for _ in range(70):
        deep = {"x": deep}
    pkg = copy_pkg(lambda d: put(d, "architecture", deep))
    assert "nests deeper than 64" in error_of(read_package, pkg)


@pytest.mark.parametrize("data, depth", [(b"[]", 1), (b'{"a": [1, {"b": "]]]}"}]}', 3), (b'["\\"[[["]', 1),
                                         (b"[" * 100 + b"]" * 100, 100), (b"1", 0),
                                         (b'"' + b'\\"' * 100_000, 0)])
def test_json_depth_scan(data, depth):
    assert json_depth(data) == depth


@pytest.mark.parametrize("kind", ["directory", "symlink", "huge", "bad_utf8", "fifo"])
def test_manifest_file_itself(copy_pkg, tmp_path, kind):
    pkg = copy_pkg()
    m = pkg / "manifest.json"
    if kind == "directory":
        m.unlink()
        m.mkdir()
    elif kind == "symlink":
        shutil.move(m, tmp_path / "real.json")
        m.symlink_to(tmp_path / "real.json")
    elif kind == "huge":
        with open(m, "r+b") as f:
            f.truncate(1 << 30)  # sparse: no disk used
    elif kind == "bad_utf8":
        m.write_bytes(b'{"format_version": 2, "producer": "\xff\xfe"}')
    else:
        m.unlink()
        os.mkfifo(m)
    error_of(read_package, pkg)


def test_not_a_package_path(tmp_path):
    error_of(read_package, tmp_path / "absent")
    error_of(read_package, None)
    error_of(read_package, 5)


def test_symlinked_file_to_outside_refused_even_with_matching_checksum(copy_pkg, tmp_path):
    pkg = copy_pkg()
    outside = shutil.copy(pkg / "decode.onnx", tmp_path / "elsewhere.onnx")
    (pkg / "decode.onnx").unlink()
    (pkg / "decode.onnx").symlink_to(outside)
    assert "symbolic link" in error_of(read_package, pkg)


def test_symlink_to_secret_listed_in_manifest(copy_pkg, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    pkg = copy_pkg(lambda d: (put(d, "files>notes.txt", sha(secret)), put(d, "sizes>notes.txt", 8)))
    (pkg / "notes.txt").symlink_to(secret)
    assert "symbolic link" in error_of(read_package, pkg)


def test_symlinked_directory_refused(copy_pkg, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.bin").write_bytes(b"x")
    pkg = copy_pkg(lambda d: (put(d, "files>sub/x.bin", sha(tmp_path / "out" / "x.bin")), put(d, "sizes>sub/x.bin", 1)))
    (pkg / "sub").symlink_to(tmp_path / "out")
    error_of(read_package, pkg)


def test_unlisted_symlink_refused(copy_pkg, tmp_path):
    pkg = copy_pkg()
    (pkg / "link").symlink_to("/etc")
    assert "not listed" in error_of(read_package, pkg)


def test_fifo_listed_is_refused_without_reading(copy_pkg):
    pkg = copy_pkg(lambda d: (put(d, "files>pipe", HEX), d.pop("sizes")))
    os.mkfifo(pkg / "pipe")
    assert "not a regular file" in error_of(read_package, pkg)


@pytest.mark.parametrize("with_size", [False, True])
def test_sparse_terabyte_file_refused_before_hashing(copy_pkg, with_size):
    pkg = copy_pkg(lambda d: (put(d, "files>huge.bin", HEX), put(d, "sizes>huge.bin", 1 << 40) if with_size
                              else d.pop("sizes")))
    with open(pkg / "huge.bin", "wb") as f:
        f.truncate(1 << 40)
    assert "over the limit" in error_of(read_package, pkg)


def test_size_mismatch_refused_before_hashing(copy_pkg):
    pkg = copy_pkg()
    with open(pkg / "weights.bin", "ab") as f:
        f.write(b"\0" * 64)
    assert "it is" in error_of(read_package, pkg)


def test_file_limit_is_configurable(pkg, monkeypatch):
    monkeypatch.setenv("EDGELIN_MAX_FILE_BYTES", "1000")
    assert "EDGELIN_MAX_FILE_BYTES" in error_of(read_package, pkg)
    monkeypatch.setenv("EDGELIN_MAX_FILE_BYTES", "lots")
    error_of(read_package, pkg)
    monkeypatch.setenv("EDGELIN_MAX_FILE_BYTES", str(1 << 30))
    read_package(pkg)


def test_sizes_recorded_and_older_packages_without_them_load(pkg, copy_pkg):
    m = read_package(pkg)
    assert m.raw["sizes"] == {n: (pkg / n).stat().st_size for n in m.files}
    old = copy_pkg(lambda d: d.pop("sizes"))
    assert list(generate(Session(old, threads=1), [1, 2], 3)) == list(generate(Session(pkg, threads=1), [1, 2], 3))


# -- back-end entries and native code -----------------------------------------------------------

def _tvm_entry(pkg, lib):
    m = read_package(pkg)
    names = {"inputs": ["input_ids", *(s.input for s in m.states)], "outputs": ["logits", *(s.output for s in m.states)]}
    entry = {g: {"file": lib, "function": g, **names} for g in m.graphs}
    return {"backends": {"tvm": {platform.machine(): {**entry, "batch": 1, "files": [lib],
                                                       "source": {g: m.files[s.file] for g, s in m.graphs.items()}}}}}


@pytest.fixture
def native_pkg(pkg, tmp_path):
    """A package carrying a shared library whose constructor writes a marker file (if a C compiler is here)."""
    marker = tmp_path / "constructor-ran"
    lib = tmp_path / "steps.so"
    src = tmp_path / "evil.c"
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void run(void) '
                   f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')
    compiled = shutil.which("cc") is not None and subprocess.run(["cc", "-shared", "-fPIC", "-o", lib, src]).returncode == 0
    if not compiled:
        lib.write_bytes(b"\x7fELF not really")
    name = f"tvm/{platform.machine()}/steps.so"
    return rewrite_package(pkg, tmp_path / "native", files={name: lib}, update=_tvm_entry(pkg, name)), marker, compiled


def test_native_code_needs_opt_in(native_pkg):
    pkg, marker, _ = native_pkg
    msg = error_of(Session, pkg, backend="tvm")
    assert "--trust-native-code" in msg and "trust_native_code=True" in msg
    assert not marker.exists()


def test_tvm_backend_refuses_without_opt_in_when_built_directly(native_pkg):
    from edgelin.runtime.backends.tvm import TvmBackend

    pkg, marker, _ = native_pkg
    lib = next(pkg.glob("tvm/*/steps.so"))
    assert "trust_native_code=True" in error_of(TvmBackend, lib, inputs=["input_ids"], outputs=["logits"])
    assert not marker.exists()


def test_native_code_runs_only_after_opt_in(native_pkg):
    pytest.importorskip("tvm")
    pkg, marker, compiled = native_pkg
    error_of(Session, pkg, backend="tvm", trust_native_code=True)  # not a TVM library: refused after loading
    assert marker.exists() == compiled


@pytest.mark.parametrize("edit", [
    lambda e: e.update(source={"decode": HEX, "prefill": HEX}),
    lambda e: e.update(decode={"file": "../steps.so"}),
    lambda e: e.update(decode={"file": "unlisted.so"}),
    lambda e: e.update(decode=5),
    lambda e: e.clear(),
])
def test_tampered_backend_entry(native_pkg, tmp_path, edit):
    pkg = native_pkg[0]
    doc = json.loads((pkg / "manifest.json").read_text())
    edit(doc["backends"]["tvm"][platform.machine()])
    (pkg / "manifest.json").write_text(json.dumps(doc))
    error_of(Session, pkg, backend="tvm", trust_native_code=True)


@pytest.mark.parametrize("backend", ["openvino", "openvino-stateful"])
@pytest.mark.parametrize("path, value, msg", [("vocab_size", 512, "logits has shape"),
                                              ("states>0>shape", ["batch", 2, 16, 31], "recurrent_state has shape")])
def test_openvino_graphs_contradict_manifest(ov_pkg, tmp_path, backend, path, value, msg):
    pkg = shutil.copytree(ov_pkg, tmp_path / "ov")
    doc = json.loads((pkg / "manifest.json").read_text())
    put(doc, path, value)
    (pkg / "manifest.json").write_text(json.dumps(doc))
    assert msg in error_of(Session, pkg, backend=backend)


def test_openvino_entry_naming_unlisted_file(ov_pkg, tmp_path):
    pkg = shutil.copytree(ov_pkg, tmp_path / "ov")
    doc = json.loads((pkg / "manifest.json").read_text())
    doc["backends"]["openvino"]["stateless"]["decode"] = "/etc/passwd"
    (pkg / "manifest.json").write_text(json.dumps(doc))
    assert "not a file listed" in error_of(Session, pkg, backend="openvino")


# -- numbers: NaN weights, NaN states, lying graphs ----------------------------------------------

@pytest.fixture(scope="module")
def nan_pkg(pkg, tmp_path_factory):
    weights = bytearray((pkg / "weights.bin").read_bytes())
    weights[:4 * 256 * 64] = np.full(256 * 64, np.nan, np.float32).tobytes()  # the embedding table
    return rewrite_package(pkg, tmp_path_factory.mktemp("nan") / "p", files={"weights.bin": bytes(weights)})


def test_nan_weights_give_an_error_not_bytes(nan_pkg):
    s = Session(nan_pkg, threads=1)
    assert "NaN or Inf logits" in error_of(lambda: list(generate(s, [72, 105], 4)))
    error_of(s.forward, np.array([[1, 2, 3]]), s.new_state())


def test_check_finite_off_returns_raw_logits(nan_pkg):
    s = Session(nan_pkg, threads=1, check_finite=False)
    logits, _ = s.forward(np.array([[1]]), s.new_state())
    assert np.isnan(logits).all()


@pytest.mark.parametrize("backend, msg", [("adv-nan", "NaN or Inf logits"), ("adv-wide", "logits of shape"),
                                          ("adv-nostate", "returned nothing for present.0.conv_state"),
                                          ("adv-f16", "returned float16")])
def test_graph_lying_at_run_time(pkg, backend, msg):
    s = Session(pkg, backend=backend, threads=1)
    assert msg in error_of(s.forward, np.array([[1, 2]]), s.new_state())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_state_refused(session, tmp_path, bad):
    state = session.new_state()
    state["past_key_values.0.recurrent_state"][0, 0, 0, 0] = bad
    assert "NaN or Inf" in error_of(session.forward, np.array([[1]]), state)
    assert "nothing saved" in error_of(save_state, tmp_path / "s.npz", state, session.manifest)
    assert not (tmp_path / "s.npz").exists()


def _snapshot(session, path, **arrays):
    """A snapshot file written by hand: the package's stamp, then `arrays` over a valid state."""
    from edgelin.runtime.state import _FINGERPRINT, state_fingerprint
    state = {**session.new_state(), **arrays}
    members = {k: v for k, v in state.items() if v is not None}
    np.savez(path, **members, **{_FINGERPRINT: np.array(state_fingerprint(session.manifest))})
    return path


REC, CONV = "past_key_values.0.recurrent_state", "past_key_values.0.conv_state"
SNAPSHOTS = {
    "nan": {REC: np.full((1, 2, 16, 32), np.nan, np.float32)},
    "inf": {CONV: np.full((1, 3, 128), np.inf, np.float32)},
    "float64": {REC: np.zeros((1, 2, 16, 32))},
    "int32": {REC: np.zeros((1, 2, 16, 32), np.int32)},
    "shape": {REC: np.zeros((1, 2, 16, 31), np.float32)},
    "batch_mix": {REC: np.zeros((2, 2, 16, 32), np.float32)},
    "scalar": {REC: np.float32(0)},
    "missing": {REC: None},
    "extra": {"other": np.zeros(3)},
    "object": {REC: np.array([None] * 3, dtype=object)},
    "strings": {REC: np.array(["a"] * 3)},
}


@pytest.mark.parametrize("case", SNAPSHOTS)
def test_bad_snapshot(session, tmp_path, case):
    arrays = SNAPSHOTS[case]
    if case == "object":  # np.savez pickles object arrays; write one without a stamp check
        path = tmp_path / "s.npz"
        np.savez(path, **{**session.new_state(), **arrays})
    else:
        path = _snapshot(session, tmp_path / "s.npz", **arrays)
    error_of(load_state, path, session.manifest)


@pytest.mark.parametrize("kind", ["truncated", "directory", "empty", "header_lies", "stamp_array", "pickle_stamp"])
def test_broken_snapshot_file(session, tmp_path, kind):
    import zipfile
    path = save_state(tmp_path / "s.npz", session.new_state(), session.manifest)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "header_lies":  # a .npy header claiming a batch of 10**9 over a few bytes of data
        npy = io.BytesIO()
        np.lib.format.write_array_header_1_0(npy, {"descr": "<f4", "fortran_order": False,
                                                   "shape": (10 ** 9, 2, 16, 32)})
        npy = npy.getvalue()
        with zipfile.ZipFile(path, "r") as z:
            data = {n: z.read(n) for n in z.namelist()}
        with zipfile.ZipFile(path, "w") as z:
            for n, b in data.items():
                z.writestr(n, npy + b"\0" * 64 if n.startswith(REC) else b)
    elif kind == "stamp_array":
        from edgelin.runtime.state import _FINGERPRINT
        np.savez(path, **session.new_state(), **{_FINGERPRINT: np.arange(3)})
    else:
        from edgelin.runtime.state import _FINGERPRINT
        np.savez(path, **session.new_state(), **{_FINGERPRINT: np.array([{"x": 1}], dtype=object)})
    error_of(load_state, path, session.manifest)


@pytest.mark.parametrize("where", ["file/s.npz", "dir"])
def test_snapshot_unwritable_path(session, tmp_path, where):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    error_of(save_state, tmp_path / where, session.new_state(), session.manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]


def test_snapshot_round_trip_still_exact(session, tmp_path):
    g = generate(session, list(b"hello there"), 5)
    list(g)
    path = save_state(tmp_path / "s.npz", g.state, session.manifest)
    restored = load_state(path, session.manifest)
    assert all(np.array_equal(restored[k], g.state[k]) for k in g.state)


# -- property-based fuzzing ----------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=12)


def _paths(doc, prefix=()):
    """Every path of a manifest (objects and arrays) as a tuple of keys, down to four levels."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for k, v in items:
        out.append((*prefix, k))
        if len(prefix) < 3 and k not in ("sites", "tensors"):
            out += _paths(v, (*prefix, k))
    return out + [("weights", "tensors", 0, "offset"), ("weights", "tensors", 3, "shape")]


@pytest.fixture(scope="module")
def manifest_doc(pkg):
    return json.loads((pkg / "manifest.json").read_text())


@FUZZ
@given(data=st.data())
def test_fuzz_manifest_fields(manifest_doc, data):
    doc = json.loads(json.dumps(manifest_doc))
    path = data.draw(st.sampled_from(_paths(doc)))
    put(doc, path, data.draw(JSON | st.just(DROP)))
    try:
        m = Manifest.from_dict(doc)
    except EdgelinError as e:
        assert "\n" not in str(e)
        return
    assert m.graphs["decode"].tokens == 1 and all(s.shape[0] == "batch" for s in m.states)


@FUZZ
@given(blob=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_fuzz_manifest_bytes(tmp_path_factory, blob):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "manifest.json").write_bytes(blob)
    error_of(read_package, root)


@FUZZ
@given(data=st.data())
def test_fuzz_snapshot_bytes(session, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("snap") / "s.npz"
    state = session.new_state()
    state[REC][:] = 0.5
    save_state(path, state, session.manifest)
    blob = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    path.write_bytes(bytes(blob[:data.draw(st.integers(0, len(blob)))] if data.draw(st.booleans()) else blob))
    try:
        got = load_state(path, session.manifest)
    except EdgelinError:
        return
    assert all(np.array_equal(got[k], state[k]) for k in state)  # a snapshot that loads is the one saved


DTYPES = st.sampled_from([np.float32, np.float16, np.float64, np.int16, np.int64, np.bool_])


@FUZZ
@given(data=st.data())
def test_fuzz_state_arrays(session, data):
    state = session.new_state()
    for name in data.draw(st.lists(st.sampled_from(sorted(state)), max_size=3, unique=True)):
        shape = data.draw(st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple) | st.just(state[name].shape))
        value = data.draw(st.sampled_from([0.0, 1.0, np.nan, np.inf, -1e30]))
        with np.errstate(invalid="ignore", over="ignore"):
            state[name] = np.full(shape, value).astype(data.draw(DTYPES)) if data.draw(st.booleans()) else value
    if data.draw(st.booleans()):
        state.pop(data.draw(st.sampled_from(sorted(state))))
    try:
        logits, _ = session.forward(np.array([[1, 2]]), state)
    except EdgelinError:
        return
    assert np.isfinite(logits).all() and logits.shape == (1, 2, 256)


# the verify graph (speculative decoding) is loaded on first use: a bad one fails that call, in one line
VERIFY_MUTATIONS = [("graphs>verify>tokens", 1, "must have tokens >= 2"), ("graphs>verify>tokens", 0, "graphs.verify.tokens"),
                    ("graphs>verify>tokens", "4", "graphs.verify.tokens"), ("graphs>verify>file", "absent.onnx", "not listed"),
                    ("graphs>verify>file", "../verify.onnx", "graphs.verify.file"), ("files>verify.onnx", DROP, "verify.onnx")]


@pytest.mark.parametrize("path, value, msg", VERIFY_MUTATIONS)
def test_bad_verify_graph_entry(copy_pkg, path, value, msg):
    pkg = copy_pkg(lambda d: put(d, path, value))
    assert msg in error_of(Session, pkg, threads=1)


def test_verify_graph_file_missing(copy_pkg):
    pkg = copy_pkg()
    (pkg / "verify.onnx").unlink()
    assert "missing verify.onnx" in error_of(Session, pkg, threads=1)


@pytest.mark.parametrize("tokens, msg", [(3, "input_ids has shape [?, 4]; manifest.json says [?, 3]"),
                                         (5, "input_ids has shape [?, 4]; manifest.json says [?, 5]")])
def test_verify_graph_tokens_contradict_the_manifest(copy_pkg, tokens, msg):
    s = Session(copy_pkg(lambda d: put(d, "graphs>verify>tokens", tokens)), threads=1)
    assert "verify" not in s.graphs  # nothing loaded yet: decode-only use never sees it
    assert msg in error_of(s.verify, np.zeros((1, tokens), np.int64), s.new_state())
    assert s.forward(np.array([[1, 2]]), s.new_state())[0].shape == (1, 2, 256)  # the rest still runs


@pytest.mark.parametrize("other, msg", [("decode.onnx", "lacks output present.0.conv_state.steps"),
                                        ("prefill.onnx", "lacks output present.0.conv_state.steps")])
def test_verify_graph_swapped_for_another_graph(pkg, tmp_path, other, msg):
    """Checksums recomputed: the file is another step graph, with other inputs and outputs."""
    swapped = rewrite_package(pkg, tmp_path / "swapped", files={"verify.onnx": pkg / other})
    s = Session(swapped, threads=1)
    assert msg in error_of(s.verify, np.zeros((1, 4), np.int64), s.new_state())


def test_verify_call_checks_its_arguments(session):
    assert "takes 4 tokens per run, not 3" in error_of(session.verify, np.zeros((1, 3), np.int64), session.new_state())
    assert "outside the vocabulary" in error_of(session.verify, np.full((1, 4), 999), session.new_state())
    assert "batch 2 but the state was made for batch 1" in error_of(session.verify, np.zeros((2, 4), np.int64),
                                                                   session.new_state())


def test_package_without_verify_graph(pkg, tmp_path):
    """--verify-tokens 0 (or an older package): verify() says so; speculation falls back to the prefill graph."""
    doc = read_package(pkg).raw
    bare = rewrite_package(pkg, tmp_path / "bare", drop_files=("verify.onnx",),
                           update={"graphs": {k: v for k, v in doc["graphs"].items() if k != "verify"}})
    s = Session(bare, threads=1)
    assert s.verify_tokens == 0
    assert "has no verify graph" in error_of(s.verify, np.zeros((1, 4), np.int64), s.new_state())


@pytest.mark.parametrize("backend, msg", [("adv-noposition", "returned nothing for present.0.recurrent_state.steps"),
                                          ("adv-f16position", "returned float16[1, 4, 3, 128] for present.0.conv_state.steps"),
                                          ("adv-nan", "NaN or Inf logits")])
def test_verify_graph_lying_at_run_time(pkg, backend, msg):
    s = Session(pkg, backend=backend, threads=1)
    assert msg in error_of(s.verify, np.zeros((1, 4), np.int64), s.new_state())
