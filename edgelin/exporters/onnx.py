"""Step graphs to ONNX: a decode graph (1 token) and a prefill graph (a fixed chunk), loop-free.

Which torch exporter traces the graph is decided in one place, `trace_to_onnx` (chosen by `EXPORTER`,
overridable with the EDGELIN_ONNX_EXPORTER environment variable); everything after it (shape pinning,
the loop-free check) is shared. docs/DESIGN.md, "The ONNX exporter", records how the torch.export
path (dynamo=True) compares today.
"""
from __future__ import annotations

import inspect
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from edgelin.errors import EdgelinError
from edgelin.models.lm import LM
from edgelin.runtime.package import position_output, steps_output
from edgelin.exporters.fold import Found, fold_parameters
from edgelin.exporters.weights import WeightStore, check_weighted_model, initializers_as_inputs
from edgelin.trace import StepGraph

OPSET = 17
FORBIDDEN_OPS = {"Loop", "Scan", "If"}
EXPORTERS = ("torchscript", "dynamo")
# The default stays the TorchScript tracer: see docs/DESIGN.md, "The ONNX exporter".
EXPORTER = os.environ.get("EDGELIN_ONNX_EXPORTER", "torchscript")
BATCH = "batch"
DYNAMO_MIN_OPSET = 18  # the lowest opset torch.onnx (dynamo=True) has implementations for


def trace_to_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    input_names: list[str],
    output_names: list[str],
    opset: int = OPSET,
    exporter: str | None = None,
    params_as_inputs: bool = False,
) -> None:
    """Trace `module` on `example_inputs` and write an ONNX file to `path` (self-contained unless
    `params_as_inputs`).

    Axis 0 of every input and output is the symbolic dimension "batch"; every other dimension is
    fixed by the example. This is the only function that calls torch.onnx.export: switching the
    exporter is a change of `EXPORTER` (or of this function) and nothing else. Exporter warnings
    are left visible.

    With `params_as_inputs` the file holds no weights: every parameter is a further graph input named
    after it (`model.blocks.0.mixer.q_proj.weight`) and nothing computed from parameters is folded;
    `exporters/fold.py` folds it and stores the weights. A model's size then costs the tracer nothing.
    """
    exporter = exporter or EXPORTER
    if exporter not in EXPORTERS:
        raise EdgelinError(f"unknown ONNX exporter {exporter!r} (one of {', '.join(EXPORTERS)})")
    module.eval()  # both exporters trace inference; the legacy one would switch modes itself
    with torch.no_grad(), warnings.catch_warnings():
        # torch's own legacy exporter calls a torch helper it has deprecated; nothing here can act on
        # it. Every other warning (TracerWarning, the exporter's DeprecationWarning, ...) passes.
        warnings.filterwarnings("ignore", message="The feature will be removed. Please remove usage of this function")
        # Each step graph is specialized to its fixed token count on purpose, so Python branches on
        # traced shapes are expected; `exporters.package.check_parity` runs every traced graph
        # against the model. Any other tracer warning passes.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning,
                                message="Converting a tensor to a Python (boolean|float|integer|index)")
        if exporter == "torchscript":
            torch.onnx.export(
                module, example_inputs, str(path), dynamo=False, opset_version=opset,
                input_names=input_names, output_names=output_names,
                dynamic_axes={name: {0: BATCH} for name in input_names + output_names},
                do_constant_folding=not params_as_inputs, export_params=not params_as_inputs,
                keep_initializers_as_inputs=params_as_inputs or None,  # True: no merging of equal parameters
            )
        else:
            _export_dynamo(module, example_inputs, path, input_names, output_names, opset, params_as_inputs)


