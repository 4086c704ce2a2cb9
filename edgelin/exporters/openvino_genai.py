"""The OpenVINO GenAI layout of a package: `openvino_genai.LLMPipeline("PKG/openvino", "CPU")` opens it as it is.

`openvino/` gets what LLMPipeline reads: `openvino_model.xml` / `.bin`, `openvino_tokenizer.xml` /
`openvino_detokenizer.xml` (+ `.bin`) and `generation_config.json`. The model is the package's
prompt graph (`exporters/genai.prompt_graph`: the prefill and decode step graphs in Loops, a prompt
of any length in one run, the last token's logits out) made stateful the way LLMPipeline expects:

- inputs `input_ids` [batch, tokens], `attention_mask` [batch, tokens so far] (read by nobody:
  the states need no mask) and `beam_idx` [batch];
- every state is an OpenVINO variable (id: the state's input name) that starts as zeros of the
  batch `input_ids` has, and is read through `Gather(state, beam_idx)`, so beam search reorders it;
- integer states (INT16 packages) are held as f32 variables, as in the stateful variant.

Byte packages get a byte tokenizer built from OpenVINO's string ops (token = UTF-8 byte); packages
with a tokenizer.json get it converted by openvino-tokenizers (which needs transformers).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgelin.atomic import scratch_dir
from edgelin.errors import EdgelinError
from edgelin.exporters.backend_files import attach_backend
from edgelin.exporters.genai import TOKENIZER, eos_ids, hf_tokenizer_config, prompt_graph, sampling_defaults, special_ids
from edgelin.exporters.openvino import float_state_ports, import_openvino, name_ports
from edgelin.runtime.package import STEP_GRAPHS, Manifest, read_package

VARIANT = "genai"
MODEL, TOKENIZER_IR, DETOKENIZER_IR = "openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml"
GENERATION_CONFIG = "generation_config.json"


def stateful_for_genai(model, manifest: Manifest) -> None:
    """Turn the prompt graph's state inputs/outputs into variables read through `beam_idx`, in place,
    and add the `attention_mask` and `beam_idx` inputs LLMPipeline feeds."""
    ov = import_openvino()
    from openvino import opset13 as ops
    from openvino.op.util import Variable, VariableInfo

    params = {p.output(0).get_any_name(): p for p in model.get_parameters()}
    results = {r.output(0).get_any_name(): r for r in model.get_results()}
    inputs = {}
    for name, shape, dtype in (("attention_mask", [-1, -1], ov.Type.i64), ("beam_idx", [-1], ov.Type.i32)):
        inputs[name] = ops.parameter(ov.PartialShape(shape), dtype, name=name)
        inputs[name].output(0).get_tensor().set_names({name})
    axis0 = ops.constant(np.int64(0))
    batch = ops.gather(ops.shape_of(params["input_ids"]), ops.constant(np.array([0], np.int64)), axis0)
    for s in manifest.states:
        param, result = params[s.input], results[s.output]
        info = VariableInfo()
        info.variable_id, info.data_type = s.input, param.get_element_type()
        info.data_shape = ov.PartialShape([-1, *s.shape[1:]])
        variable = Variable(info)
        zeros = ops.broadcast(ops.constant(np.zeros((), param.get_element_type().to_dtype())),
                              ops.concat([batch, ops.constant(np.array(s.shape[1:], np.int64))], 0))
        read = ops.read_value(zeros, variable)
        param.output(0).replace(ops.gather(read, inputs["beam_idx"], axis0).output(0))
        assign = ov.op.assign(read, variable)  # the Python binding takes a node; point it at the output
        assign.input(0).replace_source_output(result.input_value(0))
        model.add_sinks([assign])
        model.remove_result(result)
        model.remove_parameter(param)
    model.add_parameters(list(inputs.values()))
    model.validate_nodes_and_infer_types()


def genai_model(root: Path, manifest: Manifest, work: Path):
    """The package's prompt graph as a stateful `openvino.Model` for LLMPipeline.

    `work` is a scratch directory that must outlive the model (the weights are mapped from it).
    """
    ov = import_openvino()
    graphs = {name: onnx.load(str(root / g.file), load_external_data=False) for name, g in manifest.graphs.items()
              if name in STEP_GRAPHS}
    prefill = manifest.graphs.get("prefill")
    onnx.save(prompt_graph(graphs, manifest.raw["states"], manifest.vocab_size, prefill and prefill.tokens),
              str(work / "genai.onnx"))
    weights = (manifest.raw.get("weights") or {}).get("file")
    if weights:
        shutil.copyfile(root / weights, work / weights)
    try:
        model = ov.convert_model(str(work / "genai.onnx"))
    except Exception as e:  # OpenVINO's frontend raises its own types
        raise EdgelinError(f"OpenVINO cannot convert the prompt graph of {root}: {str(e).strip().splitlines()[0]}") from None
    name_ports(model, manifest)
    float_state_ports(model, manifest)
    stateful_for_genai(model, manifest)
    return model


def byte_tokenizer_models():
    """(tokenizer, detokenizer) `openvino.Model`s of the byte tokenizer, from OpenVINO's core string ops.

    The tokenizer takes a string tensor [batch] and returns `input_ids` and `attention_mask`
    [batch, longest] (UTF-8 bytes, right-padded with 0); the detokenizer takes ids [batch, tokens]
    and returns `string_output` [batch], each row's bytes as one string.
    """
    ov = import_openvino()
    from openvino import opset15 as ops

    def i32(v):
        return ops.constant(np.array(v, np.int32))

    text = ops.parameter(ov.PartialShape([-1]), ov.Type.string, name="string_input")
    begins, ends, chars = ops.string_tensor_unpack(text).outputs()
    lengths = ops.subtract(ends, begins)
    longest = ops.reduce_max(ops.concat([lengths, i32([0])], 0), i32(0), keep_dims=False)
    positions = ops.unsqueeze(ops.range(i32(0), longest, i32(1), ov.Type.i32), i32(0))
    valid = ops.less(positions, ops.unsqueeze(lengths, i32(1)))
    where = ops.add(ops.unsqueeze(begins, i32(1)), positions)
    padded = ops.concat([chars, ops.constant(np.zeros(1, np.uint8))], 0)  # one 0 past the end: the padding
    past_end = ops.gather(ops.shape_of(chars, ov.Type.i32), i32(0), i32(0))
    ids = ops.convert(ops.gather(padded, ops.select(valid, where, past_end), i32(0)), ov.Type.i64)
    mask = ops.convert(valid, ov.Type.i64)
    ids.output(0).get_tensor().set_names({"input_ids"})
    mask.output(0).get_tensor().set_names({"attention_mask"})
    tokenizer = ov.Model([ids, mask], [text], "tokenizer")

    tokens = ops.parameter(ov.PartialShape([-1, -1]), ov.Type.i64, name="token_ids")
    shape = ops.shape_of(tokens, ov.Type.i32)
    rows, cols = (ops.gather(shape, i32(i), i32(0)) for i in (0, 1))
    starts = ops.range(i32(0), ops.multiply(rows, cols), cols, ov.Type.i32)
    data = ops.convert(ops.reshape(tokens, i32([-1]), False), ov.Type.u8)
    strings = ops.string_tensor_pack(starts, ops.add(starts, cols), data)
    strings.output(0).get_tensor().set_names({"string_output"})
    return tokenizer, ov.Model([strings], [tokens], "detokenizer")


def hf_tokenizer_models(tokenizer_json: Path, config: dict[str, Any]):
    """(tokenizer, detokenizer) of a Hugging Face tokenizer.json, converted by openvino-tokenizers."""
    try:
        from transformers import PreTrainedTokenizerFast
        from openvino_tokenizers import convert_tokenizer
    except ImportError:
        raise EdgelinError("the OpenVINO GenAI tokenizer needs openvino-tokenizers and transformers: "
                           "pip install 'openvino-tokenizers[transformers]'") from None
    specials = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if config.get(k)}
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: OpenVINO GenAI applies one, the default
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    if isinstance(template, str):
        specials["chat_template"] = template
    try:  # the chat template goes into the tokenizer's rt_info, where LLMPipeline and Tokenizer read it
        return convert_tokenizer(PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), **specials),
                                 with_detokenizer=True)
    except Exception as e:  # openvino-tokenizers raises its own types
        raise EdgelinError(f"openvino-tokenizers cannot convert {tokenizer_json.name}: "
                           f"{str(e).strip().splitlines()[0]}") from None


def _set_special_ids(models, ids: dict[str, int]) -> None:
    for model in models:
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            model.set_rt_info(ids[key], key)


def generation_config(manifest: dict[str, Any]) -> dict[str, Any]:
    """generation_config.json (transformers' format, which OpenVINO GenAI reads): the special ids, every
    end token, the package's sampling defaults and lengths; greedy without defaults."""
    gen = manifest.get("generation") or {}
    ends = eos_ids(manifest)
    lengths = {k: gen[k] for k in ("max_new_tokens", "max_length") if k in gen}
    return {**special_ids(manifest), "eos_token_id": ends[0] if len(ends) == 1 else ends,
            **sampling_defaults(manifest), **lengths}


def export_openvino_genai(package_dir: str | os.PathLike) -> Path:
    """Write the OpenVINO GenAI layout into the package's `openvino/` and record it as `backends.openvino.genai`.

    Args:
        package_dir: an existing package (FP32 or quantized), rewritten atomically.
    Returns:
        The package directory; `openvino_genai.LLMPipeline(package_dir / "openvino", "CPU")` opens it.
    Example:
        >>> export_openvino_genai("out/gla-10m")  # doctest: +SKIP
        >>> openvino_genai.LLMPipeline("out/gla-10m/openvino", "CPU").generate("ROMEO:", max_new_tokens=40)  # doctest: +SKIP
    """
    ov = import_openvino()
    root = Path(package_dir)
    manifest = read_package(root)
    ids = special_ids(manifest.raw)
    with scratch_dir("openvino-genai") as tmp:
        model = genai_model(root, manifest, tmp)
        out = tmp / "genai"
        out.mkdir()
        ov.save_model(model, str(out / MODEL), compress_to_fp16=False)
        if manifest.tokenizer.get("type", "bytes") == "bytes":
            models = byte_tokenizer_models()
        else:
            tokenizer_json = root / manifest.tokenizer.get("file", TOKENIZER)
            models = hf_tokenizer_models(tokenizer_json, hf_tokenizer_config(tokenizer_json, manifest.tokenizer))
        _set_special_ids(models, ids)
        for model, name in zip(models, (TOKENIZER_IR, DETOKENIZER_IR)):
            ov.save_model(model, str(out / name))
        (out / GENERATION_CONFIG).write_text(json.dumps(generation_config(manifest.raw), indent=2) + "\n", encoding="utf-8")
        files = {f"openvino/{p.name}": p for p in sorted(out.iterdir())}
        entry = {"model": f"openvino/{MODEL}", "tokenizer": f"openvino/{TOKENIZER_IR}",
                 "detokenizer": f"openvino/{DETOKENIZER_IR}", "generation_config": f"openvino/{GENERATION_CONFIG}",
                 "batch": "batch", "openvino": ov.get_version()}
        return attach_backend(root, "openvino", VARIANT, entry, files)
