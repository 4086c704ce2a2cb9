"""Hostile checkpoints, native and imported: each loads correctly or ends in a one-line EdgelinError,
never another exception, and nothing is allocated for a config that cannot fit."""
import json
import math
import os
import re
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import load_file, save_file

from cli_helpers import assert_user_error, run
from edgelin.errors import EdgelinError
from edgelin.models import LM, save_checkpoint
from edgelin.models.config import LMConfig
from edgelin.models.importers import IMPORTERS
from edgelin.models.layers.gla import GLAOptions
from edgelin.models.loading import load_model

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


class _Drop:
    def __repr__(self):
        return "DROP"


DROP = _Drop()  # a config field to delete (a repr, so that test ids are the same in every process)
LL3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # hf-llama's rope_scaling
BASE = LMConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, pattern=["gla", "swa"],
                mixers={"gla": {"use_short_conv": True}, "swa": {"window": 8}})
FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float64]
NON_FLOAT_DTYPES = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool, torch.uint16,
                    torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2]


def error_of(fn, *args, **kw):
    """The EdgelinError message of fn(*args); fails on success or on any other exception."""
    with pytest.raises(EdgelinError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


# --- source layouts (transformers / fla), written from an edgelin model by each importer's own config map

LLAMA_NAMES = [(r"^blocks\.(\d+)\.mixer_norm\.", r"model.layers.\1.input_layernorm."),
               (r"^blocks\.(\d+)\.mlp_norm\.", r"model.layers.\1.post_attention_layernorm."),
               (r"^blocks\.(\d+)\.mlp\.", r"model.layers.\1.mlp."),
               (r"^blocks\.(\d+)\.mixer\.", r"model.layers.\1.self_attn."),
               (r"^embed\.", "model.embed_tokens."), (r"^norm\.", "model.norm.")]
SOURCES = {
    "hf-mamba2": ({"model_type": "mamba2", "architectures": ["Mamba2ForCausalLM"], "vocab_size": 64, "hidden_size": 32,
                   "num_hidden_layers": 2, "num_heads": 4, "head_dim": 16, "expand": 2, "state_size": 8, "n_groups": 1,
                   "conv_kernel": 4, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": False,
                   "time_step_limit": [0.0, {"__float__": "Infinity"}]},
                  [(r"^blocks\.(\d+)\.mixer_norm\.", r"backbone.layers.\1.norm."),
                   (r"^blocks\.(\d+)\.mixer\.conv\.", r"backbone.layers.\1.mixer.conv1d."),
                   (r"^blocks\.(\d+)\.mixer\.", r"backbone.layers.\1.mixer."),
                   (r"^embed\.", "backbone.embeddings."), (r"^norm\.", "backbone.norm_f.")]),
    "hf-lfm2": ({"model_type": "lfm2", "architectures": ["Lfm2ForCausalLM"], "vocab_size": 64, "hidden_size": 32,
                 "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 96,
                 "block_auto_adjust_ff_dim": False, "layer_types": ["conv", "full_attention"], "conv_L_cache": 3,
                 "norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True},
                [(r"^blocks\.(\d+)\.mixer_norm\.", r"model.layers.\1.operator_norm."),
                 (r"^blocks\.(\d+)\.mlp_norm\.", r"model.layers.\1.ffn_norm."),
                 (r"^blocks\.(\d+)\.mlp\.gate_proj\.", r"model.layers.\1.feed_forward.w1."),
                 (r"^blocks\.(\d+)\.mlp\.up_proj\.", r"model.layers.\1.feed_forward.w3."),
                 (r"^blocks\.(\d+)\.mlp\.down_proj\.", r"model.layers.\1.feed_forward.w2."),
                 (r"^blocks\.(\d+)\.mixer\.(in_proj|conv|out_proj)\.", r"model.layers.\1.conv.\2."),
                 (r"^blocks\.(\d+)\.mixer\.o_proj\.", r"model.layers.\1.self_attn.out_proj."),
                 (r"^blocks\.(\d+)\.mixer\.(q|k)_norm\.", r"model.layers.\1.self_attn.\2_layernorm."),
                 (r"^blocks\.(\d+)\.mixer\.", r"model.layers.\1.self_attn."),
                 (r"^embed\.", "model.embed_tokens."), (r"^norm\.", "model.embedding_norm.")]),
    "hf-xlstm": ({"model_type": "xlstm", "architectures": ["xLSTMForCausalLM"], "vocab_size": 64, "hidden_size": 32,
                  "num_hidden_layers": 2, "num_blocks": 2, "num_heads": 2, "qk_dim_factor": 0.5, "v_dim_factor": 1.0,
                  "ffn_proj_factor": 2.667, "ffn_round_up_to_multiple_of": 16, "gate_soft_cap": 15.0,
                  "output_logit_soft_cap": 30.0, "norm_eps": 1e-6, "eps": 1e-6, "use_bias": False, "weight_mode": "single",
                  "mode": "inference", "inference_state_dtype": "float32", "tie_word_embeddings": False},
                 [(r"^blocks\.(\d+)\.mixer_norm\.", r"backbone.blocks.\1.norm_mlstm."),
                  (r"^blocks\.(\d+)\.mlp_norm\.", r"backbone.blocks.\1.norm_ffn."),
                  (r"^blocks\.(\d+)\.mlp\.gate_proj\.", r"backbone.blocks.\1.ffn.proj_up_gate."),
                  (r"^blocks\.(\d+)\.mlp\.up_proj\.", r"backbone.blocks.\1.ffn.proj_up."),
                  (r"^blocks\.(\d+)\.mlp\.down_proj\.", r"backbone.blocks.\1.ffn.proj_down."),
                  (r"^blocks\.(\d+)\.mixer\.(q|k|v)_proj\.", r"backbone.blocks.\1.mlstm_layer.\2."),
                  (r"^blocks\.(\d+)\.mixer\.(o|i|f)gate_proj\.", r"backbone.blocks.\1.mlstm_layer.\2gate_preact."),
                  (r"^blocks\.(\d+)\.mixer\.(i|f)gate_bias$", r"backbone.blocks.\1.mlstm_layer.\2gate_preact.bias"),
                  (r"^blocks\.(\d+)\.mixer\.o_norm\.", r"backbone.blocks.\1.mlstm_layer.multihead_norm."),
                  (r"^blocks\.(\d+)\.mixer\.o_proj\.", r"backbone.blocks.\1.mlstm_layer.out_proj."),
                  (r"^embed\.", "backbone.embeddings."), (r"^norm\.", "backbone.out_norm.")]),
    # older transformers' fields: rope_theta at the top, rope_scaling with llama3's rescale
    "hf-llama": ({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 64, "hidden_size": 32,
                  "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "hidden_act": "silu", "rms_norm_eps": 1e-6, "attention_bias": True, "mlp_bias": False, "rope_theta": 500000.0,
                  "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 64},
                  "max_position_embeddings": 256, "tie_word_embeddings": False},
                 LLAMA_NAMES),
    "hf-qwen2": ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 64, "hidden_size": 32,
                  "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "use_sliding_window": False,
                  "sliding_window": 4096, "max_window_layers": 28, "tie_word_embeddings": True},
                 LLAMA_NAMES),
    "hf-qwen3": ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 64, "hidden_size": 32,
                  "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "head_dim": 24, "hidden_act": "silu", "rms_norm_eps": 1e-6, "attention_bias": False,
                  "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
                  "layer_types": ["full_attention", "full_attention"], "tie_word_embeddings": True},
                 LLAMA_NAMES),
    "hf-gpt2": ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 64, "n_embd": 32, "n_layer": 2,
                 "n_head": 2, "n_positions": 48, "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
                 "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
                 "add_cross_attention": False, "tie_word_embeddings": True},
                []),  # written by gpt2_tensors
    "fla-gla": ({"model_type": "gla", "architectures": ["GLAForCausalLM"], "vocab_size": 64, "hidden_size": 32,
                 "num_hidden_layers": 2, "num_heads": 2, "intermediate_size": 64, "expand_k": 0.5, "expand_v": 1.0,
                 "use_short_conv": False, "hidden_act": "swish", "norm_eps": 1e-6, "tie_word_embeddings": False,
                 "num_kv_heads": None, "attn": None, "feature_map": None},
                [(r"^blocks\.(\d+)\.mixer_norm\.", r"model.layers.\1.attn_norm."),
                 (r"^blocks\.(\d+)\.(mlp_norm|mlp)\.", r"model.layers.\1.\2."),
                 (r"^blocks\.(\d+)\.mixer\.o_norm\.", r"model.layers.\1.attn.g_norm_swish_gate."),
                 (r"^blocks\.(\d+)\.mixer\.", r"model.layers.\1.attn."),
                 (r"^embed\.", "model.embeddings."), (r"^norm\.", "model.norm.")]),
}


