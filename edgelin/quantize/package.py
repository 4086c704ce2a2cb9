"""`quantize_package`: the one verb that applies a scheme to an FP package and writes a quantized one."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from edgelin.atomic import scratch_dir
from edgelin.calibration.table import CalibrationTable
from edgelin.errors import EdgelinError
from edgelin.exporters.genai import genai_files
from edgelin.exporters.weights import WeightStore, save_graphs
from edgelin.quantize.qdq import borrowed_ranges, quantize_graph, state_qparams
from edgelin.quantize.schemes import QuantScheme
from edgelin.runtime.package import manifest_fields, read_package, write_package
from edgelin.sites import graph_sites, without_float_weights


def quantize_protos(fp_dir: str | Path, scheme: QuantScheme, table: CalibrationTable,
                    hessians: dict[str, np.ndarray] | None = None,
                    store: WeightStore | None = None) -> tuple[dict[str, onnx.ModelProto], dict, dict[str, dict]]:
    """Quantize every step graph of an FP package: in memory, or with the large tensors written to
    `store` (the new package's weights file) as they are made.

    Returns:
        (graph name -> quantized proto, the quantized manifest fields, state qparams).
    """
    root = Path(fp_dir)
    m = read_package(root)
    if m.precision.get("scheme", "fp32") != "fp32":
        raise EdgelinError(f"{root} is already quantized ({m.precision.get('scheme')}); quantize the FP package")
    entries = m.raw["states"]
    sq = state_qparams(entries, table, scheme)
    protos, precision, cache = {}, {}, {}
    # weights stay in the FP package's file until their layer is quantized
    fp = {name: onnx.load(str(root / g.file), load_external_data=False) for name, g in m.graphs.items()}
    for name, proto in fp.items():
        ranges = table
        if name == "verify":  # the decode graph's arithmetic, K positions at once: the decode graph's scales
            ranges = borrowed_ranges(table, name, proto, graph_sites(m.raw, name), "decode", fp["decode"],
                                     graph_sites(m.raw, "decode"))
        protos[name], prec = quantize_graph(proto, name, scheme, ranges, sq, entries, graph_sites(m.raw, name),
                                            hessians, cache, base=root, store=store)
        precision.update(prec)
    states = []
    for s in entries:
        s = dict(s)
        if s["input"] in sq:
            qp = sq[s["input"]]
            s["dtype"] = qp["dtype"]
            s["quant"] = {"scale": qp["scale"], "zero_point": qp["zero_point"], "bits": qp["bits"], "symmetric": True}
        states.append(s)
    fields = {"states": states, "precision": {**scheme.to_dict(), "layers": dict(sorted(precision.items()))},
              "calibration": {"file": "calibration.json", **table.summary()}}
    return protos, fields, sq


def quantize_package(fp_dir: str | Path, out_dir: str | Path, scheme: QuantScheme, table: CalibrationTable, *,
                     force: bool = False, extra_files: dict[str, Path | bytes] | None = None,
                     hessians: dict[str, np.ndarray] | None = None,
                     progress: Callable[[str], None] | None = None) -> Path:
    """Apply `scheme` to the FP package at `fp_dir` and write the quantized package to `out_dir`.

    Args:
        fp_dir: an FP32 package (from `export_package`).
        out_dir: the new package (written atomically; must not exist unless `force`).
        scheme: W8A8(), W8A16(), W4A16(), W4A8() (with options and per-layer overrides).
        table: the calibration table of `fp_dir` (`calibrate_package`); stored as calibration.json.
        extra_files: more package files (e.g. report/...).
        hessians: layer -> Hessian for GPTQ (`edgelin.quantize.gptq.collect_hessians`).
    Returns:
        `out_dir`.
    Example:
        >>> table = calibrate_package("out/gla", default_text())  # doctest: +SKIP
        >>> quantize_package("out/gla", "out/gla-int8", W8A8(), table)  # doctest: +SKIP
    """
    root = Path(fp_dir)
    m = read_package(root)
    with scratch_dir("quantize") as tmp:
        store = WeightStore(tmp)
        protos, fields, _ = quantize_protos(root, scheme, table, hessians, store)
        files, weights = save_graphs(protos, {name: m.graphs[name].file for name in protos}, tmp, store)
        if progress:
            for name in protos:
                progress(name)
        tok = m.tokenizer.get("file")
        if tok:
            files[tok] = root / tok
        files["calibration.json"] = table.to_json().encode()
        files.update(extra_files or {})
        # Compiled back-end files belong to the FP graphs: `edgelin compile` rebuilds them for these;
        # the ONNX Runtime GenAI layout is rebuilt here, over the quantized graphs.
        manifest = manifest_fields(m, drop=("backends",))
        manifest.update(fields, weights=weights)
        manifest["graphs"] = without_float_weights(manifest["graphs"])
        genai_files(manifest, files, tmp)
        return write_package(out_dir, files, manifest, force=force)


def manifest_json(path: str | Path) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())
