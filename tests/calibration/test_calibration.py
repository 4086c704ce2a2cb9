import json

import numpy as np
import pytest

from edgelin.calibration import CalibrationTable, calibrate_package, default_text, make_streams, read_text
from edgelin.calibration.observers import METHODS, TensorObserver
from edgelin.calibration.rotation import rotate_model
from edgelin.calibration.smoothing import smooth_package
from edgelin.errors import EdgelinError
from edgelin.exporters.package import export_package
from edgelin.models import LM, ZOO
from edgelin.runtime import Session

IDS = np.array([[(13 * i + 1) % 256 for i in range(48)]])


def test_ten_thousand_token_stream_keeps_every_range_finite(fp_package):
    table = calibrate_package(fp_package("hybrid-tiny"), default_text(), streams=1, tokens=10_000, decode_every=16)
    assert table.meta["tokens_per_stream"] == 10_000
    roles = set()
    for graph in ("decode", "prefill"):
        assert table.graphs[graph], graph
        for name, t in table.graphs[graph].items():
            roles.add(t["role"])
            for method in METHODS:
                lo, hi = t["ranges"][method]
                assert np.isfinite(lo) and np.isfinite(hi) and lo <= hi, (name, method)
    assert roles == {"matmul_input", "state_in", "state_out", "gate", "output"}
    # every state of the package was observed, as input and output
    for s in Session(fp_package("hybrid-tiny")).manifest.states:
        assert table.state_absmax(s.input, s.output) > 0


def test_observer_ranges_and_doubling_histogram():
    obs = TensorObserver("x")
    rng = np.random.default_rng(0)
    obs.update(rng.standard_normal(10_000).astype(np.float32))
    obs.update(np.array([50.0, -0.5], np.float32))  # forces the histogram to double several times
    obs._flush()
    assert obs.hist.sum() == obs.count == 10_002
    s = obs.summary()
    assert s["ranges"]["minmax"] == [s["min"], 50.0]
    for method in ("percentile", "mse", "entropy"):
        lo, hi = s["ranges"][method]
        assert s["min"] <= lo < 0 < hi < 50.0, method  # the lone outlier is clipped
    with pytest.raises(EdgelinError, match="NaN or Inf"):
        obs.update(np.array([np.inf], np.float32))


def test_table_json_roundtrip(table_of, tmp_path):
    table = table_of("gla-tiny")
    (tmp_path / "t.json").write_text(table.to_json())
    again = CalibrationTable.load(tmp_path / "t.json")
    assert again.graphs == json.loads(table.to_json())["graphs"] and again.meta == table.meta
    with pytest.raises(EdgelinError, match="calibration table"):
        CalibrationTable.from_dict({"version": 99})
    with pytest.raises(EdgelinError, match="no range"):
        table.range("decode", "nope")


def test_empty_text_and_nan_model_are_errors(tmp_path, fp_package):
    with pytest.raises(EdgelinError, match="empty"):
        calibrate_package(fp_package("gla-tiny"), "   \n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(EdgelinError, match="holds no text"):
        read_text(empty)
    model = LM(ZOO["gla-tiny"]).init_weights()
    with __import__("torch").no_grad():
        model.blocks[0].mlp.up_proj.weight[0, 0] = float("inf")
    broken = export_package(model, tmp_path / "broken", prefill_tokens=16)
    with pytest.raises(EdgelinError, match="NaN or Inf"):
        calibrate_package(broken, default_text(), streams=1, tokens=64)


def test_streams_are_contiguous_and_shrink_to_the_text():
    ids = np.arange(1000)
    s = make_streams(ids, 4, 300)
    assert s.shape == (3, 300) and s[1, 0] == 300
    assert make_streams(ids[:50], 4, 300).shape == (1, 50)
    with pytest.raises(EdgelinError):
        make_streams(ids[:1], 1, 10)


def test_smoothing_keeps_the_function(tmp_path, fp_package, table_of):
    fp = fp_package("gla-tiny")
    out, n = smooth_package(fp, tmp_path / "smooth", table_of("gla-tiny"), alpha=0.5)
    # 2 blocks x (mixer norm, mlp norm) in each graph (decode, prefill, verify); not the final norm,
    # whose reader is the tied head: scaling it would scale the embedding table the Gather reads
    assert n == 12
    a, b = Session(fp), Session(out)
    ref, _ = a.forward(IDS, a.new_state())
    got, _ = b.forward(IDS, b.new_state())
    assert np.abs(ref - got).max() < 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("name", ["hybrid-tiny", "mamba2-tiny"])
def test_rotation_keeps_the_function(name):
    import torch

    model = LM(ZOO[name]).init_weights()
    with torch.no_grad():  # non-trivial norm weights, so folding them matters
        for mod in model.modules():
            if type(mod).__name__ == "RMSNorm":
                mod.weight.uniform_(0.5, 1.5)
    rot = rotate_model(model)
    ids = torch.tensor(IDS)
    assert torch.allclose(model(ids)[0], rot(ids)[0], atol=1e-4)
    assert not torch.equal(model.embed.weight, rot.embed.weight)


def test_rotation_of_imported_transformer_options():
    """Biases on every projection, a GELU MLP and learned positions (rotated with the embedding) keep the
    function; LayerNorm blocks (GPT-2) do not commute with a rotation and are refused in one line."""
    import torch

    from edgelin.models import LMConfig

    config = LMConfig(d_model=64, n_layers=2, n_heads=4, pattern=["swa"], mlp="gelu", mlp_bias=True, max_positions=40,
                      init_std=0.2, mixers={"swa": {"window": 32, "bias": True, "o_bias": True}})
    model = LM(config).init_weights()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape) * 0.2)
        ids = torch.tensor(IDS)
        assert torch.allclose(model(ids)[0], rotate_model(model)(ids)[0], atol=1e-4)
    with pytest.raises(EdgelinError, match="--rotate needs RMSNorm blocks"):
        rotate_model(LM(LMConfig(d_model=64, n_layers=1, n_heads=4, pattern=["swa"], norm="layer")))


@pytest.mark.parametrize("d", [64, 96, 384, 100])
def test_rotation_matrix_is_orthogonal(d):
    import torch

    from edgelin.calibration.rotation import rotation_matrix

    q = rotation_matrix(d)
    assert torch.allclose(q @ q.T, torch.eye(d, dtype=q.dtype), atol=1e-12)
    assert q.abs().max() < 0.9  # spread out, not a permutation
