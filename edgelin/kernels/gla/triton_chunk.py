"""Triton chunked gated linear attention (per-channel decay): forward and backward.

Layout [B, T, H, K|V]; `g` is the log decay (<= 0) of every key channel. With chunks of BT=64
steps, gc the chunk-local cumsum of g, h_n the state entering chunk n and L its last row:

    o_t     = scale * (q_t * exp(gc_t)) @ h_n + sum_{s <= t in chunk} A[t, s] v_s
    A[t, s] = scale * sum_k q_tk k_sk exp(gc_tk - gc_sk)
    h_{n+1} = diag(exp(gc_L)) h_n + (k * exp(gc_L - gc))^T v

A is built by one program per sub-chunk i of BC=16 rows. Its blocks j < i are one tl.dot each,
(q_i exp(gc_i - gc_n)) (k_j exp(gc_n - gc_j))^T against the sub-chunk's first row n, so that every
exponent is <= 0 at any decay; its diagonal 16x16 block is summed column by column in float32 with
exponents gc_i - gc_j, i >= j. Both parts share one launch, so q and gc are read once.
The backward intra-chunk dq, dk follow the same plan (one program per sub-chunk and BK channels):
blocks j < i (dq, against the first row) and j > i (dk, against the last row) as tl.dot, the
diagonal block one row j at a time with the single exponent -|gc_r - gc_j|.
"""

import torch
import triton
import triton.language as tl

from edgelin.kernels.common import autotune, chunk_local_cumsum, next_block, warps_stages
from edgelin.kernels.common.checks import check_qkv_state

BT_DEFAULT = 64
BC_DEFAULT = 16

# the sequential state kernels choose their tile (few (batch, head) pairs want narrow tiles), warps
# and how many chunks ahead their loads run (stages); the pairs beside (4, 2) are ones that do not
# spill on sm_90 at K=V=128 (2 warps always reach 255 registers there)
STATE_CONFIGS = [
    triton.Config({"BK": bk, "BV": bv}, num_warps=w, num_stages=s)
    for bk, bv, ws in (
        (64, 32, ((4, 2), (8, 3), (8, 4))),
        (64, 64, ((4, 2), (8, 2), (8, 3))),
        (32, 32, ((4, 2), (4, 3), (4, 4))),
        (32, 64, ((4, 2), (4, 3), (8, 3))),
    ) for w, s in ws
]