def gpt2_tensors(state):
    """An edgelin state dict as GPT-2 stores it: Conv1D weights [in, out], q, k and v side by side in c_attn."""
    out = {"transformer.wte.weight": state["embed.weight"], "transformer.wpe.weight": state["pos_embed.weight"],
           "transformer.ln_f.weight": state["norm.weight"], "transformer.ln_f.bias": state["norm.bias"]}
    if "lm_head.weight" in state:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))):
        b, h = f"blocks.{i}", f"transformer.h.{i}"
        for ours, theirs in (("mixer_norm", "ln_1"), ("mlp_norm", "ln_2")):
            for p in ("weight", "bias"):
                out[f"{h}.{theirs}.{p}"] = state[f"{b}.{ours}.{p}"]
        out[f"{h}.attn.c_attn.weight"] = torch.cat([state[f"{b}.mixer.{p}_proj.weight"] for p in "qkv"]).t()
        out[f"{h}.attn.c_attn.bias"] = torch.cat([state[f"{b}.mixer.{p}_proj.bias"] for p in "qkv"])
        for ours, theirs in (("mixer.o_proj", "attn.c_proj"), ("mlp.up_proj", "mlp.c_fc"), ("mlp.down_proj", "mlp.c_proj")):
            out[f"{h}.{theirs}.weight"] = state[f"{b}.{ours}.weight"].t()
            out[f"{h}.{theirs}.bias"] = state[f"{b}.{ours}.bias"]
    return out


def source_name(layout, name):
    for pattern, repl in SOURCES[layout][1]:
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    return name


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    return save_checkpoint(LM(BASE).init_weights(), tmp_path_factory.mktemp("native") / "ckpt")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """layout -> (checkpoint directory, the edgelin state dict it was written from)."""
    out = {}
    for layout, (cfg, _) in SOURCES.items():
        config = IMPORTERS[cfg["model_type"]].to_config(cfg, 2048)
        state = LM(config).init_weights().state_dict()
        if config.tie_embeddings:
            state.pop("lm_head.weight")
        path = tmp_path_factory.mktemp("src") / layout
        path.mkdir()
        (path / "config.json").write_text(json.dumps(cfg))
        tensors = gpt2_tensors(state) if layout == "hf-gpt2" else {source_name(layout, k): v for k, v in state.items()}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
        out[layout] = path, state
    return out


def edited(src, dst, config=None, tensors=None, config_text=None):
    """A copy of checkpoint `src` at `dst`: config.json fields set (DROP deletes), tensors changed in place by `tensors(dict)`."""
    shutil.copytree(src, dst)
    if config is not None:
        doc = json.loads((dst / "config.json").read_text())
        for key, value in config.items():
            doc.pop(key) if value is DROP else doc.__setitem__(key, value)
        (dst / "config.json").write_text(json.dumps(doc))
    if config_text is not None:
        (dst / "config.json").write_bytes(config_text if isinstance(config_text, bytes) else config_text.encode())
    if tensors is not None:
        t = load_file(str(dst / "model.safetensors"))
        tensors(t)
        save_file(t, str(dst / "model.safetensors"))
    return dst


def test_pristine_checkpoints_load(native, sources):
    loaded = load_model(str(native))
    assert loaded.model.config == BASE and loaded.source_layout == "edgelin"
    for layout, (path, state) in sources.items():
        loaded = load_model(str(path))
        assert loaded.source_layout == layout
        ours = loaded.model.state_dict()
        assert all(torch.equal(ours[k], v) for k, v in state.items()), layout


# --- config.json values of a native checkpoint

def gla(**options):
    return {"mixers": {"gla": {"use_short_conv": True, **options}, "swa": {"window": 8}}}


def swa(**options):
    return {"mixers": {"gla": {"use_short_conv": True}, "swa": {"window": 8, **options}}}


