"""Triton chunked mLSTM (xLSTM's matrix memory): forward and backward.

Layout [B, T, H, K|V]; `i` the input gates' logs and `f` the forget gates' logs (<= 0), [B, T, H];
the state (C [B, H, K, V], n [B, H, K], m [B, H]) in float32, C and n scaled by exp(-m). With chunks
of BT steps, bc the chunk-local cumsum of f, (C_n, n_n, m_n) the state entering chunk n and L its
last row, every weight is taken relative to a max, so no exponent is ever positive:

    m_t   = max(bc_t + m_n, max_{s <= t} bc_t - bc_s + i_s)          (the step form's m)
    D[t, s] = exp(bc_t - bc_s + i_s - m_t),  g_t = exp(bc_t + m_n - m_t)
    num_t = scale (g_t q_t C_n + sum_s D[t, s] (q_t . k_s) v_s),  qn_t likewise with n_n and 1
    o_t   = num_t / (max(|qn_t|, exp(-m_t)) + eps)
    m_{n+1} = max(bc_L + m_n, max_s a_s),  a_s = bc_L - bc_s + i_s
    C_{n+1} = exp(bc_L + m_n - m_{n+1}) C_n + sum_s exp(a_s - m_{n+1}) k_s v_s^T,  n_{n+1} likewise with 1

The backward is exact, the gradient through the stabiliser m included (it is not zero: m enters
the output through eps, and the final state m through its own gradient). With (num, qn) as the
output of one linear attention whose values are [v, 1] and whose weights hold m fixed, the kernels
compute that attention's gradients dq, dk, dv, d(C_0, n_0) for the upstream (do / den, dqn). The
rest is scalar per step and done in torch: the total gradient of m_t is -eps (o_t . do_t) / den_t
(plus the final state's), and m_t = b_t + cummax(m_0, i_s - b_s) sends it to the argmax's gates.
"""

import torch
import triton
import triton.language as tl

from edgelin.kernels.common import autotune, chunk_local_cumsum, next_block, warps_stages
from edgelin.kernels.common.checks import check_qkv_state
from edgelin.kernels.gla.triton_chunk import STATE_CONFIGS

BT_DEFAULT = 64


@triton.jit
def _log_weights(bc, i, row, m_t, BT: tl.constexpr):
    # [BT] chunk-local cumsum (0 past T) and input gate (-inf past T), [BT, BT] log D before its max
    b_bc = tl.load(bc + row, mask=m_t, other=0)
    b_i = tl.load(i + row, mask=m_t, other=float("-inf"))
    o_c = tl.arange(0, BT)
    m_ts = (o_c[:, None] >= o_c[None, :]) & m_t[None, :]
    b_logd = tl.where(m_ts, b_bc[:, None] - b_bc[None, :] + b_i[None, :], float("-inf"))
    return b_bc, b_i, b_logd


