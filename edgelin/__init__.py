"""edgelin: linear-recurrent language models on edge CPUs and NPUs.

`edgelin.export(...)` (see `edgelin.api`) loads on first use: `import edgelin` and the runtime stay
free of torch.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("export", "ExportResult"):
        from edgelin import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgelin' has no attribute {name!r}")
