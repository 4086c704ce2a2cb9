"""Graph rewrites applied to OpenVINO IR at compile time compute the same numbers as the graph they replace."""
import numpy as np
import pytest

ov = pytest.importorskip("openvino")


def taps_model(width: int, starts: list[int]):
    """x [2, 3, width] -> one output per start: x[..., start:start + 1] * (start + 1)."""
    from openvino import opset13 as ops

    x = ops.parameter([2, 3, width], ov.Type.f32, name="x")
    outs = []
    for start in starts:
        tap = ops.slice(x, np.array([start]), np.array([start + 1]), np.array([1]), np.array([2]))
        outs.append(ops.result(ops.multiply(tap, np.float32(start + 1))))
    return ov.Model(outs, [x])


def run(model, x):
    request = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    return [request.infer({"x": x})[o] for o in request.model_outputs]


def op_types(model) -> list[str]:
    return [op.get_type_name() for op in model.get_ops()]


def test_unit_slices_covering_an_axis_become_one_split():
    from edgelin.exporters.openvino import _split_unit_slices

    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    model = taps_model(4, [2, 0, 3, 1])
    want = run(model, x)
    _split_unit_slices(model)
    assert op_types(model).count("Split") == 1 and "Slice" not in op_types(model)
    for w, g in zip(want, run(model, x)):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("starts", [[0, 1, 2], [0, 1, 1, 2, 3]], ids=["gap", "repeat"])
def test_slices_not_covering_the_axis_stay(starts):
    from edgelin.exporters.openvino import _split_unit_slices

    model = taps_model(4, starts)
    _split_unit_slices(model)
    assert "Split" not in op_types(model) and op_types(model).count("Slice") == len(starts)


@pytest.mark.parametrize("quantized", [False, True], ids=["f32", "int8"])
def test_matmuls_reading_one_input_become_one(quantized):
    from openvino import opset13 as ops

    from edgelin.exporters.openvino import _fuse_sibling_matmuls

    rng = np.random.default_rng(0)
    x = ops.parameter([1, 1, 8], ov.Type.f32, name="x")
    outs = []
    for n in (8, 3, 5):
        if quantized:
            q = ops.constant(rng.integers(-127, 128, (8, n)).astype(np.int8))
            w = ops.multiply(ops.convert(q, ov.Type.f32), ops.constant(rng.random((1, n)).astype(np.float32)))
        else:
            w = ops.constant(rng.standard_normal((8, n)).astype(np.float32))
        outs.append(ops.result(ops.matmul(x, w, False, False)))
    model = ov.Model(outs, [x])
    feed = rng.standard_normal((1, 1, 8)).astype(np.float32)
    want = run(model, feed)
    _fuse_sibling_matmuls(model)
    assert op_types(model).count("MatMul") == 1 and "VariadicSplit" in op_types(model)
    for w, g in zip(want, run(model, feed)):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
