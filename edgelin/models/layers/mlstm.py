"""mLSTM (Beck et al. 2024, xLSTM): a matrix memory with exponential input and sigmoid forget gates,
a normaliser state and a max stabiliser, as transformers' `xLSTMLayer` defines it."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgelin.kernels.dispatch import chunk_mlstm
from edgelin.kernels.mlstm.step import mlstm_step, mlstm_steps
from edgelin.models.config import LMConfig, mixer_options
from edgelin.models.layers.base import State, TokenMixer, handoff, split_heads


@dataclass
class MLSTMOptions:
    expand_k: float = 0.5  # query/key width int(d_model * expand_k) (transformers' qk_dim_factor)
    expand_v: float = 1.0  # value width int(d_model * expand_v) (v_dim_factor)
    gate_soft_cap: float | None = 15.0  # gate pre-activations -> cap * tanh(x / cap); null: no cap
    eps: float = 1e-6  # added to the normaliser max(|q . n|, exp(-m))
    norm_eps: float = 1e-6  # the per-head LayerNorm of the output


class HeadLayerNorm(nn.Module):
    """LayerNorm over each head's channels (no bias), in float32, then one weight over all heads:
    transformers' `xLSTMMultiHeadLayerNorm`."""

    def __init__(self, heads: int, head_dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(heads * head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, H, D] -> [B, T, H * D]"""
        xf = x.float()
        xf = xf - xf.mean(-1, keepdim=True)
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype).flatten(-2) * self.weight


class MLSTM(TokenMixer):
    """C_t = f_t C_{t-1} + i_t k_t v_t^T, n_t = f_t n_{t-1} + i_t k_t, h_t = q_t C_t / max(|q_t . n_t|, 1)
    (q scaled, eps aside), with i_t = exp(i~_t) and f_t = sigmoid(f~_t) from soft-capped pre-activations;
    C and n are carried scaled by exp(-m), m the running max of the log gates (kernels/mlstm/step.py).
    out = o_proj(sigmoid(ogate_proj x) * norm(h))."""

    def __init__(self, config: LMConfig, layer: int):
        super().__init__()
        o = self.options = mixer_options(MLSTMOptions, config, "mlstm")
        d, self.heads = config.d_model, config.n_heads
        self.key_dim, self.value_dim = int(d * o.expand_k), int(d * o.expand_v)
        if self.key_dim % self.heads or self.value_dim % self.heads:
            raise ValueError(f"mlstm: key width {self.key_dim} and value width {self.value_dim} must split into {self.heads} heads")
        if o.gate_soft_cap is not None and not o.gate_soft_cap > 0:
            raise ValueError(f"mlstm: gate_soft_cap must be above 0 or null, got {o.gate_soft_cap}")
        self.q_proj = nn.Linear(d, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d, self.value_dim, bias=False)
        self.ogate_proj = nn.Linear(d, self.value_dim, bias=False)
        self.igate_proj = nn.Linear(d, self.heads, bias=False)
        self.fgate_proj = nn.Linear(d, self.heads, bias=False)
        # xLSTM's init, kept apart from the Linear layers so that LM.init_weights leaves it: input
        # gates nearly shut, forget gates open (sigmoid(3..6)).
        self.igate_bias = nn.Parameter(torch.full((self.heads,), -10.0))
        self.fgate_bias = nn.Parameter(torch.linspace(3.0, 6.0, self.heads))
        self.o_norm = HeadLayerNorm(self.heads, self.value_dim // self.heads, o.norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d, bias=False)

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        K, V = self.key_dim // self.heads, self.value_dim // self.heads
        return {"cell_state": (batch, self.heads, K, V), "normalizer_state": (batch, self.heads, K), "max_state": (batch, self.heads)}

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log input gate, log forget gate) [B, T, H]; logsigmoid as -softplus(-x), no Log op."""
        i, f = self.igate_proj(x) + self.igate_bias, self.fgate_proj(x) + self.fgate_bias
        cap = self.options.gate_soft_cap
        if cap is not None:
            i, f = cap * torch.tanh(i / cap), cap * torch.tanh(f / cap)
        return i, -F.softplus(-f)

    def _output(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(torch.sigmoid(self.ogate_proj(x)) * self.o_norm(h))

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v = (split_heads(p(x), self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        i, f = self._gates(x)
        h, (C, n, m) = chunk_mlstm(
            q, k, v, i, f, eps=self.options.eps, output_final_state=True,
            initial_state=(state["cell_state"], state["normalizer_state"], state["max_state"]),
        )
        return self._output(h, x), {"cell_state": C, "normalizer_state": n, "max_state": m}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v = (split_heads(p(x[:, 0]), self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))  # [B, H, D]
        i, f = self._gates(x[:, 0])
        h, (C, n, m) = mlstm_step(
            q * q.shape[-1] ** -0.5, k, v, i, f, (state["cell_state"], state["normalizer_state"], state["max_state"]),
            self.options.eps,
        )
        return self._output(h[:, None], x), {"cell_state": C, "normalizer_state": n, "max_state": m}

    def steps(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, list[State]]:
        q, k, v = (split_heads(p(x), self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))  # [B, K, H, D]
        q = q * q.shape[-1] ** -0.5
        # the gates position by position on [B, D], as `step` computes them: ONNX Runtime fuses such a 2-D
        # product and its bias into a Gemm, whose rounding depends on its row count
        i, f = (torch.stack(g, 1) for g in zip(*(self._gates(x[:, t]) for t in range(x.shape[1]))))
        h, S = mlstm_steps(q, k, v, i, f, (state["cell_state"], state["normalizer_state"], state["max_state"]),
                           self.options.eps, handoff)
        return self._output(h, x), [{"cell_state": C, "normalizer_state": n, "max_state": m} for C, n, m in S]
