"""Graph rewrites applied to OpenVINO IR at compile time compute the same numbers as the graph they replace."""
import numpy as np
import pytest

ov = pytest.importorskip("openvino")


def run(model, x):
    request = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    return [request.infer({"x": x})[o] for o in request.model_outputs]


def op_types(model) -> list[str]:
    return [op.get_type_name() for op in model.get_ops()]


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


def test_concat_of_consecutive_split_outputs_becomes_one_output():
    from openvino import opset13 as ops

    from edgelin.exporters.openvino import _merge_split_concats

    rng = np.random.default_rng(1)
    x = ops.parameter([1, 2, 12], ov.Type.f32, name="x")
    split = ops.variadic_split(x, ops.constant(-1, dtype=np.int64), ops.constant([2, 3, 4, 3], dtype=np.int64))
    joined = ops.concat([split.output(1), split.output(2)], 2)  # consecutive, on the split axis: merged
    apart = ops.concat([split.output(0), split.output(3)], 2)  # not consecutive: kept
    model = ov.Model([ops.result(joined), ops.result(apart)], [x])
    feed = rng.standard_normal((1, 2, 12)).astype(np.float32)
    want = run(model, feed)
    _merge_split_concats(model)
    assert op_types(model).count("Concat") == 1
    for w, g in zip(want, run(model, feed)):
        np.testing.assert_array_equal(g, w)