SWA_LLAMA3 = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}
HUGE = "needs at least"
CONFIG_VALUES = [
    ({"d_model": 10**9}, HUGE), ({"d_model": 10**12}, HUGE), ({"n_layers": 10**9}, HUGE), ({"n_layers": 10**12}, HUGE),
    ({"vocab_size": 10**9}, HUGE), ({"vocab_size": 10**12}, HUGE), ({"d_ff": 10**9}, HUGE), ({"d_ff": 10**12}, HUGE),
    ({"d_model": 2**40, "n_heads": 1}, HUGE), ({"n_layers": 5000}, "n_layers 5000 is over the limit of 4096"),
    ({"d_model": 2**70}, "below 2**63"), ({"vocab_size": 10**400}, "below 2**63"), ({"n_heads": 10**12}, "not divisible"),
    (gla(expand_k=1e9), "FP32 parameters"), (gla(expand_k=1e300), "too large to build"),
    (gla(gate_low_rank_dim=2**40), "FP32 parameters"), (gla(conv_size=2**40), "FP32 parameters"),
    ({"mixers": {"swa": {"window": 10**12}}}, "recurrent state of one sequence"),
    ({"mixers": {"swa": {"window": 2**62, "head_dim": 2**62}}}, "too large to build"),
    ({"d_ff": "64"}, "d_ff must be an integer"), ({"d_ff": 64.0}, "d_ff must be an integer"), ({"d_ff": -2}, ">= -1"),
    ({"d_ff": True}, "d_ff"), ({"d_ff": None}, "d_ff"), ({"norm_eps": "1e-5"}, "norm_eps must be a positive number"),
    ({"norm_eps": -1}, "norm_eps"), ({"norm_eps": 0}, "norm_eps"), ({"norm_eps": math.nan}, "norm_eps"),
    ({"norm_eps": math.inf}, "norm_eps"), ({"norm_eps": 10**400}, "norm_eps"), ({"init_std": "big"}, "init_std"),
    ({"tie_embeddings": "no"}, "tie_embeddings must be true or false"), ({"tie_embeddings": "false"}, "tie_embeddings"),
    ({"tie_embeddings": 0}, "tie_embeddings"), ({"tie_embeddings": None}, "tie_embeddings"),
    ({"vocab_size": "64"}, "vocab_size"), ({"vocab_size": 64.0}, "vocab_size"), ({"vocab_size": -1}, "vocab_size"),
    ({"vocab_size": 0}, "vocab_size"), ({"vocab_size": True}, "vocab_size"), ({"vocab_size": [64]}, "vocab_size"),
    ({"vocab_size": {"a": 1}}, "vocab_size"), ({"n_heads": 3}, "not divisible"), ({"n_heads": 0}, "n_heads"),
    ({"n_layers": -1}, "n_layers"), ({"seed": -1}, "seed"), ({"seed": 2**32}, "seed"), ({"seed": 1.5}, "seed"),
    ({"pattern": "gla"}, "pattern"), ({"pattern": []}, "pattern"), ({"pattern": ["gla", 5]}, "pattern"),
    ({"pattern": [["gla"]]}, "pattern"), ({"pattern": None}, "pattern"), ({"pattern": ["transformer"]}, "unknown token mixer"),
    ({"pattern": ["gla\nswa"]}, "unknown token mixer"), ({"mixers": {"gla": 3}}, "mixers must map"),
    ({"mixers": []}, "mixers must map"), ({"mixers": {"nope": {}}}, "unknown token mixer 'nope'"),
    (gla(expand_k="x"), "option 'expand_k'"), (gla(expand_k=0), "option 'expand_k'"), (gla(expand_k=-1), "option 'expand_k'"),
    (gla(conv_size=10**30), "below 2**63"), (gla(conv_size=2.0), "option 'conv_size'"), (gla(conv_size=1), "kernel"),
    (gla(unknown=1), "unknown option(s) 'unknown'"), (gla(feature_map="nope"), "unknown feature map"),
    (gla(feature_map=3), "option 'feature_map'"), (gla(use_short_conv="yes"), "option 'use_short_conv'"),
    (gla(clamp_min="low"), "option 'clamp_min'"), (gla(clamp_min=math.nan), "option 'clamp_min'"),
    (gla(norm_eps=-1e-5), "option 'norm_eps'"), (gla(gate_logit_normalizer=math.inf), "gate_logit_normalizer"),
    ({"logit_soft_cap": 0}, "logit_soft_cap must be a positive number or null"), ({"logit_soft_cap": "30"}, "logit_soft_cap"),
    ({"logit_soft_cap": math.inf}, "logit_soft_cap"), ({"logit_soft_cap": True}, "logit_soft_cap"),
    ({"pattern": ["mlstm"], "mixers": {"mlstm": {"gate_soft_cap": 0}}}, "gate_soft_cap must be above 0"),
    ({"pattern": ["mlstm"], "mixers": {"mlstm": {"gate_soft_cap": -1.0}}}, "option 'gate_soft_cap'"),
    ({"pattern": ["mlstm"], "mixers": {"mlstm": {"expand_k": 0.3}}}, "must split into 2 heads"),
    ({"pattern": ["mlstm"], "mixers": {"mlstm": {"eps": "small"}}}, "option 'eps'"),
    ({"colour": "blue"}, "unknown field(s) 'colour'"), ({"a\nb": 1}, "unknown field(s) 'a\\nb'"),
    ({"d_model": DROP, "n_heads": DROP, "pattern": DROP}, "does not match config.json"),
    ({"norm": "batch"}, "norm must be one of rms, layer"), ({"norm": None}, "norm must be one of"),
    ({"mlp": "relu"}, "mlp must be one of swiglu, gelu, gelu_tanh"), ({"mlp": ["gelu"]}, "mlp must be one of"),
    ({"mlp_bias": "yes"}, "mlp_bias must be true or false"), ({"mlp_bias": 1}, "mlp_bias"),
    ({"max_positions": -1}, "max_positions must be an integer >= 0"), ({"max_positions": 2.5}, "max_positions"),
    ({"max_positions": True}, "max_positions"), ({"max_positions": 10**12}, HUGE), ({"max_positions": 2**70}, "below 2**63"),
    (swa(o_bias="no"), "option 'o_bias'"), (swa(rope_scaling={"type": "yarn", "factor": 4}), "rope_scaling must be null or"),
    (swa(rope_scaling=[8.0]), "rope_scaling must be null or"), (swa(rope_scaling={**SWA_LLAMA3, "factor": -1}), "factor must be a positive"),
    (swa(rope_scaling={**SWA_LLAMA3, "high_freq_factor": 0.5}), "must be above low_freq_factor"),
    (swa(rope_scaling={**SWA_LLAMA3, "low_freq_factor": math.nan}), "low_freq_factor"),
    (swa(rope_scaling={**SWA_LLAMA3, "original_max_position_embeddings": "8192"}), "original_max_position_embeddings"),
    (swa(rope_scaling=SWA_LLAMA3, rope_theta=0), "needs rotary embeddings"),
    # sizes that each pass their own check but do not fit together: caught by a dry run on the meta device
    (gla(expand_k=0.3), "do not fit together"), (gla(expand_v=0.3), "do not fit together"),
    (gla(expand_v=0.01), "no elements"), (gla(expand_k=0.01), "no elements"),
]


def case_id(changes):
    """The changes without gla()'s and swa()'s fixed parts, at most 60 characters."""
    text = repr(changes).replace("'gla': {'use_short_conv': True}, ", "").replace("'window': 8, ", "")
    return text.replace("'use_short_conv': True, ", "").replace(", 'swa': {'window': 8}", "")[:60]


@pytest.mark.parametrize("changes, fragment", CONFIG_VALUES, ids=[case_id(c) for c, _ in CONFIG_VALUES])
def test_bad_config_value(native, tmp_path, changes, fragment):
    bad = edited(native, tmp_path / "bad", config=changes)
    assert fragment in error_of(load_model, str(bad))


def test_huge_sizes_are_refused_with_the_estimate(native, tmp_path):
    msg = error_of(load_model, str(edited(native, tmp_path / "bad", config={"vocab_size": 10**12})))
    assert re.search(r"needs at least [\d.e+]+ GiB for its FP32 parameters \(3.2e\+13 parameters\)", msg), msg


CONFIG_FILES = [
    (b"\xff\xfe{}", "not valid JSON"), ("\ufeff{}", "not valid JSON"), ("", "not valid JSON"), ("{oops", "not valid JSON"),
    ("null", "JSON object"), ("[]", "JSON object"), ("42", "JSON object"), ('"gla"', "JSON object"),
    ("[" * 200_000 + "]" * 200_000, "nests deeper than 64"), ('{"a":' * 200_000 + "1" + "}" * 200_000, "nests deeper"),
    ('{"mixers": {"gla": ' + "[" * 70 + "]" * 70 + "}}", "nests deeper"),
    ('{"d_model": ' + "9" * 5000 + "}", "not valid JSON"), (b'{"d_model": "\xc3\x28"}', "not valid JSON"),
    ("{}" + " " * (5 << 20), "over the limit"),
]