@autotune(STATE_CONFIGS, key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T", "NT"])
def mlstm_fwd_h_kernel(
    k, v, i, bc, hc, hn, hm, c0, n0, m0, ct, nt, mt, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_H0: tl.constexpr, STORE_HT: tl.constexpr,
):
    # hc/hn/hm[b, n, h] = the state entering chunk n (hm has NT + 1 entries: the last is the final m)
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    first_v, first = i_v == 0, (i_k == 0) & (i_v == 0)
    b_c = tl.zeros([BK, BV], dtype=tl.float32)
    b_n = tl.zeros([BK], dtype=tl.float32)
    b_m = tl.zeros([], dtype=tl.float32)
    if USE_H0:
        b_c += tl.load(c0 + i_bh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0)
        b_n += tl.load(n0 + i_bh.to(tl.int64) * K + o_k, mask=m_k, other=0)
        b_m += tl.load(m0 + i_bh)
    for i_t in range(NT):
        base = ((i_b * NT + i_t) * H + i_h).to(tl.int64)
        tl.store(hc + base * K * V + o_kv, b_c.to(hc.dtype.element_ty), mask=m_kv)
        tl.store(hn + base * K + o_k, b_n, mask=m_k & first_v)
        tl.store(hm + (i_b * (NT + 1) + i_t) * H + i_h, b_m, mask=first)
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < T
        row = (i_b * T + o_t).to(tl.int64) * H + i_h
        row_l = (i_b * T + tl.minimum(i_t * BT + BT, T) - 1).to(tl.int64) * H + i_h
        # [BT]
        b_bc = tl.load(bc + row, mask=m_t, other=0)
        b_i = tl.load(i + row, mask=m_t, other=float("-inf"))
        b_bl = tl.load(bc + row_l)
        b_a = b_bl - b_bc + b_i
        b_mn = tl.maximum(b_bl + b_m, tl.max(b_a, 0))
        b_decay = tl.exp(b_bl + b_m - b_mn)
        # [BK, BT], [BT, BV]
        b_k = tl.load(k + row[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0)
        b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
        b_kw = b_k.to(tl.float32) * tl.exp(b_a - b_mn)[None, :]
        b_c = b_c * b_decay + tl.dot(b_kw.to(b_v.dtype), b_v)
        b_n = b_n * b_decay + tl.sum(b_kw, 1)
        b_m = b_mn
    tl.store(hm + (i_b * (NT + 1) + NT) * H + i_h, b_m, mask=first)
    if STORE_HT:
        tl.store(ct + i_bh.to(tl.int64) * K * V + o_kv, b_c, mask=m_kv)
        tl.store(nt + i_bh.to(tl.int64) * K + o_k, b_n, mask=m_k & first_v)
        tl.store(mt + i_bh, b_m, mask=first)


@autotune(warps_stages(), key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T", "NT"])
def mlstm_fwd_o_kernel(
    q, k, v, i, bc, hc, hn, hm, o, m_out, qn_out, scale, eps, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    # o of one chunk and BV value channels; the first V block also stores each row's m and q . n
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_t, m_v = o_t < T, o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    row = (i_b * T + o_t).to(tl.int64) * H + i_h
    base = ((i_b * NT + i_t) * H + i_h).to(tl.int64)
    b_mn = tl.load(hm + (i_b * (NT + 1) + i_t) * H + i_h)
    b_bc, b_i, b_logd = _log_weights(bc, i, row, m_t, BT)
    b_mrow = tl.maximum(b_bc + b_mn, tl.max(b_logd, 1))
    b_d = tl.exp(b_logd - b_mrow[:, None])
    b_s = tl.zeros([BT, BT], dtype=tl.float32)
    b_qc = tl.zeros([BT, BV], dtype=tl.float32)
    b_qn = tl.zeros([BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        # [BT, BK], [BK, BT], [BK, BV], [BK]
        b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
        b_kt = tl.load(k + row[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0)
        b_c = tl.load(hc + base * K * V + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0)
        b_n = tl.load(hn + base * K + o_k, mask=m_k, other=0)
        b_s += tl.dot(b_q, b_kt)
        b_qc += tl.dot(b_q, b_c.to(b_q.dtype))
        b_qn += tl.sum(b_q.to(tl.float32) * b_n[None, :], 1)
    b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
    b_s = b_s * scale * b_d
    b_g = tl.exp(b_bc + b_mn - b_mrow) * scale
    b_num = b_qc * b_g[:, None] + tl.dot(b_s.to(b_v.dtype), b_v)
    b_qnt = b_qn * b_g + tl.sum(b_s, 1)
    b_den = tl.maximum(tl.abs(b_qnt), tl.exp(-b_mrow)) + eps
    tl.store(o + row[:, None] * V + o_v[None, :], (b_num / b_den[:, None]).to(o.dtype.element_ty), mask=m_tv)
    tl.store(m_out + row, b_mrow, mask=m_t & (i_v == 0))
    tl.store(qn_out + row, b_qnt, mask=m_t & (i_v == 0))


@autotune(STATE_CONFIGS, key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T", "NT"])
def mlstm_bwd_dh_kernel(
    q, bc, m_row, hm, dnum, dqn, dhc, dhn, dct, dnt, dc0, dn0, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
):
    # dhc/dhn[b, n, h] = dL / d(C, n leaving chunk n), m held fixed
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    first_v = i_v == 0
    b_dc = tl.zeros([BK, BV], dtype=tl.float32)
    b_dn = tl.zeros([BK], dtype=tl.float32)
    if USE_DHT:
        b_dc += tl.load(dct + i_bh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0)
        b_dn += tl.load(dnt + i_bh.to(tl.int64) * K + o_k, mask=m_k, other=0)
    for i_t in range(NT - 1, -1, -1):
        base = ((i_b * NT + i_t) * H + i_h).to(tl.int64)
        tl.store(dhc + base * K * V + o_kv, b_dc, mask=m_kv)
        tl.store(dhn + base * K + o_k, b_dn, mask=m_k & first_v)
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < T
        row = (i_b * T + o_t).to(tl.int64) * H + i_h
        row_l = (i_b * T + tl.minimum(i_t * BT + BT, T) - 1).to(tl.int64) * H + i_h
        b_mn = tl.load(hm + (i_b * (NT + 1) + i_t) * H + i_h)
        b_mn1 = tl.load(hm + (i_b * (NT + 1) + i_t + 1) * H + i_h)
        b_bl = tl.load(bc + row_l)
        # [BT]
        b_bc = tl.load(bc + row, mask=m_t, other=0)
        b_mrow = tl.load(m_row + row, mask=m_t, other=0)
        b_dqn = tl.load(dqn + row, mask=m_t, other=0)
        b_g = tl.where(m_t, tl.exp(b_bc + b_mn - b_mrow), 0) * scale
        # [BK, BT], [BT, BV]
        b_q = tl.load(q + row[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0)
        b_do = tl.load(dnum + row[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
        b_qg = b_q.to(tl.float32) * b_g[None, :]
        b_decay = tl.exp(b_bl + b_mn - b_mn1)
        b_dc = b_dc * b_decay + tl.dot(b_qg.to(b_q.dtype), b_do.to(b_q.dtype))
        b_dn = b_dn * b_decay + tl.sum(b_qg * b_dqn[None, :], 1)
    if STORE_DH0:
        tl.store(dc0 + i_bh.to(tl.int64) * K * V + o_kv, b_dc, mask=m_kv)
        tl.store(dn0 + i_bh.to(tl.int64) * K + o_k, b_dn, mask=m_k & first_v)


@triton.jit
def _bwd_weights(i, bc, m_row, hm, row, row_l, m_t, i_b, i_h, i_t, NT, H: tl.constexpr, BT: tl.constexpr):
    # D [BT, BT] (0 off the causal triangle and past T), and per step: g (state -> row) and w (step -> next state)
    b_bc, b_i, b_logd = _log_weights(bc, i, row, m_t, BT)
    b_mrow = tl.load(m_row + row, mask=m_t, other=0)
    b_mn = tl.load(hm + (i_b * (NT + 1) + i_t) * H + i_h)
    b_mn1 = tl.load(hm + (i_b * (NT + 1) + i_t + 1) * H + i_h)
    b_bl = tl.load(bc + row_l)
    b_d = tl.where(m_t[:, None] & (b_logd > float("-inf")), tl.exp(b_logd - b_mrow[:, None]), 0)
    b_g = tl.where(m_t, tl.exp(b_bc + b_mn - b_mrow), 0)
    b_w = tl.exp(b_bl - b_bc + b_i - b_mn1)
    return b_d, b_g, b_w


@autotune(warps_stages(), key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T", "NT"])
def mlstm_bwd_dqk_kernel(
    q, k, v, i, bc, m_row, hc, hn, hm, dnum, dqn, dhc, dhn, dq, dk, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    # dq, dk of one chunk and BK key channels
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_t, m_k = o_t < T, o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    row = (i_b * T + o_t).to(tl.int64) * H + i_h
    row_l = (i_b * T + tl.minimum(i_t * BT + BT, T) - 1).to(tl.int64) * H + i_h
    base = ((i_b * NT + i_t) * H + i_h).to(tl.int64)
    b_d, b_g, b_w = _bwd_weights(i, bc, m_row, hm, row, row_l, m_t, i_b, i_h, i_t, NT, H, BT)
    b_dqn = tl.load(dqn + row, mask=m_t, other=0)
    b_dp = tl.zeros([BT, BT], dtype=tl.float32)
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        m_vk = m_v[:, None] & m_k[None, :]
        # [BT, BV], [BV, BT], [BV, BK]
        b_do = tl.load(dnum + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_vt = tl.load(v + row[None, :] * V + o_v[:, None], mask=m_v[:, None] & m_t[None, :], other=0)
        b_c = tl.load(hc + base * K * V + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0)
        b_dc = tl.load(dhc + base * K * V + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0)
        b_dp += tl.dot(b_do.to(b_v.dtype), b_vt)
        b_dq += tl.dot(b_do.to(b_v.dtype), b_c.to(b_v.dtype))
        b_dk += tl.dot(b_v, b_dc.to(b_v.dtype))
    b_n = tl.load(hn + base * K + o_k, mask=m_k, other=0)
    b_dn = tl.load(dhn + base * K + o_k, mask=m_k, other=0)
    # the values' last column is 1: qn's upstream joins dP, and n and dn the state terms
    b_ds = (b_dp + b_dqn[:, None]) * b_d * scale
    b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_tk, other=0)
    b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0)
    b_dq = tl.dot(b_ds.to(b_k.dtype), b_k) + (b_dq + b_dqn[:, None] * b_n[None, :]) * (b_g * scale)[:, None]
    b_dk = tl.dot(tl.trans(b_ds).to(b_q.dtype), b_q) + (b_dk + b_dn[None, :]) * b_w[:, None]
    tl.store(dq + row[:, None] * K + o_k[None, :], b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + row[:, None] * K + o_k[None, :], b_dk.to(dk.dtype.element_ty), mask=m_tk)


@autotune(warps_stages(), key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T", "NT"])
def mlstm_bwd_dv_kernel(
    q, k, i, bc, m_row, hm, dnum, dhc, dv, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    # dv of one chunk and BV value channels
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_t, m_v = o_t < T, o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    row = (i_b * T + o_t).to(tl.int64) * H + i_h
    row_l = (i_b * T + tl.minimum(i_t * BT + BT, T) - 1).to(tl.int64) * H + i_h
    base = ((i_b * NT + i_t) * H + i_h).to(tl.int64)
    b_d, b_g, b_w = _bwd_weights(i, bc, m_row, hm, row, row_l, m_t, i_b, i_h, i_t, NT, H, BT)
    b_s = tl.zeros([BT, BT], dtype=tl.float32)
    b_kdc = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        # [BT, BK], [BK, BT], [BK, BV]
        b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
        b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
        b_kt = tl.load(k + row[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0)
        b_dc = tl.load(dhc + base * K * V + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0)
        b_s += tl.dot(b_q, b_kt)
        b_kdc += tl.dot(b_k, b_dc.to(b_k.dtype))
    b_do = tl.load(dnum + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
    b_s = b_s * scale * b_d
    b_dv = tl.dot(tl.trans(b_s).to(q.dtype.element_ty), b_do.to(q.dtype.element_ty)) + b_kdc * b_w[:, None]
    tl.store(dv + row[:, None] * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)


def _state_grid(K: int, V: int, n_heads: int):
    return lambda meta: (triton.cdiv(K, meta["BK"]), triton.cdiv(V, meta["BV"]), n_heads)


def chunk_mlstm_fwd(q, k, v, i, f, scale, eps, initial_state, output_final_state, BT=BT_DEFAULT):
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, BT)
    bc = chunk_local_cumsum(f, BT)
    hc = k.new_empty(B, NT, H, K, V)
    hn = q.new_empty(B, NT, H, K, dtype=torch.float32)
    hm = q.new_empty(B, NT + 1, H, dtype=torch.float32)
    final = (q.new_empty(B, H, K, V, dtype=torch.float32), q.new_empty(B, H, K, dtype=torch.float32),
             q.new_empty(B, H, dtype=torch.float32)) if output_final_state else (None, None, None)
    c0, n0, m0 = initial_state if initial_state is not None else (None, None, None)
    mlstm_fwd_h_kernel[_state_grid(K, V, B * H)](
        k, v, i, bc, hc, hn, hm, c0, n0, m0, *final, T, NT, H=H, K=K, V=V, BT=BT,
        USE_H0=initial_state is not None, STORE_HT=output_final_state,
    )
    o = torch.empty_like(v)
    m_row = q.new_empty(B, T, H, dtype=torch.float32)
    qn = torch.empty_like(m_row)
    BV = next_block(V, 64)
    mlstm_fwd_o_kernel[(triton.cdiv(V, BV), NT, B * H)](
        q, k, v, i, bc, hc, hn, hm, o, m_row, qn, scale, eps, T, NT, H=H, K=K, V=V, BT=BT, BK=next_block(K, 64), BV=BV,
    )
    return o, final, bc, hc, hn, hm, m_row, qn


def chunk_mlstm_bwd(q, k, v, i, f, o, bc, hc, hn, hm, m_row, qn, initial_state, do, final, dfinal, scale, eps, BT=BT_DEFAULT):
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, BT)
    # the output's division by den, per step
    den = torch.maximum(qn.abs(), (-m_row).exp()) + eps
    hdh = (o.float() * do.float()).sum(-1)
    on_qn = qn.abs() >= (-m_row).exp()
    dnum = do.float() / den[..., None]
    dqn = torch.where(on_qn, -qn.sign() * hdh / den, 0.0)
    dm_den = torch.where(on_qn, 0.0, (-m_row).exp() * hdh / den)  # where den is exp(-m) + eps
    dm = -eps * hdh / den  # the whole gradient of m_t through row t's output
    dct, dnt, dmt = dfinal
    has_h0 = initial_state is not None
    dhc = q.new_empty(B, NT, H, K, V, dtype=torch.float32)
    dhn = q.new_empty(B, NT, H, K, dtype=torch.float32)
    dc0, dn0 = (torch.empty_like(initial_state[0]), torch.empty_like(initial_state[1])) if has_h0 else (None, None)
    use_dht = dct is not None or dnt is not None
    if use_dht:
        dct = torch.zeros_like(final[0]) if dct is None else dct.contiguous()
        dnt = torch.zeros_like(final[1]) if dnt is None else dnt.contiguous()
    mlstm_bwd_dh_kernel[_state_grid(K, V, B * H)](
        q, bc, m_row, hm, dnum, dqn, dhc, dhn, dct, dnt, dc0, dn0, scale, T, NT, H=H, K=K, V=V, BT=BT,
        USE_DHT=use_dht, STORE_DH0=has_h0,
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    BK, BV = next_block(K, 64), next_block(V, 64)
    mlstm_bwd_dqk_kernel[(triton.cdiv(K, BK), NT, B * H)](
        q, k, v, i, bc, m_row, hc, hn, hm, dnum, dqn, dhc, dhn, dq, dk, scale, T, NT, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
    )
    mlstm_bwd_dv_kernel[(triton.cdiv(V, BV), NT, B * H)](
        q, k, i, bc, m_row, hm, dnum, dhc, dv, scale, T, NT, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
    )
    # The gates. A weight exp(b_t - b_s + i_s - m_t) gives i_s its column's sum k_s . dk_s and b_s
    # minus that; its row's sum q_t . dq_t goes to b_t and, with the opposite sign, to m_t, and
    # m_t = b_t + cummax(...) hands it back to b_t: it cancels. What m_t keeps is `dm`.
    kdk = (k.float() * dk.float()).sum(-1)
    if use_dht:
        dm[:, -1] -= (final[0] * dct).sum((-2, -1)) + (final[1] * dnt).sum(-1)
    if dmt is not None:
        dm[:, -1] += dmt
        dm_den[:, -1] += dmt
    # m_t = b_t + cummax(m_0, i_s - b_s): dm_t goes to b_t and to the gates of the step holding the max
    b = f.cumsum(1)
    m0 = initial_state[2] if has_h0 else q.new_zeros(B, H)
    arg = torch.cat([m0[:, None], i - b], 1).cummax(1).indices[:, 1:]
    dc = torch.zeros(B, T + 1, H, dtype=torch.float32, device=q.device).scatter_add_(1, arg, dm)
    di = kdk + dc[:, 1:]
    db = dm_den - kdk - dc[:, 1:]
    df = db.flip(1).cumsum(1).flip(1)
    dm0 = None
    if has_h0:
        dm0 = (initial_state[0] * dc0).sum((-2, -1)) + (initial_state[1] * dn0).sum(-1) + dc[:, 0]
    return dq, dk, dv, di, df, (dc0, dn0, dm0)


class ChunkMLSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, f, c0, n0, m0, scale, eps, output_final_state, chunk_size):
        initial_state = (c0, n0, m0) if c0 is not None else None
        o, final, bc, hc, hn, hm, m_row, qn = chunk_mlstm_fwd(q, k, v, i, f, scale, eps, initial_state, output_final_state, chunk_size)
        ctx.save_for_backward(q, k, v, i, f, o, bc, hc, hn, hm, m_row, qn, c0, n0, m0, *final)
        ctx.scale, ctx.eps, ctx.chunk_size = scale, eps, chunk_size
        return (o, *final)

    @staticmethod
    def backward(ctx, do, dct, dnt, dmt):
        q, k, v, i, f, o, bc, hc, hn, hm, m_row, qn, c0, n0, m0, *final = ctx.saved_tensors
        initial_state = (c0, n0, m0) if c0 is not None else None
        dq, dk, dv, di, df, (dc0, dn0, dm0) = chunk_mlstm_bwd(
            q, k, v, i, f, o, bc, hc, hn, hm, m_row, qn, initial_state, do.contiguous(), final, (dct, dnt, dmt),
            ctx.scale, ctx.eps, ctx.chunk_size,
        )
        return dq, dk, dv, di, df, dc0, dn0, dm0, None, None, None, None


def chunk_mlstm(q, k, v, i, f, *, scale=None, initial_state=None, output_final_state=False, eps=1e-6, chunk_size=BT_DEFAULT):
    """mLSTM (xLSTM's matrix memory), chunked Triton kernels (forward and backward), exact in float32.

    m_t = max(f_t + m_{t-1}, i_t) ;  C_t = exp(f_t + m_{t-1} - m_t) C_{t-1} + exp(i_t - m_t) k_t^T v_t ;
    n_t likewise with k_t ;  o_t = scale q_t C_t / (max(|scale q_t . n_t|, exp(-m_t)) + eps)

    Args:
        q, k: [B, T, H, K] queries and keys (bf16, fp16 or fp32, on a CUDA device).
        v: [B, T, H, V] values, same dtype.
        i: [B, T, H] input gates' logs (their pre-activations; exponential gating), any float dtype.
        f: [B, T, H] forget gates' logs (<= 0, e.g. logsigmoid of the pre-activation), any float dtype.
        scale: multiplies q; defaults to K ** -0.5.
        initial_state: optional float32 (C [B, H, K, V], n [B, H, K], m [B, H]); None is zeros (m = 0 too).
        output_final_state: also return the state after the last step.
        eps: added to the normaliser.
        chunk_size: steps per chunk, 16, 32 or 64.

    Returns:
        (o [B, T, H, V] in v's dtype, final state (C, n, m) in float32 or None)

    Example:
        >>> o, (C, n, m) = chunk_mlstm(q, k, v, i_preact, F.logsigmoid(f_preact), output_final_state=True)
    """
    c0 = initial_state[0] if initial_state is not None else None
    check_qkv_state(q, k, v, c0)
    B, T, H, K = q.shape
    if i.shape != (B, T, H) or f.shape != (B, T, H):
        raise ValueError(f"i and f must be [B, T, H] = {(B, T, H)}, got {tuple(i.shape)} and {tuple(f.shape)}")
    if initial_state is not None:
        n0, m0 = initial_state[1], initial_state[2]
        if n0.shape != (B, H, K) or m0.shape != (B, H) or n0.dtype != torch.float32 or m0.dtype != torch.float32:
            raise ValueError(f"initial n and m must be float32 [B, H, K] = {(B, H, K)} and [B, H] = {(B, H)}, "
                             f"got {n0.dtype} {tuple(n0.shape)} and {m0.dtype} {tuple(m0.shape)}")
        initial_state = tuple(s.contiguous() for s in initial_state)
    if chunk_size not in (16, 32, 64):
        raise ValueError(f"chunk_size must be 16, 32 or 64, got {chunk_size}")
    scale = K ** -0.5 if scale is None else scale
    q, k, v = (x.contiguous() for x in (q, k, v))
    i, f = (x.float().contiguous() for x in (i, f))
    c0, n0, m0 = initial_state if initial_state is not None else (None, None, None)
    o, *final = ChunkMLSTMFunction.apply(q, k, v, i, f, c0, n0, m0, float(scale), float(eps), output_final_state, chunk_size)
    return o, (tuple(final) if output_final_state else None)
