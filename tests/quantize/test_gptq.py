import numpy as np
import pytest

from edgelin.errors import EdgelinError
from edgelin.quantize.gptq import collect_hessians, gptq_quantize
from edgelin.quantize.package import quantize_package
from edgelin.quantize.primitives import WeightQuant, dequantize_weight_np, quantize_weight_np
from edgelin.quantize.schemes import W4A16
from edgelin.runtime import Session, read_package


@pytest.mark.parametrize("group", [32, 128])
def test_gptq_beats_rtn_on_correlated_inputs(group):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2048, 16)) @ rng.standard_normal((16, 256))).astype(np.float32)
    w = rng.standard_normal((48, 256)).astype(np.float32)
    spec = WeightQuant(4, group)
    q, s, z = gptq_quantize(w, 2 * x.T.astype(np.float64) @ x / len(x), spec)
    assert q.dtype == np.uint8 and q.max() <= 15 and s.shape == (48, 256 // group)
    rtn = dequantize_weight_np(*quantize_weight_np(w, spec), spec)
    err_gptq = np.mean((x @ dequantize_weight_np(q, s, z, spec).T - x @ w.T) ** 2)
    err_rtn = np.mean((x @ rtn.T - x @ w.T) ** 2)
    assert err_gptq < 0.5 * err_rtn, (err_gptq, err_rtn)


def test_gptq_package_runs_and_needs_hessians(tmp_path, fp_package, table_of):
    fp = fp_package("gla-tiny")
    ids = np.arange(512).reshape(2, 256) % 256
    hessians = collect_hessians(fp, ids)
    assert "lm_head" in hessians and hessians["lm_head"].shape == (64, 64)
    q = quantize_package(fp, tmp_path / "q", W4A16(gptq=True), table_of("gla-tiny"), hessians=hessians)
    assert read_package(q).precision["gptq"] is True
    s = Session(q)
    logits, _ = s.forward(ids[:, :20], s.new_state(2))
    assert np.isfinite(logits).all()
    with pytest.raises(EdgelinError, match="GPTQ needs"):
        quantize_package(fp, tmp_path / "q2", W4A16(gptq=True), table_of("gla-tiny"))
