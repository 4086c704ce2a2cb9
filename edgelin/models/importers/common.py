"""What every importer shares: config.json, (sharded) safetensors, a checked weight map, the LM build."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from edgelin.errors import EdgelinError
from edgelin.models.checkpoint import checked_weight, missing_weights
from edgelin.models.config import LMConfig, is_number, read_json_object, size_needed
from edgelin.models.lm import LM
from edgelin.runtime.schema import short

REQUIRED = object()


def read_config(path: Path) -> dict[str, Any]:
    return read_json_object(path / "config.json")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint: model.safetensors, or the shards named by model.safetensors.index.json."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(s, str) for s in weight_map.values()):
            raise EdgelinError(f"{index} has no usable weight_map (an object of tensor name to shard file name)")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if shard in ("", ".", "..") or shard != Path(shard).name or "\\" in shard:
                raise EdgelinError(f"{index} names shard {short(shard)}, not a file name in {path}")
        files = [path / s for s in shards]
    elif (path / "model.safetensors").exists():
        files = [path / "model.safetensors"]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise missing_weights(path)
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.exists():
            raise EdgelinError(f"missing weights: shard {f.name} named in {index.name} is not in {path}")
        if not f.is_file():  # a directory, or a FIFO that would block the read
            raise EdgelinError(f"{f} is not a regular file")
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError) as e:
            raise EdgelinError(f"corrupt safetensors file {f}: {e}") from None
    return tensors


def refuse(cond: bool, message: str) -> None:
    """An option of the source layout that edgelin does not reproduce exactly: refuse, never approximate."""
    if cond:
        raise EdgelinError(message)


class Fields:
    """A source config.json read through typed getters. A missing required key, or a value of the
    wrong type or range, is one EdgelinError naming the key. `default` is used when the key is
    absent; null is a value of its own, accepted only with `nullable` or a None default."""

    def __init__(self, cfg: dict[str, Any], where: str):
        self.cfg, self.where = cfg, where

    def _get(self, key: str, default: Any) -> Any:
        if key not in self.cfg:
            if default is REQUIRED:
                raise EdgelinError(f"{self.where} config.json has no {key!r}")
            return default
        return self.cfg[key]

    def fail(self, key: str, need: str, value: Any) -> None:
        raise EdgelinError(f"{self.where} config.json: {key} must be {need}, got {short(value)}")

    def integer(self, key: str, default: Any = REQUIRED, *, least: int = 1, most: int | None = None) -> Any:
        value = self._get(key, default)
        if value is None and default is None:
            return None
        need = size_needed(value, least)
        if not need and most is not None and value > most:
            need = f"an integer in [{least}, {most}]"
        if need:
            self.fail(key, need, value)
        return value

    def number(self, key: str, default: Any = REQUIRED, *, positive: bool = False, nullable: bool = False) -> Any:
        value = self._get(key, default)
        if value is None and (nullable or default is None):
            return None
        if not is_number(value) or (positive and value <= 0):
            self.fail(key, "a positive number" if positive else "a finite number", value)
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            self.fail(key, "true or false", value)
        return value

    def text(self, key: str, default: Any = REQUIRED) -> Any:
        value = self._get(key, default)
        if value is None and default is None:
            return None
        if not isinstance(value, str):
            self.fail(key, "a string", value)
        return value

    def array(self, key: str, default: Any = None) -> Any:
        value = self._get(key, default)
        if value is None and default is None:
            return None
        if not isinstance(value, list):
            self.fail(key, "a list", value)
        return value

    def mapping(self, key: str, default: Any = None) -> Any:
        value = self._get(key, default)
        if value is None and default is None:
            return None
        if not isinstance(value, dict):
            self.fail(key, "an object", value)
        return value


class Weights:
    """The source tensors by name; `take` records what was used and names everything missing at once."""

    def __init__(self, tensors: dict[str, torch.Tensor], source: str):
        self.tensors, self.source = tensors, source
        self.prefix = ""
        self.missing: list[str] = []

    def strip(self, prefix: str) -> None:
        """Names below are given without `prefix` (e.g. "backbone." of a *ForCausalLM), when the checkpoint uses it."""
        if any(k.startswith(prefix) for k in self.tensors):
            self.prefix = prefix

    def take(self, name: str) -> torch.Tensor:
        return self.first(name)

    def first(self, *names: str) -> torch.Tensor:
        """The first of several accepted names (e.g. renamed keys across versions), as float32."""
        for name in names:
            for full in (self.prefix + name, name):
                if full in self.tensors:
                    return checked_weight(self.tensors[full], full, self.source)
        self.missing.append(" or ".join(self.prefix + n for n in names))
        return torch.zeros(0)

    def check(self) -> None:
        if self.missing:
            more = f" (and {len(self.missing) - 8} more)" if len(self.missing) > 8 else ""
            raise EdgelinError(f"missing weights in {self.source}: {', '.join(self.missing[:8])}{more}")


def repeat_heads(w: torch.Tensor, groups: int, head_dim: int) -> torch.Tensor:
    """Rows of a per-kv-head tensor [(kv_heads * head_dim), ...] repeated for grouped heads: head j reads kv head j // groups."""
    if groups == 1:
        return w
    return w.reshape(-1, 1, head_dim, *w.shape[1:]).expand(-1, groups, head_dim, *w.shape[1:]).reshape(-1, *w.shape[1:])


