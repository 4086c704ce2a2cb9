"""The ONNX Runtime GenAI layout of a package: `genai_config.json`, `genai.onnx` and a tokenizer it loads.

onnxruntime-genai feeds a whole prompt in one run and then one token per run, through one graph
whose token axis is dynamic. `genai.onnx` is that graph, built from the package's own step graphs
(FP32 or quantized) without tracing anything again: a `Loop` runs the prefill graph over every full
chunk of the prompt, a second `Loop` runs the decode graph over the remaining tokens, exactly as
`Session.forward` does, and only the last token's logits come out ([batch, 1, vocab]: what
onnxruntime-genai calls a pruned model). The loop bodies are the step graphs themselves, weights
still in the package's `weights.bin`, so the graph adds no weights to the package.

onnxruntime-genai's `decoder` model type carries two kinds of state: a KV cache per attention
layer, grown by the tokens of each run, and a `conv_state` and a `recurrent_state` per other layer,
of one shape across layers. `_state_io` maps the step graphs' states onto those: attention layers'
window rings are cut from the KV cache's last entries (their `seen` follows from its length, as
does learned positions' `position`), other layers' states are flattened and padded to one
shape. Every zoo family, the hybrids and imported Mamba, Mamba2, LFM2, Llama, Qwen and GPT-2 get the
layout. See docs/FORMAT.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgelin.atomic import scratch_dir
from edgelin.errors import EdgelinError
from edgelin.runtime.package import STEP_GRAPHS, read_package, rewrite_package, sha256_file
from edgelin.runtime.schema import read_json_file

BACKEND, VARIANT = "onnxruntime-genai", "decoder"
GRAPH, CONFIG = "genai.onnx", "genai_config.json"
TOKENIZER, TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"
STATE_KINDS = ("conv_state", "recurrent_state")  # carried for every layer without attention
ATTENTION_KINDS = ("key", "value", "seen")
POSITION = "position"  # learned positions' token count (GPT-2): in an attention layer, the KV cache's length
_ONNX_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "int16": TensorProto.INT16,
               "int8": TensorProto.INT8, "float64": TensorProto.DOUBLE}
CONTEXT_LENGTH = 1 << 20  # constant-memory states: this bounds only onnxruntime-genai's token buffer
NO_EOS = 0  # the end token of packages without one (byte packages: NUL); see special_ids


def genai_support(manifest: dict[str, Any]) -> str | None:
    """None when onnxruntime-genai's `decoder` model type can carry the package's states, else why not."""
    spec = manifest.get("tokenizer") or {"type": "bytes"}
    if spec.get("type", "bytes") != "bytes" and spec.get("file") != TOKENIZER:
        return f"onnxruntime-genai reads {TOKENIZER}, and the package's tokenizer is {spec.get('file', spec.get('type'))}"
    states = manifest["states"]
    attention = {s["layer"] for s in states if s["kind"] in ATTENTION_KINDS}
    if any({"key", "value"} - {s["kind"] for s in states if s["layer"] == layer} for layer in attention):
        return "an attention layer holds no key / value: not a KV cache onnxruntime-genai carries"
    caches = {(tuple(s["shape"][1:]), s.get("dtype", "float32")) for s in states if s["kind"] in ("key", "value")}
    if len(caches) > 1:
        return "its attention layers' key / value shapes differ; onnxruntime-genai takes one KV cache shape"
    for slot in STATE_KINDS:
        dtypes = {s.get("dtype", "float32") for s in states if s["layer"] not in attention and _slot(s["kind"]) == slot}
        if len(dtypes) > 1:
            return f"its layers' states packed into {slot} differ in element type ({', '.join(sorted(dtypes))})"
    return None


def _slot(kind: str) -> str:
    """The onnxruntime-genai state a layer's state of `kind` is packed into: conv_state or recurrent_state
    (which also takes any other recurrent kind, e.g. mLSTM's cell, normalizer and max states)."""
    return "conv_state" if kind == "conv_state" else "recurrent_state"


def _const(name: str, value: Any, dtype=np.int64) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, dtype)))


