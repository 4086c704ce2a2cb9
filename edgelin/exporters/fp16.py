"""FP16 packages (`edgelin export --fp16`): weights stored as float16, computed in float32.

Every float32 weight matrix of a step graph (an initializer of two or more dimensions whose values
are all finite and inside float16's range) is stored as float16 under its own name and read through
one `Cast` to float32; states, logits, norms, decay constants and everything else stay float32, so
the graphs' inputs and outputs are those of the FP32 package and the weights file is about half.

Why not float16 arithmetic: ONNX Runtime's CPU kernels compute in float32 (most operators have no
float16 kernel on CPU), so a float16 graph would run Casts around every operator or not load at all.
With a Cast of a constant, ONNX Runtime folds the Cast once when it creates the session and runs
the FP32 kernels at FP32 speed (the weights then take FP32 memory in ONNX Runtime); OpenVINO keeps
the float16 constants compressed and expands them inside its kernels. The GenAI layouts' prompt graph
holds these same step graphs, Casts included, so onnxruntime-genai and OpenVINO GenAI run them as
they are. The only difference from FP32 is each weight rounded to float16 (11 significant bits).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

FP16_MAX = float(np.finfo(np.float16).max)
SUFFIX = ".float32"  # the Cast's output: the float32 value every reader of the weight now reads


def to_fp16(name: str, values: np.ndarray) -> np.ndarray:
    """What an FP16 package stores for constant `name`: a float32 weight matrix (two or more
    dimensions, finite, inside float16's range) as float16; anything else as it is. The
    `convert` of `exporters/fold.fold_parameters`."""
    if values.dtype != np.float32 or values.ndim < 2 or not np.isfinite(values).all() \
            or np.abs(values).max(initial=0) > FP16_MAX:
        return values
    return values.astype(np.float16)


def read_through_casts(proto: onnx.ModelProto) -> list[str]:
    """Make every reader of a float16 initializer of `proto` read it through one Cast to float32, in place.

    Returns:
        The names of the float16 initializers.
    """
    g = proto.graph
    converted = [t.name for t in g.initializer if t.data_type == TensorProto.FLOAT16]
    renamed = {name: name + SUFFIX for name in converted}
    for node in g.node:
        node.input[:] = [renamed.get(x, x) for x in node.input]
    casts = [helper.make_node("Cast", [name], [renamed[name]], name=f"fp16/{name}", to=TensorProto.FLOAT)
             for name in converted]
    nodes = [*casts, *g.node]
    del g.node[:]
    g.node.extend(nodes)
    return converted
