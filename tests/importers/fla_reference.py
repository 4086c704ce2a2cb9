"""A faithful pure-torch transcription of fla's model forward (fla/models/*/modeling_*.py and
fla/layers/{gla,gated_deltanet,delta_net,multiscale_retention}.py), built on fla's own pure-torch
references: naive_recurrent_gla, naive_recurrent_gated_delta_rule, naive_gdn_gate,
delta_rule_recurrence, naive_retention and rotary_embedding_ref. fla's layers themselves need
Triton and cannot run on this CPU; their projections, short convs and norms are written out here
line by line from the layer code, reading the fla model's own parameters by their fla names."""
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from fla.modules.activations import ACT2FN
from fla.modules.rotary.ops import rotary_embedding_ref
from fla.ops.delta_rule.naive import delta_rule_recurrence
from fla.ops.gated_delta_rule.gate import naive_gdn_gate
from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
from fla.ops.gla.naive import naive_recurrent_gla
from fla.ops.retention.naive import naive_retention


def rms(x, w, eps):
    x = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return x if w is None else x * w


def conv(x, p, name, act):
    """fla ShortConvolution: causal depthwise conv1d over time, optional silu."""
    w = p[f"{name}.weight"]
    y = F.conv1d(x.transpose(1, 2), w, p.get(f"{name}.bias"), padding=w.shape[-1] - 1, groups=w.shape[0])[..., : x.shape[1]]
    y = y.transpose(1, 2)
    return F.silu(y) if act else y


def lin(x, p, name):
    return F.linear(x, p[f"{name}.weight"], p.get(f"{name}.bias"))


def l2norm(x, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)  # fla modules/norm/l2norm.py


def out_norm(o, p, a, c, gate, act=F.silu):
    """fla's FusedRMSNormGated / RMSNorm then gate, over each head's value dim."""
    w = next((p[f"{a}.{n}.weight"] for n in ("g_norm_swish_gate", "g_norm", "o_norm") if f"{a}.{n}.weight" in p), None)
    o = rms(o, w, c.norm_eps)
    if gate is not None:
        o = o * act(gate)
    return rearrange(o, "... h d -> ... (h d)")


def gla(x, p, a, c):
    H = c.num_heads
    G = H // (c.num_kv_heads or H)
    hk, hv = round(c.hidden_size * c.expand_k) // H, round(c.hidden_size * c.expand_v) // H
    q, k, v = lin(x, p, f"{a}.q_proj"), lin(x, p, f"{a}.k_proj"), lin(x, p, f"{a}.v_proj")
    if c.use_short_conv:
        q, k, v = (conv(t, p, f"{a}.{n}_conv1d", True) for t, n in ((q, "q"), (k, "k"), (v, "v")))
    gk = lin(lin(x, p, f"{a}.gk_proj.0"), p, f"{a}.gk_proj.1")
    q = rearrange(q, "... (h d) -> ... h d", d=hk)
    if G > 1:
        k, gk = (repeat(t, "... (h d) -> ... (h g) d", g=G, d=hk) for t in (k, gk))
        v = repeat(v, "... (h d) -> ... (h g) d", g=G, d=hv)
    else:
        k, gk = (rearrange(t, "... (h d) -> ... h d", d=hk) for t in (k, gk))
        v = rearrange(v, "... (h d) -> ... h d", d=hv)
    gk = F.logsigmoid(gk) / 16
    if c.clamp_min is not None:
        gk = torch.clamp_min(gk, c.clamp_min)
    if c.feature_map is not None:
        q, k = map(ACT2FN[c.feature_map], (q, k))
    o, _ = naive_recurrent_gla(q, k, v, gk)
    gate = rearrange(lin(x, p, f"{a}.g_proj"), "... (h d) -> ... h d", d=hv) if c.use_output_gate else None
    return lin(out_norm(o, p, a, c, gate), p, f"{a}.o_proj")