def _loop_body(proto: onnx.ModelProto, prefix: str, tokens: int, offset: str,
               pairs: list[tuple[str, str]]) -> onnx.GraphProto:
    """Step graph `proto` as a Loop body: iteration i runs tokens [offset + i*tokens, +tokens) of the
    outer `input_ids`, carries the states and the last token's logits. Every value is renamed with
    `prefix` so the bodies never shadow outer names."""
    g = onnx.GraphProto()
    g.CopyFrom(proto.graph)
    rename = lambda n: n and prefix + n  # noqa: E731
    for node in g.node:
        node.input[:] = [rename(x) for x in node.input]
        node.output[:] = [rename(x) for x in node.output]
        node.name = rename(node.name)
    for t in g.initializer:
        t.name = rename(t.name)
    for v in (*g.input, *g.output, *g.value_info):
        v.name = rename(v.name)
    p = prefix
    head = [_const(p + "tokens", tokens), _const(p + "axis0", [0]), _const(p + "axis1", [1]),
            helper.make_node("Mul", [p + "iter", p + "tokens"], [p + "skip"]),
            helper.make_node("Add", [p + "skip", offset], [p + "begin"]),
            helper.make_node("Add", [p + "begin", p + "tokens"], [p + "end"]),
            helper.make_node("Unsqueeze", [p + "begin", p + "axis0"], [p + "starts"]),
            helper.make_node("Unsqueeze", [p + "end", p + "axis0"], [p + "ends"]),
            helper.make_node("Slice", ["input_ids", p + "starts", p + "ends", p + "axis1"], [p + "input_ids"])]
    tail = [helper.make_node("Identity", [p + "cond_in"], [p + "cond_out"])]
    if tokens == 1:
        tail.append(helper.make_node("Identity", [p + "logits"], [p + "last_logits"]))
    else:
        tail += [_const(p + "last", [-1]), _const(p + "stop", [tokens]),
                 helper.make_node("Slice", [p + "logits", p + "last", p + "stop", p + "axis1"], [p + "last_logits"])]
    nodes = [*head, *g.node, *tail]
    inputs, outputs = {v.name: v for v in g.input}, {v.name: v for v in g.output}
    logits_type = outputs[p + "logits"].type.tensor_type.elem_type
    del g.node[:], g.input[:], g.output[:]
    g.node.extend(nodes)
    g.input.extend([helper.make_tensor_value_info(p + "iter", TensorProto.INT64, []),
                    helper.make_tensor_value_info(p + "cond_in", TensorProto.BOOL, []),
                    *(inputs[p + i] for i, _ in pairs),
                    helper.make_tensor_value_info(p + "logits_in", logits_type, None)])
    g.output.extend([helper.make_tensor_value_info(p + "cond_out", TensorProto.BOOL, []),
                     *(outputs[p + o] for _, o in pairs),
                     helper.make_tensor_value_info(p + "last_logits", logits_type, None)])
    g.name = prefix.rstrip("/")
    return g