def _export_dynamo(module, example_inputs, path, input_names, output_names, opset, params_as_inputs: bool) -> None:
    """torch.export (dynamo=True). A batch of 1 would be specialized, so it traces a batch of 2."""
    if opset < DYNAMO_MIN_OPSET:
        # torch's own down-conversion fails on these graphs (no Split 18 -> 17 adapter in onnx) and
        # prints a traceback; ask for the lowest opset it implements and say so.
        warnings.warn(f"the dynamo ONNX exporter writes opset {DYNAMO_MIN_OPSET}, not the requested {opset}", stacklevel=3)
        opset = DYNAMO_MIN_OPSET
    batch = torch.export.Dim(BATCH)
    args = tuple(t.expand(2, *t.shape[1:]).contiguous() if t.shape[0] == 1 else t for t in example_inputs)
    program = torch.onnx.export(
        module, args, dynamo=True, opset_version=opset, input_names=input_names, output_names=output_names,
        dynamic_shapes=_batch_shapes(module, args, batch), optimize=not params_as_inputs, external_data=False,
        verbose=False,
    )
    if params_as_inputs:  # unoptimized, the parameters are initializers named after them: make them inputs
        proto = program.model_proto
        params = {name for name, _ in module.named_parameters(remove_duplicate=False)}
        initializers_as_inputs(proto.graph, lambda t: t.name in params)
        onnx.save(proto, str(path))
        return
    # onnxscript folds a constant over 8192 elements only when that uses no more memory; a tied
    # embedding / LM head (read by Gather and, transposed, by MatMul) would stay a Transpose run at
    # every step. Fold like the TorchScript exporter does: a transposed copy, no size limit.
    import onnxscript.optimizer

    onnxscript.optimizer.fold_constants(program.model, input_size_limit=2**62, output_size_limit=2**62)
    onnxscript.optimizer.remove_unused_nodes(program.model)
    proto = program.model_proto
    for node in proto.graph.node:  # keep the module scope; drop stack traces (local paths, bytes per node)
        kept = [(p.key, p.value) for p in node.metadata_props if p.key == "namespace"]
        del node.metadata_props[:]
        for key, value in kept:
            node.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _batch_shapes(module: torch.nn.Module, args: tuple, batch) -> dict:
    """torch.export's dynamic_shapes follow forward's signature: a *args parameter takes a tuple."""
    bound = inspect.signature(module.forward).bind(*args).arguments
    params = inspect.signature(module.forward).parameters
    return {name: tuple({0: batch} for _ in value) if params[name].kind is inspect.Parameter.VAR_POSITIONAL
            else {0: batch} for name, value in bound.items()}


def export_step_graph(model: LM, tokens: int, path: str | Path, *, opset: int = OPSET,
                      block_outputs: bool = False, verify: bool = False) -> onnx.ModelProto:
    """Trace the step graph for `tokens` tokens (batch symbolic) and write it to `path` as one ONNX
    file, weights inside. `block_outputs` adds each block's output as an extra graph output
    `hidden.<layer>` (see trace.py); `verify` traces the verify graph (`tokens` steps of the step
    form, a state after each position)."""
    proto, _ = trace_step_graph(model, tokens, Path(path).parent, opset=opset, block_outputs=block_outputs,
                                verify=verify)
    onnx.save(proto, str(path))
    return proto


def trace_step_graph(model: LM, tokens: int, work: Path, *, opset: int = OPSET, block_outputs: bool = False,
                     verify: bool = False, store: WeightStore | None = None, graph: str = "decode",
                     convert: Callable[[str, np.ndarray], np.ndarray] | None = None) -> tuple[onnx.ModelProto, Found]:
    """The step graph as an ONNX model in memory, and where each parameter landed (`fold_parameters`).

    The tracer writes a weightless graph into `work`; the parameters are folded in afterwards, with
    the large constants going to `store` (the package's weights file, `graph` naming this graph in
    its index) or, without one, into the graph.
    """
    step = StepGraph(model.eval(), tokens, block_outputs=block_outputs, verify=verify)
    traced = Path(work) / f"{graph}.traced.onnx"
    trace_to_onnx(step, step.example_inputs(), traced, input_names=step.input_names,
                  output_names=step.output_names, opset=opset, params_as_inputs=True)
    proto = onnx.load(str(traced))
    traced.unlink()
    params = {name: p.detach().numpy() for name, p in step.named_parameters(remove_duplicate=False)}
    found = fold_parameters(proto, {n: params[n] for n in (i.name for i in proto.graph.input) if n in params},
                            store, graph, convert=convert)
    if verify:
        stack_handoffs(proto, [(e.output, e.shape) for e in step.entries], tokens)
        per_position(proto, tokens)
    # The tracer names the logits' token axis after a node; pin it to the graph's fixed size.
    logits = next(o for o in proto.graph.output if o.name == "logits")
    for dim, value in zip(logits.type.tensor_type.shape.dim[1:], (tokens, model.config.vocab_size)):
        dim.Clear()
        dim.dim_value = value
    check_step_graph(proto)
    return proto, found


