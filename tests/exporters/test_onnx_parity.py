"""ONNX Runtime runs the exported step graphs exactly like the torch model, in constant memory."""
import numpy as np
import onnx
import pytest

from edgelin.exporters.onnx import FORBIDDEN_OPS
from edgelin.exporters.package import export_package
from edgelin.models import ZOO
from edgelin.models.layers import MIXERS
from edgelin.runtime import Session
from registry_helpers import check_onnx_equals_torch, tiny_zoo_name, zoo_model

DECODE_STEPS = 256
# the tiny ones are reached through MIXERS; gla-130m (a gla-10m graph, 12x the weights) only in benchmarks
LARGER = [name for name in ZOO if not name.endswith("-tiny") and name != "gla-130m"]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """package(name) -> (model, package dir) of a zoo model, exported once (prefill chunk 16)."""
    made = {}

    def get(name: str):
        if name not in made:
            model = zoo_model(name, 0.1 if name.endswith("-tiny") else ZOO[name].init_std)
            made[name] = model, export_package(model, tmp_path_factory.mktemp("pkg") / name, prefill_tokens=16)
        return made[name]

    return get


@pytest.mark.parametrize("name", [*(tiny_zoo_name(m) for m in MIXERS), *LARGER])
def test_no_control_flow_and_checker_passes(package, name):
    _, out = package(name)
    for graph in ("decode.onnx", "prefill.onnx"):
        onnx.checker.check_model(str(out / graph))  # by path: reads the shared weights.bin
        proto = onnx.load(str(out / graph), load_external_data=False)
        assert not FORBIDDEN_OPS & {n.op_type for n in proto.graph.node}, graph


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("mixer", list(MIXERS))
def test_ort_decode_equals_torch(package, mixer, batch):
    check_onnx_equals_torch(*package(tiny_zoo_name(mixer)), batch, DECODE_STEPS)


@pytest.mark.parametrize("name", LARGER)
def test_ort_decode_equals_torch_larger_models(package, name):
    """The real shapes, batch 1 and 64 steps: batches and the long horizon are checked above, on every
    family's tiny model."""
    check_onnx_equals_torch(*package(name), 1, 64)


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_state_bytes_constant_over_10k_tokens(package, mixer):
    _, out = package(tiny_zoo_name(mixer))
    session = Session(out, threads=2)
    ids = np.random.default_rng(1).integers(0, 256, (1, 10_000))
    _, after_10 = session.forward(ids[:, :10], session.new_state(1))
    _, after_10k = session.forward(ids, session.new_state(1))
    assert {k: (v.shape, v.dtype, v.nbytes) for k, v in after_10.items()} == {
        k: (v.shape, v.dtype, v.nbytes) for k, v in after_10k.items()
    }
    assert all(np.isfinite(v).all() for v in after_10k.values())