def prompt_graph(graphs: dict[str, onnx.ModelProto], states: list[dict[str, Any]], vocab_size: int,
                 prefill_tokens: int | None) -> onnx.ModelProto:
    """One graph that takes a prompt of any length: (input_ids [batch, sequence], states) ->
    (logits of the last token [batch, 1, vocab], states), exactly what `Session.forward` computes.

    Args:
        graphs: "decode" (and "prefill", if the package has one) step graphs, as loaded; initializers
            keep their external data references (the result is saved next to the same weights file).
        states: the manifest's `states` entries (their input / output names).
        vocab_size: the logits' last dimension.
        prefill_tokens: the prefill graph's chunk length (None without a prefill graph).
    Returns:
        The model; its inputs and outputs keep the step graphs' names and element types.
    """
    decode = graphs["decode"]
    pairs = [(s["input"], s["output"]) for s in states]
    logits_type = next(o for o in decode.graph.output if o.name == "logits").type.tensor_type.elem_type
    nodes = [helper.make_node("Shape", ["input_ids"], ["genai/ids_shape"]),
             _const("genai/batch_axis", [0]), _const("genai/token_axis", 1), _const("genai/true", True, np.bool_),
             _const("genai/logits_tail", [1, vocab_size]),
             helper.make_node("Gather", ["genai/ids_shape", "genai/batch_axis"], ["genai/batch"], axis=0),
             helper.make_node("Gather", ["genai/ids_shape", "genai/token_axis"], ["genai/tokens"], axis=0),
             helper.make_node("Concat", ["genai/batch", "genai/logits_tail"], ["genai/logits_shape"], axis=0),
             helper.make_node("ConstantOfShape", ["genai/logits_shape"], ["genai/no_logits"],
                              value=helper.make_tensor("zero", logits_type, [1], [0]))]
    # the decode loop starts at token `start` and runs `rest` times, from `carried` states and `logits`
    carried, logits, start, rest = [i for i, _ in pairs], "genai/no_logits", "genai/zero", "genai/tokens"
    nodes.append(_const(start, 0))
    if "prefill" in graphs:
        chunked = [f"genai/chunked.{o}" for _, o in pairs]
        nodes += [_const("genai/chunk", prefill_tokens),
                  helper.make_node("Div", ["genai/tokens", "genai/chunk"], ["genai/chunks"]),
                  helper.make_node("Mul", ["genai/chunks", "genai/chunk"], ["genai/chunked"]),
                  helper.make_node("Sub", ["genai/tokens", "genai/chunked"], ["genai/rest"]),
                  helper.make_node("Loop", ["genai/chunks", "genai/true", *carried, logits],
                                   [*chunked, "genai/chunked.logits"],
                                   body=_loop_body(graphs["prefill"], "prefill/", prefill_tokens, start, pairs))]
        carried, logits, start, rest = chunked, "genai/chunked.logits", "genai/chunked", "genai/rest"
    nodes.append(helper.make_node("Loop", [rest, "genai/true", *carried, logits], [*(o for _, o in pairs), "logits"],
                                  body=_loop_body(decode, "decode/", 1, start, pairs)))
    ins, outs = {v.name: v for v in decode.graph.input}, {v.name: v for v in decode.graph.output}
    graph = helper.make_graph(
        nodes, "genai",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]), *(ins[i] for i, _ in pairs)],
        [helper.make_tensor_value_info("logits", logits_type, ["batch", 1, vocab_size]), *(outs[o] for _, o in pairs)])
    opsets: dict[str, int] = {}
    for proto in graphs.values():
        for op in proto.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="edgelin")
    model.ir_version = max(p.ir_version for p in graphs.values())
    return model