@pytest.mark.parametrize("text, fragment", CONFIG_FILES, ids=[f"{t[:12]!r}-{len(t)}" for t, _ in CONFIG_FILES])
def test_bad_config_file(native, sources, tmp_path, text, fragment):
    for name, src in (("native", native), ("imported", sources["hf-mamba2"][0])):
        bad = edited(src, tmp_path / name, config_text=text)
        assert fragment in error_of(load_model, str(bad))


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "device", "dangling"])
def test_config_json_that_is_not_a_file(native, tmp_path, kind):
    bad = edited(native, tmp_path / "bad")
    config = bad / "config.json"
    config.unlink()
    if kind == "directory":
        config.mkdir()
    elif kind == "fifo":
        os.mkfifo(config)  # reading it would block forever
    elif kind == "device":
        config.symlink_to("/dev/zero")
    elif kind == "dangling":
        config.symlink_to(tmp_path / "nowhere.json")
    error_of(load_model, str(bad))


def test_config_json_may_be_a_symlink_to_a_file(native, tmp_path):
    bad = edited(native, tmp_path / "ok")
    (tmp_path / "real.json").write_text((bad / "config.json").read_text())
    (bad / "config.json").unlink()
    (bad / "config.json").symlink_to(tmp_path / "real.json")
    assert load_model(str(bad)).model.config == BASE


def test_duplicate_keys_last_wins(native, tmp_path):
    doc = (native / "config.json").read_text().replace('"d_model": 32', '"d_model": 1000000000000, "d_model": 32')
    assert load_model(str(edited(native, tmp_path / "ok", config_text=doc))).model.config == BASE


# --- weights of a native checkpoint

def set_tensor(name, fn):
    return lambda t: t.__setitem__(name, fn(t[name]))


@pytest.mark.parametrize("dtype", NON_FLOAT_DTYPES, ids=str)
def test_non_float_weights_are_refused(native, tmp_path, dtype):
    bad = edited(native, tmp_path / "bad", tensors=set_tensor("blocks.1.mixer.q_proj.weight", lambda w: (w * 100).to(dtype)))
    msg = error_of(load_model, str(bad))
    assert "'blocks.1.mixer.q_proj.weight'" in msg and str(dtype).removeprefix("torch.") in msg, msg


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_float_weights_load_as_float32(native, tmp_path, dtype):
    ok = edited(native, tmp_path / "ok", tensors=lambda t: t.update({k: v.to(dtype) for k, v in t.items()}))
    ours, ref = load_model(str(ok)).model.state_dict(), load_model(str(native)).model.state_dict()
    for k, v in ours.items():
        assert v.dtype == torch.float32 and torch.equal(v, ref[k].to(dtype).float()), k


@pytest.mark.parametrize("value, dtype", [(math.nan, torch.float32), (math.inf, torch.float32), (-math.inf, torch.float32),
                                          (math.inf, torch.float16), (math.nan, torch.bfloat16), (1e300, torch.float64),
                                          (-1e39, torch.float64)])
def test_non_finite_weights_are_refused(native, tmp_path, value, dtype):
    def poison(w):
        w = w.to(dtype).clone()
        w.view(-1)[3] = value
        return w
    bad = edited(native, tmp_path / "bad", tensors=set_tensor("blocks.0.mixer.gk_proj.1.bias", poison))
    msg = error_of(load_model, str(bad))
    assert "'blocks.0.mixer.gk_proj.1.bias'" in msg and "inf or NaN" in msg


def test_the_first_bad_tensor_is_named(native, tmp_path):
    bad = edited(native, tmp_path / "bad", tensors=lambda t: [t[k].view(-1).__setitem__(0, math.nan) for k in t])
    assert re.search(r"tensor '[\w.]+' holds inf or NaN", error_of(load_model, str(bad)))


TENSOR_EDITS = {
    "missing": (lambda t: t.pop("blocks.1.mixer.k_proj.weight"), "missing blocks.1.mixer.k_proj.weight"),
    "unexpected": (lambda t: t.update(extra=torch.zeros(2)), "unexpected 'extra'"),
    "unexpected_odd_name": (lambda t: t.update({"a\nb" * 100: torch.zeros(2)}), "unexpected 'a\\nb"),
    "tied_head_present": (lambda t: t.update({"lm_head.weight": t["embed.weight"].clone()}), "unexpected 'lm_head.weight'"),
    "transposed": (set_tensor("blocks.0.mlp.up_proj.weight", lambda w: w.t().contiguous()), "has shape (32, 96)"),
    "scalar": (set_tensor("norm.weight", lambda w: w[0].clone()), "norm.weight has shape ()"),
    "extra_dim": (set_tensor("norm.weight", lambda w: w[None].clone()), "norm.weight has shape (1, 32)"),
    "empty": (set_tensor("embed.weight", lambda w: w[:0].clone()), "embed.weight has shape (0, 32)"),
    "all_gone": (lambda t: t.clear(), "missing"),
}


@pytest.mark.parametrize("case", TENSOR_EDITS)
def test_tensors_that_do_not_match_the_config(native, tmp_path, case):
    edit, fragment = TENSOR_EDITS[case]
    bad = edited(native, tmp_path / "bad", tensors=lambda t: edit(t))
    assert fragment in error_of(load_model, str(bad))


def corrupt(kind, data):
    header = int.from_bytes(data[:8], "little")
    return {
        "empty": b"", "short": data[:5], "garbage": os.urandom(64), "header_too_large": b"\xff" * 8 + data[8:],
        "header_past_end": (len(data) * 2).to_bytes(8, "little") + data[8:], "truncated": data[:-100],
        "header_not_json": data[:8] + b"x" * header + data[8 + header:], "zero_header": b"\0" * 8,
        "offsets_lie": data.replace(b'"data_offsets":[0,', b'"data_offsets":[8,', 1),
    }[kind]


@pytest.mark.parametrize("kind", ["empty", "short", "garbage", "header_too_large", "header_past_end", "truncated",
                                  "header_not_json", "zero_header", "offsets_lie"])
def test_corrupt_safetensors(native, sources, tmp_path, kind):
    for name, src in (("native", native), ("imported", sources["fla-gla"][0])):
        bad = edited(src, tmp_path / name)
        (bad / "model.safetensors").write_bytes(corrupt(kind, (bad / "model.safetensors").read_bytes()))
        error_of(load_model, str(bad))


@pytest.mark.parametrize("kind", ["absent", "directory", "fifo", "device"])
def test_weights_that_are_not_a_file(native, sources, tmp_path, kind):
    for name, src in (("native", native), ("imported", sources["hf-lfm2"][0])):
        bad = edited(src, tmp_path / name)
        weights = bad / "model.safetensors"
        weights.unlink()
        if kind == "directory":
            weights.mkdir()
        elif kind == "fifo":
            os.mkfifo(weights)
        elif kind == "device":
            weights.symlink_to("/dev/zero")
        error_of(load_model, str(bad))