def stack_handoffs(proto: onnx.ModelProto, states: list[tuple[str, tuple[int, ...]]], tokens: int) -> None:
    """Give a traced verify graph its contract (docs/FORMAT.md): the state after each position t,
    `present.{i}.{kind}.{t}`, made by an Identity named `<tensor>_handoff`, and one output per state,
    `present.{i}.{kind}.steps` [batch, tokens, ...]: the positions' states stacked (Unsqueeze, Concat).

    `models.layers.base.handoff` traces as a Cast to the same type; the position's own read-out uses
    the Cast's input, the next position its output. With that split named, a quantizer rounds the
    state there, as the decode graph rounds the state it outputs; one stacked output per state (not
    one per position) keeps the run's outputs few.
    """
    by_output = {o: n for n in proto.graph.node for o in n.output}
    g = proto.graph
    per_position = {o.name for o in g.output}
    kept = [o for o in g.output if not any(o.name == position_output(base, t) for base, _ in states for t in range(tokens))]
    axes = f"{states[0][0]}_stack_axes" if states else ""
    if states:
        g.initializer.append(onnx.numpy_helper.from_array(np.array([1], np.int64), axes))
    for base, shape in states:
        names = [position_output(base, t) for t in range(tokens)]
        for name in names:
            node = by_output.get(name)
            if name not in per_position or node is None or node.op_type not in ("Cast", "Identity") or \
                    node.op_type == "Cast" and next(a.i for a in node.attribute if a.name == "to") != onnx.TensorProto.FLOAT:
                raise EdgelinError(f"the verify graph computes {name} without a hand-off node (a mixer's steps() "
                                   "must pass its state on through models.layers.base.handoff)")
            node.op_type, node.name = "Identity", f"{name}_handoff"
            del node.attribute[:]
            g.node.append(onnx.helper.make_node("Unsqueeze", [name, axes], [f"{name}_stacked"], name=f"{name}_stack"))
        out = steps_output(base)
        g.node.append(onnx.helper.make_node("Concat", [f"{n}_stacked" for n in names], [out], name=f"{out}_concat", axis=1))
        kept.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, [BATCH, tokens, *shape]))
    hidden = [o for o in kept if not o.name.endswith(".steps") and o.name != "logits"]
    del g.output[:]
    g.output.extend([o for o in kept if o.name == "logits"] + [o for o in kept if o.name.endswith(".steps")] + hidden)


# ONNX Runtime's CPU kernels for these round an element differently in a vector body and a scalar
# tail, so an element's result depends on its place in the tensor (measured, ORT 1.2x, x86_64)
POSITION_SENSITIVE_OPS = frozenset({"Softplus", "Log", "Elu", "Selu", "Celu", "Mish", "Sin", "Cos", "Acos", "Asin", "Atan"})


def per_position(proto: onnx.ModelProto, tokens: int) -> None:
    """In a verify graph, run each position-sensitive op (`POSITION_SENSITIVE_OPS`) on [batch, tokens,
    ...] once per position: Split along the token axis, the op on each [batch, 1, ...] piece (the
    decode graph's shape, so the decode graph's results), Concat. Semantics are unchanged."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input]}
    nodes = []
    for node in proto.graph.node:
        shape = shapes.get(node.input[0]) if node.input else None
        if node.op_type not in POSITION_SENSITIVE_OPS or len(node.input) != 1 or not shape or len(shape) < 2 \
                or shape[1] != tokens:
            nodes.append(node)
            continue
        pieces = [f"{node.output[0]}_position{t}" for t in range(tokens)]
        nodes.append(onnx.helper.make_node("Split", [node.input[0]], [f"{p}_in" for p in pieces], name=f"{node.name}_split",
                                           axis=1, num_outputs=tokens) if proto.opset_import[0].version >= 18 else
                     onnx.helper.make_node("Split", [node.input[0]], [f"{p}_in" for p in pieces], name=f"{node.name}_split",
                                           axis=1))
        for t, p in enumerate(pieces):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name, copy.input[0], copy.output[0] = f"{node.name}_position{t}", f"{p}_in", p
            nodes.append(copy)
        nodes.append(onnx.helper.make_node("Concat", pieces, [node.output[0]], name=f"{node.name}_concat", axis=1))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def op_histogram(proto: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in proto.graph.node)


def check_step_graph(proto: onnx.ModelProto) -> None:
    """`check_weighted_model` plus the step-graph contract: no control flow, so every back end can run it."""
    check_weighted_model(proto)
    bad = FORBIDDEN_OPS & set(op_histogram(proto))
    if bad:
        raise EdgelinError(f"exported graph contains {', '.join(sorted(bad))} nodes; step graphs must be loop-free")