def _state_io(model: onnx.ModelProto, states: list[dict[str, Any]]) -> None:
    """Rewrite the prompt graph's state inputs and outputs into what onnxruntime-genai's `decoder`
    model type carries, in place (docs/FORMAT.md, "GenAI layouts"):

    - attention layers: `key` / `value` as a growing KV cache [batch, kv_heads, past, head_dim] in
      float32 (unrotated keys). The graph lays the last min(past, window) entries into the step graphs'
      ring from slot 0 with `seen` = min(past, window): attention depends on relative positions only,
      so that ring reads as the real one. It derives learned positions' `position` (the tokens seen)
      from the cache length, and returns the cache grown by the prompt's tokens, read from the slots
      they were written to (left-padded with zeros where a prompt longer than the window pushed some out);
    - every other layer: a `conv_state` and a `recurrent_state` of shape [batch, n], n the largest
      layer's size (onnxruntime-genai allocates one shape for all layers): the layer's conv_state
      flattened, and its other states flattened one after another (mLSTM: cell, normalizer, max),
      zero-padded; a layer without one of them passes a placeholder through.
    """
    g = model.graph
    by_layer: dict[int, dict[str, dict]] = {}
    for s in states:
        by_layer.setdefault(s["layer"], {})[s["kind"]] = s
    derived = {*ATTENTION_KINDS, POSITION}  # an attention layer's position is its cache's length, not a packed state
    packed = {slot: {layer: [s for s in kinds.values()
                             if s["kind"] not in (derived if "key" in kinds else ATTENTION_KINDS) and _slot(s["kind"]) == slot]
                     for layer, kinds in by_layer.items()} for slot in STATE_KINDS}
    flat = {slot: max([sum(int(np.prod(s["shape"][1:])) for s in group) for group in packed[slot].values()] + [1])
            for slot in STATE_KINDS}
    dtypes = {slot: next((s.get("dtype", "float32") for group in packed[slot].values() for s in group), "float32")
              for slot in STATE_KINDS}
    inner_in = {s["input"]: f"genai/in/{s['input']}" for s in states}
    inner_out = {s["output"]: f"genai/out/{s['output']}" for s in states}
    for node in g.node:
        node.input[:] = [inner_in.get(x, x) for x in node.input]
        node.output[:] = [inner_out.get(x, x) for x in node.output]
    del g.input[1:], g.output[1:]  # input_ids and logits stay
    entry = [_const("io/ax0", [0]), _const("io/ax1", [1]), _const("io/ax2", [2]), _const("io/zero", [0]),
             helper.make_node("Shape", ["input_ids"], ["io/ids_shape"]),
             helper.make_node("Gather", ["io/ids_shape", "io/ax0"], ["io/batch"], axis=0),
             helper.make_node("Gather", ["io/ids_shape", "io/ax1"], ["io/tokens"], axis=0)]
    leave: list[onnx.NodeProto] = []
    float_type = TensorProto.FLOAT
    for layer, kinds in sorted(by_layer.items()):
        p = f"io/{layer}/"
        if "key" in kinds:
            if "window_mask" in kinds:
                raise EdgelinError("this package's attention states are the shift buffers of edgelin before the window "
                                   "ring (window_mask); export it again from its checkpoint")
            window = kinds["key"]["shape"][2]
            entry += [_const(p + "window", [window]), _const(p + "neg_window", [-window]), _const(p + "end", [1 << 62]),
                      _const(p + "one", [1]),
                      helper.make_node("Shape", [f"past_key_values.{layer}.key"], [p + "cache_shape"]),
                      helper.make_node("Gather", [p + "cache_shape", "io/ax2"], [p + "past"], axis=0),
                      helper.make_node("Min", [p + "past", p + "window"], [p + "filled"]),
                      helper.make_node("Sub", [p + "window", p + "filled"], [p + "empty"]),
                      helper.make_node("Concat", [*(["io/zero"] * 6), p + "empty", "io/zero"], [p + "back"], axis=0)]
            # the run's last min(tokens, window) entries, from the slots they went to, left-padded back to `tokens`
            leave += [helper.make_node("Min", ["io/tokens", p + "window"], [p + "kept"]),
                      helper.make_node("Sub", ["io/tokens", p + "kept"], [p + "dropped"]),
                      helper.make_node("Add", [p + "filled", p + "dropped"], [p + "first"]),
                      helper.make_node("Add", [p + "first", p + "kept"], [p + "last"]),
                      helper.make_node("Squeeze", [p + "first"], [p + "first0"]),
                      helper.make_node("Squeeze", [p + "last"], [p + "last0"]),
                      helper.make_node("Squeeze", [p + "one"], [p + "one0"]),
                      helper.make_node("Range", [p + "first0", p + "last0", p + "one0"], [p + "positions"]),
                      helper.make_node("Mod", [p + "positions", p + "window"], [p + "slots"]),
                      helper.make_node("Concat", [*(["io/zero"] * 2), p + "dropped", *(["io/zero"] * 5)], [p + "pads"], axis=0)]
            for kind in ("key", "value"):
                s = kinds[kind]
                cache_in, cache_out = f"past_key_values.{layer}.{kind}", f"present.{layer}.{kind}"
                dims = ["batch", s["shape"][1], "past_sequence_length", s["shape"][3]]
                g.input.append(helper.make_tensor_value_info(cache_in, float_type, dims))
                g.output.append(helper.make_tensor_value_info(cache_out, float_type, [*dims[:2], "total_sequence_length", dims[3]]))
                elem = _ONNX_TYPES[s.get("dtype", "float32")]
                entry += [helper.make_node("Slice", [cache_in, p + "neg_window", p + "end", "io/ax2"], [p + kind + "/last"]),
                          helper.make_node("Pad", [p + kind + "/last", p + "back"], [p + kind + "/ring"]),
                          helper.make_node("Cast", [p + kind + "/ring"], [inner_in[s["input"]]], to=elem)]
                leave += [helper.make_node("Cast", [inner_out[s["output"]]], [p + kind + "/out"], to=float_type),
                          helper.make_node("Gather", [p + kind + "/out", p + "slots"], [p + kind + "/new"], axis=2),
                          helper.make_node("Pad", [p + kind + "/new", p + "pads"], [p + kind + "/grown"]),
                          helper.make_node("Concat", [cache_in, p + kind + "/grown"], [cache_out], axis=2)]
            if "seen" in kinds:  # the ring's count: min(past, window), whatever the real count was
                s = kinds["seen"]
                entry += [helper.make_node("Cast", [p + "filled"], [p + "count"], to=_ONNX_TYPES[s.get("dtype", "float32")]),
                          helper.make_node("Concat", ["io/batch", "io/ax1"], [p + "seen_shape"], axis=0),
                          helper.make_node("Expand", [p + "count", p + "seen_shape"], [inner_in[s["input"]]])]
            if POSITION in kinds:  # tokens seen: the cache's length (the step graphs cap the count; it reads the same)
                s, q = kinds[POSITION], p + "position/"
                entry += [helper.make_node("Shape", [f"past_key_values.{layer}.key"], [q + "cache_shape"]),
                          helper.make_node("Gather", [q + "cache_shape", "io/ax2"], [q + "past"], axis=0),
                          helper.make_node("Cast", [q + "past"], [q + "count"], to=_ONNX_TYPES[s.get("dtype", "float32")]),
                          helper.make_node("Concat", ["io/batch", "io/ax1"], [q + "shape"], axis=0),
                          helper.make_node("Expand", [q + "count", q + "shape"], [inner_in[s["input"]]])]
            if not any(packed[slot][layer] for slot in STATE_KINDS):
                continue
        for slot in STATE_KINDS:  # and an attention layer's other states (lin_attn: its linear branch)
            outer_in, outer_out = f"past_key_values.{layer}.{slot}", f"present.{layer}.{slot}"
            elem, q = _ONNX_TYPES[dtypes[slot]], f"{p}{slot}/"
            g.input.append(helper.make_tensor_value_info(outer_in, elem, ["batch", flat[slot]]))
            g.output.append(helper.make_tensor_value_info(outer_out, elem, ["batch", flat[slot]]))
            group = packed[slot][layer]
            if not group:
                leave.append(helper.make_node("Identity", [outer_in], [outer_out]))
                continue
            pieces, start = [], 0
            for s in group:
                size, r = int(np.prod(s["shape"][1:])), f"{q}{s['kind']}/"
                entry += [_const(r + "start", [start]), _const(r + "end", [start + size]), _const(r + "shape", [-1, *s["shape"][1:]]),
                          helper.make_node("Slice", [outer_in, r + "start", r + "end", "io/ax1"], [r + "used"]),
                          helper.make_node("Reshape", [r + "used", r + "shape"], [inner_in[s["input"]]])]
                leave += [_const(r + "flat", [-1, size]),
                          helper.make_node("Reshape", [inner_out[s["output"]], r + "flat"], [r + "flat_out"])]
                pieces.append(r + "flat_out")
                start += size
            if start < flat[slot]:  # zeros after (Concat: ONNX Runtime's Pad has no int16 kernel)
                leave += [_const(q + "rest", [flat[slot] - start]),
                          helper.make_node("Concat", ["io/batch", q + "rest"], [q + "rest_shape"], axis=0),
                          helper.make_node("ConstantOfShape", [q + "rest_shape"], [q + "zeros"],
                                           value=helper.make_tensor("zero", elem, [1], [0]))]
                pieces.append(q + "zeros")
            leave.append(helper.make_node("Concat", pieces, [outer_out], axis=1) if len(pieces) > 1
                         else helper.make_node("Identity", pieces, [outer_out]))
    nodes = [*entry, *g.node, *leave]
    del g.node[:]
    g.node.extend(nodes)


