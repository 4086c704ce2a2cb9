"""Decode and prefill graphs share one weights file on disk, and one copy in memory on ORT and TVM."""
import json
import math
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgelin.errors import EdgelinError
from edgelin.runtime import Session, read_package, write_package
from edgelin.runtime.weights import shared_initializers


def big_initializers(path) -> dict[str, int]:
    """name -> bytes of every initializer of at least 1 KiB, as the graph sees it (external data read)."""
    proto = onnx.load(str(path))
    sizes = {t.name: len(onnx.numpy_helper.to_array(t).tobytes()) for t in proto.graph.initializer}
    return {n: b for n, b in sizes.items() if b >= 1024}


def rewrite(pkg, edit):
    """Rewrite a package's manifest through `edit(doc)`, files unchanged, checksums recomputed."""
    m = read_package(pkg)
    doc = {k: v for k, v in m.raw.items() if k not in ("files", "format_version")}
    edit(doc)
    write_package(pkg, {n: pkg / n for n in m.files}, doc, force=True)


@pytest.mark.parametrize("name", ["gla-tiny", "hybrid-tiny"])
def test_weights_stored_once(fp_packages, name):
    pkg = fp_packages[name]
    decode, prefill = big_initializers(pkg / "decode.onnx"), big_initializers(pkg / "prefill.onnx")
    weights = (pkg / "weights.bin").stat().st_size
    # every graph (decode, prefill, verify) holds the model's weights; the file holds them once (plus 64-byte alignment)
    assert weights < sum(decode.values()) + 64 * len(decode) + sum(prefill.values()) / 4
    assert weights >= max(sum(decode.values()), sum(prefill.values()))
    assert (pkg / "decode.onnx").stat().st_size < weights / 4
    index = read_package(pkg).raw["weights"]
    assert index["file"] == "weights.bin" and set(index["graphs"]) == {"decode", "prefill", "verify"}


def test_one_array_per_tensor_for_both_graphs(fp_packages):
    pkg = fp_packages["gla-tiny"]
    shared = shared_initializers(pkg, read_package(pkg))
    both = [t["names"] for t in read_package(pkg).raw["weights"]["tensors"] if {"decode", "prefill"} <= set(t["names"])]
    assert both, "decode and prefill share no tensor"
    for names in both:
        assert shared["decode"][names["decode"]] is shared["prefill"][names["prefill"]]
        if "verify" in names:
            assert shared["verify"][names["verify"]] is shared["decode"][names["decode"]]
    assert not shared["decode"][both[0]["decode"]].flags.writeable


def test_shared_session_equals_plain_ort(fp_packages):
    pkg = fp_packages["gla-tiny"]
    session = Session(pkg, threads=1)
    assert session.graphs["decode"]._initializers and session.graphs["prefill"]._initializers
    ids = np.array([list(b"Wherefore art thou Romeo, he said.")], np.int64)  # 2 prefill chunks + 2 decode steps
    got, _ = session.forward(ids, session.new_state())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    plain = {n: ort.InferenceSession(str(pkg / f"{n}.onnx"), opts, providers=["CPUExecutionProvider"])
             for n in ("decode", "prefill")}
    state, want = session.new_state(), []
    for lo, hi, graph in ((0, 16, "prefill"), (16, 32, "prefill"), (32, 33, "decode"), (33, 34, "decode")):
        out = dict(zip([o.name for o in plain[graph].get_outputs()],
                       plain[graph].run(None, {"input_ids": ids[:, lo:hi], **state})))
        want.append(out["logits"])
        state = {k: out[k.replace("past_key_values", "present")] for k in state}
    np.testing.assert_array_equal(got, np.concatenate(want, axis=1))


def test_stale_index_is_ignored(fp_packages, fresh_copy):
    pkg = fresh_copy(fp_packages["gla-tiny"])
    ids = np.array([list(b"Wherefore art thou Romeo")], np.int64)
    want, _ = Session(pkg, threads=1).forward(ids, Session(pkg).new_state())
    rewrite(pkg, lambda doc: doc["weights"]["graphs"].update(decode="0" * 64))
    session = Session(pkg, threads=1)
    assert not session.graphs["decode"]._initializers and session.graphs["prefill"]._initializers
    got, _ = session.forward(ids, session.new_state())
    np.testing.assert_array_equal(got, want)


def test_index_past_the_file_is_one_error(fp_packages, fresh_copy):
    pkg = fresh_copy(fp_packages["gla-tiny"])
    rewrite(pkg, lambda doc: doc["weights"]["tensors"][0].update(offset=1 << 30))
    with pytest.raises(EdgelinError, match="weights index of manifest.json does not match"):
        Session(pkg)


def test_unlisted_weights_file_is_refused(fp_packages, fresh_copy):
    pkg = fresh_copy(fp_packages["gla-tiny"])
    doc = json.loads((pkg / "manifest.json").read_text())
    doc["weights"]["file"] = "elsewhere.bin"
    (pkg / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(EdgelinError, match="weights file of 'weights' is not listed"):
        read_package(pkg)


@pytest.mark.parametrize("variant", ["stateless", "stateful"])
def test_openvino_ir_share_one_bin(fp_packages, variant):
    pkg = fp_packages["gla-tiny"]
    entry = read_package(pkg).raw["backends"]["openvino"][variant]
    assert entry["weights"] in entry["files"]
    assert not [f for f in entry["files"] if f.endswith(".bin") and f != entry["weights"]]
    onnx_weights = (pkg / "weights.bin").stat().st_size
    assert (pkg / entry["weights"]).stat().st_size < 1.1 * onnx_weights


@pytest.mark.parametrize("name", ["gla-tiny", "hybrid-tiny"])
def test_tvm_library_holds_the_weights_once(fp_packages, name):
    pkg = fp_packages[name]
    entry = read_package(pkg).raw["backends"]["tvm"]["x86_64"]
    assert entry["decode"]["file"] == entry["prefill"]["file"] and len(entry["files"]) == 1
    assert (entry["decode"]["function"], entry["prefill"]["function"]) == ("decode", "prefill")
    # the library's constant pool: every weight tensor of both graphs, stored once
    import tvm
    from tvm import relax

    stats = relax.VMExecutable(tvm.runtime.load_module(str(pkg / entry["files"][0]))).stats()
    pool = stats.split("Constant pool")[1].splitlines()[0]
    tensors = [[int(d) for d in dims.split(", ")] for dims in re.findall(r"(?<![a-z])\[(\d+(?:, \d+)*)\]", pool)]
    float_bytes = 4 * sum(math.prod(t) for t in tensors)  # FP32 package
    weights = (pkg / "weights.bin").stat().st_size
    assert 0.9 * weights < float_bytes < 1.2 * weights, (float_bytes, weights)
    session = Session(pkg, backend="tvm", threads=1, trust_native_code=True)
    assert session.graphs["decode"]._vm is session.graphs["prefill"]._vm  # one library loaded, its weights once