def gated_deltanet(x, p, a, c):
    H, HV = c.num_heads, c.num_v_heads or c.num_heads
    hk, hv = c.head_dim, int(c.head_dim * c.expand_v)
    q, k, v = lin(x, p, f"{a}.q_proj"), lin(x, p, f"{a}.k_proj"), lin(x, p, f"{a}.v_proj")
    if c.use_short_conv:
        q, k, v = (conv(t, p, f"{a}.{n}_conv1d", True) for t, n in ((q, "q"), (k, "k"), (v, "v")))
    else:
        q, k, v = F.silu(q), F.silu(k), F.silu(v)
    q, k = (rearrange(t, "... (h d) -> ... h d", d=hk) for t in (q, k))
    v = rearrange(v, "... (h d) -> ... h d", d=hv)
    if HV > H:  # the kernels read q/k head i_hv // (HV // H)
        q, k = (t.repeat_interleave(HV // H, dim=2) for t in (q, k))
    beta = lin(x, p, f"{a}.b_proj").sigmoid()
    if c.allow_neg_eigval:
        beta = beta * 2.0
    g = naive_gdn_gate(lin(x, p, f"{a}.a_proj"), p[f"{a}.A_log"], p[f"{a}.dt_bias"])
    o, _ = naive_recurrent_gated_delta_rule(l2norm(q), l2norm(k), v, beta, g)
    gate, act = None, F.silu
    if c.use_gate:
        gate = rearrange(lin(x, p, f"{a}.g_proj"), "... (h d) -> ... h d", d=hv)
        act = torch.sigmoid if c.output_gate_activation == "sigmoid" else F.silu
    return lin(out_norm(o, p, a, c, gate, act), p, f"{a}.o_proj")


def delta_net(x, p, a, c):
    H = c.num_heads
    hk, hv = round(c.hidden_size * c.expand_k) // H, round(c.hidden_size * c.expand_v) // H
    q, k, v = lin(x, p, f"{a}.q_proj"), lin(x, p, f"{a}.k_proj"), lin(x, p, f"{a}.v_proj")
    if c.use_short_conv:
        qk_silu = c.qk_activation == "silu"
        q, k = conv(q, p, f"{a}.q_conv1d", qk_silu), conv(k, p, f"{a}.k_conv1d", qk_silu)
        v = conv(v, p, f"{a}.v_conv1d", True)
    else:
        if c.qk_activation == "silu":
            q, k = F.silu(q), F.silu(k)
        v = F.silu(v)
    q, k = (rearrange(t, "... (h d) -> ... h d", d=hk) for t in (q, k))
    v = rearrange(v, "... (h d) -> ... h d", d=hv)
    if c.qk_activation == "relu":
        q, k = q.relu(), k.relu()
    elif c.qk_activation == "elu":
        q, k = F.elu(q) + 1, F.elu(k) + 1
    if c.qk_norm == "sum":
        q, k = q / q.sum(-1, keepdim=True), k / k.sum(-1, keepdim=True)
    beta = lin(x, p, f"{a}.b_proj").sigmoid() if c.use_beta else torch.ones_like(q[..., 0])
    if c.allow_neg_eigval:
        beta = beta * 2.0
    if c.qk_norm == "l2":
        q, k = l2norm(q), l2norm(k)
    o, _ = delta_rule_recurrence(*(t.transpose(1, 2) for t in (q, k, v, beta)))
    o = o.transpose(1, 2)
    gate = rearrange(lin(x, p, f"{a}.g_proj"), "... (h d) -> ... h d", d=hv) if c.use_gate else None
    return lin(out_norm(o, p, a, c, gate), p, f"{a}.o_proj")


def retnet(x, p, a, c):
    H = c.num_heads
    G = H // (c.num_kv_heads or H)
    hk, hv = round(c.hidden_size * c.expand_k) // H, round(c.hidden_size * c.expand_v) // H
    q = rearrange(lin(x, p, f"{a}.q_proj"), "... (h d) -> ... h d", d=hk)
    k = rearrange(lin(x, p, f"{a}.k_proj"), "... (h d) -> ... h d", d=hk)
    v = lin(x, p, f"{a}.v_proj")
    if c.feature_map is not None:
        q, k = map(ACT2FN[c.feature_map], (q, k))
    # fla RotaryEmbedding(dim=head_k_dim): base 10000, not interleaved, positions 0..T-1
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hk, 2, dtype=torch.float32) / hk))
    freqs = torch.outer(torch.arange(x.shape[1], dtype=torch.float32), inv_freq)
    q, k = rotary_embedding_ref(q, freqs.cos(), freqs.sin()), rotary_embedding_ref(k, freqs.cos(), freqs.sin())
    if G > 1:
        k = repeat(k, "... h d -> ... (h g) d", g=G)
        v = repeat(v, "... (h d) -> ... (h g) d", d=hv, g=G)
    else:
        v = rearrange(v, "... (h d) -> ... h d", d=hv)
    o = naive_retention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    gate = rearrange(lin(x, p, f"{a}.g_proj"), "... (h d) -> ... h d", d=hv) if c.use_output_gate else None
    return lin(out_norm(o, p, a, c, gate), p, f"{a}.o_proj")


MIXERS = {"gla": gla, "gated_deltanet": gated_deltanet, "delta_net": delta_net, "retnet": retnet}


@torch.no_grad()
def forward(model, ids):
    """Logits [B, T, vocab] of an fla *ForCausalLM, computed without Triton."""
    c = model.config
    p = {k: v.float() for k, v in model.state_dict().items()}
    x = F.embedding(ids, p["model.embeddings.weight"])
    for i in range(c.num_hidden_layers):
        l = f"model.layers.{i}"
        x = x + MIXERS[c.model_type](rms(x, p[f"{l}.attn_norm.weight"], c.norm_eps), p, f"{l}.attn", c)
        h = rms(x, p[f"{l}.mlp_norm.weight"], c.norm_eps)
        x = x + lin(F.silu(lin(h, p, f"{l}.mlp.gate_proj")) * lin(h, p, f"{l}.mlp.up_proj"), p, f"{l}.mlp.down_proj")
    x = rms(x, p["model.norm.weight"], c.norm_eps)
    head = p["model.embeddings.weight"] if c.tie_word_embeddings else p["lm_head.weight"]
    return F.linear(x, head)