def byte_tokenizer() -> tuple[dict[str, Any], dict[str, Any]]:
    """(tokenizer.json, tokenizer_config.json) of the byte tokenizer: token id = UTF-8 byte value.

    GPT-2's byte-level form with no merges: each byte maps to one printable character (GPT-2's table),
    whose id is the byte. Hugging Face tokenizers, onnxruntime-extensions and openvino-tokenizers
    all read it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    char = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tokenizer = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
                 "pre_tokenizer": byte_level, "post_processor": None, "decoder": byte_level,
                 "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                           "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                           "ignore_merges": False, "vocab": {char[b]: b for b in range(256)}, "merges": []}}
    config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "add_bos_token": False,
              "clean_up_tokenization_spaces": False, "model_max_length": CONTEXT_LENGTH}
    return tokenizer, config


def hf_tokenizer_config(tokenizer_json: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """tokenizer_config.json for a shipped tokenizer.json: the source's own when it sits beside it (read
    as a stranger's file), else one naming the package's special tokens; either way with the package's
    chat template, special tokens and `add_bos_token`, so onnxruntime-genai's and OpenVINO GenAI's
    `apply_chat_template` render what edgelin's does."""
    beside = tokenizer_json.with_name(TOKENIZER_CONFIG)
    if beside.is_file():
        config = read_json_file(beside, 16 << 20, missing=f"{beside} vanished while being read")
        if type(config) is not dict:
            raise EdgelinError(f"{beside} must hold a JSON object")
    else:
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                  "add_bos_token": False, "model_max_length": CONTEXT_LENGTH}
        added = read_json_file(tokenizer_json, 1 << 30, missing=f"{tokenizer_json} vanished while being read")
        vocab = {t.get("id"): t.get("content") for t in (added.get("added_tokens") or []) if type(t) is dict} \
            if type(added) is dict and type(added.get("added_tokens")) is list else {}
        for key, field in (("bos_id", "bos_token"), ("eos_id", "eos_token"), ("pad_id", "pad_token")):
            if spec.get(key) is not None and type(vocab.get(spec[key])) is str:
                config[field] = vocab[spec[key]]
    config.update(spec.get("special_tokens") or {})
    if "add_bos" in spec:
        config["add_bos_token"] = spec["add_bos"]
    template = spec.get("chat_template")
    if template is not None:  # transformers' list form for named templates
        config["chat_template"] = template if isinstance(template, str) else \
            [{"name": name, "template": t} for name, t in template.items()]
    return config


