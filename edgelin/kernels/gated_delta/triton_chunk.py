"""Triton chunked gated delta rule (Gated DeltaNet): forward and backward.

Layout [B, T, H, K|V]; `g` [B, T, H] is the log decay (<= 0) of each head, `beta` [B, T, H] the
write strength. With chunks of BT=64 steps, gc the chunk-local cumsum of g, h_n the state entering
chunk n and L its last row, the delta rule inside a chunk is solved in WY form:

    Akk[t, s] = beta_t exp(gc_t - gc_s) k_t . k_s    (s < t),   Ai = (I + Akk)^-1
    w  = Ai (beta exp(gc) k),   u = Ai (beta v),   vn = u - w h_n          (the corrected values)
    o_t     = scale * (exp(gc_t) q_t h_n + sum_{s <= t} exp(gc_t - gc_s) (q_t . k_s) vn_s)
    h_{n+1} = exp(gc_L) h_n + (k * exp(gc_L - gc))^T vn

Ai is found block-wise: two 32x32 unit-lower blocks by forward substitution, then the off-diagonal
block from them. Head dims are kept whole in one tile (K, V <= 256).
"""

import torch
import triton
import triton.language as tl

from edgelin.kernels.common import autotune, chunk_local_cumsum, next_block
from edgelin.kernels.common.checks import check_qkv_state

BT_DEFAULT = 64


def _configs(bvs, warps=(4, 8), stages=(2,)):
    return [triton.Config({"BV": bv}, num_warps=w, num_stages=s) for bv in bvs for w in warps for s in stages]


# the sequential state kernels: few (batch, head) pairs want narrow V tiles to fill the GPU
STATE_CONFIGS = _configs((32, 16, 64), warps=(4,))


@triton.jit
def unit_lower_inverse_t(p_A, stride, n_rows, N: tl.constexpr):
    # ((I + A)^-1)^T for the strictly lower [N, N] A whose row i is at p_A + i * stride, rows >= n_rows
    # zero. Column i of the result is e_i - result @ A[i, :]: a row load and a reduction along
    # the rows of the tile, which stay inside one warp.
    o = tl.arange(0, N)
    b_Y = tl.where(o[:, None] == o[None, :], 1.0, 0.0)
    for i in range(1, N):
        b_a = tl.load(p_A + i * stride + o, mask=(o < i) & (i < n_rows), other=0)
        b_r = tl.sum(b_Y * b_a[None, :], 1)
        b_Y = tl.where(o[None, :] == i, b_Y - b_r[:, None], b_Y)
    return b_Y


