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


def _ring_model():
    """A stateful ring: each step scatters x [1, 2, 1, 4] into slot `slot` of an [1, 2, 6, 4] variable
    and returns the variable as it was before the step."""
    from openvino import opset13 as ops

    x = ops.parameter([1, 2, 1, 4], ov.Type.f32, name="x")
    slot = ops.parameter([1, 2, 1, 4], ov.Type.i64, name="slot")
    info = ov.op.util.VariableInfo()
    info.data_shape, info.data_type, info.variable_id = ov.PartialShape([1, 2, 6, 4]), ov.Type.f32, "ring"
    variable = ov.op.util.Variable(info)
    ring = ops.read_value(ops.constant(np.zeros((1, 2, 6, 4), np.float32)), variable)
    written = ops.scatter_elements_update(ring, slot, x, ops.constant(2))
    return ov.Model([ops.result(ops.multiply(ring, ops.constant(np.float32(1.0))))], [ops.assign(written, variable)], [x, slot])


def test_ring_write_reads_its_variable_through_a_copy():
    """The scatter on a variable gets Maximum(x, x) in front (so OpenVINO writes the variable's next
    buffer instead of copying it in Assign), and every step returns what it did without it."""
    from edgelin.exporters.openvino import _scatter_into_next_state

    rng = np.random.default_rng(2)
    steps = [(rng.standard_normal((1, 2, 1, 4)).astype(np.float32), np.full((1, 2, 1, 4), s % 6, np.int64))
             for s in range(9)]

    def outputs(model) -> list[np.ndarray]:
        request = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
        return [request.infer({"x": x, "slot": slot})[0].copy() for x, slot in steps]

    plain, rewritten = _ring_model(), _ring_model()
    _scatter_into_next_state(rewritten)
    assert op_types(rewritten).count("Maximum") == 1 and op_types(plain).count("Maximum") == 0
    want, got = outputs(plain), outputs(rewritten)
    assert np.abs(want[-1]).sum() > 0, "the ring stayed empty: nothing is compared"
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)