def special_ids(manifest: dict[str, Any]) -> dict[str, int]:
    """bos / eos / pad token ids for the GenAI runtimes, which both need an end token in the vocabulary:
    the package's eos_id, else token 0 (NUL for byte packages, which have no end token). `eos_ids`
    lists every end token."""
    spec = manifest.get("tokenizer") or {}
    eos = NO_EOS if spec.get("eos_id") is None else spec["eos_id"]
    return {"bos_token_id": eos if spec.get("bos_id") is None else spec["bos_id"], "eos_token_id": eos,
            "pad_token_id": eos if spec.get("pad_id") is None else spec["pad_id"]}


def eos_ids(manifest: dict[str, Any]) -> list[int]:
    """Every token that ends generation: the package's `eos_ids`, else its one end token."""
    return list((manifest.get("tokenizer") or {}).get("eos_ids") or [special_ids(manifest)["eos_token_id"]])


def sampling_defaults(manifest: dict[str, Any]) -> dict[str, Any]:
    """The package's `generation` sampling defaults in transformers' terms (do_sample, temperature,
    top_k, top_p), as the GenAI runtimes read them; greedy without defaults. edgelin's top_k 0 (no
    limit) is written as the vocabulary's size."""
    gen = manifest.get("generation") or {}
    temperature, top_k = gen.get("temperature", 0.0), gen.get("top_k", 0)
    if temperature == 0 or top_k == 1:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_k": top_k or manifest["vocab_size"],
            "top_p": gen.get("top_p", 1.0)}


def _kv_fields(states: list[dict[str, Any]]) -> dict[str, int]:
    """The KV cache's shape for onnxruntime-genai (it allocates the first, empty cache from it)."""
    key = next((s for s in states if s["kind"] == "key"), None)
    if key is None:
        return {}
    heads, head_size = key["shape"][1], key["shape"][3]
    return {"num_key_value_heads": heads, "num_attention_heads": heads, "head_size": head_size,
            "hidden_size": heads * head_size}


