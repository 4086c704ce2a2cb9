"""Token budgets: small models keep the default layouts, large ones are cut (streams first), explicit
counts win, and the pipeline's report says which rule chose what."""
import json

import pytest

import edgelin.quantize.pipeline as pipeline
from edgelin.calibration import default_text
from edgelin.quantize.budget import (CALIBRATION, DECODE_EVERY, SEGMENT, VALIDATION, decode_every, parameter_count,
                                     stream_layout)
from edgelin.quantize.schemes import W8A8

SIZES = [10 ** 6, 10 ** 7, 3 * 10 ** 7, 1.3 * 10 ** 8, 4 * 10 ** 8, 1.2 * 10 ** 9, 7 * 10 ** 9]


@pytest.mark.parametrize("params", [10 ** 6, 10 ** 7])
def test_shipped_sizes_keep_the_defaults(params):
    cal, val = stream_layout(CALIBRATION, params), stream_layout(VALIDATION, params)
    assert (cal.streams, cal.tokens, val.streams, val.tokens) == (4, 2048, 8, 8192)
    assert "default" in cal.rule and "default" in val.rule
    assert decode_every(params, 2048, 64) == DECODE_EVERY


@pytest.mark.parametrize("stage", [CALIBRATION, VALIDATION], ids=lambda s: s.name)
@pytest.mark.parametrize("params", SIZES, ids=lambda p: f"{p / 1e6:g}M")
def test_a_cut_layout_stays_within_the_budget_or_at_the_floor(stage, params):
    lay = stream_layout(stage, int(params))
    tokens = lay.streams * lay.tokens
    assert tokens * params <= stage.budget or (lay.streams == 1 and lay.tokens == stage.floor)
    assert lay.streams >= 1 and lay.tokens >= stage.floor
    if tokens < stage.streams * stage.tokens:
        assert "cut" in lay.rule and (lay.tokens == stage.tokens or lay.tokens % SEGMENT == 0)


def test_large_models_drop_streams_first_then_length():
    sizes = [int(p) for p in SIZES]
    layouts = [stream_layout(VALIDATION, p) for p in sizes]
    assert [lay.streams for lay in layouts] == sorted((lay.streams for lay in layouts), reverse=True)
    assert all(lay.tokens == 8192 for lay in layouts if lay.streams > 1)
    big = stream_layout(VALIDATION, 1_200_000_000)
    assert (big.streams, big.tokens) == (1, 2048)
    assert stream_layout(CALIBRATION, 1_200_000_000).streams == 1
    assert decode_every(1_200_000_000, 2048, 64) >= 2048 // 64  # only the first chunk, from the zero state
    decode_chunks = [-(-32 // decode_every(p, 2048, 64)) for p in sizes]  # of a 32-chunk stream
    assert decode_chunks[0] == 8 and decode_chunks[-1] == 1 and decode_chunks == sorted(decode_chunks, reverse=True)


def test_explicit_counts_win():
    lay = stream_layout(VALIDATION, 7 * 10 ** 9, 8, 8192)
    assert (lay.streams, lay.tokens) == (8, 8192) and "as given" in lay.rule
    lay = stream_layout(VALIDATION, 7 * 10 ** 9, tokens=8192)  # the horizon given: only streams are cut
    assert (lay.streams, lay.tokens) == (1, 8192)
    lay = stream_layout(VALIDATION, 7 * 10 ** 9, streams=2)  # the streams given: only the length is cut
    assert lay.streams == 2 and lay.tokens == VALIDATION.floor


def test_parameter_count_reads_the_weights_index(fp_package):
    from edgelin.models import LM, ZOO

    pkg = fp_package("gla-tiny")
    exact = sum(p.numel() for p in LM(ZOO["gla-tiny"]).parameters())
    # tensors under 1 KiB stay inside the graphs; a weight the graphs store in two forms counts twice
    assert 0.8 * exact <= parameter_count(pkg) <= 2 * exact


def test_the_report_states_the_budget_and_a_large_model_is_cut(tmp_path, fp_package, monkeypatch):
    pkg = fp_package("gla-tiny")
    small = pipeline.run_pipeline(pkg, tmp_path / "small", W8A8(), default_text(), streams=2, tokens=256,
                                  eval_streams=2, horizon=512)
    assert small["budget"]["validation"]["rule"].startswith("validation 2 x 512 tokens as given")
    monkeypatch.setattr(pipeline, "parameter_count", lambda _: 1_200_000_000)
    big = pipeline.run_pipeline(pkg, tmp_path / "big", W8A8(), default_text())
    assert (big["streams"], big["horizon"]) == (1, 2048)
    assert big["budget"]["calibration"]["streams"] == 1 and big["budget"]["calibration"]["decode_every"] > DECODE_EVERY
    md = (tmp_path / "big" / "report" / "report.md").read_text()
    assert "1,200,000,000 parameters" in md and "validation cut from 8 x 8192 to 1 x 2048 tokens" in md
    assert json.loads((tmp_path / "big" / "report" / "report.json").read_text())["budget"] == big["budget"]