@autotune([triton.Config({"BKC": 64}, num_warps=w, num_stages=2) for w in (4, 2)], key=["H", "K", "T"])
@triton.jit(do_not_specialize=["T"])
def gdn_kkt_inverse_kernel(
    k, beta, gc, Ai, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BKC: tl.constexpr,
):
    # Ai = (I + Akk)^-1 of one chunk, from its two 32x32 diagonal blocks
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    HB: tl.constexpr = BT // 2
    o_a = tl.arange(0, HB)
    o_1 = i_t * BT + o_a
    o_2 = o_1 + HB
    m_1, m_2 = o_1 < T, o_2 < T
    row1 = (i_b * T + o_1).to(tl.int64) * H + i_h
    row2 = (i_b * T + o_2).to(tl.int64) * H + i_h
    # [HB, HB] blocks of k k^T
    b_A11 = tl.zeros([HB, HB], dtype=tl.float32)
    b_A22 = tl.zeros([HB, HB], dtype=tl.float32)
    b_A21 = tl.zeros([HB, HB], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BKC)):
        o_k = i_k * BKC + tl.arange(0, BKC)
        m_k = o_k < K
        # [HB, BKC]
        b_k1 = tl.load(k + row1[:, None] * K + o_k[None, :], mask=m_1[:, None] & m_k[None, :], other=0)
        b_k2 = tl.load(k + row2[:, None] * K + o_k[None, :], mask=m_2[:, None] & m_k[None, :], other=0)
        b_A11 += tl.dot(b_k1, tl.trans(b_k1))
        b_A22 += tl.dot(b_k2, tl.trans(b_k2))
        b_A21 += tl.dot(b_k2, tl.trans(b_k1))
    # [HB]
    b_b1 = tl.load(beta + row1, mask=m_1, other=0).to(tl.float32)
    b_b2 = tl.load(beta + row2, mask=m_2, other=0).to(tl.float32)
    b_g1 = tl.load(gc + row1, mask=m_1, other=0)
    b_g2 = tl.load(gc + row2, mask=m_2, other=0)
    m_lo = o_a[:, None] > o_a[None, :]
    m_11 = m_lo & m_1[:, None]
    m_22 = m_lo & m_2[:, None]
    m_21 = m_2[:, None] & m_1[None, :]
    b_A11 = tl.where(m_11, b_A11 * b_b1[:, None] * tl.exp(tl.where(m_11, b_g1[:, None] - b_g1[None, :], 0)), 0)
    b_A22 = tl.where(m_22, b_A22 * b_b2[:, None] * tl.exp(tl.where(m_22, b_g2[:, None] - b_g2[None, :], 0)), 0)
    b_A21 = tl.where(m_21, b_A21 * b_b2[:, None] * tl.exp(tl.where(m_21, b_g2[:, None] - b_g1[None, :], 0)), 0)
    p_A1 = Ai + row1[:, None] * BT + o_a[None, :]
    p_A2 = Ai + row2[:, None] * BT + o_a[None, :]
    # the diagonal blocks go through the output as scratch: the substitution reads them by rows
    tl.store(p_A1, b_A11, mask=m_1[:, None])
    tl.store(p_A2 + HB, b_A22, mask=m_2[:, None])
    tl.debug_barrier()
    n_1 = tl.minimum(T - i_t * BT, HB)
    n_2 = tl.minimum(T - i_t * BT - HB, HB)
    base = ((i_b * T + i_t * BT).to(tl.int64) * H + i_h) * BT
    b_T11 = tl.trans(unit_lower_inverse_t(Ai + base, H * BT, n_1, HB))
    b_T22 = tl.trans(unit_lower_inverse_t(Ai + base + HB * H * BT + HB, H * BT, n_2, HB))
    tl.debug_barrier()
    b_T21 = -tl.dot(tl.dot(b_T22, b_A21, input_precision="ieee"), b_T11, input_precision="ieee")
    tl.store(p_A1, b_T11, mask=m_1[:, None])
    tl.store(p_A1 + HB, tl.zeros([HB, HB], dtype=tl.float32), mask=m_1[:, None])
    tl.store(p_A2, b_T21, mask=m_2[:, None])
    tl.store(p_A2 + HB, b_T22, mask=m_2[:, None])


