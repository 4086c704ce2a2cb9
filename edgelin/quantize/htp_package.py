"""`edgelin export --profile qnn-htp` as package steps: calibration feeds with the states carried,
and the quantized package (see `htp.py`). The pipeline around them is `edgelin.quantize.pipeline`'s."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from edgelin.atomic import scratch_dir
from edgelin.calibration.collect import calibrate_package
from edgelin.calibration.streams import MIN_STREAM_TOKENS, make_streams
from edgelin.calibration.table import CalibrationTable
from edgelin.errors import EdgelinError
from edgelin.quantize.htp import Feeds, HtpScheme, quantize_graph_htp, state_overrides
from edgelin.sites import graph_sites, without_float_weights
from edgelin.quantize.schemes import SCHEME_FLAGS


def calibration_feeds(fp_dir: Path, text: str, streams: int, tokens: int, decode_every: int = 4
                      ) -> dict[str, list[Feeds]]:
    """graph -> batch-1 feeds (input_ids + states) met while streaming `text` through the FP package,
    on the probe runner's schedule (`Probe.mixed_stream`, as calibration streams it)."""
    from edgelin.calibration.probe import Probe
    from edgelin.runtime.tokenizer import load_tokenizer

    probe = Probe(fp_dir)
    ids = make_streams(load_tokenizer(fp_dir, probe.manifest).encode(text), streams, tokens)
    feeds: dict[str, list[Feeds]] = {name: [] for name in probe.session.graphs}

    def keep(graph: str, feed: dict[str, np.ndarray], _out: dict) -> None:
        feeds[graph].extend({k: v[b:b + 1] for k, v in feed.items()} for b in range(feed["input_ids"].shape[0]))

    probe.mixed_stream(ids, keep, decode_every)
    return feeds


def _thin(items: list[Feeds], most: int) -> list[Feeds]:
    """At most `most` items, evenly spaced, so every depth of the state is represented."""
    if len(items) <= most:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, most).round().astype(int)]


def htp_scheme_by_name(name: str) -> HtpScheme:
    """The HTP scheme a flag (int8, int16, int4, w4a8) or label (w8a8, w8a16, w4a16, w4a8, with or
    without "-htp") names; the bits name the linear layers, everything else is uint16."""
    found = re.fullmatch(r"w(\d+)a(\d+)", SCHEME_FLAGS.get(name, name).removesuffix("-htp"))
    if found is None:
        raise EdgelinError(f"unknown HTP scheme {name!r}; choose from int8, int16, int4, w4a8")
    return HtpScheme(weight_bits=int(found[1]), matmul_act_bits=int(found[2]))


def quantize_htp_package(fp_dir: str | Path, static_dir: str | Path, out_dir: str | Path, scheme: HtpScheme,
                         text: str, *, table: CalibrationTable | None = None, streams: int = 4,
                         tokens: int = MIN_STREAM_TOKENS, force: bool = False,
                         progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Quantize a package for HTP.

    Args:
        fp_dir: the FP32 package (symbolic batch), streamed for calibration.
        static_dir: the same package made static for qnn-htp (`apply_profile`): the graphs quantized.
        out_dir: the quantized package (written atomically; must not exist unless `force`).
        scheme: `HtpScheme(...)`.
        text: calibration text.
        table: the calibration table of `fp_dir` (default: calibrated here on `text`).
    Returns:
        `out_dir`.
    """
    from edgelin.exporters.weights import save_graphs
    from edgelin.runtime.package import STEP_GRAPHS, read_package, rewrite_package
    from edgelin.runtime.weights import WEIGHTS_FILE

    fp_dir, static_dir = Path(fp_dir), Path(static_dir)
    step = progress or (lambda *a: None)
    if table is None:
        table = calibrate_package(fp_dir, text, streams=streams, tokens=tokens,
                                  progress=lambda d, t: step("calibrate", d, t))
    feeds = calibration_feeds(fp_dir, text, streams, tokens)
    m = read_package(static_dir)
    overrides = state_overrides(m.raw["states"], table, scheme.state_headroom)
    # HTP runs decode and prefill; the verify graph (calibrated by no feed here) is left out of the package
    graph_files = {name: g.file for name, g in m.graphs.items() if name in STEP_GRAPHS}
    left_out = tuple(g.file for name, g in m.graphs.items() if name not in STEP_GRAPHS)
    with scratch_dir("htp") as tmp:
        protos = {}
        for i, (name, file) in enumerate(graph_files.items()):
            step("quantize (qdq)", i, len(graph_files))
            protos[name] = quantize_graph_htp(onnx.load(str(static_dir / file)), _thin(feeds[name], scheme.max_feeds),
                                              overrides, scheme, table, name, graph_sites(m.raw, name))
        paths, weights = save_graphs(protos, graph_files, tmp)
        step("quantize (qdq)", len(graph_files), len(graph_files))
        # states stay float32 at the boundary (no "quant" entry); their uint16 grids are recorded here
        grids = {s["input"]: {"scale": float(overrides[s["input"]][0]["scale"]),
                              "zero_point": int(overrides[s["input"]][0]["zero_point"]), "dtype": "uint16"}
                 for s in m.raw["states"]}
        return rewrite_package(static_dir, out_dir, files={**paths, "calibration.json": table.to_json().encode()},
                               update={"precision": {**scheme.to_dict(), "state_grids": grids}, "weights": weights,
                                       "calibration": {"file": "calibration.json", **table.summary()},
                                       "graphs": without_float_weights({k: v for k, v in m.raw["graphs"].items()
                                                                         if k in graph_files})},
                               drop_files=(WEIGHTS_FILE, *graph_files.values(), *left_out), drop_fields=("backends",),
                               force=force)
