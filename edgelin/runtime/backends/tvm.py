"""TVM back end: the Relax shared libraries `edgelin compile PKG --backend tvm` adds to a package.

Loading a library runs native code from the package, so the back end refuses unless the user opts in
(`trust_native_code=True`, `--trust-native-code`; docs/FORMAT.md, "Trust model").

The library for this machine's architecture (`backends.tvm.<arch>` in the manifest) holds one
function per step graph (packages from before: one library per graph, function `main`). It is
loaded once into a Relax VirtualMachine on the CPU, shared by the graphs, so the weights are in
memory once. The graphs are compiled for batch 1.
"""
from __future__ import annotations

import functools
import platform
import re
import threading
from pathlib import Path

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.backends import first_line, register_backend
from edgelin.runtime.backends._variants import backend_variant, compiled_graphs
from edgelin.runtime.package import Manifest

DEFAULT_THREADS = 2


@functools.cache
def _tvm():
    try:
        import tvm
        from tvm import relax  # noqa: F401
    except ImportError:
        raise EdgelinError("the 'tvm' back end needs apache-tvm: pip install apache-tvm") from None
    return tvm


@functools.lru_cache(maxsize=4)
def _virtual_machine(path: Path, stamp: tuple[int, int]) -> tuple[object, threading.Lock]:
    """One VirtualMachine per library file (and version of it, `stamp`), with the lock that makes it
    run one call at a time: a package's decode and prefill share it, and its weights."""
    tvm = _tvm()
    from tvm import relax

    try:
        return relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu()), threading.Lock()
    except Exception as e:  # TVMError and friends
        raise EdgelinError(f"TVM cannot load {path}: {first_line(e)}") from None


@register_backend("tvm")
class TvmBackend:
    """One step graph as a function of a TVM Relax library (`function(*inputs) -> (*outputs)`).

    Args:
        graph_path: the .so file.
        threads: TVM thread-pool size (default 2; the pool is process-wide).
        inputs, outputs: the graph's input and output names in the function's order (from the manifest).
        function: the graph's function in the library (from the manifest; `main` in older packages).
    """

    batch = 1
    native_code = True

    @classmethod
    def graph_files(cls, manifest: Manifest) -> dict[str, dict]:
        arch = platform.machine()
        entry = backend_variant(manifest, "tvm", arch, hint=f"edgelin compile PKG --backend tvm --target {arch}")
        return {name: entry[name] for name in compiled_graphs(manifest)}

    def __init__(self, graph_path: Path, *, threads: int | None = None, inputs: list[str], outputs: list[str],
                 function: str = "main", trust_native_code: bool = False) -> None:
        if trust_native_code is not True:
            raise EdgelinError(f"{graph_path} is native code; load it only if you trust who made the package: "
                               "pass --trust-native-code (CLI) or trust_native_code=True (Python)")
        if not (isinstance(inputs, list) and isinstance(outputs, list) and isinstance(function, str)
                and all(isinstance(n, str) for n in inputs + outputs)):
            raise EdgelinError(f"the manifest's tvm entry for {graph_path} is malformed (inputs, outputs, function)")
        tvm = _tvm()
        tvm.get_global_func("runtime.config_threadpool")(1, DEFAULT_THREADS if threads is None else int(threads))
        path = Path(graph_path).resolve()
        stat = path.stat()
        self._vm, self._lock = _virtual_machine(path, (stat.st_mtime_ns, stat.st_size))
        try:
            self._main = self._vm[function]
            params = [self._vm._get_function_param_name(function, i)
                      for i in range(self._vm._get_function_arity(function))]
        except Exception:  # the library has no such function
            raise EdgelinError(f"TVM library {graph_path} has no function {function!r}") from None
        if params != [re.sub(r"\W", "_", n) for n in inputs]:  # Relax spells "a.0.b" as "a_0_b"
            raise EdgelinError(f"TVM library {graph_path}: {function} takes ({', '.join(params)}); "
                               f"manifest.json lists ({', '.join(inputs)})")
        self._device, self._where = tvm.cpu(), graph_path
        self.input_names, self.output_names = list(inputs), list(outputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph once (thread-safe); returns every output by name."""
        tvm = _tvm()
        args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[n]), self._device) for n in self.input_names]
        with self._lock:
            try:
                out = self._main(*args)
                return {name: t.numpy() for name, t in zip(self.output_names, out)}
            except Exception as e:  # TVMError and friends
                raise EdgelinError(f"TVM failed to run {self._where}: {first_line(e)}") from None