@autotune(_configs((64,)), key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T"])
def gdn_wy_fwd_kernel(
    k, v, beta, gc, Ai, w, u, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    # w = Ai (beta exp(gc) k), u = Ai (beta v)
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_c = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    m_t, m_k = o_t < T, o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    row = (i_b * T + o_t).to(tl.int64) * H + i_h
    dt = k.dtype.element_ty
    # [BT, BT]
    b_A = tl.load(Ai + row[:, None] * BT + o_c[None, :], mask=m_t[:, None], other=0).to(dt)
    b_b = tl.load(beta + row, mask=m_t, other=0).to(tl.float32)
    b_g = tl.load(gc + row, mask=m_t, other=0)
    # [BT, BK]
    b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0)
    b_w = tl.dot(b_A, (b_k * (b_b * tl.exp(b_g))[:, None]).to(dt))
    tl.store(w + row[:, None] * K + o_k[None, :], b_w.to(dt), mask=m_tk)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_u = tl.dot(b_A, (b_v * b_b[:, None]).to(dt))
        tl.store(u + row[:, None] * V + o_v[None, :], b_u.to(u.dtype.element_ty), mask=m_tv)


@autotune(STATE_CONFIGS, key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T", "NT"])
def gdn_fwd_h_kernel(
    k, w, u, gc, h, vn, h0, ht, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_H0: tl.constexpr, STORE_HT: tl.constexpr,
):
    # sequential over chunks: h[b, n, h] = state entering chunk n; vn = u - w h
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_bh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0)
    for i_t in range(NT):
        tl.store(h + ((i_b * NT + i_t) * H + i_h).to(tl.int64) * K * V + o_kv, b_h.to(h.dtype.element_ty), mask=m_kv)
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < T
        m_tv = m_t[:, None] & m_v[None, :]
        row = (i_b * T + o_t).to(tl.int64) * H + i_h
        row_l = (i_b * T + tl.minimum(i_t * BT + BT, T) - 1).to(tl.int64) * H + i_h
        # [BT, BK], [BT, BV]
        b_w = tl.load(w + row[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
        b_u = tl.load(u + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_vn = b_u.to(tl.float32) - tl.dot(b_w, b_h.to(b_w.dtype))
        tl.store(vn + row[:, None] * V + o_v[None, :], b_vn.to(vn.dtype.element_ty), mask=m_tv)
        # [BT], scalar
        b_g = tl.load(gc + row, mask=m_t, other=0)
        b_gl = tl.load(gc + row_l)
        b_vd = b_vn * tl.exp(tl.where(m_t, b_gl - b_g, 0))[:, None]
        # [BK, BT]
        b_kt = tl.load(k + row[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0)
        b_h = b_h * tl.exp(b_gl) + tl.dot(b_kt, b_vd.to(b_kt.dtype))
    if STORE_HT:
        tl.store(ht + i_bh.to(tl.int64) * K * V + o_kv, b_h, mask=m_kv)


@autotune(_configs((64, 128)), key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T", "NT"])
def gdn_fwd_o_kernel(
    q, k, vn, gc, h, o, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_c = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_t, m_k, m_v = o_t < T, o_k < K, o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    row = (i_b * T + o_t).to(tl.int64) * H + i_h
    base_h = ((i_b * NT + i_t) * H + i_h).to(tl.int64) * K * V
    # [BT, BK], [BK, BT], [BK, BV]
    b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
    b_kt = tl.load(k + row[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0)
    b_h = tl.load(h + base_h + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0)
    b_g = tl.load(gc + row, mask=m_t, other=0)
    b_o = tl.dot(b_q, b_h.to(b_q.dtype)) * tl.exp(b_g)[:, None]
    m_s = (o_c[:, None] >= o_c[None, :]) & m_t[:, None]
    b_s = tl.dot(b_q, b_kt)
    b_s = tl.where(m_s, b_s * tl.exp(tl.where(m_s, b_g[:, None] - b_g[None, :], 0)), 0)
    b_vn = tl.load(vn + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
    b_o = (b_o + tl.dot(b_s.to(b_vn.dtype), b_vn)) * scale
    tl.store(o + row[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_tv)


@autotune(_configs((64, 128)), key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T"])
def gdn_bwd_dv_local_kernel(
    q, k, do, gc, dv, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    # dvn from the intra-chunk output: dv_s = sum_{t >= s} scale exp(gc_t - gc_s) (q_t . k_s) do_t
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_c = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    m_t, m_k = o_t < T, o_k < K
    row = (i_b * T + o_t).to(tl.int64) * H + i_h
    # [BT, BK], [BK, BT]
    b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
    b_qt = tl.load(q + row[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0)
    b_g = tl.load(gc + row, mask=m_t, other=0)
    # [BT(s), BT(t)]
    m_s = (o_c[:, None] <= o_c[None, :]) & m_t[None, :]
    b_st = tl.dot(b_k, b_qt)
    b_st = tl.where(m_s, b_st * tl.exp(tl.where(m_s, b_g[None, :] - b_g[:, None], 0)) * scale, 0)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_do = tl.load(do + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_dv = tl.dot(b_st.to(b_do.dtype), b_do)
        tl.store(dv + row[:, None] * V + o_v[None, :], b_dv, mask=m_tv)


@autotune(STATE_CONFIGS, key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T", "NT"])
def gdn_bwd_dh_kernel(
    q, k, w, do, dvl, gc, dh, dvn, dht, dh0, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
):
    # backwards over chunks: dh[b, n, h] = dL / d(state leaving chunk n); dvn = dL / d vn
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(dht + i_bh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0)
    for i_t in range(NT - 1, -1, -1):
        tl.store(dh + ((i_b * NT + i_t) * H + i_h).to(tl.int64) * K * V + o_kv, b_dh.to(dh.dtype.element_ty), mask=m_kv)
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < T
        m_tv = m_t[:, None] & m_v[None, :]
        m_kt = m_k[:, None] & m_t[None, :]
        row = (i_b * T + o_t).to(tl.int64) * H + i_h
        row_l = (i_b * T + tl.minimum(i_t * BT + BT, T) - 1).to(tl.int64) * H + i_h
        b_g = tl.load(gc + row, mask=m_t, other=0)
        b_gl = tl.load(gc + row_l)
        # [BT, BK]
        b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
        b_kd = (b_k * tl.exp(tl.where(m_t, b_gl - b_g, 0))[:, None]).to(b_k.dtype)
        # [BT, BV]
        b_dvn = tl.load(dvl + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_dvn += tl.dot(b_kd, b_dh.to(b_k.dtype))
        tl.store(dvn + row[:, None] * V + o_v[None, :], b_dvn.to(dvn.dtype.element_ty), mask=m_tv)
        # [BK, BT]
        b_qt = tl.load(q + row[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_wt = tl.load(w + row[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_do = tl.load(do + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_qg = (b_qt * (tl.exp(b_g) * scale)[None, :]).to(b_do.dtype)
        b_dh = b_dh * tl.exp(b_gl) + tl.dot(b_qg, b_do) - tl.dot(b_wt, b_dvn.to(b_wt.dtype))
    if STORE_DH0:
        tl.store(dh0 + i_bh.to(tl.int64) * K * V + o_kv, b_dh, mask=m_kv)


@autotune(_configs((64, 32), warps=(4, 8)), key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T", "NT"])
def gdn_bwd_dqkw_kernel(
    q, k, vn, gc, h, do, dh, dvn, dq, dk, dw, dgc, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NK: tl.constexpr,
):
    # one K block: dq (final), dk and dgc (partial over K blocks) from the output and state
    # paths, dw = -dvn h^T
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_c = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_t, m_k = o_t < T, o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    row = (i_b * T + o_t).to(tl.int64) * H + i_h
    i_last = tl.minimum(i_t * BT + BT, T) - 1
    row_l = (i_b * T + i_last).to(tl.int64) * H + i_h
    base_h = ((i_b * NT + i_t) * H + i_h).to(tl.int64) * K * V
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    b_ds = tl.zeros([BT, BT], dtype=tl.float32)
    b_dgl = tl.zeros([BK], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        m_vk = m_v[:, None] & m_k[None, :]
        # [BT, BV]
        b_do = tl.load(do + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_vn = tl.load(vn + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_dvn = tl.load(dvn + row[:, None] * V + o_v[None, :], mask=m_tv, other=0).to(b_do.dtype)
        # [BV, BK]
        b_h = tl.load(h + base_h + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0).to(b_do.dtype)
        b_dh = tl.load(dh + base_h + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0).to(b_do.dtype)
        b_dq += tl.dot(b_do, b_h)
        b_dk += tl.dot(b_vn, b_dh)
        b_dw += tl.dot(b_dvn, b_h)
        b_ds += tl.dot(b_do, tl.trans(b_vn))
        b_dgl += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32), 0)
    b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_tk, other=0)
    b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0)
    b_g = tl.load(gc + row, mask=m_t, other=0)
    b_gl = tl.load(gc + row_l)
    m_s = (o_c[:, None] >= o_c[None, :]) & m_t[:, None]
    b_ds = tl.where(m_s, b_ds * tl.exp(tl.where(m_s, b_g[:, None] - b_g[None, :], 0)) * scale, 0).to(b_k.dtype)
    b_dq = b_dq * (tl.exp(b_g) * scale)[:, None] + tl.dot(b_ds, b_k)
    b_dk = b_dk * tl.exp(tl.where(m_t, b_gl - b_g, 0))[:, None]
    b_kf = b_k.to(tl.float32)
    b_dgl_all = tl.sum(b_dgl) * tl.exp(b_gl) + tl.sum(tl.sum(b_dk * b_kf, 1), 0)
    b_dk += tl.dot(tl.trans(b_ds), b_q)
    b_dg = tl.sum(b_q.to(tl.float32) * b_dq, 1) - tl.sum(b_kf * b_dk, 1)
    b_dg += tl.where(o_t == i_last, b_dgl_all, 0)
    tl.store(dq + row[:, None] * K + o_k[None, :], b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + row[:, None] * K + o_k[None, :], b_dk, mask=m_tk)
    tl.store(dw + row[:, None] * K + o_k[None, :], (-b_dw).to(dw.dtype.element_ty), mask=m_tk)
    tl.store(dgc + row * NK + i_k, b_dg, mask=m_t)


@autotune(_configs((64, 32), warps=(4, 8)), key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T"])
def gdn_bwd_wy_kernel(
    k, v, beta, gc, Ai, dw, du, dk_in, dgc_in, dk, dv, dbeta, dg, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NK: tl.constexpr, NKP: tl.constexpr,
):
    # back through w = Ai x, u = Ai y (x = beta exp(gc) k, y = beta v) and Ai = (I + Akk)^-1;
    # matrix products in k's dtype, sums in float32
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_c = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    m_t, m_k = o_t < T, o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    row = (i_b * T + o_t).to(tl.int64) * H + i_h
    dt = k.dtype.element_ty
    # [BT, BT] Ai transposed
    b_Ait = tl.load(Ai + row[None, :] * BT + o_c[:, None], mask=m_t[None, :], other=0).to(dt)
    # [BT, BK]
    b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0)
    b_b = tl.load(beta + row, mask=m_t, other=0).to(tl.float32)
    b_eg = tl.exp(tl.load(gc + row, mask=m_t, other=0))
    b_dw = tl.load(dw + row[:, None] * K + o_k[None, :], mask=m_tk, other=0).to(dt)
    b_dx = tl.dot(b_Ait, b_dw)
    b_dAi = tl.dot(b_dw, tl.trans((b_k * (b_b * b_eg)[:, None]).to(dt)))
    b_dk = b_dx * (b_b * b_eg)[:, None]
    b_dbx = tl.sum(b_dx * b_k.to(tl.float32), 1) * b_eg
    b_dg = b_dbx * b_b
    b_dbeta = b_dbx
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        # [BT, BV]
        b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_du = tl.load(du + row[:, None] * V + o_v[None, :], mask=m_tv, other=0).to(dt)
        b_dy = tl.dot(b_Ait, b_du)
        b_dAi += tl.dot(b_du, tl.trans((b_v * b_b[:, None]).to(dt)))
        b_dbeta += tl.sum(b_dy * b_v.to(tl.float32), 1)
        tl.store(dv + row[:, None] * V + o_v[None, :], (b_dy * b_b[:, None]).to(dv.dtype.element_ty), mask=m_tv)
    # dAkk = -Ai^T dAi Ai^T on the strictly lower triangle
    m_lo = (o_c[:, None] > o_c[None, :]) & m_t[:, None]
    b_dA = -tl.dot(tl.dot(b_Ait, b_dAi.to(dt)).to(dt), b_Ait)
    b_g = tl.load(gc + row, mask=m_t, other=0)
    b_e = tl.exp(tl.where(m_lo, b_g[:, None] - b_g[None, :], 0))
    b_kk = tl.dot(b_k, tl.trans(b_k))
    b_m = tl.where(m_lo, b_dA * b_e, 0)
    b_mb = b_m * b_b[:, None]
    b_dk += tl.dot(b_mb.to(dt), b_k) + tl.dot(tl.trans(b_mb).to(dt), b_k)
    b_dbeta += tl.sum(b_m * b_kk, 1)
    b_da = b_mb * b_kk
    b_dg += tl.sum(b_da, 1) - tl.sum(b_da, 0)
    b_dk += tl.load(dk_in + row[:, None] * K + o_k[None, :], mask=m_tk, other=0)
    o_n = tl.arange(0, NKP)
    b_dg += tl.sum(tl.load(dgc_in + row[:, None] * NK + o_n[None, :], mask=m_t[:, None] & (o_n < NK)[None, :], other=0), 1)
    b_dg = tl.cumsum(b_dg, axis=0, reverse=True)
    tl.store(dk + row[:, None] * K + o_k[None, :], b_dk.to(dk.dtype.element_ty), mask=m_tk)
    tl.store(dbeta + row, b_dbeta, mask=m_t)
    tl.store(dg + row, b_dg, mask=m_t)


def chunk_gated_delta_rule_fwd(q, k, v, g, beta, scale, initial_state, output_final_state, BT=BT_DEFAULT):
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, BT)
    BK = next_block(K, 256)
    gc = chunk_local_cumsum(g, BT)
    Ai = q.new_empty(B, T, H, BT, dtype=torch.float32)
    gdn_kkt_inverse_kernel[(NT, B * H)](k, beta, gc, Ai, T, H=H, K=K, BT=BT)
    w, u = torch.empty_like(k), torch.empty_like(v)
    gdn_wy_fwd_kernel[(NT, B * H)](k, v, beta, gc, Ai, w, u, T, H=H, K=K, V=V, BT=BT, BK=BK)
    h = k.new_empty(B, NT, H, K, V)
    vn = torch.empty_like(v)
    ht = q.new_empty(B, H, K, V, dtype=torch.float32) if output_final_state else None
    gdn_fwd_h_kernel[lambda meta: (triton.cdiv(V, meta["BV"]), B * H)](
        k, w, u, gc, h, vn, initial_state, ht, T, NT, H=H, K=K, V=V, BT=BT, BK=BK,
        USE_H0=initial_state is not None, STORE_HT=output_final_state,
    )
    o = torch.empty_like(v)
    gdn_fwd_o_kernel[lambda meta: (triton.cdiv(V, meta["BV"]), NT, B * H)](
        q, k, vn, gc, h, o, scale, T, NT, H=H, K=K, V=V, BT=BT, BK=BK,
    )
    return o, ht, gc, Ai, w, h, vn


def chunk_gated_delta_rule_bwd(q, k, v, beta, gc, Ai, w, h, vn, do, dht, scale, has_h0, BT=BT_DEFAULT):
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, BT)
    BK = next_block(K, 256)
    f32 = dict(dtype=torch.float32)
    dvl = q.new_empty(B, T, H, V, **f32)
    gdn_bwd_dv_local_kernel[(NT, B * H)](q, k, do, gc, dvl, scale, T, H=H, K=K, V=V, BT=BT, BK=BK)
    dh = torch.empty_like(h)
    dvn = torch.empty_like(v)
    dh0 = q.new_empty(B, H, K, V, **f32) if has_h0 else None
    gdn_bwd_dh_kernel[lambda meta: (triton.cdiv(V, meta["BV"]), B * H)](
        q, k, w, do, dvl, gc, dh, dvn, dht, dh0, scale, T, NT, H=H, K=K, V=V, BT=BT, BK=BK,
        USE_DHT=dht is not None, STORE_DH0=has_h0,
    )
    dq = torch.empty_like(q)
    dk_in = q.new_empty(B, T, H, K, **f32)
    dw = torch.empty_like(k)
    BKd = next_block(K, 64)
    NK = triton.cdiv(K, BKd)
    dgc = q.new_empty(B, T, H, NK, **f32)
    gdn_bwd_dqkw_kernel[(NK, NT, B * H)](
        q, k, vn, gc, h, do, dh, dvn, dq, dk_in, dw, dgc, scale, T, NT,
        H=H, K=K, V=V, BT=BT, BK=BKd, NK=NK,
    )
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dbeta, dg = torch.empty_like(gc), torch.empty_like(gc)
    gdn_bwd_wy_kernel[(NT, B * H)](
        k, v, beta, gc, Ai, dw, dvn, dk_in, dgc, dk, dv, dbeta, dg, T,
        H=H, K=K, V=V, BT=BT, BK=BK, NK=NK, NKP=triton.next_power_of_2(NK),
    )
    return dq, dk, dv, dg, dbeta, dh0


class ChunkGatedDeltaRuleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, initial_state, output_final_state):
        o, ht, gc, Ai, w, h, vn = chunk_gated_delta_rule_fwd(
            q, k, v, g, beta, scale, initial_state, output_final_state,
        )
        ctx.save_for_backward(q, k, v, beta, gc, Ai, w, h, vn)
        ctx.scale = scale
        ctx.has_h0 = initial_state is not None
        ctx.dtypes = (g.dtype, beta.dtype)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, gc, Ai, w, h, vn = ctx.saved_tensors
        dq, dk, dv, dg, dbeta, dh0 = chunk_gated_delta_rule_bwd(
            q, k, v, beta, gc, Ai, w, h, vn, do.contiguous(), None if dht is None else dht.contiguous(),
            ctx.scale, ctx.has_h0,
        )
        return dq, dk, dv, dg.to(ctx.dtypes[0]), dbeta.to(ctx.dtypes[1]), None, dh0, None


def chunk_gated_delta_rule(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False):
    """Gated delta rule (Gated DeltaNet), chunked Triton kernels (forward and backward).

    S_t = exp(g_t) S_{t-1};  S_t = S_t + beta_t k_t^T (v_t - k_t S_t);  o_t = scale * q_t S_t

    Args:
        q, k: [B, T, H, K] queries and keys, L2-normalised by the caller (bf16, fp16 or fp32, CUDA).
        v: [B, T, H, V] values, same dtype.
        g: [B, T, H] log decay per head (<= 0), any float dtype.
        beta: [B, T, H] write strength in (0, 1), any float dtype.
        scale: multiplies q; defaults to K ** -0.5.
        initial_state: optional [B, H, K, V] float32 state before the first step.
        output_final_state: also return the state after the last step.

    Returns:
        (o [B, T, H, V] in v's dtype, final state [B, H, K, V] float32 or None)

    Example:
        >>> q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        >>> o, ht = chunk_gated_delta_rule(q, k, v, F.logsigmoid(a), beta.sigmoid(), output_final_state=True)
    """
    check_qkv_state(q, k, v, initial_state)
    B, T, H, K = q.shape
    if g.shape != (B, T, H):
        raise ValueError(f"g must be [B, T, H] = {(B, T, H)}, got {tuple(g.shape)}")
    if beta.shape != (B, T, H):
        raise ValueError(f"beta must be [B, T, H] = {(B, T, H)}, got {tuple(beta.shape)}")
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    if scale is None:
        scale = K ** -0.5
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    return ChunkGatedDeltaRuleFunction.apply(q, k, v, g, beta, float(scale), initial_state, output_final_state)
