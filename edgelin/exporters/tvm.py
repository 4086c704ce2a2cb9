"""A package's ONNX step graphs to TVM Relax shared libraries, for this CPU or cross-compiled for AArch64.

Each graph is made static (batch 1, shape arithmetic folded: TVM's ONNX importer turns the traced
`Shape -> Pow` chains into float64 scalars otherwise), imported with `relax.frontend.onnx`, given
a matrix-vector schedule of our own plus dlight's CPU rules (GEMV, reductions), and built with the
other graphs into one `.so`: one function per graph, each distinct weight stored once. AArch64
libraries are linked with Debian's `aarch64-linux-gnu-gcc` (package gcc-aarch64-linux-gnu).
"""
from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import onnx

from edgelin.atomic import scratch_dir
from edgelin.errors import EdgelinError
from edgelin.exporters.backend_files import attach_backend
from edgelin.exporters.static import make_static
from edgelin.runtime.backends._variants import compiled_graphs
from edgelin.runtime.package import read_package

CROSS_GCC = {"aarch64": "aarch64-linux-gnu-gcc"}
TRIPLES = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}


def _tvm():
    try:
        import tvm
        from tvm import relax  # noqa: F401
    except ImportError:
        raise EdgelinError("TVM export needs apache-tvm: pip install apache-tvm") from None
    return tvm


def target_for(arch: str) -> dict:
    """The TVM target (JSON form) for `arch`: the host's own CPU, or a generic AArch64 with NEON."""
    if arch not in TRIPLES:
        raise EdgelinError(f"unknown TVM target {arch!r}; choose from {', '.join(TRIPLES)}")
    if arch == platform.machine():
        return {"kind": "llvm", "mcpu": _tvm().target.codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1}
    return {"kind": "llvm", "mtriple": TRIPLES[arch], "mattr": ["+neon"]}


def import_graph(proto: onnx.ModelProto):
    """A static ONNX step graph as a Relax IRModule (weights as constants)."""
    tvm = _tvm()
    from tvm.relax.frontend.onnx import from_onnx

    try:
        return from_onnx(proto, keep_params_in_input=False)
    except Exception as e:  # TVM raises TVMError / TypeError / ValueError with long texts
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        raise EdgelinError(f"TVM cannot import the graph: {lines[-1] if lines else type(e).__name__}") from None
    finally:
        del tvm


def _skip_boolean_kernels(mod):
    """Mark kernels that use bool tensors as scheduled: dlight's CPU rules vectorize them into
    `and <16 x i1>, <16 x i8>`, which LLVM rejects (TVM 0.27); they keep TVM's default schedule."""
    from tvm import tirx

    for gv, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc) and '"bool"' in func.script():
            mod[gv] = func.with_attr("tirx.is_scheduled", True)
    return mod


MATMUL_BLOCKS = ("matmul", "T_matmul_NN", "T_matmul")


def _schedule_matvec(mod, chunks: int = 8, lanes: int = 16, max_rows: int = 64):
    """Schedule `y[m, n] = sum_k x[m, k] W[k, n]` for a few rows m (decode: 1; prefill: a chunk) on the CPU.

    TVM legalizes MatMul against an ONNX weight [K, N] with the reduction outermost on a strided
    column, which dlight's GEMV rule does not take (it wants W [N, K]), and FoldConstant undoes a
    transposed copy. So: N split into `chunks` parallel blocks, then k, then the rows, then N
    vectorized by `lanes` - every k reads a contiguous run of W once for all rows, and the
    accumulators ([rows, N / chunks]) stay in L1/L2.
    """
    from tvm import s_tir, tirx

    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or "tirx.is_scheduled" in func.attrs:
            continue
        sch, changed = s_tir.Schedule(func), False
        for name in MATMUL_BLOCKS:
            try:
                block = sch.get_sblock(name)
            except Exception:  # no such block in this kernel
                continue
            *spatial, k = sch.get_loops(block)
            extents = [sch.get(loop).extent for loop in spatial]
            if len(spatial) < 2 or not all(isinstance(e, tirx.IntImm) for e in extents):
                continue
            rows = 1
            for e in extents[:-1]:
                rows *= int(e)
            if rows > max_rows or int(extents[-1]) < 4 * lanes:
                continue  # only a few rows (decode: 1, prefill: a chunk) times a weight matrix
            m, n = sch.fuse(*spatial[:-1]), spatial[-1]
            if int(extents[-1]) % (chunks * lanes) == 0:
                outer, mid, inner = sch.split(n, [chunks, None, lanes])
                sch.reorder(outer, k, m, mid, inner)
            else:
                outer, inner = sch.split(n, [None, lanes])
                sch.reorder(outer, k, m, inner)
            sch.parallel(outer)
            sch.vectorize(inner)
            sch.decompose_reduction(block, k)
            changed = True
        if changed:
            mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return mod


