"""The language model: embedding (+ learned positions) -> blocks (norm, token mixer, norm, MLP) -> norm -> head."""
from __future__ import annotations

import torch
from torch import nn

from edgelin.errors import EdgelinError
from edgelin.models.config import LMConfig
from edgelin.models.layers import MIXERS
from edgelin.models.layers.base import State, handoff
from edgelin.models.layers.mlp import make_mlp
from edgelin.models.layers.norm import make_norm

POSITION = "position"  # layer 0's state with learned positions: [batch, 1], tokens seen (capped at max_positions)


class Block(nn.Module):
    def __init__(self, config: LMConfig, layer: int):
        super().__init__()
        self.mixer_norm = make_norm(config.norm, config.d_model, config.norm_eps)
        name = config.mixer(layer)
        try:
            self.mixer = MIXERS[name](config, layer)
        except ValueError as e:  # a family's own checks of its sizes (divisibility, kernel lengths, ...)
            raise EdgelinError(f"config: mixer {name!r} in layer {layer}: {e}") from None
        self.mlp_norm = make_norm(config.norm, config.d_model, config.norm_eps) if config.ffn_dim else None
        self.mlp = make_mlp(config.mlp, config.d_model, config.ffn_dim, config.mlp_bias) if config.ffn_dim else None

    def forward(self, x: torch.Tensor, state: State, step: bool | str = False) -> tuple[torch.Tensor, State]:
        # step "steps": the mixer's step over every position (a state per position: LM.steps)
        mix = self.mixer.steps if step == "steps" else self.mixer.step if step else self.mixer
        y, state = mix(self.mixer_norm(x), state)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x, state


class _TiedHead(torch.autograd.Function):
    """rows [N, d] @ table[vocab, d].T, traced as one Gemm(transB=1) (export only: no backward)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return rows @ table.t()

    @staticmethod
    def symbolic(g, rows, table):
        return g.op("Gemm", rows, table, transB_i=1)


class LM(nn.Module):
    """`forward` is the chunked parallel form (training, prefill); `step` runs one token. With
    `config.logit_soft_cap`, the logits are cap * tanh(logits / cap).

    Both take and return the recurrent state as a list (one dict per layer) of float32 tensors.
    With learned positions (`config.max_positions`), layer 0's dict also holds `position` [B, 1]:
    how many tokens the sequence has seen, capped at max_positions (exact as float32). Token t of a
    run reads position embedding min(position + t, max_positions - 1) (a state outside [0, max_positions]
    is clamped too). It is the model's, not a
    mixer's: it is taken out before block 0's mixer and put back after it.
    """

    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        # parameters that init_weights leaves alone (conv kernels, decay and step sizes) come from
        # config.seed, so one config always builds the same model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.embed = nn.Embedding(config.vocab_size, config.d_model)
            self.pos_embed = nn.Embedding(config.max_positions, config.d_model) if config.max_positions else None
            self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def init_weights(self, seed: int | None = None) -> "LM":
        """Seeded init: normal(init_std) for linear and embedding weights, output projections scaled by depth."""
        gen = torch.Generator().manual_seed(self.config.seed if seed is None else seed)
        std = self.config.init_std
        with torch.no_grad():
            for name, module in self.named_modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    scale = (2 * self.config.n_layers) ** -0.5 if name.endswith(("o_proj", "out_proj", "down_proj")) else 1.0
                    module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std * scale)
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()
        return self

    def init_state(self, batch: int, device: torch.device | str = "cpu") -> list[State]:
        state = [b.mixer.init_state(batch, device) for b in self.blocks]
        if self.pos_embed is not None:
            state[0][POSITION] = torch.zeros(batch, 1, device=device)
        return state

    def state_shapes(self, batch: int) -> list[dict[str, tuple[int, ...]]]:
        shapes = [b.mixer.state_shapes(batch) for b in self.blocks]
        if self.pos_embed is not None:
            shapes[0] = {**shapes[0], POSITION: (batch, 1)}
        return shapes

    def _run(self, input_ids: torch.Tensor, state: list[State] | None, step: bool) -> tuple[torch.Tensor, list[State]]:
        if state is None:
            state = self.init_state(input_ids.shape[0], input_ids.device)
        x = self.embed(input_ids)
        if self.pos_embed is not None:
            position = state[0][POSITION]  # [B, 1]
            state = [{k: v for k, v in state[0].items() if k != POSITION}, *state[1:]]
            T, P = input_ids.shape[1], self.config.max_positions
            # [B, T]; one token adds nothing (no Add of zero, which OpenVINO removes, renaming the state input)
            at = position if T == 1 else position + torch.arange(T, device=position.device, dtype=position.dtype)
            x = x + self.pos_embed(at.clamp(0, P - 1).long())
        new_state = []
        for block, s in zip(self.blocks, state):
            x, s = block(x, s, step)
            new_state.append(s)
        if self.pos_embed is not None and step == "steps":  # layer 0 holds a state per position
            new_state[0] = [{**s, POSITION: handoff((position + t + 1).clamp(max=P))} for t, s in enumerate(new_state[0])]
        elif self.pos_embed is not None:
            new_state[0] = {**new_state[0], POSITION: (position + T).clamp(max=P)}
        logits = self.head(self.norm(x))
        cap = self.config.logit_soft_cap
        return (logits if cap is None else cap * torch.tanh(logits / cap)), new_state

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The LM head. Traced, a tied one is Gemm(transB=1) over rows flattened to 2-D, reading the
        embedding table as stored ([vocab, d_model]): a package stores the table once (the tracer's
        MatMul would read it transposed, a second copy)."""
        if not (self.config.tie_embeddings and torch.jit.is_tracing()):
            return self.lm_head(x)
        return _TiedHead.apply(x.reshape(-1, x.shape[-1]), self.lm_head.weight).reshape(*x.shape[:-1], -1)

    def forward(self, input_ids: torch.Tensor, state: list[State] | None = None) -> tuple[torch.Tensor, list[State]]:
        """input_ids [B, T] -> logits [B, T, vocab], state after the last token."""
        return self._run(input_ids, state, step=False)

    def step(self, input_ids: torch.Tensor, state: list[State] | None = None) -> tuple[torch.Tensor, list[State]]:
        """input_ids [B, 1] -> logits [B, 1, vocab]: the recurrent form, one token."""
        if input_ids.shape[1] != 1:
            raise ValueError(f"step takes one token per sequence, got {input_ids.shape[1]}")
        return self._run(input_ids, state, step=True)

    def steps(self, input_ids: torch.Tensor, state: list[State] | None = None) -> tuple[torch.Tensor, list[list[State]]]:
        """input_ids [B, K] -> logits [B, K, vocab] and the state after each position (K states): what K
        `step` calls give, with the per-token products (projections, MLPs, the head) run once over the
        K positions and each mixer's recurrence position by position (`TokenMixer.steps`)."""
        logits, per_layer = self._run(input_ids, state, step="steps")
        return logits, [[layer[t] for layer in per_layer] for t in range(input_ids.shape[1])]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