@autotune(STATE_CONFIGS, key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T", "NT"])
def gla_fwd_h_kernel(
    k, v, gc, h, h0, ht, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_H0: tl.constexpr, STORE_HT: tl.constexpr,
):
    # h[b, n, h] = state entering chunk n, in k's dtype
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = i_k * BK + tl.arange(0, BK)
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
        row = (i_b * T + o_t).to(tl.int64) * H + i_h
        row_l = (i_b * T + tl.minimum(i_t * BT + BT, T) - 1).to(tl.int64) * H + i_h
        m_kt = m_k[:, None] & m_t[None, :]
        # [BK, BT]
        b_k = tl.load(k + row[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_g = tl.load(gc + row[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        # [BK]
        b_gl = tl.load(gc + row_l * K + o_k, mask=m_k, other=0)
        # [BT, BV]
        b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
        b_kd = tl.where(m_kt, b_k * tl.exp(b_gl[:, None] - b_g), 0)
        b_h = b_h * tl.exp(b_gl)[:, None] + tl.dot(b_kd.to(b_v.dtype), b_v)
    if STORE_HT:
        tl.store(ht + i_bh.to(tl.int64) * K * V + o_kv, b_h, mask=m_kv)


@autotune(warps_stages(warps=(4, 8, 2)), key=["H", "K", "T"])
@triton.jit(do_not_specialize=["T"])
def gla_fwd_intra_kernel(
    q, k, gc, A, scale, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
):
    # one program per sub-chunk i of BC rows: A[rows, 0:BT] block by block; BK covers K
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    NC: tl.constexpr = BT // BC
    i_t, i_i = i_c // NC, i_c % NC
    t0 = i_t * BT
    r0 = t0 + i_i * BC
    o_r = tl.arange(0, BC)
    o_i = r0 + o_r
    o_k = tl.arange(0, BK)
    m_i, m_k = o_i < T, o_k < K
    m_ik = m_i[:, None] & m_k[None, :]
    row_i = (i_b * T + o_i).to(tl.int64) * H + i_h
    p_A = A + row_i[:, None] * BT + o_r[None, :]
    # [BC, BK]
    b_q = tl.load(q + row_i[:, None] * K + o_k[None, :], mask=m_ik, other=0).to(tl.float32)
    b_g = tl.load(gc + row_i[:, None] * K + o_k[None, :], mask=m_ik, other=0)

    # the diagonal block, one column j at a time; row j is loaded as a [BC, BK] tile of copies so
    # that it arrives in the layout of b_q (a [BK] load is shuffled through shared memory)
    o_kk = tl.broadcast_to(o_k[None, :], (BC, BK))
    b_A = tl.zeros([BC, BC], dtype=tl.float32)
    for j in tl.static_range(BC):
        row_j = (i_b * T + r0 + j).to(tl.int64) * H + i_h
        m_jk = (o_kk < K) & (r0 + j < T)
        b_kj = tl.load(k + row_j * K + o_kk, mask=m_jk, other=0).to(tl.float32)
        b_gj = tl.load(gc + row_j * K + o_kk, mask=m_jk, other=0)
        m_r = (o_r >= j) & m_i
        b_a = tl.sum(b_q * b_kj * tl.exp(tl.where(m_r[:, None], b_g - b_gj, 0)), 1)
        b_A = tl.where(m_r[:, None] & (o_r == j)[None, :], b_a[:, None], b_A)
    tl.store(p_A + i_i * BC, b_A * scale, mask=m_i[:, None])
    o_c = tl.arange(0, BT)
    m_after = m_i[:, None] & (o_c >= i_i * BC + BC)[None, :]
    tl.store(A + row_i[:, None] * BT + o_c[None, :], tl.zeros([BC, BT], dtype=tl.float32), mask=m_after)

    # the blocks of earlier sub-chunks j < i, against row n = r0
    row_n = (i_b * T + r0).to(tl.int64) * H + i_h
    b_gn = tl.load(gc + row_n * K + o_k, mask=m_k, other=0)
    b_qg = b_q * tl.exp(tl.where(m_ik, b_g - b_gn[None, :], 0))
    for i_j in range(i_i):
        rows_j = (i_b * T + t0 + i_j * BC + o_r).to(tl.int64) * H + i_h
        # [BK, BC]; these rows all precede r0 < T
        b_k = tl.load(k + rows_j[None, :] * K + o_k[:, None], mask=m_k[:, None], other=0).to(tl.float32)
        b_gk = tl.load(gc + rows_j[None, :] * K + o_k[:, None], mask=m_k[:, None], other=0)
        b_kg = b_k * tl.exp(b_gn[:, None] - b_gk)
        tl.store(p_A + i_j * BC, tl.dot(b_qg, b_kg) * scale, mask=m_i[:, None])


@autotune(warps_stages(), key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T", "NT"])
def gla_fwd_o_kernel(
    q, v, gc, h, A, o, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    o_c = tl.arange(0, BT)
    m_t, m_v = o_t < T, o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    row = (i_b * T + o_t).to(tl.int64) * H + i_h
    base_h = ((i_b * NT + i_t) * H + i_h).to(tl.int64) * K * V
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        # [BT, BK]
        b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_g = tl.load(gc + row[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        # [BK, BV]
        b_h = tl.load(h + base_h + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0)
        b_o += tl.dot((b_q * tl.exp(b_g)).to(b_h.dtype), b_h)
    # [BT, BT], [BT, BV]
    b_A = tl.load(A + row[:, None] * BT + o_c[None, :], mask=m_t[:, None], other=0)
    b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
    b_o = b_o * scale + tl.dot(b_A.to(b_v.dtype), b_v)
    tl.store(o + row[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_tv)


@autotune(STATE_CONFIGS, key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T", "NT"])
def gla_bwd_dh_kernel(
    q, do, gc, dh, dht, dh0, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
):
    # dh[b, n, h] = dL / d(state leaving chunk n)
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_k = i_k * BK + tl.arange(0, BK)
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
        row = (i_b * T + o_t).to(tl.int64) * H + i_h
        row_l = (i_b * T + tl.minimum(i_t * BT + BT, T) - 1).to(tl.int64) * H + i_h
        m_kt = m_k[:, None] & m_t[None, :]
        # [BK, BT]
        b_q = tl.load(q + row[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_g = tl.load(gc + row[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_gl = tl.load(gc + row_l * K + o_k, mask=m_k, other=0)
        # [BT, BV]
        b_do = tl.load(do + row[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
        b_qg = b_q * tl.exp(b_g) * scale
        b_dh = b_dh * tl.exp(b_gl)[:, None] + tl.dot(b_qg.to(b_do.dtype), b_do)
    if STORE_DH0:
        tl.store(dh0 + i_bh.to(tl.int64) * K * V + o_kv, b_dh, mask=m_kv)


@autotune(warps_stages(), key=["H", "V", "T"])
@triton.jit(do_not_specialize=["T"])
def gla_bwd_dA_kernel(
    v, do, dA, scale, T,
    H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
):
    # dA[t, s] = scale * do_t . v_s for s <= t (scale folded in for the q/k gradients)
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_c = tl.arange(0, BT)
    m_t = o_t < T
    row = (i_b * T + o_t).to(tl.int64) * H + i_h
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        # [BT, BV], [BV, BT]
        b_do = tl.load(do + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_v = tl.load(v + row[None, :] * V + o_v[:, None], mask=(o_v < V)[:, None] & m_t[None, :], other=0)
        b_dA += tl.dot(b_do, b_v)
    b_dA = tl.where(o_c[:, None] >= o_c[None, :], b_dA * scale, 0)
    tl.store(dA + row[:, None] * BT + o_c[None, :], b_dA, mask=m_t[:, None])


@autotune(warps_stages(), key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T", "NT"])
def gla_bwd_dv_kernel(
    k, gc, A, do, dh, dv, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    # dv = A^T do + (k * exp(gc_L - gc)) @ dh
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    o_c = tl.arange(0, BT)
    m_t, m_v = o_t < T, o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    row = (i_b * T + o_t).to(tl.int64) * H + i_h
    row_l = (i_b * T + tl.minimum(i_t * BT + BT, T) - 1).to(tl.int64) * H + i_h
    base_h = ((i_b * NT + i_t) * H + i_h).to(tl.int64) * K * V
    # [BT, BT] A transposed, [BT, BV]
    b_At = tl.load(A + row[None, :] * BT + o_c[:, None], mask=m_t[None, :], other=0)
    b_do = tl.load(do + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
    b_dv = tl.dot(b_At.to(b_do.dtype), b_do)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_g = tl.load(gc + row[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_gl = tl.load(gc + row_l * K + o_k, mask=m_k, other=0)
        b_kd = tl.where(m_tk, b_k * tl.exp(b_gl[None, :] - b_g), 0)
        # [BK, BV]
        b_dh = tl.load(dh + base_h + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0)
        b_dv += tl.dot(b_kd.to(b_dh.dtype), b_dh)
    tl.store(dv + row[:, None] * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)


@autotune(warps_stages(warps=(4, 2, 8), stages=(2, 3)), key=["H", "K", "T"])
@triton.jit(do_not_specialize=["T"])
def gla_bwd_intra_kernel(
    q, k, gc, dA, dq, dk, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
):
    # intra-chunk dq, dk (float32) of one sub-chunk i of BC rows and BK channels, from dA
    i_k, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    NC: tl.constexpr = BT // BC
    i_t, i_i = i_c // NC, i_c % NC
    t0 = i_t * BT
    r0 = t0 + i_i * BC
    o_r = tl.arange(0, BC)
    o_i = r0 + o_r
    o_k = i_k * BK + tl.arange(0, BK)
    m_i, m_k = o_i < T, o_k < K
    m_ik = m_i[:, None] & m_k[None, :]
    row_i = (i_b * T + o_i).to(tl.int64) * H + i_h
    # [BC, BK]
    b_g = tl.load(gc + row_i[:, None] * K + o_k[None, :], mask=m_ik, other=0)

    # the diagonal block, one row j (< T) at a time for both: dq_r += dA[r, j] k_j exp(gc_r - gc_j),
    # r >= j, and dk_r += dA[j, r] q_j exp(gc_j - gc_r), r <= j. gc is non-increasing in the chunk
    # (g <= 0), so both exponents are -|gc_r - gc_j|: one exp, never positive, also on masked rows.
    # Row j is loaded as a [BC, BK] tile of copies so that it arrives in the layout of b_g; the two
    # [BC] vectors of dA are small enough for the compiler to load them in that layout directly. A
    # rolled loop: unrolled, sm_90 hoists all 16 rows' loads (244 registers at BK=64, 4 warps).
    o_kk = tl.broadcast_to(o_k[None, :], (BC, BK))
    m_kk = o_kk < K
    b_dq = tl.zeros([BC, BK], dtype=tl.float32)
    b_dk = tl.zeros([BC, BK], dtype=tl.float32)
    for j in range(0, tl.minimum(BC, T - r0)):
        row_j = (i_b * T + r0 + j).to(tl.int64) * H + i_h
        b_qj = tl.load(q + row_j * K + o_kk, mask=m_kk, other=0).to(tl.float32)
        b_kj = tl.load(k + row_j * K + o_kk, mask=m_kk, other=0).to(tl.float32)
        b_gj = tl.load(gc + row_j * K + o_kk, mask=m_kk, other=0)
        # [BC] dA[r, j] for r >= j and dA[j, r] for r <= j
        b_dAc = tl.load(dA + row_i * BT + i_i * BC + j, mask=(o_r >= j) & m_i, other=0)
        b_dAr = tl.load(dA + row_j * BT + i_i * BC + o_r, mask=o_r <= j, other=0)
        b_e = tl.exp(-tl.abs(b_g - b_gj))
        b_dq += b_dAc[:, None] * b_kj * b_e
        b_dk += b_dAr[:, None] * b_qj * b_e

    # dq from the blocks j < i: dA_ij (k_j exp(gc_n - gc_j)) against the first row n = r0
    if i_i > 0:
        row_n = (i_b * T + r0).to(tl.int64) * H + i_h
        b_gn = tl.load(gc + row_n * K + o_k, mask=m_k, other=0)
        b_dqo = tl.zeros([BC, BK], dtype=tl.float32)
        for i_s in range(i_i):
            # these rows all precede r0 < T
            rows_b = (i_b * T + t0 + i_s * BC + o_r).to(tl.int64) * H + i_h
            b_kb = tl.load(k + rows_b[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0).to(tl.float32)
            b_gb = tl.load(gc + rows_b[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0)
            b_kg = b_kb * tl.exp(b_gn[None, :] - b_gb)
            # [BC(i), BC(j)]
            b_dA = tl.load(dA + row_i[:, None] * BT + i_s * BC + o_r[None, :], mask=m_i[:, None], other=0)
            b_dqo += tl.dot(b_dA, b_kg)
        b_dq += b_dqo * tl.exp(tl.where(m_ik, b_g - b_gn[None, :], 0))

    # dk from the blocks j > i present in the chunk: dA_ji^T (q_j exp(gc_j - gc_m)) against the
    # last row m of this sub-chunk (full whenever a later one exists)
    n_c = tl.minimum(NC, tl.cdiv(T - t0, BC))
    if i_i + 1 < n_c:
        row_m = (i_b * T + r0 + BC - 1).to(tl.int64) * H + i_h
        b_gm = tl.load(gc + row_m * K + o_k, mask=m_k, other=0)
        b_dko = tl.zeros([BC, BK], dtype=tl.float32)
        for i_s in range(i_i + 1, n_c):
            o_b = t0 + i_s * BC + o_r
            m_b = o_b < T
            m_bk = m_b[:, None] & m_k[None, :]
            rows_b = (i_b * T + o_b).to(tl.int64) * H + i_h
            b_qb = tl.load(q + rows_b[:, None] * K + o_k[None, :], mask=m_bk, other=0).to(tl.float32)
            b_gb = tl.load(gc + rows_b[:, None] * K + o_k[None, :], mask=m_bk, other=0)
            b_qg = b_qb * tl.exp(tl.where(m_bk, b_gb - b_gm[None, :], 0))
            # [BC(i), BC(j)] = dA[j rows, i columns] transposed
            b_dAt = tl.load(dA + rows_b[None, :] * BT + i_i * BC + o_r[:, None], mask=m_b[None, :], other=0)
            b_dko += tl.dot(b_dAt, b_qg)
        b_dk += b_dko * tl.exp(tl.where(m_ik, b_gm[None, :] - b_g, 0))
    tl.store(dq + row_i[:, None] * K + o_k[None, :], b_dq, mask=m_ik)
    tl.store(dk + row_i[:, None] * K + o_k[None, :], b_dk, mask=m_ik)


@autotune(warps_stages(), key=["H", "K", "V", "T"])
@triton.jit(do_not_specialize=["T", "NT"])
def gla_bwd_inter_kernel(
    q, k, v, gc, h, do, dh, dq_in, dk_in, dq, dk, dg, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):
    # adds the inter-chunk parts to dq, dk and turns q*dq - k*dk into dg (reverse cumsum in the chunk)
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_t, m_k = o_t < T, o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    row = (i_b * T + o_t).to(tl.int64) * H + i_h
    row_l = (i_b * T + tl.minimum(i_t * BT + BT, T) - 1).to(tl.int64) * H + i_h
    base_h = ((i_b * NT + i_t) * H + i_h).to(tl.int64) * K * V
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dgl = tl.zeros([BK], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        m_vk = m_v[:, None] & m_k[None, :]
        # [BT, BV]
        b_do = tl.load(do + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        # [BV, BK]
        b_h = tl.load(h + base_h + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0)
        b_dh = tl.load(dh + base_h + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0)
        b_dq += tl.dot(b_do, b_h.to(b_do.dtype))
        b_dk += tl.dot(b_v, b_dh.to(b_v.dtype))
        b_dgl += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32), 0)
    b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_tk, other=0).to(tl.float32)
    b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_tk, other=0).to(tl.float32)
    b_g = tl.load(gc + row[:, None] * K + o_k[None, :], mask=m_tk, other=0)
    b_gl = tl.load(gc + row_l * K + o_k, mask=m_k, other=0)
    b_dq = b_dq * tl.exp(b_g) * scale
    b_dk = b_dk * tl.exp(tl.where(m_tk, b_gl[None, :] - b_g, 0))
    b_dgl = b_dgl * tl.exp(b_gl) + tl.sum(b_dk * b_k, 0)
    b_dq += tl.load(dq_in + row[:, None] * K + o_k[None, :], mask=m_tk, other=0)
    b_dk += tl.load(dk_in + row[:, None] * K + o_k[None, :], mask=m_tk, other=0)
    b_dg = tl.cumsum(b_q * b_dq - b_k * b_dk, axis=0, reverse=True) + b_dgl[None, :]
    tl.store(dq + row[:, None] * K + o_k[None, :], b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + row[:, None] * K + o_k[None, :], b_dk.to(dk.dtype.element_ty), mask=m_tk)
    tl.store(dg + row[:, None] * K + o_k[None, :], b_dg.to(dg.dtype.element_ty), mask=m_tk)


def _state_grid(K: int, V: int, n_heads: int):
    return lambda meta: (triton.cdiv(K, meta["BK"]), triton.cdiv(V, meta["BV"]), n_heads)


def chunk_gla_fwd(q, k, v, g, scale, initial_state, output_final_state, BT=BT_DEFAULT, BC=BC_DEFAULT):
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, BT)
    BK = next_block(K, 64)
    gc = chunk_local_cumsum(g, BT)
    h = k.new_empty(B, NT, H, K, V)
    ht = q.new_empty(B, H, K, V, dtype=torch.float32) if output_final_state else None
    gla_fwd_h_kernel[_state_grid(K, V, B * H)](
        k, v, gc, h, initial_state, ht, T, NT, H=H, K=K, V=V, BT=BT,
        USE_H0=initial_state is not None, STORE_HT=output_final_state,
    )
    A = q.new_empty(B, T, H, BT, dtype=torch.float32)
    gla_fwd_intra_kernel[(triton.cdiv(T, BC), B * H)](q, k, gc, A, scale, T, H=H, K=K, BT=BT, BC=BC, BK=next_block(K, 256))
    o = torch.empty_like(v)
    BVo = next_block(V, 64)
    gla_fwd_o_kernel[(triton.cdiv(V, BVo), NT, B * H)](
        q, v, gc, h, A, o, scale, T, NT, H=H, K=K, V=V, BT=BT, BK=BK, BV=BVo,
    )
    return o, ht, gc, h, A


def chunk_gla_bwd(q, k, v, gc, h, A, do, dht, scale, has_h0, BT=BT_DEFAULT, BC=BC_DEFAULT):
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, BT)
    BK = next_block(K, 64)
    dh = torch.empty_like(h)
    dh0 = q.new_empty(B, H, K, V, dtype=torch.float32) if has_h0 else None
    gla_bwd_dh_kernel[_state_grid(K, V, B * H)](
        q, do, gc, dh, dht, dh0, scale, T, NT, H=H, K=K, V=V, BT=BT,
        USE_DHT=dht is not None, STORE_DH0=has_h0,
    )
    BV64 = next_block(V, 64)
    dA = torch.empty_like(A)
    gla_bwd_dA_kernel[(NT, B * H)](v, do, dA, scale, T, H=H, V=V, BT=BT, BV=BV64)
    dv = torch.empty_like(v)
    gla_bwd_dv_kernel[(triton.cdiv(V, BV64), NT, B * H)](
        k, gc, A, do, dh, dv, T, NT, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV64,
    )
    dq_in = torch.empty_like(gc)
    dk_in = torch.empty_like(gc)
    gla_bwd_intra_kernel[(triton.cdiv(K, BK), triton.cdiv(T, BC), B * H)](
        q, k, gc, dA, dq_in, dk_in, T, H=H, K=K, BT=BT, BC=BC, BK=BK,
    )
    dq, dk, dg = torch.empty_like(q), torch.empty_like(k), torch.empty_like(gc)
    gla_bwd_inter_kernel[(triton.cdiv(K, BK), NT, B * H)](
        q, k, v, gc, h, do, dh, dq_in, dk_in, dq, dk, dg, scale, T, NT,
        H=H, K=K, V=V, BT=BT, BK=BK, BV=BV64,
    )
    return dq, dk, dv, dg, dh0


class ChunkGLAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state):
        o, ht, gc, h, A = chunk_gla_fwd(q, k, v, g, scale, initial_state, output_final_state)
        ctx.save_for_backward(q, k, v, gc, h, A)
        ctx.scale = scale
        ctx.has_h0 = initial_state is not None
        ctx.g_dtype = g.dtype
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gc, h, A = ctx.saved_tensors
        dq, dk, dv, dg, dh0 = chunk_gla_bwd(
            q, k, v, gc, h, A, do.contiguous(), None if dht is None else dht.contiguous(), ctx.scale, ctx.has_h0,
        )
        return dq, dk, dv, dg.to(ctx.g_dtype), None, dh0, None


def chunk_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False):
    """Gated linear attention with per-channel decay, chunked Triton kernels (forward and backward).

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t ;  o_t = scale * q_t S_t

    Args:
        q, k: [B, T, H, K] queries and keys (bf16, fp16 or fp32, on a CUDA device).
        v: [B, T, H, V] values, same dtype.
        g: [B, T, H, K] log decay per key channel (<= 0), any float dtype.
        scale: multiplies q; defaults to K ** -0.5.
        initial_state: optional [B, H, K, V] float32 state before the first step.
        output_final_state: also return the state after the last step.

    Returns:
        (o [B, T, H, V] in v's dtype, final state [B, H, K, V] float32 or None)

    Example:
        >>> o, ht = chunk_gla(q, k, v, F.logsigmoid(gk), output_final_state=True)
    """
    check_qkv_state(q, k, v, initial_state)
    if g.shape != q.shape:
        raise ValueError(f"g must be [B, T, H, K] = {tuple(q.shape)}, got {tuple(g.shape)}")
    K = q.shape[-1]
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    if scale is None:
        scale = K ** -0.5
    q, k, v, g = (x.contiguous() for x in (q, k, v, g))
    return ChunkGLAFunction.apply(q, k, v, g, float(scale), initial_state, output_final_state)