def merge_graphs(mods: dict):
    """Relax modules, one per graph, as one module whose function `name` is graph `name`'s main.

    Helper kernels keep their module's name as a prefix; equal weights become equal constants, which
    relax.build stores once, so decode and prefill share them.
    """
    from tvm import relax

    @relax.expr_functor.mutator
    class Rename(relax.PyExprMutator):
        def __init__(self, mapping: dict):
            super().__init__()
            self.mapping = mapping

        def visit_global_var_(self, op):
            return self.mapping.get(op.name_hint, op)

    bb = relax.BlockBuilder()
    for name, mod in mods.items():
        helpers = {gv.name_hint: bb.add_func(f, f"{name}_{gv.name_hint}") for gv, f in mod.functions.items()
                   if gv.name_hint != "main"}
        bb.add_func(Rename(helpers).visit_expr(mod["main"]), name)
    merged = bb.get()
    return _tvm().IRModule({gv: f.with_attr("global_symbol", gv.name_hint) for gv, f in merged.functions.items()})


def build_library(protos: dict[str, onnx.ModelProto], arch: str, out: Path) -> None:
    """Compile static ONNX graphs for `arch` into one shared library `out`, a function per graph name."""
    tvm = _tvm()
    from tvm import relax
    from tvm.s_tir import dlight
    from tvm.support import cc

    mod = merge_graphs({name: import_graph(proto) for name, proto in protos.items()})
    target = tvm.target.Target(target_for(arch))
    # the passes of TVM's default CPU pipeline (this module: its package does not export all four)
    from tvm.relax.backend.cpu_generic import pipeline

    with target:  # TVM's default CPU pipeline, with dlight's CPU schedules after legalization
        mod = tvm.transform.Sequential(
            pipeline.library_dispatch_passes(target)
            + pipeline.legalize_passes(target)
            + [tvm.transform.module_pass(lambda m, _: _schedule_matvec(_skip_boolean_kernels(m)), opt_level=0), dlight.ApplyDefaultSchedule(dlight.cpu.GEMV(), dlight.cpu.Reduction())]
            + pipeline.dataflow_lower_passes(target)
            + pipeline.finalize_passes(target)
        )(mod)
    executable = relax.build(mod, target=target, relax_pipeline=None)
    if arch == platform.machine():
        executable.export_library(str(out))
        return
    gcc = CROSS_GCC[arch]
    if shutil.which(gcc) is None:
        raise EdgelinError(f"cross-compiling for {arch} needs {gcc}: apt-get install gcc-{TRIPLES[arch]}")
    executable.export_library(str(out), fcompile=cc.cross_compiler(gcc))


def export_tvm(package_dir: str | os.PathLike, *, target: str | None = None) -> Path:
    """Add TVM shared libraries of the package's step graphs under `tvm/<arch>/` and in the manifest.

    Args:
        package_dir: an existing package.
        target: "x86_64" or "aarch64"; default: this machine's architecture.
    Returns:
        The package directory.
    Example:
        >>> export_tvm("out/gla-10m", target="aarch64")  # doctest: +SKIP
    """
    tvm = _tvm()
    arch = target or platform.machine()
    root = Path(package_dir)
    manifest = read_package(root)
    entry = {"batch": 1, "target": target_for(arch), "tvm": tvm.__version__}
    with scratch_dir("tvm") as tmp:
        so = tmp / "steps.so"
        protos = {name: make_static(onnx.load(str(root / manifest.graphs[name].file)), batch=1)
                  for name in compiled_graphs(manifest)}  # the verify graph runs on ONNX Runtime only
        build_library(protos, arch, so)
        for name, proto in protos.items():
            # function `name` takes the graph inputs in order and returns the outputs in order
            entry[name] = {"file": f"tvm/{arch}/{so.name}", "function": name,
                           "inputs": [i.name for i in proto.graph.input], "outputs": [o.name for o in proto.graph.output]}
        attach_backend(root, "tvm", arch, entry, {f"tvm/{arch}/{so.name}": so})
    return root
