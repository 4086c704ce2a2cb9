"""A model to a complete package: step graphs + manifest, written atomically (see docs/FORMAT.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgelin import __version__
import numpy as np
import onnx
import torch

from edgelin.atomic import scratch_dir
from edgelin.errors import EdgelinError
from edgelin.exporters.fp16 import read_through_casts, to_fp16
from edgelin.exporters.genai import genai_files
from edgelin.exporters.onnx import trace_step_graph
from edgelin.exporters.sites import declared_norms, declared_weights, parameter_inputs, record_sites
from edgelin.exporters.weights import WeightStore
from edgelin.models.lm import LM
from edgelin.runtime.package import write_package
from edgelin.runtime.weights import WEIGHTS_FILE
from edgelin.sites import GraphSites
from edgelin.trace import StepGraph, hidden_name, state_entries

DEFAULT_PREFILL_TOKENS = 64
DEFAULT_VERIFY_TOKENS = 4
FP16_PARITY = 1e-2  # float16 weights move random-init logits by ~1e-3 of their range (docs/BENCHMARKS.md)


def step_graphs(prefill_tokens: int, verify_tokens: int) -> dict[str, int]:
    """The graphs a package gets and their token counts: decode, prefill and (verify_tokens > 1) verify."""
    return {"decode": 1, "prefill": prefill_tokens, **({"verify": verify_tokens} if verify_tokens > 1 else {})}


def base_manifest(model: LM, *, prefill_tokens: int, source_layout: str, tokenizer: dict[str, Any],
                  verify_tokens: int = 0) -> dict[str, Any]:
    return {
        "producer": f"edgelin {__version__}",
        "architecture": model.config.to_dict(),
        "source_layout": source_layout,
        "vocab_size": model.config.vocab_size,
        "tokenizer": tokenizer,
        "graphs": {name: {"file": f"{name}.onnx", "tokens": tokens}
                   for name, tokens in step_graphs(prefill_tokens, verify_tokens).items()},
        "states": [e.to_manifest() for e in state_entries(model)],
        "precision": {"scheme": "fp32"},
        **max_context(model),
    }


def max_context(model: LM) -> dict[str, int]:
    """{"max_context": N} when full-attention layers are exported as a KV cache capped at N tokens (docs/FORMAT.md)."""
    caps = [b.mixer.max_context for b in model.blocks if getattr(b.mixer, "max_context", None)]
    return {"max_context": min(caps)} if caps else {}


def export_package(
    model: LM,
    out_dir: str | Path,
    *,
    prefill_tokens: int = DEFAULT_PREFILL_TOKENS,
    verify_tokens: int = DEFAULT_VERIFY_TOKENS,
    force: bool = False,
    source_layout: str = "edgelin",
    tokenizer_json: Path | None = None,
    special_tokens: dict[str, Any] | None = None,
    generation: dict[str, Any] | None = None,
    fp16: bool = False,
    release: bool = False,
) -> Path:
    """Export the FP32 decode, prefill and verify graphs of `model` into a package at `out_dir`.

    The package also gets the ONNX Runtime GenAI layout (genai_config.json, genai.onnx, tokenizer
    files; `exporters/genai.py`) when its states fit onnxruntime-genai (no attention layers).

    Args:
        model: the LM to export (put in eval mode).
        out_dir: package directory; must not exist unless `force`.
        prefill_tokens: the fixed chunk length of the prefill graph.
        verify_tokens: the token count K of the verify graph (K decode steps in one run, a state after
            each: speculative decoding's verify pass; docs/FORMAT.md); 0 exports none.
        force: replace an existing package.
        source_layout: where the weights came from (edgelin, hf-mamba2, fla-gla, ...), for `inspect`.
        tokenizer_json: a Hugging Face tokenizer.json to ship; the byte tokenizer otherwise.
        special_tokens: the manifest's `tokenizer` fields beside type and file (bos_id, eos_id, eos_ids,
            pad_id, add_bos, special_tokens, chat_template; docs/FORMAT.md), e.g. `LoadedModel.special_tokens`.
        generation: the manifest's `generation` defaults (temperature, top_k, top_p, max_new_tokens, ...).
        fp16: store the weight matrices as float16, read through a Cast to float32 (`exporters/fp16.py`).
        release: free the model's weights once the graphs are traced (the model is unusable afterwards),
            so that the parity check's ONNX Runtime copy is the only one: `edgelin export` of a large
            checkpoint.
    Returns:
        The package directory.
    """
    tokenizer = {"type": "tokenizers", "file": "tokenizer.json"} if tokenizer_json else {"type": "bytes"}
    tokenizer.update(special_tokens or {})
    if verify_tokens < 0 or verify_tokens == 1:
        raise EdgelinError(f"verify_tokens must be 0 (no verify graph) or at least 2, not {verify_tokens}")
    with scratch_dir("trace") as tmp:
        store = WeightStore(tmp)
        graphs = step_graphs(prefill_tokens, verify_tokens)
        files: dict[str, Path | bytes] = {WEIGHTS_FILE: store.path}
        manifest = base_manifest(model, prefill_tokens=prefill_tokens, source_layout=source_layout, tokenizer=tokenizer,
                                 verify_tokens=verify_tokens)
        for name, tokens in graphs.items():
            proto, sites = export_with_sites(model, name, tokens, store, tmp, fp16=fp16)
            files[f"{name}.onnx"] = tmp / f"{name}.onnx"
            onnx.save(proto, str(files[f"{name}.onnx"]))
            manifest["graphs"][name]["sites"] = sites.to_dict()
        manifest["weights"] = store.index({name: tmp / f"{name}.onnx" for name in graphs})
        references = {name: parity_reference(model, name, tokens) for name, tokens in graphs.items()}
        if release:  # the model's weights and ONNX Runtime's are then never in memory together
            for p in model.parameters():
                p.data = torch.empty(0)
        for name, (feeds, want) in references.items():
            check_parity(tmp / f"{name}.onnx", name, feeds, want, tolerance=FP16_PARITY if fp16 else 1e-3)
        if tokenizer_json:
            files["tokenizer.json"] = Path(tokenizer_json)
        if fp16:  # the weights are read through Casts now, not by the products the sites name
            manifest["graphs"] = {name: {**g, "sites": {**g["sites"], "weights": {}}} for name, g in manifest["graphs"].items()}
            manifest["precision"] = {"scheme": "fp16", "weights": "float16", "compute": "float32"}
        if generation:
            manifest["generation"] = dict(generation)
        genai_files(manifest, files, tmp)
        return write_package(out_dir, files, manifest, force=force)


def export_with_sites(model: LM, graph: str, tokens: int, store: WeightStore, work: Path, *,
                      fp16: bool = False) -> tuple[onnx.ModelProto, GraphSites]:
    """Trace one step graph, its weights going to `store`; return it with its sites record."""
    weights, norms = declared_weights(model), declared_norms(model)
    proto, found = trace_step_graph(model, tokens, work, block_outputs=True, verify=graph == "verify", store=store,
                                    graph=graph, convert=to_fp16 if fp16 else None)
    hidden = {hidden_name(i) for i in range(len(model.blocks))}
    kept = [o for o in proto.graph.output if o.name not in hidden]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    blocks = {f"blocks.{i}": hidden_name(i) for i in range(len(model.blocks))}
    sites = record_sites(proto, graph, weights, norms, parameter_inputs(model), found, blocks)
    if fp16:
        read_through_casts(proto)
    return proto, sites


def parity_reference(model: LM, graph: str, tokens: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Inputs for the parity check of `graph` (random ids and states) and the logits the model gives."""
    step = StepGraph(model.eval(), tokens, verify=graph == "verify")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=gen)
    states = [torch.randn(1, *e.shape, generator=gen) * 0.1 if e.policy == "int" else torch.ones(1, *e.shape)
              for e in step.entries]
    with torch.no_grad():
        want = step(ids, *states)[0].numpy()
    return dict(zip(step.input_names, [ids.numpy(), *(s.numpy() for s in states)])), want


def check_parity(path: Path, graph: str, feeds: dict[str, np.ndarray], want: np.ndarray, tolerance: float = 1e-3) -> None:
    """The exported graph at `path` must compute what the model computed (`parity_reference`): a tracing
    or folding error would otherwise go unnoticed. ONNX Runtime reads the weights file beside it,
    unoptimized and without prepacked copies, so the check costs one pass and one copy of the weights."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.add_session_config_entry("session.disable_prepacking", "1")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], feeds)[0]
    del sess
    finite = np.isfinite(want)  # a model with non-finite weights is refused later, by calibration
    if not np.array_equal(finite, np.isfinite(got)):
        err = float("inf")
    else:
        err = float(np.max(np.abs(got - want), where=finite, initial=0) / (np.max(np.abs(want), where=finite, initial=0) + 1e-6))
    if not err < tolerance:
        raise EdgelinError(f"the traced {graph} graph differs from the model (relative error {err:.2e})")