def genai_config(manifest: dict[str, Any]) -> dict[str, Any]:
    """genai_config.json: onnxruntime-genai's `decoder` model over genai.onnx, every end token, and the
    package's sampling defaults (greedy without them)."""
    context = manifest.get("max_context", CONTEXT_LENGTH)
    search = {"max_length": min(context, (manifest.get("generation") or {}).get("max_length", context)),
              "num_beams": 1, "do_sample": False, "top_k": 1, "temperature": 1.0, **sampling_defaults(manifest)}
    ends = eos_ids(manifest)
    return {
        "model": {
            "type": "decoder", "vocab_size": manifest["vocab_size"], "context_length": context,
            **special_ids(manifest), "eos_token_id": ends[0] if len(ends) == 1 else ends,
            "decoder": {
                "filename": GRAPH, "session_options": {"provider_options": []},
                "num_hidden_layers": 1 + max(s["layer"] for s in manifest["states"]),
                **_kv_fields(manifest["states"]),
                "inputs": {"input_ids": "input_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": search,
    }


def genai_files(manifest: dict[str, Any], files: dict[str, Path | bytes], work: Path) -> dict[str, Any] | None:
    """Add the ONNX Runtime GenAI layout to a package being written, in place.

    Args:
        manifest: the package's manifest fields (states, graphs, tokenizer, vocab_size, ...); its
            `backends` gets the `onnxruntime-genai` entry.
        files: package file name -> source; must hold the step graphs (paths) and their weights file.
            The layout's files are added.
        work: a scratch directory for the files made here.
    Returns:
        The manifest entry, or None when the package's states do not fit (`genai_support`).
    """
    if genai_support(manifest) is not None:
        return None
    graph_specs = manifest["graphs"]
    graphs = {name: onnx.load(str(files[g["file"]]), load_external_data=False) for name, g in graph_specs.items()
              if name in STEP_GRAPHS}
    model = prompt_graph(graphs, manifest["states"], manifest["vocab_size"], graph_specs.get("prefill", {}).get("tokens"))
    _state_io(model, manifest["states"])
    onnx.save(model, str(work / GRAPH))
    spec = manifest.get("tokenizer") or {"type": "bytes"}
    added: dict[str, Path | bytes] = {GRAPH: work / GRAPH, CONFIG: json.dumps(genai_config(manifest), indent=2).encode()}
    if spec.get("type", "bytes") == "bytes":
        tokenizer, tok_config = byte_tokenizer()
        added[TOKENIZER] = json.dumps(tokenizer, ensure_ascii=False, indent=1).encode()
    else:
        tok_config = hf_tokenizer_config(Path(files[TOKENIZER]), spec)
    added[TOKENIZER_CONFIG] = json.dumps(tok_config, indent=2).encode()
    clash = sorted(set(added) & set(files))
    if clash:
        raise EdgelinError(f"{clash[0]} already belongs to another part of the package")
    files.update(added)
    # `files`: what the layout owns (a source's tokenizer.json belongs to the package)
    entry = {"config": CONFIG, "model": GRAPH, "tokenizer": TOKENIZER, "files": sorted(added),
             "source": {name: sha256_file(Path(files[g["file"]])) for name, g in graph_specs.items()}}
    manifest.setdefault("backends", {})[BACKEND] = {VARIANT: entry}
    return entry


def attach_genai(package_dir: str | os.PathLike) -> Path:
    """Add (or rebuild) the ONNX Runtime GenAI layout of an existing package, rewriting it atomically.

    Args:
        package_dir: a package (FP32 or quantized) with decode (and prefill) step graphs.
    Returns:
        The package directory.
    Raises:
        EdgelinError: the package's states do not fit onnxruntime-genai (attention layers, hybrids).
    Example:
        >>> attach_genai("out/gla-int8")  # doctest: +SKIP
        >>> onnxruntime_genai.Model("out/gla-int8")  # doctest: +SKIP
    """
    root = Path(package_dir)
    m = read_package(root)
    why = genai_support(m.raw)
    if why is not None:
        raise EdgelinError(f"{root} cannot run in onnxruntime-genai: {why}")
    old = ((m.raw.get("backends") or {}).get(BACKEND) or {}).get(VARIANT) or {}
    dropped = tuple(old.get("files", []))
    manifest = {k: v for k, v in m.raw.items() if k not in ("files", "sizes")}
    files: dict[str, Path | bytes] = {n: root / n for n in m.files if n not in dropped}
    with scratch_dir("genai") as tmp:
        genai_files(manifest, files, tmp)
        added = {n: f for n, f in files.items() if n not in m.files or n in dropped}
        return rewrite_package(root, root, files=added, update={"backends": manifest["backends"]},
                               drop_files=dropped, force=True)
