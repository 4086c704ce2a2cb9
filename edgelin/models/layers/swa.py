"""Sliding-window softmax attention with a fixed-size KV state, for hybrids.

The state is a ring of `window` slots holding the last keys and values *unrotated*, and `seen`, the
tokens seen folded into [0, 2 * window) (`advance_seen`): it gives the slot the next token is written
to and which slots hold a token. A step writes its new tokens' slots (a scatter), not the whole
window. Rotary embeddings depend only on relative position, so each slot is rotated by its offset
from the query at attention time and no absolute position is kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgelin.models.config import LMConfig, mixer_options
from edgelin.models.layers.base import State, TokenMixer, handoff, split_heads
from edgelin.models.layers.norm import RMSNorm


@dataclass
class SWAOptions:
    window: int = 64
    n_kv_heads: int = 0  # 0 = n_heads
    head_dim: int = 0  # 0 = d_model // n_heads
    rope_theta: float = 10000.0  # 0 = no rotary embedding
    qk_norm: bool = False
    bias: bool = False  # on q/k/v_proj, and on o_proj unless o_bias says otherwise
    o_bias: bool | None = None  # None: as `bias` (Qwen2: q/k/v with bias, o_proj without)
    norm_eps: float = 1e-5
    # True: the source model has full (unbounded) attention, exported as a KV cache capped at
    # `window` tokens (the manifest's max_context); past it the oldest tokens drop out.
    full_attention: bool = False
    # None: plain rotary frequencies. {"type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}: Llama 3.x's frequency-dependent rescale (rope_frequencies)
    rope_scaling: dict[str, Any] | None = None


LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def rope_frequencies(dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor | None:
    """The inverse frequencies [dim / 2] of a rope scaling, in float32; None for plain rotary
    (`rotate` computes those itself). "llama3" is transformers' `_compute_llama3_parameters`, step by
    step. Raises ValueError for a scaling it does not know or values out of range."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict) or scaling.get("type") != "llama3" or set(scaling) != {"type", *LLAMA3_KEYS}:
        raise ValueError(f"swa: rope_scaling must be null or {{'type': 'llama3', {', '.join(map(repr, LLAMA3_KEYS))}}}, "
                         f"got {str(scaling)[:120]}")
    for key in LLAMA3_KEYS:
        value = scaling[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"swa: rope_scaling {key} must be a positive number, got {str(value)[:40]}")
    factor, low, high, old_context = (float(scaling[k]) for k in LLAMA3_KEYS)
    if high <= low:
        raise ValueError(f"swa: rope_scaling high_freq_factor ({high}) must be above low_freq_factor ({low})")
    # on the default device: the meta device while check_fits sizes a config, so a hostile head_dim allocates nothing
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))
    low_freq_wavelen = old_context / low
    high_freq_wavelen = old_context / high
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context / wavelen - low) / (high - low)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def _exporting() -> bool:
    """True while torch.onnx traces (TorchScript) or torch.export captures the graph: no data-dependent branches then."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float, inv_freq: torch.Tensor | None = None) -> torch.Tensor:
    """Rotary embedding (rotate-half layout) of x [B, H, P, D] at positions [P] (every row) or [B, P]
    (each row its own); `inv_freq` [D / 2] replaces the plain frequencies of `theta` (rope_frequencies)."""
    D = x.shape[-1]
    if inv_freq is None:
        inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float, device=x.device) / D)
    else:
        inv_freq = inv_freq.to(x.device)
    angles = positions.float()[..., None] * inv_freq
    if positions.dim() == 2:
        angles = angles[:, None]  # [B, 1, P, D / 2]: one row's positions for all its heads
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _wrap(x: torch.Tensor, window: int) -> torch.Tensor:
    """x modulo `window` for 0 <= x < 2 * window, without Floor or Mod (which NPU op lists lack)."""
    return x - window * (x >= window).to(x.dtype)


def advance_seen(seen: torch.Tensor, next_slot: torch.Tensor, tokens: int, window: int) -> torch.Tensor:
    """`seen` after `tokens` more (`next_slot` = `seen` modulo `window`). The state keeps a count n of
    tokens seen as n below `window`, then `window` + n modulo `window` (so it stays a small whole
    number, exact in float32): its value modulo `window` is the slot the next token goes to; slots
    below it hold tokens, and all do from `window` on."""
    return torch.where(seen + tokens >= window, window + _wrap(next_slot + tokens % window, window), seen + tokens)


class SlidingWindowAttention(TokenMixer):
    float_state_kinds = ("seen",)  # a token count: an integer grid would round it

    def __init__(self, config: LMConfig, layer: int, options: SWAOptions | None = None):
        super().__init__()
        o = self.options = options or mixer_options(SWAOptions, config, "swa")
        d, self.heads = config.d_model, config.n_heads
        self.kv_heads = o.n_kv_heads or self.heads
        self.head_dim = o.head_dim or d // self.heads
        if self.heads % self.kv_heads:
            raise ValueError(f"swa: n_heads {self.heads} is not a multiple of n_kv_heads {self.kv_heads}")
        self.window = o.window
        self.max_context = o.window if o.full_attention else None
        if o.rope_scaling is not None and not o.rope_theta:
            raise ValueError("swa: rope_scaling needs rotary embeddings (rope_theta > 0)")
        self.inv_freq = rope_frequencies(self.head_dim, o.rope_theta, o.rope_scaling)
        self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=o.bias)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=o.bias)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=o.bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, d, bias=o.bias if o.o_bias is None else o.o_bias)
        self.q_norm = RMSNorm(self.head_dim, o.norm_eps) if o.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, o.norm_eps) if o.qk_norm else None

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        kv = (batch, self.kv_heads, self.window, self.head_dim)
        return {"key": kv, "value": kv, "seen": (batch, 1)}

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, H, T, D], k and v [B, T, Hkv, D] (unrotated, as the state keeps them)."""
        q = split_heads(self.q_proj(x), self.heads)
        k = split_heads(self.k_proj(x), self.kv_heads)
        v = split_heads(self.v_proj(x), self.kv_heads)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q.transpose(1, 2), k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Softmax attention of q over the window's keys and the new ones: o [B, T, H*D] and the new state."""
        B, _, T, _ = q.shape
        W = self.window
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, Hkv, T, D]
        seen = state["seen"]  # [B, 1]
        nxt = _wrap(seen, W)  # the slot the first new token goes to
        # the last min(T, W) new tokens go to their slots; the rest of the ring is untouched
        kept = min(T, W)
        first = _wrap(nxt + (T - kept) % W, W)
        slots = _wrap(first + torch.arange(kept, device=q.device, dtype=seen.dtype), W).to(torch.int64)  # [B, kept]
        index = slots[:, None, :, None].expand(B, self.kv_heads, kept, self.head_dim)
        new_state = {"key": state["key"].scatter(2, index, k[:, :, T - kept:]),
                     "value": state["value"].scatter(2, index, v[:, :, T - kept:]),
                     "seen": advance_seen(seen, nxt, T, W)}
        if T > W or q.is_meta:  # the full window (meta tensors, sizing a config, have no filled count)
            return self._attend_blocks(q, k, v, state, nxt), new_state
        theta, rep = self.options.rope_theta, self.heads // self.kv_heads
        if not _exporting() and not seen.any():
            # a fresh sequence (training, a first prefill): plain causal attention
            if theta:
                q, k = (rotate(x, torch.arange(T, device=q.device), theta, self.inv_freq) for x in (q, k))
            o = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), is_causal=True)
            return o.transpose(1, 2).flatten(-2), new_state
        return self._attend_filled(q, k, v, state, nxt), new_state

    def _attend_filled(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: State,
                       nxt: torch.Tensor) -> torch.Tensor:
        """Attention of T <= W queries over the ring's filled slots and the T new keys, so a step costs
        O(filled), not O(W), at a short context.

        Slots fill from 0, so the slots read are 0 .. the most any batch row has filled: a Range whose
        end comes from `seen`, so data-dependent. Reading every slot instead gives the same result (the
        others are empty and masked): that is the static form NPU profiles take
        (`edgelin.exporters.static.make_static` ends the Range at the window). Grouped heads share
        their key and value rows through a broadcasting product instead of repeated copies. `nxt`
        is the slot the first new token goes to (`seen` modulo the window).
        """
        B, H, T, D = q.shape
        W, Hkv, theta = self.window, self.kv_heads, self.options.rope_theta
        seen = state["seen"]  # [B, 1]
        index = torch.arange(seen.amax().clamp(max=W).to(torch.int64), device=q.device)  # [n]
        slot = index.to(seen.dtype)[None]
        offset = slot - nxt - W * (slot >= nxt).to(seen.dtype)  # [B, n]: its position, the first new token's 0
        filled = torch.cat([slot < seen, q.new_ones((B, T), dtype=torch.bool)], 1)  # [B, n + T]
        kpos = torch.cat([offset, torch.arange(T, device=q.device, dtype=seen.dtype)[None].expand(B, T)], 1)  # [B, n + T]
        keys = torch.cat([state["key"].index_select(2, index), k], 2)  # [B, Hkv, n + T, D]
        values = torch.cat([state["value"].index_select(2, index), v], 2)
        qpos = torch.arange(T, device=q.device, dtype=seen.dtype)
        if theta:
            q = rotate(q, qpos, theta, self.inv_freq)
            keys = rotate(keys, kpos, theta, self.inv_freq)
        allowed = (kpos[:, None] <= qpos[:, None]) & (kpos[:, None] > qpos[:, None] - W) & filled[:, None]  # [B, T, n + T]
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
        q = q.reshape(B, Hkv, H // Hkv * T, D) * D ** -0.5  # head h reads kv head h // (H / Hkv)
        scores = (q @ keys.transpose(-1, -2)).unflatten(2, (H // Hkv, T)) + bias[:, None, None]
        o = (scores.softmax(-1).flatten(2, 3) @ values).reshape(B, H, T, D)
        return o.transpose(1, 2).flatten(-2)

    def _attend_blocks(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: State,
                       nxt: torch.Tensor) -> torch.Tensor:
        """Every window slot, queries in blocks of W (training, a prefill longer than the window):
        the ring is laid out oldest first before the new keys, and each block sees at most 2W - 1
        keys, so memory is O(T * W), not O(T^2)."""
        B, _, T, _ = q.shape
        W = self.window
        seen = state["seen"]
        # slot of index j: the next slot + j, modulo W; the window's oldest token first (or its empty slots)
        order = _wrap(nxt + torch.arange(W, device=q.device, dtype=seen.dtype), W)  # [B, W]
        gather = order.to(torch.int64)[:, None, :, None].expand(B, self.kv_heads, W, self.head_dim)
        keys = torch.cat([state["key"].gather(2, gather), k], 2)  # [B, Hkv, W + T, D]: index p is position p - W
        values = torch.cat([state["value"].gather(2, gather), v], 2)
        filled = torch.cat([(order < seen).to(q.dtype), q.new_ones(B, T)], 1)  # [B, W + T]
        theta, rep = self.options.rope_theta, self.heads // self.kv_heads
        if theta:
            q = rotate(q, torch.arange(T, device=q.device), theta, self.inv_freq)
            keys = rotate(keys, torch.arange(-W, T, device=q.device), theta, self.inv_freq)
        outs = []
        for s in range(0, T, W):
            e = min(s + W, T)
            kb = keys[:, :, s + 1 : e + W].repeat_interleave(rep, 1)
            vb = values[:, :, s + 1 : e + W].repeat_interleave(rep, 1)
            qpos = torch.arange(s, e, device=q.device)[:, None]
            kpos = torch.arange(s + 1, e + W, device=q.device)[None] - W
            allowed = (kpos <= qpos) & (kpos > qpos - W) & (filled[:, None, s + 1 : e + W] > 0.5)  # [B, Tq, L]
            bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
            outs.append(F.scaled_dot_product_attention(q[:, :, s:e], kb, vb, attn_mask=bias[:, None]))
        return torch.cat(outs, 2).transpose(1, 2).flatten(-2)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        o, new_state = self.attend(*self.project(x), state)
        return self.o_proj(o), new_state

    step = forward

    def steps(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, list[State]]:
        """The projections over the K positions at once, attention one position at a time (the step's)."""
        q, k, v = self.project(x)
        outs, states = [], []
        for t in range(x.shape[1]):
            o, state = self.attend(q[:, :, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], state)
            state = handoff(state)
            outs.append(o)
            states.append(state)
        return self.o_proj(torch.cat(outs, 1)), states