class Boom:
    """Unpickling this runs code: the sentinel file shows whether anything ever unpickled the weights."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (str(self.sentinel), "w"))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.bin", "model.pt"])
def test_pickle_weights_are_never_unpickled(native, sources, tmp_path, name):
    import pickle

    for kind, src in (("native", native), ("imported", sources["hf-mamba2"][0])):
        bad = edited(src, tmp_path / kind)
        (bad / "model.safetensors").unlink()
        sentinel = tmp_path / f"{kind}-unpickled"
        (bad / name).write_bytes(pickle.dumps(Boom(sentinel)))
        assert "pickle" in error_of(load_model, str(bad))
        assert not sentinel.exists()


# --- imported layouts: config.json values and weights

IMPORTED_VALUES = [
    ("hf-mamba2", {"hidden_size": "big"}, "hidden_size must be an integer"),
    ("hf-mamba2", {"hidden_size": -32}, "hidden_size"), ("hf-mamba2", {"hidden_size": 0}, "hidden_size"),
    ("hf-mamba2", {"hidden_size": 32.5}, "hidden_size"), ("hf-mamba2", {"hidden_size": True}, "hidden_size"),
    ("hf-mamba2", {"hidden_size": None}, "hidden_size"), ("hf-mamba2", {"hidden_size": DROP}, "has no 'hidden_size'"),
    ("hf-mamba2", {"num_hidden_layers": -1}, "num_hidden_layers"), ("hf-mamba2", {"num_hidden_layers": "2"}, "num_hidden_layers"),
    ("hf-mamba2", {"num_hidden_layers": 10**12}, HUGE), ("hf-mamba2", {"vocab_size": 10**12}, HUGE),
    ("hf-mamba2", {"hidden_size": 10**12, "num_heads": 2 * 10**12 // 16}, HUGE),
    ("hf-mamba2", {"state_size": 10**12}, "FP32 parameters"), ("hf-mamba2", {"expand": "x" * 10}, "expand"),
    ("hf-mamba2", {"head_dim": 0}, "head_dim"), ("hf-mamba2", {"tie_word_embeddings": "no"}, "tie_word_embeddings"),
    ("hf-mamba2", {"use_conv_bias": 1}, "use_conv_bias"), ("hf-mamba2", {"layer_norm_epsilon": "x"}, "layer_norm_epsilon"),
    ("hf-mamba2", {"layer_norm_epsilon": 10**400}, "layer_norm_epsilon"), ("hf-mamba2", {"time_step_limit": "x"}, "time_step_limit"),
    ("hf-mamba2", {"time_step_limit": [1, 2, 3]}, "time_step_limit"), ("hf-mamba2", {"time_step_limit": [10**400]}, "time_step_limit"),
    ("hf-mamba2", {"time_step_limit": [{"__float__": "nope"}]}, "time_step_limit"),
    ("hf-mamba2", {"time_step_limit": [math.nan, 1.0]}, "dt_min"), ("hf-mamba2", {"hidden_act": ["silu"]}, "hidden_act"),
    ("hf-mamba2", {"model_type": ["mamba2"]}, "unknown model_type"), ("hf-mamba2", {"model_type": "mamba9"}, "unknown model_type"),
    ("hf-mamba2", {"model_type": {"a": 1}}, "unknown model_type"),
    ("hf-lfm2", {"layer_types": "conv"}, "layer_types"), ("hf-lfm2", {"layer_types": [1, 2]}, "layer_types"),
    ("hf-lfm2", {"layer_types": [["conv"], "conv"]}, "layer_types"), ("hf-lfm2", {"layer_types": ["conv"]}, "1 layer_types for 2"),
    ("hf-lfm2", {"layer_types": ["conv", "moe"]}, "unknown layer type"),
    ("hf-lfm2", {"layer_types": DROP, "full_attn_idxs": ["a"]}, "full_attn_idxs"),
    ("hf-lfm2", {"num_hidden_layers": 10**12}, "num_hidden_layers"), ("hf-lfm2", {"rope_parameters": []}, "rope_parameters"),
    ("hf-lfm2", {"rope_parameters": {"rope_type": "yarn"}}, "rope type 'yarn'"),
    ("hf-lfm2", {"rope_parameters": {"rope_theta": "x"}}, "rope_theta"), ("hf-lfm2", {"rope_theta": -1}, "rope_theta"),
    ("hf-lfm2", {"block_auto_adjust_ff_dim": True, "block_ffn_dim_multiplier": 1e308}, "hf-lfm2"),
    ("hf-lfm2", {"intermediate_size": 10**12}, HUGE), ("hf-lfm2", {"num_key_value_heads": "2"}, "num_key_value_heads"),
    ("hf-lfm2", {"head_dim": -4}, "head_dim"), ("hf-lfm2", {"conv_L_cache": 1}, "kernel"),
    ("hf-lfm2", {"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
    ("hf-xlstm", {"use_bias": True}, "use_bias true is not supported"), ("hf-xlstm", {"use_bias": "no"}, "use_bias"),
    ("hf-xlstm", {"weight_mode": "sharded"}, "weight_mode"), ("hf-xlstm", {"weight_mode": "fused"}, "missing weights"),
    ("hf-xlstm", {"num_blocks": 3}, "num_blocks 3 != num_hidden_layers 2"),
    ("hf-xlstm", {"num_blocks": DROP, "num_hidden_layers": DROP}, "no 'num_blocks' or 'num_hidden_layers'"),
    ("hf-xlstm", {"num_blocks": None, "num_hidden_layers": 10**12}, HUGE), ("hf-xlstm", {"embedding_dim": 16}, "embedding_dim"),
    ("hf-xlstm", {"hidden_size": None}, "has no 'hidden_size' or 'embedding_dim'"), ("hf-xlstm", {"num_heads": 3}, "not divisible"),
    ("hf-xlstm", {"qk_dim_factor": 0.3}, "must split into 2 heads"), ("hf-xlstm", {"qk_dim_factor": 1e300}, "too large to build"),
    ("hf-xlstm", {"v_dim_factor": 0}, "v_dim_factor"), ("hf-xlstm", {"v_dim_factor": 0.01}, "no elements"),
    ("hf-xlstm", {"ffn_proj_factor": 1e300}, "d_ff"), ("hf-xlstm", {"ffn_proj_factor": 1e308}, "keeps hidden_size (32) * ffn_proj_factor finite"),
    ("hf-xlstm", {"ffn_round_up_to_multiple_of": 0}, "ffn_round_up_to_multiple_of"),
    ("hf-xlstm", {"gate_soft_cap": -1}, "gate_soft_cap"), ("hf-xlstm", {"gate_soft_cap": "15"}, "gate_soft_cap"),
    ("hf-xlstm", {"output_logit_soft_cap": 0}, "output_logit_soft_cap"),
    ("hf-xlstm", {"output_logit_soft_cap": math.inf}, "output_logit_soft_cap"), ("hf-xlstm", {"eps": 0}, "eps"),
    ("hf-xlstm", {"norm_eps": math.nan}, "norm_eps"), ("hf-xlstm", {"mode": "fast"}, "mode"),
    ("hf-xlstm", {"inference_state_dtype": "int8"}, "inference_state_dtype"), ("hf-xlstm", {"chunk_size": "64"}, "chunk_size"),
    ("hf-xlstm", {"add_out_norm": "yes"}, "add_out_norm"), ("hf-xlstm", {"step_kernel": 3}, "step_kernel"),
    ("hf-xlstm", {"vocab_size": 10**12}, HUGE), ("hf-xlstm", {"tie_word_embeddings": None}, "tie_word_embeddings"),
    ("hf-llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn' is not supported"),
    ("hf-llama", {"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope type 'linear'"),
    ("hf-llama", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope type 'dynamic'"),
    ("hf-llama", {"rope_scaling": "llama3"}, "rope_scaling must be an object"), ("hf-llama", {"rope_scaling": [1]}, "rope_scaling"),
    ("hf-llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "has no 'low_freq_factor'"),
    ("hf-llama", {"rope_scaling": {**LL3, "factor": -1}}, "factor must be a positive number"),
    ("hf-llama", {"rope_scaling": {**LL3, "factor": "8"}}, "factor"), ("hf-llama", {"rope_scaling": {**LL3, "factor": math.inf}}, "factor"),
    ("hf-llama", {"rope_scaling": {**LL3, "low_freq_factor": None}}, "low_freq_factor"),
    ("hf-llama", {"rope_scaling": {**LL3, "high_freq_factor": 1.0}}, "must be above low_freq_factor"),
    ("hf-llama", {"rope_scaling": {**LL3, "original_max_position_embeddings": 0}}, "original_max_position_embeddings"),
    ("hf-llama", {"rope_scaling": {**LL3, "original_max_position_embeddings": 64.0}}, "original_max_position_embeddings"),
    ("hf-llama", {"rope_scaling": {**LL3, "beta_fast": 32}}, "unknown key(s) 'beta_fast'"),
    ("hf-llama", {"rope_scaling": {"rope_type": 3}}, "rope_type must be a string"),
    ("hf-llama", {"rope_scaling": {"rope_type": "llama3"}, "rope_theta": 0}, "rope_theta"),
    ("hf-llama", {"rope_scaling": None, "rope_parameters": {"full_attention": {"rope_type": "default"}}}, "unknown key(s) 'full_attention'"),
    ("hf-llama", {"rope_theta": -1}, "rope_theta"), ("hf-llama", {"rope_theta": math.nan}, "rope_theta"),
    ("hf-llama", {"rope_theta": "1e4"}, "rope_theta"), ("hf-llama", {"partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5"),
    ("hf-llama", {"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"), ("hf-llama", {"hidden_act": None}, "hidden_act"),
    ("hf-llama", {"attention_bias": "yes"}, "attention_bias"), ("hf-llama", {"mlp_bias": 1}, "mlp_bias"),
    ("hf-llama", {"mlp_bias": True}, "missing weights"), ("hf-llama", {"num_key_value_heads": 3}, "not a multiple"),
    ("hf-llama", {"num_key_value_heads": 0}, "num_key_value_heads"), ("hf-llama", {"head_dim": 0}, "head_dim"),
    ("hf-llama", {"head_dim": 12}, "has shape"), ("hf-llama", {"head_dim": 2**40}, "FP32 parameters"),
    ("hf-llama", {"head_dim": 2**62}, "too large"), ("hf-llama", {"intermediate_size": DROP}, "has no 'intermediate_size'"),
    ("hf-llama", {"intermediate_size": 10**12}, HUGE), ("hf-llama", {"num_hidden_layers": 10**12}, "num_hidden_layers"),
    ("hf-llama", {"rms_norm_eps": 0}, "rms_norm_eps"), ("hf-llama", {"tie_word_embeddings": "no"}, "tie_word_embeddings"),
    ("hf-llama", {"vocab_size": 10**12}, HUGE),
    ("hf-qwen2", {"use_sliding_window": True, "max_window_layers": 1}, "sliding-window layers"),
    ("hf-qwen2", {"use_sliding_window": "yes"}, "use_sliding_window"),
    ("hf-qwen2", {"use_sliding_window": True, "max_window_layers": -1}, "max_window_layers"),
    ("hf-qwen2", {"use_sliding_window": True, "sliding_window": "big", "max_window_layers": 0}, "sliding_window"),
    ("hf-qwen2", {"layer_types": ["full_attention", "sliding_attention"]}, "layer type(s) 'sliding_attention'"),
    ("hf-qwen2", {"layer_types": ["full_attention"]}, "1 layer_types for 2"), ("hf-qwen2", {"layer_types": "full"}, "layer_types"),
    ("hf-qwen2", {"num_key_value_heads": DROP}, "not a multiple of n_kv_heads 32"),
    ("hf-qwen2", {"rope_theta": None}, "rope_theta"), ("hf-qwen2", {"hidden_size": 48}, "shape"),
    ("hf-qwen3", {"head_dim": None}, "head_dim"), ("hf-qwen3", {"head_dim": DROP}, "has shape"),
    ("hf-qwen3", {"layer_types": [1, 2]}, "layer type(s)"), ("hf-qwen3", {"attention_bias": True}, "missing weights"),
    ("hf-qwen3", {"rope_parameters": {"rope_type": "longrope"}}, "rope type 'longrope'"),
    ("hf-qwen3", {"rope_parameters": {"rope_theta": -5}}, "rope_theta"), ("hf-qwen3", {"rms_norm_eps": "1e-6"}, "rms_norm_eps"),
    ("hf-gpt2", {"activation_function": "relu"}, "activation_function 'relu' is not supported"),
    ("hf-gpt2", {"activation_function": "gelu_fast"}, "activation_function 'gelu_fast'"),
    ("hf-gpt2", {"activation_function": ["gelu"]}, "activation_function must be a string"),
    ("hf-gpt2", {"n_positions": 0}, "n_positions"), ("hf-gpt2", {"n_positions": -1}, "n_positions"),
    ("hf-gpt2", {"n_positions": 10**12}, HUGE), ("hf-gpt2", {"n_positions": 2**70}, "below 2**63"),
    ("hf-gpt2", {"n_positions": 1.5}, "n_positions"), ("hf-gpt2", {"n_positions": 16}, "has shape"),
    ("hf-gpt2", {"n_positions": DROP}, "has no 'n_positions'"),
    ("hf-gpt2", {"max_position_embeddings": 96}, "n_positions and max_position_embeddings differ"),
    ("hf-gpt2", {"n_inner": 0}, "n_inner"), ("hf-gpt2", {"n_inner": 10**12}, HUGE), ("hf-gpt2", {"n_inner": 64}, "has shape"),
    ("hf-gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx true is not supported"),
    ("hf-gpt2", {"scale_attn_weights": False}, "scale_attn_weights false"),
    ("hf-gpt2", {"reorder_and_upcast_attn": "no"}, "reorder_and_upcast_attn"),
    ("hf-gpt2", {"add_cross_attention": True}, "add_cross_attention true"), ("hf-gpt2", {"layer_norm_epsilon": -1}, "layer_norm_epsilon"),
    ("hf-gpt2", {"n_head": 3}, "not divisible"), ("hf-gpt2", {"n_embd": "32"}, "n_embd"), ("hf-gpt2", {"n_layer": 10**12}, "n_layer"),
    ("hf-gpt2", {"tie_word_embeddings": False}, "missing weights"), ("hf-gpt2", {"vocab_size": None}, "vocab_size"),
    ("fla-gla", {"num_kv_heads": 3}, "num_kv_heads"), ("fla-gla", {"num_kv_heads": "x"}, "num_kv_heads"),
    ("fla-gla", {"feature_map": []}, "feature_map"), ("fla-gla", {"feature_map": "cosine"}, "feature_map"),
    ("fla-gla", {"intermediate_size": DROP, "hidden_ratio": "x"}, "hidden_ratio"),
    ("fla-gla", {"intermediate_size": DROP, "hidden_ratio": 1e300}, "d_ff"), ("fla-gla", {"intermediate_size": -5}, "intermediate_size"),
    ("fla-gla", {"attn": {"layers": [1]}}, "softmax attention"), ("fla-gla", {"hidden_act": "gelu"}, "hidden_act"),
    ("fla-gla", {"expand_k": 1e300}, "too large to build"), ("fla-gla", {"expand_k": "half"}, "expand_k"),
    ("fla-gla", {"elementwise_affine": "no"}, "elementwise_affine"), ("fla-gla", {"use_gk": "yes"}, "use_gk"),
    ("fla-gla", {"clamp_min": "x"}, "clamp_min"), ("fla-gla", {"norm_eps": None}, "norm_eps"),
    ("fla-gla", {"num_heads": 3}, "not divisible"), ("fla-gla", {"hidden_size": 64}, "shape"),
]


@pytest.mark.parametrize("layout, changes, fragment", IMPORTED_VALUES,
                         ids=[f"{layout}-{case_id(c)}" for layout, c, _ in IMPORTED_VALUES])
def test_bad_imported_config_value(sources, tmp_path, layout, changes, fragment):
    bad = edited(sources[layout][0], tmp_path / "bad", config=changes)
    assert fragment in error_of(load_model, str(bad))


IMPORTED_TENSORS = [
    ("hf-mamba2", "backbone.layers.1.mixer.A_log", lambda w: w.to(torch.int32), "dtype int32"),
    ("hf-mamba2", "backbone.embeddings.weight", lambda w: w.bool(), "dtype bool"),
    ("hf-mamba2", "backbone.layers.0.mixer.D", lambda w: w.fill_(math.nan), "inf or NaN"),
    ("hf-lfm2", "model.layers.1.self_attn.q_proj.weight", lambda w: w.to(torch.uint8), "dtype uint8"),
    ("hf-lfm2", "model.layers.0.conv.conv.weight", lambda w: w.fill_(math.inf), "inf or NaN"),
    ("hf-lfm2", "model.embedding_norm.weight", lambda w: w.double().fill_(1e300), "inf or NaN"),
    ("hf-xlstm", "backbone.blocks.0.mlstm_layer.igate_preact.bias", lambda w: w.fill_(math.nan), "inf or NaN"),
    ("hf-xlstm", "backbone.blocks.1.mlstm_layer.fgate_preact.weight", lambda w: w.t().contiguous(), "has shape"),
    ("hf-xlstm", "backbone.blocks.1.mlstm_layer.multihead_norm.weight", lambda w: w.to(torch.int16), "dtype int16"),
    ("hf-xlstm", "backbone.blocks.0.mlstm_layer.q.weight", DROP, "missing weights"),
    ("fla-gla", "model.layers.0.attn.gk_proj.1.bias", lambda w: w.to(torch.int8), "dtype int8"),
    ("fla-gla", "lm_head.weight", lambda w: w.half().fill_(-math.inf), "inf or NaN"),
    ("fla-gla", "model.layers.1.attn.q_proj.weight", lambda w: w.t().contiguous(), "has shape"),
    ("fla-gla", "model.layers.1.attn.q_proj.weight", lambda w: w[0].clone(), "has shape"),
    ("fla-gla", "model.layers.1.attn.q_proj.weight", DROP, "missing weights"),
    ("hf-lfm2", "model.layers.0.conv.in_proj.weight", DROP, "missing weights"),
    ("hf-llama", "model.layers.0.self_attn.q_proj.bias", lambda w: w.to(torch.int32), "dtype int32"),
    ("hf-llama", "model.layers.1.self_attn.k_proj.weight", lambda w: w.t().contiguous(), "has shape"),
    ("hf-llama", "model.layers.1.self_attn.o_proj.bias", DROP, "missing weights"),
    ("hf-llama", "lm_head.weight", DROP, "missing weights"),
    ("hf-qwen2", "model.layers.0.self_attn.v_proj.bias", DROP, "missing weights"),
    ("hf-qwen2", "model.layers.1.mlp.down_proj.weight", lambda w: w.fill_(math.nan), "inf or NaN"),
    ("hf-qwen2", "model.embed_tokens.weight", lambda w: w.to(torch.float8_e4m3fn), "dtype float8_e4m3fn"),
    ("hf-qwen3", "model.layers.0.self_attn.q_norm.weight", DROP, "missing weights"),
    ("hf-qwen3", "model.layers.1.self_attn.k_norm.weight", lambda w: w[:-1].clone(), "has shape"),
    ("hf-gpt2", "transformer.h.0.attn.c_attn.weight", lambda w: w.t().contiguous(), "has shape"),
    ("hf-gpt2", "transformer.h.0.attn.c_attn.weight", lambda w: w[0].clone(), "has shape"),
    ("hf-gpt2", "transformer.h.1.attn.c_attn.bias", lambda w: w[:-1].clone(), "has shape"),
    ("hf-gpt2", "transformer.h.1.attn.c_attn.weight", DROP, "missing weights"),
    ("hf-gpt2", "transformer.h.1.mlp.c_fc.weight", lambda w: w.t().contiguous(), "has shape"),
    ("hf-gpt2", "transformer.wpe.weight", lambda w: w.to(torch.int8), "dtype int8"),
    ("hf-gpt2", "transformer.wpe.weight", DROP, "missing weights"),
    ("hf-gpt2", "transformer.ln_f.bias", lambda w: w.fill_(math.inf), "inf or NaN"),
]


@pytest.mark.parametrize("layout, name, edit, fragment", IMPORTED_TENSORS,
                         ids=[f"{layout}-{name.split('.', 2)[-1]}-{fragment}" for layout, name, _, fragment in IMPORTED_TENSORS])
def test_bad_imported_tensor(sources, tmp_path, layout, name, edit, fragment):
    change = (lambda t: t.pop(name)) if edit is DROP else set_tensor(name, edit)
    bad = edited(sources[layout][0], tmp_path / "bad", tensors=change)
    msg = error_of(load_model, str(bad))
    assert fragment in msg and (edit is DROP or fragment == "has shape" or name in msg), msg


def test_grouped_heads_with_wrong_shapes_are_one_error(sources, tmp_path):
    """num_kv_heads repeats k/v rows per head: a k_proj of the wrong size fails in the reshape, named as a shape error."""
    bad = edited(sources["fla-gla"][0], tmp_path / "bad", config={"num_kv_heads": 1},
                 tensors=set_tensor("model.layers.0.attn.k_proj.weight", lambda w: w[:5].clone()))
    assert "shape" in error_of(load_model, str(bad))


INDEXES = {
    "outside": {"weight_map": {"a": "../model.safetensors"}}, "absolute": {"weight_map": {"a": "/etc/passwd"}},
    "not_a_map": {"weight_map": ["model.safetensors"]}, "no_map": {"metadata": {}}, "number": {"weight_map": {"a": 5}},
    "absent_shard": {"weight_map": {"a": "model-00002.safetensors"}}, "dot_dot": {"weight_map": {"a": ".."}},
    "subdir": {"weight_map": {"a": "sub/model.safetensors"}},
}


@pytest.mark.parametrize("case", INDEXES)
def test_bad_shard_index(sources, tmp_path, case):
    bad = edited(sources["hf-mamba2"][0], tmp_path / "bad")
    (bad / "model.safetensors.index.json").write_text(json.dumps(INDEXES[case]))
    error_of(load_model, str(bad))


def test_shard_index_that_is_not_json(sources, tmp_path):
    bad = edited(sources["hf-mamba2"][0], tmp_path / "bad")
    (bad / "model.safetensors.index.json").write_bytes(b"[" * 100_000)
    assert "nests deeper" in error_of(load_model, str(bad))


@pytest.mark.parametrize("max_context", [0, -1, 2.5, "64", True])
def test_bad_max_context(sources, max_context):
    assert "max_context" in error_of(load_model, str(sources["hf-lfm2"][0]), max_context=max_context)


@pytest.mark.parametrize("spec", ["a\0b", "x" * 5000, "./no/such/dir", 5, b"gla-tiny"])
def test_bad_model_spec(spec):
    error_of(load_model, spec)


def test_a_file_is_not_a_checkpoint(native):
    assert "is a file" in error_of(load_model, str(native / "config.json"))


# --- property-based: random JSON in each field

JSON_LEAF = (st.none() | st.booleans() | st.integers() | st.sampled_from([0, 1, -1, 2, 16, 32, 10**9, 10**12, 2**63, 2**70])
             | st.floats() | st.text(max_size=6))
JSON = st.recursive(JSON_LEAF, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
                    max_leaves=6)
# values valid for some field, so that loads also succeed and the config can be compared
PLAUSIBLE = st.sampled_from([0, 1, 2, 7, 32, 64, 96, -1, 1e-5, 0.02, 3.5, True, False, None, "relu", ["gla", "swa"],
                             ["gla", "swa", "swa"], {"gla": {"use_short_conv": True}, "swa": {"window": 8}}])
FIELDS = list(BASE.to_dict())
GLA_OPTIONS = list(GLAOptions.__dataclass_fields__)


@pytest.fixture(scope="module")
def fuzz_dir(native, tmp_path_factory):
    return shutil.copytree(native, tmp_path_factory.mktemp("fuzz") / "ckpt")


def load_or_refuse(path, doc):
    """Write `doc` as config.json and load: an EdgelinError, or a model; returns the model or None."""
    (path / "config.json").write_text(json.dumps(doc))
    try:
        return load_model(str(path)).model
    except EdgelinError as e:
        assert str(e) and "\n" not in str(e), str(e)
        return None


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(FIELDS), JSON | PLAUSIBLE, min_size=1, max_size=3))
def test_fuzz_native_config_fields(fuzz_dir, changes):
    doc = {**BASE.to_dict(), **changes}
    model = load_or_refuse(fuzz_dir, doc)
    if model is not None:
        for key, value in changes.items():
            got = getattr(model.config, key)
            assert got == value and type(got) is type(value), (key, value, got)


@FUZZ
@given(options=st.dictionaries(st.sampled_from(GLA_OPTIONS), JSON | PLAUSIBLE, min_size=1, max_size=3))
def test_fuzz_native_mixer_options(fuzz_dir, options):
    doc = {**BASE.to_dict(), "mixers": {"gla": {"use_short_conv": True, **options}, "swa": {"window": 8}}}
    model = load_or_refuse(fuzz_dir, doc)
    if model is not None:
        built = model.blocks[0].mixer.options
        for key, value in options.items():
            assert getattr(built, key) == value and (type(value) is not str or type(getattr(built, key)) is str), key


@pytest.fixture(scope="module")
def fuzz_sources(sources, tmp_path_factory):
    return {layout: shutil.copytree(path, tmp_path_factory.mktemp("fuzz") / layout) for layout, (path, _) in sources.items()}


@FUZZ
@given(layout=st.sampled_from(list(SOURCES)), data=st.data())
def test_fuzz_imported_config_fields(fuzz_sources, layout, data):
    cfg = SOURCES[layout][0]
    keys = sorted(set(cfg) | {"hidden_ratio", "num_kv_heads", "block_ffn_dim_multiplier", "full_attn_idxs",
                              "rope_parameters", "time_step_rank", "num_v_heads", "elementwise_affine", "rope_scaling",
                              "head_dim", "layer_types", "use_sliding_window", "max_window_layers", "partial_rotary_factor",
                              "original_max_position_embeddings", "hidden_size", "max_position_embeddings"})
    changes = data.draw(st.dictionaries(st.sampled_from(keys), JSON | PLAUSIBLE, min_size=1, max_size=3))
    load_or_refuse(fuzz_sources[layout], {**cfg, **changes})


# --- the CLI: one error line, exit 2, no output left behind

CLI_CASES = {
    "int32_weights": ("native", {"tensors": set_tensor("embed.weight", lambda w: w.to(torch.int32))}, "dtype int32"),
    "nan_weights": ("native", {"tensors": set_tensor("norm.weight", lambda w: w.fill_(math.nan))}, "inf or NaN"),
    "huge_d_model": ("native", {"config": {"d_model": 10**12}}, "GiB"),
    "non_utf8_config": ("native", {"config_text": b"{\"d_model\": \"\xff\"}"}, "not valid JSON"),
    "deep_config": ("native", {"config_text": "[" * 200_000}, "nests deeper"),
    "imported_hidden_size": ("hf-mamba2", {"config": {"hidden_size": "big"}}, "hidden_size"),
    "imported_inf_weights": ("fla-gla", {"tensors": set_tensor("model.norm.weight", lambda w: w.fill_(math.inf))}, "inf or NaN"),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_export_refuses_a_bad_checkpoint(native, sources, tmp_path, case):
    src, edits, fragment = CLI_CASES[case]
    bad = edited(native if src == "native" else sources[src][0], tmp_path / "bad", **edits)
    assert_user_error(run("export", bad, "-o", tmp_path / "out"), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_cli_export_refuses_pickle_only(native, tmp_path):
    bad = edited(native, tmp_path / "bad")
    (bad / "model.safetensors").rename(bad / "pytorch_model.bin")
    assert_user_error(run("export", bad, "-o", tmp_path / "out"), "pickle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
