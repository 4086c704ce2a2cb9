"""Quantized (QDQ) packages on OpenVINO and TVM: close to ONNX Runtime's result on the same graphs."""
import warnings

import numpy as np
import pytest

from edgelin.errors import EdgelinError
from edgelin.runtime import Session, generate

INT8_TOL = 0.02  # max |logits - ORT INT8| relative to max |logits|: OpenVINO runs true int8 kernels


@pytest.fixture(scope="module")
def int8_package(fp_packages, tmp_path_factory, request):
    """The two 8-bit weight schemes: W8A8 (--int8) and weight-only W8 (--w8), both with INT16 states;
    TVM is compiled for W8A8 only (its importer reads the same QDQ pairs either way)."""
    from edgelin.calibration import calibrate_package, default_text
    from edgelin.exporters.openvino import export_openvino
    from edgelin.exporters.tvm import export_tvm
    from edgelin.quantize.package import quantize_package
    from edgelin.quantize.schemes import SCHEMES

    fp = fp_packages["gla-tiny"]
    table = calibrate_package(fp, default_text()[:20000], streams=2, tokens=256)
    out = quantize_package(fp, tmp_path_factory.mktemp("q") / request.param, SCHEMES[request.param](), table)
    export_openvino(out)
    if request.param == "w8a8":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_tvm(out)
    return out


# One parameter only: pytest caches a module fixture per parameter index, so pairing the package with
# a back end in one parametrize would build each package once per pair (about 100 s each).
@pytest.mark.parametrize("int8_package", ["w8a8", "w8"], indirect=True)
def test_int8_close_to_ort_int8(int8_package):
    ort = Session(int8_package, threads=1)
    ids = np.random.default_rng(0).integers(0, 256, (1, 48))
    ref, ref_state = ort.forward(ids, ort.new_state())
    backends = ["openvino", "openvino-stateful"] + (["tvm"] if int8_package.name == "w8a8" else [])
    for backend in backends:
        other = Session(int8_package, backend=backend, threads=1, trust_native_code=True)
        out, state = other.forward(ids, other.new_state())
        rel = float(np.abs(ref - out).max() / np.abs(ref).max())
        assert rel <= INT8_TOL, f"{backend}: max |INT8 logits - ORT INT8| / max |logits| = {rel:.3e}"
        for s in ort.manifest.states:  # int16 states keep their dtype through every back end
            assert state[s.input].dtype == ref_state[s.input].dtype == s.np_dtype, backend
        assert list(generate(ort, [72, 105], 16)) == list(generate(other, [72, 105], 16)), backend


@pytest.mark.parametrize("int8_package", ["w8a8", "w8"], indirect=True)
def test_int8_stateful_ir_reads_and_writes_states_without_converts(int8_package):
    """INT16 states live in f32 variables; dequantization reads them and FakeQuantize writes them directly."""
    import openvino as ov

    from edgelin.runtime import read_package

    entry = read_package(int8_package).raw["backends"]["openvino"]["stateful"]
    model = ov.Core().read_model(str(int8_package / entry["decode"]), str(int8_package / entry["weights"]))
    reads = [t.get_node().get_type_name() for op in model.get_ops() if op.get_type_name() == "ReadValue"
             for t in op.output(0).get_target_inputs()]
    writes = [op.input_value(0).get_node().get_type_name() for op in model.get_sinks()]
    assert reads and "Convert" not in reads
    assert writes and set(writes) <= {"FakeQuantize", "Slice", "Concat", "Add"}, set(writes)


def test_tvm_names_what_it_cannot_import(fp_packages, tmp_path):
    """MatMulNBits (ORT's 4-bit kernel, a com.microsoft op) has no TVM importer: the error says so."""
    from edgelin.calibration import calibrate_package, default_text
    from edgelin.exporters.tvm import export_tvm
    from edgelin.quantize.package import quantize_package
    from edgelin.quantize.schemes import W4A16

    fp = fp_packages["gla-tiny"]
    table = calibrate_package(fp, default_text()[:5000], streams=1, tokens=256)
    out = quantize_package(fp, tmp_path / "int4", W4A16(), table)
    with pytest.raises(EdgelinError, match="MatMulNBits"):
        export_tvm(out)
