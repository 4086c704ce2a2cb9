"""A package's ONNX step graphs to OpenVINO IR (.xml + .bin): stateless, and stateful.

Stateless IR keeps the step-graph signature (states in and out, batch symbolic). The stateful IR
has batch fixed to 1 and every state turned into an OpenVINO variable (ReadValue / Assign, the
`MakeStateful` transformation OpenVINO applies to LLM KV caches): the graph takes `input_ids` and
returns `logits`, and the states stay inside the infer request. Variable ids are the manifest's
state input names. Any package works, FP32 or quantized (QDQ graphs become OpenVINO FakeQuantize).
`export_openvino` also writes the OpenVINO GenAI layout (`exporters/openvino_genai.py`).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from edgelin.atomic import scratch_dir
from edgelin.errors import EdgelinError
from edgelin.exporters.backend_files import attach_backend
from edgelin.runtime.backends._variants import compiled_graphs
from edgelin.runtime.package import Manifest, read_package

VARIANTS = ("stateless", "stateful")


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise EdgelinError("OpenVINO export needs openvino: pip install openvino") from None
    return openvino


def name_ports(model, manifest: Manifest) -> None:
    """Give every input/output exactly its step-graph name (the ONNX frontend adds tracer aliases)."""
    wanted = {"input_ids", "logits"} | {s.input for s in manifest.states} | {s.output for s in manifest.states}
    for port in list(model.inputs) + list(model.outputs):
        names = port.get_names() & wanted
        if len(names) != 1:
            raise EdgelinError(f"OpenVINO graph port {port.get_any_name()} does not map to one step-graph name")
        port.get_tensor().set_names(names)


def float_state_ports(model, manifest: Manifest) -> None:
    """Carry integer states (INT16 packages) as f32 across the graph boundary, in place.

    OpenVINO's CPU plugin keeps no i16 variables; int16 values are exact in f32, so the stateful
    IR stores them as f32 (the runtime casts back to the manifest dtype). Where the graph converts
    the integer input straight to f32 (DequantizeLinear), or the integer output comes straight from
    a FakeQuantize (QuantizeLinear: already rounded and clamped to the integer range), the f32 values
    are used as they are; elsewhere a Convert to or from the integer type stands at the edge.
    """
    ov = import_openvino()
    from openvino import opset13 as ops

    params = {p.output(0).get_any_name(): p for p in model.get_parameters()}
    results = {r.output(0).get_any_name(): r for r in model.get_results()}
    for s in manifest.states:
        if s.np_dtype.kind == "f":
            continue
        old = params[s.input]
        new = ops.parameter(old.get_partial_shape(), ov.Type.f32, name=old.get_friendly_name())
        for target in list(old.output(0).get_target_inputs()):
            user = target.get_node()
            if user.get_type_name() == "Convert" and user.get_output_element_type(0) == ov.Type.f32:
                user.output(0).replace(new.output(0))
            else:
                target.replace_source_output(ops.convert(new, old.get_element_type()).output(0))
        new.output(0).get_tensor().set_names({s.input})
        model.replace_parameter(model.get_parameter_index(old), new)
        source = results[s.output].input(0).get_source_output()
        names = source.get_names()
        node = source.get_node()
        if node.get_type_name() == "Convert" and node.input_value(0).get_node().get_type_name() == "FakeQuantize":
            value = node.input_value(0)
        else:
            value = ops.convert(source, ov.Type.f32).output(0)
        source.get_tensor().set_names(set())
        value.get_tensor().set_names(names)
        results[s.output].input(0).replace_source_output(value)
    model.validate_nodes_and_infer_types()


def _weight(matmul):
    """(weight constant [K, N], per-column scale constant [1, N] or None) of a MatMul, else None.

    Matches the two forms the ONNX frontend gives: a float constant, or an integer constant
    dequantized by Convert and Multiply (QDQ weights).
    """
    if matmul.get_attributes() != {"transpose_a": False, "transpose_b": False}:
        return None
    w = matmul.input_value(1).get_node()
    if w.get_type_name() == "Constant" and w.get_output_element_type(0).is_real():
        return w, None
    if w.get_type_name() != "Multiply":
        return None
    convert, scale = (w.input_value(i).get_node() for i in (0, 1))
    if convert.get_type_name() != "Convert" or scale.get_type_name() != "Constant":
        return None
    q = convert.input_value(0).get_node()
    if q.get_type_name() != "Constant" or list(scale.get_output_shape(0)) != [1, q.get_output_shape(0)[1]]:
        return None
    return q, scale


def _fuse_sibling_matmuls(model) -> None:
    """MatMuls that read one input with constant weights become one MatMul and a split, in place.

    The q/k/v/g projections (and an MLP's gate/up) read the same activation: one product with the
    weights side by side [K, N1 + N2 + ...] (and their per-column scales) gives the same numbers
    in one kernel call; at one token OpenVINO's int8 kernels cost more per call than per byte.
    """
    from openvino import opset13 as ops

    groups: dict = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul" or op.get_input_partial_shape(1).rank.get_length() != 2:
            continue
        found = _weight(op)
        if found is not None:
            q, scale = found
            kind = (q.get_output_element_type(0).get_type_name(), scale is None, q.get_output_shape(0)[0])
            groups.setdefault((op.input_value(0), kind), []).append((op, q, scale))
    for (source, _), group in groups.items():
        if len(group) < 2:
            continue
        weights = ops.constant(np.concatenate([q.get_data() for _, q, _ in group], axis=1))
        if group[0][2] is None:
            fused_w = weights
        else:
            scales = ops.constant(np.concatenate([s.get_data() for _, _, s in group], axis=1))
            fused_w = ops.multiply(ops.convert(weights, group[0][0].get_output_element_type(0)), scales)
        fused = ops.matmul(source, fused_w, False, False)
        widths = [q.get_output_shape(0)[1] for _, q, _ in group]
        split = ops.variadic_split(fused, ops.constant(-1, dtype=np.int64), ops.constant(widths, dtype=np.int64))
        for i, (op, _, _) in enumerate(group):
            op.output(0).replace(split.output(i))
    model.validate_nodes_and_infer_types()


def _merge_split_concats(model) -> None:
    """A Concat of consecutive outputs of one VariadicSplit, on the split axis, becomes one output, in place.

    After `_fuse_sibling_matmuls` the q/k/v projections come out of one split and go straight back
    together into the short convolution; at one token those copies cost more than the arithmetic.
    """
    from openvino import opset13 as ops

    def axis(node, value: int) -> int:
        return value % node.get_input_partial_shape(0).rank.get_length()

    runs, seen = [], set()
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Concat":
            continue
        sources = [op.input_value(i) for i in range(op.get_input_size())]
        split = sources[0].get_node()
        name = split.get_friendly_name()
        if split.get_type_name() != "VariadicSplit" or name in seen or len(sources) < 2:
            continue
        first = sources[0].get_index()
        consecutive = all(s.get_node().get_friendly_name() == name and s.get_index() == first + i for i, s in enumerate(sources))
        sole_use = all(len(s.get_target_inputs()) == 1 for s in sources)
        split_axis = split.input_value(1).get_node()
        if not (consecutive and sole_use and split_axis.get_type_name() == "Constant"):
            continue
        if axis(split, int(split_axis.get_data())) != axis(op, op.get_attributes()["axis"]):
            continue
        seen.add(name)
        runs.append((op, split, first, len(sources)))
    for concat, split, first, count in runs:
        widths = [int(w) for w in split.input_value(2).get_node().get_data()]
        merged = widths[:first] + [sum(widths[first:first + count])] + widths[first + count:]
        new = ops.variadic_split(split.input_value(0), split.input_value(1), ops.constant(merged, dtype=np.int64))
        for j in range(len(widths)):
            if j < first or j >= first + count:
                split.output(j).replace(new.output(j if j < first else j - count + 1))
        concat.output(0).replace(new.output(first))
    model.validate_nodes_and_infer_types()


def make_stateful(model, manifest: Manifest) -> None:
    """Turn each state input/output pair of `model` (static batch) into an OpenVINO variable, in place."""
    import_openvino()
    from openvino import passes

    params = {p.output(0).get_any_name(): p for p in model.get_parameters()}
    results = {r.output(0).get_any_name(): r for r in model.get_results()}
    pairs, ids = [], {}
    for s in manifest.states:
        p, r = params[s.input], results[s.output]
        pairs.append((p, r))
        ids[p.get_friendly_name() + r.get_friendly_name()] = s.input  # MakeStateful's variable id
    manager = passes.Manager()
    manager.register_pass(passes.MakeStateful(pairs))
    manager.run_passes(model)
    for var in model.get_variables():
        info = var.get_info()
        info.variable_id = ids[info.variable_id]
        var.update(info)


def _scatter_into_next_state(model) -> None:
    """A window ring's write (ScatterElementsUpdate) reads its variable through Maximum(x, x), in place.

    A scatter straight on a ReadValue updates the variable's buffer in place, and its Assign then
    copies the whole ring into the variable's next buffer on one thread (about 0.75 ms per 4 MiB
    here: a third of an LFM2-350M INT8 step). Through Maximum(x, x), which is exact and runs as one
    fused pass on every thread, the scatter writes the next buffer and the Assign has nothing to copy.
    """
    from openvino import opset13 as ops

    for op in model.get_ordered_ops():
        source = op.input_value(0) if op.get_type_name() == "ScatterElementsUpdate" else None
        if source is not None and source.get_node().get_type_name() == "ReadValue":
            op.input(0).replace_source_output(ops.maximum(source, source).output(0))
    model.validate_nodes_and_infer_types()


def convert_graph(onnx_path: Path, manifest: Manifest, *, stateful: bool):
    """One ONNX step graph as an `openvino.Model` (stateless: batch symbolic; stateful: batch 1)."""
    ov = import_openvino()
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:  # OpenVINO's frontend raises its own types
        raise EdgelinError(f"OpenVINO cannot convert {onnx_path.name}: {str(e).strip().splitlines()[0]}") from None
    if stateful:  # batch 1; OpenVINO folds the shape arithmetic that depended on it
        model.reshape({p: [1, *p.get_partial_shape()[1:]] for p in model.inputs})
    name_ports(model, manifest)
    _fuse_sibling_matmuls(model)
    _merge_split_concats(model)
    if stateful:
        float_state_ports(model, manifest)
        make_stateful(model, manifest)
        _scatter_into_next_state(model)
    return model


_CONST_DATA = re.compile(r'offset="(\d+)" size="(\d+)"')


def share_weights(xmls: list[Path], out_bin: Path, align: int = 64) -> None:
    """Point every IR in `xmls` at one weights file `out_bin`, each distinct constant stored once, in place.

    OpenVINO writes one .bin per .xml and the decode and prefill IR hold the same weights; each
    Const layer's `offset`/`size` into its own .bin is rewritten to its place in `out_bin`, and
    the per-IR .bin files are deleted. Load each IR with `read_model(xml, out_bin)`.
    """
    stored: dict[bytes, int] = {}
    with open(out_bin, "wb") as blob:
        for xml in xmls:
            data = xml.with_suffix(".bin").read_bytes()

            def move(m: re.Match, data: bytes = data) -> str:
                start, size = int(m.group(1)), int(m.group(2))
                chunk = data[start:start + size]
                key = hashlib.sha256(chunk).digest() + size.to_bytes(8, "little")
                if key not in stored:
                    blob.write(b"\0" * (-blob.tell() % align))
                    stored[key] = blob.tell()
                    blob.write(chunk)
                return f'offset="{stored[key]}" size="{size}"'

            xml.write_text(_CONST_DATA.sub(move, xml.read_text(encoding="utf-8")), encoding="utf-8")
            xml.with_suffix(".bin").unlink()


def export_openvino(package_dir: str | os.PathLike, *, variants: tuple[str, ...] = VARIANTS,
                    genai: bool = True) -> Path:
    """Add OpenVINO IR for the package's step graphs under `openvino/` and the manifest's `backends`.

    Args:
        package_dir: an existing package (FP32 or quantized).
        variants: "stateless" and/or "stateful".
        genai: also write the OpenVINO GenAI layout (`exporters/openvino_genai.py`), so that
            `openvino_genai.LLMPipeline(package_dir / "openvino", "CPU")` opens it.
    Returns:
        The package directory.
    Example:
        >>> export_openvino("out/gla-10m")  # doctest: +SKIP
        >>> Session("out/gla-10m", backend="openvino-stateful")  # doctest: +SKIP
    """
    ov = import_openvino()
    root = Path(package_dir)
    manifest = read_package(root)
    bad = sorted(set(variants) - set(VARIANTS))
    if bad or not variants:
        raise EdgelinError(f"unknown OpenVINO variant {bad[0] if bad else '(none)'}; choose from {', '.join(VARIANTS)}")
    with scratch_dir("openvino") as tmp:
        for variant in variants:
            stateful = variant == "stateful"
            suffix = ".stateful" if stateful else ""
            entry, files = {"batch": 1 if stateful else "batch", "openvino": ov.get_version()}, {}
            for name in compiled_graphs(manifest):  # the verify graph runs on ONNX Runtime only
                g = manifest.graphs[name]
                model = convert_graph(root / g.file, manifest, stateful=stateful)
                xml = tmp / f"{name}{suffix}.xml"
                ov.save_model(model, str(xml), compress_to_fp16=False)
                entry[name] = f"openvino/{xml.name}"
                files[f"openvino/{xml.name}"] = xml
            weights = tmp / f"weights{suffix}.bin"
            share_weights([files[entry[name]] for name in compiled_graphs(manifest)], weights)
            entry["weights"] = f"openvino/{weights.name}"
            files[entry["weights"]] = weights
            attach_backend(root, "openvino", variant, entry, files)
    if genai:
        from edgelin.exporters.openvino_genai import export_openvino_genai

        export_openvino_genai(root)
    return root