def empty_model(config: LMConfig) -> tuple[LM, dict[str, tuple[int, ...]]]:
    """The LM for `config` with its parameters released, and the shape each one must have.

    Allocated and released before the checkpoint is read, so its random initial values and the
    checkpoint's tensors are never in memory together (`build` gives it the checkpoint's tensors)."""
    model = LM(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for p in model.parameters():
        p.data = torch.empty(0)
    return model, shapes


def build(model: LM, shapes: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor], source: str) -> LM:
    """`model` (from `empty_model`) holding `state`; every expected weight must be there with its shape.
    A float32 source tensor becomes the parameter as it is (read from the file on demand), no copy."""
    expected = dict(shapes)
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise EdgelinError(f"{source}: no source weight for {', '.join(missing[:8])}")
    for name, tensor in state.items():
        if name not in expected:
            raise EdgelinError(f"{source}: importer produced unknown weight {name}")
        if tuple(tensor.shape) != expected[name]:
            raise EdgelinError(f"{source}: {name} has shape {tuple(tensor.shape)}, config.json implies {expected[name]}")
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for name, tensor in state.items():
        target = params.get(name)
        if target is not None:
            target.data = tensor.float().contiguous()
        else:
            buffers[name].copy_(tensor)
    return model.eval()


@dataclass(frozen=True)
class Importer:
    """One source layout: its model_type(s), the manifest's source_layout name, and the two maps."""

    layout: str
    model_types: tuple[str, ...]
    to_config: Callable[[dict[str, Any], int], LMConfig]  # (config.json, max_context)
    to_state: Callable[[dict[str, Any], LMConfig, Weights], dict[str, torch.Tensor]]


def gated_mlp(state: dict, w: Weights, i: int, src: str, names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")) -> None:
    """SwiGLU weights of block i from the source's (gate, up, down) names under `src`."""
    for ours, theirs in zip(("gate_proj", "up_proj", "down_proj"), names):
        state[f"blocks.{i}.mlp.{ours}.weight"] = w.take(f"{src}.{theirs}.weight")


def embeddings_and_head(state: dict, w: Weights, cfg: dict, config: LMConfig, embed: tuple[str, ...], norm: str, head: str = "lm_head.weight") -> None:
    state["embed.weight"] = w.first(*embed)
    state["norm.weight"] = w.take(norm)
    if not config.tie_embeddings:
        state["lm_head.weight"] = w.take(head)


# flash-linear-attention hub layout: model.embeddings, model.layers.{i}.{attn_norm, attn, mlp_norm, mlp}, model.norm, lm_head.


def fla_checks(c: Fields) -> None:
    refuse(c.cfg.get("attn") is not None, f"{c.where}: hybrid layers with softmax attention (config 'attn') are not supported")
    refuse(c.cfg.get("attnres_block_size") is not None, f"{c.where}: attention residuals (attnres_block_size) are not supported")
    act = c.text("hidden_act", "swish")
    refuse(act != "swish", f"{c.where}: hidden_act {short(act)} is not supported (swish only)")


def fla_ffn_dim(c: Fields, hidden_ratio: float = 4) -> int:
    """fla's GatedMLP size: intermediate_size, else 2/3 * hidden_ratio * hidden rounded up to 256
    (`hidden_ratio`: the config class's default; GatedMLP takes null as 4)."""
    size = c.integer("intermediate_size", None, least=0)
    if size:
        return size
    ratio = c.number("hidden_ratio", hidden_ratio, positive=True, nullable=True) or 4
    ff = int(c.integer("hidden_size") * ratio * 2 / 3)
    return 256 * ((ff + 255) // 256)


def fla_block(state: dict, w: Weights, i: int) -> None:
    src, dst = f"model.layers.{i}", f"blocks.{i}"
    state[f"{dst}.mixer_norm.weight"] = w.take(f"{src}.attn_norm.weight")
    state[f"{dst}.mlp_norm.weight"] = w.take(f"{src}.mlp_norm.weight")
    gated_mlp(state, w, i, f"{src}.mlp")


def fla_short_convs(w: Weights, attn: str, bias: bool, repeat: tuple[int, int, int] = (1, 1, 1), head_dims: tuple[int, int, int] = (1, 1, 1)) -> dict[str, torch.Tensor]:
    """fla's q/k/v_conv1d (one depthwise conv each) as edgelin's one conv over [q, k, v] channels."""
    out = {"weight": torch.cat([repeat_heads(w.take(f"{attn}.{p}_conv1d.weight"), g, hd) for p, g, hd in zip("qkv", repeat, head_dims)])}
    if bias:
        out["bias"] = torch.cat([repeat_heads(w.take(f"{attn}.{p}_conv1d.bias"), g, hd) for p, g, hd in zip("qkv", repeat, head_dims)])
    return out


def fla_output_norm(w: Weights, attn: str, dim: int, affine: bool) -> torch.Tensor:
    """The per-head output norm weight: fused (g_norm_swish_gate), plain (g_norm / o_norm), or ones without affine."""
    if not affine:
        return torch.ones(dim)
    return w.first(f"{attn}.g_norm_swish_gate.weight", f"{attn}.g_norm.weight", f"{attn}.o_norm.weight")


def fla_embeddings_and_head(state: dict, w: Weights, cfg: dict, config: LMConfig) -> None:
    embeddings_and_head(state, w, cfg, config, ("model.embeddings.weight",), "model.norm.weight")
