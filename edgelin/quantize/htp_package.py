"""`edgelin export --profile qnn-htp` as package steps: calibration feeds with the states carried,
the quantized package, and the pipeline FP package -> static -> full QDQ -> validated (see `htp.py`)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from edgelin.calibration.collect import calibrate_package
from edgelin.calibration.streams import MIN_STREAM_TOKENS, make_streams
from edgelin.errors import EdgelinError
from edgelin.quantize.htp import Feeds, HtpScheme, quantize_graph_htp, state_overrides


def calibration_feeds(fp_dir: Path, text: str, streams: int, tokens: int, decode_every: int = 4
                      ) -> dict[str, list[Feeds]]:
    """graph -> batch-1 feeds (input_ids + states) met while streaming `text` through the FP package.

    The schedule is `calibrate_package`'s: chunks of the prefill length, every `decode_every`-th
    one token by token through the decode graph, states carried from chunk to chunk.
    """
    import onnxruntime as ort

    from edgelin.runtime.package import read_package
    from edgelin.runtime.tokenizer import load_tokenizer

    m = read_package(fp_dir)
    ids = make_streams(load_tokenizer(fp_dir, m).encode(text), streams, tokens)
    sess = {name: ort.InferenceSession(str(fp_dir / g.file), providers=["CPUExecutionProvider"])
            for name, g in m.graphs.items()}
    outs = {name: [o.name for o in s.get_outputs()] for name, s in sess.items()}
    feeds: dict[str, list[Feeds]] = {name: [] for name in m.graphs}

    def step(graph: str, chunk: np.ndarray, state: Feeds) -> Feeds:
        feed = {"input_ids": chunk, **state}
        feeds[graph].extend({k: v[b:b + 1] for k, v in feed.items()} for b in range(chunk.shape[0]))
        res = dict(zip(outs[graph], sess[graph].run(None, feed)))
        return {s.input: res[s.output] for s in m.states}

    C = m.graphs["prefill"].tokens if "prefill" in m.graphs else 1
    n, T = ids.shape
    state = {s.input: np.zeros(s.shape_for(n), s.np_dtype) for s in m.states}
    for i, a in enumerate(range(0, T, C)):
        b = min(a + C, T)
        if "prefill" not in m.graphs or b - a < C or i % decode_every == 0:
            for t in range(a, b):
                state = step("decode", ids[:, t:t + 1], state)
        else:
            state = step("prefill", ids[:, a:b], state)
    return feeds


def _thin(items: list[Feeds], most: int) -> list[Feeds]:
    """At most `most` items, evenly spaced, so every depth of the state is represented."""
    if len(items) <= most:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, most).round().astype(int)]


def quantize_htp_package(fp_dir: str | Path, static_dir: str | Path, out_dir: str | Path, scheme: HtpScheme,
                         text: str, *, streams: int = 4, tokens: int = MIN_STREAM_TOKENS, force: bool = False,
                         progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Quantize a package for HTP.

    Args:
        fp_dir: the FP32 package (symbolic batch), streamed for calibration.
        static_dir: the same package made static for qnn-htp (`apply_profile`): the graphs quantized.
        out_dir: the quantized package (written atomically; must not exist unless `force`).
        scheme: `HtpScheme(...)`.
        text: calibration text.
    Returns:
        `out_dir`.
    """
    from edgelin.exporters.weights import save_graphs
    from edgelin.runtime.package import read_package, write_package
    from edgelin.runtime.weights import WEIGHTS_FILE

    fp_dir, static_dir = Path(fp_dir), Path(static_dir)
    step = progress or (lambda *a: None)
    table = calibrate_package(fp_dir, text, streams=streams, tokens=tokens, progress=lambda d, t: step("calibrate", d, t))
    feeds = calibration_feeds(fp_dir, text, streams, tokens)
    m = read_package(static_dir)
    overrides = state_overrides(m.raw["states"], table, scheme.state_headroom)
    with tempfile.TemporaryDirectory(prefix="edgelin-htp-") as tmp:
        files: dict[str, Path | bytes] = {n: static_dir / n for n in m.files if not n.endswith(".onnx") and n != WEIGHTS_FILE}
        protos = {}
        for i, (name, g) in enumerate(m.graphs.items()):
            step("quantize (qdq)", i, len(m.graphs))
            protos[name] = quantize_graph_htp(onnx.load(str(static_dir / g.file)), _thin(feeds[name], scheme.max_feeds),
                                              overrides, scheme, table, name)
        paths, weights = save_graphs(protos, {name: g.file for name, g in m.graphs.items()}, Path(tmp))
        files.update(paths)
        step("quantize (qdq)", len(m.graphs), len(m.graphs))
        files["calibration.json"] = table.to_json().encode()
        # states stay float32 at the boundary (no "quant" entry); their uint16 grids are recorded here
        grids = {s["input"]: {"scale": float(overrides[s["input"]][0]["scale"]),
                              "zero_point": int(overrides[s["input"]][0]["zero_point"]), "dtype": "uint16"}
                 for s in m.raw["states"]}
        doc = {k: v for k, v in m.raw.items() if k not in ("files", "format_version", "backends")}
        doc.update(precision={**scheme.to_dict(), "state_grids": grids}, weights=weights,
                   calibration={"file": "calibration.json", **table.summary()})
        return write_package(out_dir, files, doc, force=force)


def run_htp_pipeline(fp_dir: str | Path, out_dir: str | Path, scheme: HtpScheme, text: str, *,
                     streams: int = 4, tokens: int = MIN_STREAM_TOKENS, horizon: int = 8192, validate: bool = True,
                     force: bool = False, on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """FP package -> static (qnn-htp profile) -> full QDQ -> validated package at `out_dir`.

    Calibration uses the head of `text` (what its streams need), validation the rest, against the
    FP package. The HTP graphs take batch 1, so validation runs one stream of up to `horizon` tokens.
    Returns:
        The validation dict (`compare_packages`), or {} when `validate` is False.
    """
    import shutil

    from edgelin.exporters.profiles import apply_profile
    from edgelin.quantize.pipeline import split_text
    from edgelin.runtime.package import read_package, write_package
    from edgelin.validate.metrics import compare_packages
    from edgelin.validate.report import report_files

    fp_dir, out = Path(fp_dir), Path(out_dir)
    step = on_progress or (lambda *a: None)
    if not text or not text.strip():
        raise EdgelinError("the calibration text is empty")
    calib, rest = split_text(fp_dir, text, streams, tokens)
    with tempfile.TemporaryDirectory(prefix="edgelin-htp-", dir=out.parent if out.parent.exists() else None) as tmp:
        static = Path(tmp) / "static"
        shutil.copytree(fp_dir, static)
        apply_profile(static, "qnn-htp")
        staged = quantize_htp_package(fp_dir, static, Path(tmp) / "quantized", scheme, calib, streams=streams,
                                      tokens=tokens, progress=step)
        result: dict[str, Any] = {}
        files: dict[str, Path | bytes] = {}
        if validate:
            result = compare_packages(fp_dir, staged, rest, horizon=horizon, streams=1,
                                      progress=lambda d, t: step("validate", d, t))
            result.update(candidate=str(out), calibration_text_reused=rest is calib)
            files = {f"report/{k}": v for k, v in report_files(result).items()}
        m = read_package(staged)
        files.update({name: staged / name for name in m.files})
        write_package(out, files, {k: v for k, v in m.raw.items() if k not in ("files", "format_version")}, force=force)
    return result
