#!/usr/bin/env python3
"""Checks the ldmatrix / mma.sync.m16n8k16 fragment addressing of the 16-bit linear-attention
kernels (kernels/linattn.cu: chunk_sweep16_impl, chunk16_impl, chunk_fused_impl) and of the GEMM's K-major loads
(kernels/gemm.cu, VEC_BK / VEC_AKBK) without a GPU.

It emulates ldmatrix.x4 (with and without .trans) and mma.m16n8k16 per the PTX ISA fragment
layouts, first on the addressing of the mma.sync GEMM in kernels/gemm.cu (which passes its tests
on GPUs, so it validates the emulator), then on the lane addresses the linear-attention kernels
use, against numpy products. Run it after changing those addresses: python3 scripts/check_mma_layouts.py
"""
import sys

import numpy as np

rng = np.random.default_rng(0)

def ldmatrix_x4(smem, addr_of_lane, trans=False):
    """smem: 2-D array (rows, cols) of values; addr_of_lane(lane) -> (row, col) of that lane's row start.
    Returns regs[lane][j] = (lo, hi) pair."""
    regs = [[None]*4 for _ in range(32)]
    for j in range(4):
        rows = [addr_of_lane(8*j + r) for r in range(8)]
        mat = np.array([[smem[r0, c0 + c] for c in range(8)] for (r0, c0) in rows])
        if trans:
            mat = mat.T
        for t in range(32):
            regs[t][j] = (mat[t//4, 2*(t%4)], mat[t//4, 2*(t%4)+1])
    return regs

def mma(acc, a, b0, b1):
    """acc[lane] = [c0..c3]; a[lane] = 4 pairs; b0[lane], b1[lane] pairs. Reconstruct matrices and multiply."""
    A = np.zeros((16,16)); B = np.zeros((16,8)); C = np.zeros((16,8))
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        A[g, 2*t:2*t+2] = a[lane][0]; A[g+8, 2*t:2*t+2] = a[lane][1]
        A[g, 2*t+8:2*t+10] = a[lane][2]; A[g+8, 2*t+8:2*t+10] = a[lane][3]
        B[2*t:2*t+2, g] = b0[lane]; B[2*t+8:2*t+10, g] = b1[lane]
        C[g, 2*t:2*t+2] = acc[lane][0:2]; C[g+8, 2*t:2*t+2] = acc[lane][2:4]
    D = C + A @ B
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        acc[lane][0:2] = D[g, 2*t:2*t+2]; acc[lane][2:4] = D[g+8, 2*t:2*t+2]

def accumulators(n):
    """n n-tiles of per-lane C fragments, zeroed."""
    return [[np.zeros(4) for _ in range(32)] for _ in range(n)]

def mma_ntile(acc, a, b, pair):
    """acc += A·B for the n-tile whose B registers are b[lane][2·pair], b[lane][2·pair + 1] (an
    ldmatrix.x4 of B holds two n-tiles)."""
    mma(acc, a, [b[l][2 * pair] for l in range(32)], [b[l][2 * pair + 1] for l in range(32)])

def mma_x4(accs, np_, a, b):
    """Both n-tiles of an ldmatrix.x4 of B (columns 16·np_ ..): accs[2·np_] and accs[2·np_ + 1],
    as the kernels issue two m16n8k16 per 16 columns."""
    mma_ntile(accs[2 * np_], a, b, 0)
    mma_ntile(accs[2 * np_ + 1], a, b, 1)

def frag_to_tile(accs, rw, cw, rows=64, cols=64):
    """accs[m][lane][cc] for n-tile m (cols cw + 8m ..); returns dict of (row,col)->value."""
    out = {}
    for m in range(len(accs)):
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            for cc in range(4):
                out[(rw + g + 8*(cc>>1), cw + 8*m + 2*t + (cc&1))] = accs[m][lane][cc]
    return out

# 1. the gemm.cu pattern (known good on GPU): sA [m][k], sB [n][k]; C = A·Bᵀ for one 16x16 (2 n-tiles), k 16
A = rng.standard_normal((16, 16)); Bt = rng.standard_normal((16, 16))
af = ldmatrix_x4(A, lambda lane: (lane % 16, (lane // 16) * 8))
bf = ldmatrix_x4(Bt, lambda lane: ((lane % 8) + (lane // 16) * 8, ((lane // 8) % 2) * 8))
accs = accumulators(2)
for nt in range(2):
    mma_ntile(accs[nt], af, bf, nt % 2)
tile = frag_to_tile(accs, 0, 0)
ref = A @ Bt.T
err = max(abs(tile[(r, c)] - ref[r, c]) for (r, c) in tile)
failures = []


def report(name, ok, detail=""):
    print(name, "OK" if ok else f"BAD {detail}")
    if not ok:
        failures.append(name)


report("gemm pattern (known good):", err < 1e-9, err)

# 2. sweep16: xs [r][i], ys [r][j] (64 rows x 64 cols); C[i][j] = sum_r X[r][i] Y[r][j]
X = rng.standard_normal((64, 64)); Y = rng.standard_normal((64, 64))
full = {}
for warp in range(8):
    rw, cw = 16 * (warp >> 1), 32 * (warp & 1)
    accs = accumulators(4)
    for kk in range(0, 64, 16):
        a = ldmatrix_x4(X, lambda lane: (kk + lane % 8 + 8 * ((lane // 8) // 2), rw + 8 * ((lane // 8) % 2)), trans=True)
        for np_ in range(2):
            b = ldmatrix_x4(Y, lambda lane: (kk + lane % 8 + 8 * ((lane // 8) % 2), cw + 16 * np_ + 8 * ((lane // 8) // 2)), trans=True)
            mma_x4(accs, np_, a, b)
    full.update(frag_to_tile(accs, rw, cw))
ref = X.T @ Y
err = max(abs(full[(r, c)] - ref[r, c]) for (r, c) in full)
report("sweep16 Xᵀ·Y:", err < 1e-9 and len(full) == 4096, err)

# 3. chunk16 phase 1 (one 32-wide slab: ks 0,16): scores X·Yᵀ with xs [t][k], ys [s][k]; X·M with ms [k][n]
Xs = rng.standard_normal((64, 32)); Ys = rng.standard_normal((64, 32)); Ms = rng.standard_normal((32, 64))
W = {}; O = {}
for warp in range(8):
    rw, cw = 16 * (warp >> 1), 32 * (warp & 1)
    aw = accumulators(4)
    ao = accumulators(4)
    for ks in (0, 16):
        a = ldmatrix_x4(Xs, lambda lane: (rw + lane % 8 + 8 * ((lane // 8) % 2), ks + 8 * ((lane // 8) // 2)))
        for np_ in range(2):
            n0 = cw + 16 * np_
            b = ldmatrix_x4(Ys, lambda lane: (n0 + lane % 8 + 8 * ((lane // 8) // 2), ks + 8 * ((lane // 8) % 2)))
            mma_x4(aw, np_, a, b)
            bm = ldmatrix_x4(Ms, lambda lane: (ks + lane % 8 + 8 * ((lane // 8) % 2), n0 + 8 * ((lane // 8) // 2)), trans=True)
            mma_x4(ao, np_, a, bm)
    W.update(frag_to_tile(aw, rw, cw)); O.update(frag_to_tile(ao, rw, cw))
rw_ = Xs @ Ys.T; ro = Xs @ Ms
e1 = max(abs(W[k] - rw_[k]) for k in W); e2 = max(abs(O[k] - ro[k]) for k in O)
report("chunk16 scores X·Yᵀ:", e1 < 1e-9 and len(W) == 4096, e1)
report("chunk16 X·M:", e2 < 1e-9 and len(O) == 4096, e2)

# 4. chunk16 phase 2: W [t][s] (non-trans A), F [s][n] (trans B), over s in 16-blocks
Wm = rng.standard_normal((64, 64)); F = rng.standard_normal((64, 64))
O2 = {}
for warp in range(8):
    rw, cw = 16 * (warp >> 1), 32 * (warp & 1)
    ao = accumulators(4)
    for s0 in range(0, 64, 16):
        a = ldmatrix_x4(Wm, lambda lane: (rw + lane % 8 + 8 * ((lane // 8) % 2), s0 + 8 * ((lane // 8) // 2)))
        for np_ in range(2):
            b = ldmatrix_x4(F, lambda lane: (s0 + lane % 8 + 8 * ((lane // 8) % 2), cw + 16 * np_ + 8 * ((lane // 8) // 2)), trans=True)
            mma_x4(ao, np_, a, b)
    O2.update(frag_to_tile(ao, rw, cw))
ref = Wm @ F
e3 = max(abs(O2[k] - ref[k]) for k in O2)
report("chunk16 W·F:", e3 < 1e-9 and len(O2) == 4096, e3)

# 5. kernels/gemm.cu's K-major loads (VEC_AKBK): A stored [K][M], B stored [K][N], both read with
# ldmatrix.trans; block tile 128×128, K slice 32, warp w at rows 64·(w / 4), columns 32·(w % 4).
At = rng.standard_normal((32, 128)); Bk = rng.standard_normal((32, 128))
Cg = {}
for warp in range(8):
    wm, wn = (warp // 4) * 64, (warp % 4) * 32
    accs = [accumulators(4) for _ in range(4)]
    for ks in (0, 16):
        af = [ldmatrix_x4(At, lambda lane: (ks + lane % 8 + 8 * ((lane // 8) // 2), wm + mt * 16 + 8 * ((lane // 8) % 2)), trans=True) for mt in range(4)]
        bf = [ldmatrix_x4(Bk, lambda lane: (ks + lane % 8 + 8 * ((lane // 8) % 2), wn + np_ * 16 + 8 * ((lane // 8) // 2)), trans=True) for np_ in range(2)]
        for mt in range(4):
            for nt in range(4):
                b = bf[nt // 2]
                mma_ntile(accs[mt][nt], af[mt], b, nt % 2)
    for mt in range(4):
        Cg.update(frag_to_tile(accs[mt], wm + mt * 16, wn))
ref = At.T @ Bk
e5 = max(abs(Cg[k] - ref[k]) for k in Cg)
report("gemm K-major A and B (VEC_AKBK):", e5 < 1e-9 and len(Cg) == 128 * 128, e5)

# 6. chunk_fused_impl (kernels/linattn.cu): the one-pass chunked forward and backward passes of
# one sequence·head and one 64-column output tile, every product through the kernel's lane
# addresses: the state slice M [wide][64] in the warps' fragments (rows rw + 64·rg), stored to ms,
# X·M_c from ms, the masked scores (n-tiles in the masked half skipped), W·F, then M += Yᵀ·F
# (scaled in the reverse passes, through a separate accumulator); against the same chunked sums
# computed directly. Chunks of 64 with a short last one; wide 128, 40 (the second row half of M
# idle) and 72 (past 64, not a multiple of 16).
def lanes(f):
    return lambda lane: f(lane % 8, lane // 8)

def chunk_ranges(T, rev):
    r = [(c0, min(64, T - c0)) for c0 in range(0, T, 64)]
    return r[::-1] if rev else r

def fused_pass(X, Y, F, M0, rev, wscale, oscale, mscale):
    T, wide = X.shape
    wpad = (wide + 15) // 16 * 16
    acc_m = [[accumulators(4) for _ in range(2)] for _ in range(8)]
    def m_elems():
        # Every fragment element of M: (warp, rg, m, lane, cc) and its row w, column c.
        for warp in range(8):
            rw, cw = 16 * (warp >> 1), 32 * (warp & 1)
            for rg in range(2):
                for m in range(4):
                    for lane in range(32):
                        g, t = lane >> 2, lane & 3
                        for cc in range(4):
                            yield (warp, rg, m, lane, cc), rw + 64 * rg + g + 8 * (cc >> 1), cw + 8 * m + 2 * t + (cc & 1)
    def m_matrix():
        M = np.zeros((128, 64))
        for (warp, rg, m, lane, cc), w, c in m_elems():
            M[w, c] = acc_m[warp][rg][m][lane][cc]
        return M
    for (warp, rg, m, lane, cc), w, c in m_elems():
        acc_m[warp][rg][m][lane][cc] = M0[w, c] if w < wide else 0.0
    out = np.zeros((T, 64))
    keep = (lambda s, t: s >= t) if rev else (lambda s, t: s <= t)
    for c0, L in chunk_ranges(T, rev):
        x = np.zeros((64, 128)); y = np.zeros((64, 128)); f = np.zeros((64, 64))
        x[:L, :wide] = X[c0:c0 + L]; y[:L, :wide] = Y[c0:c0 + L]; f[:L] = F[c0:c0 + L]
        ms = m_matrix()
        ws = np.zeros((64, 64)); ao_all = {}
        for warp in range(8):
            rw, cw = 16 * (warp >> 1), 32 * (warp & 1)
            aw, ao = accumulators(4), accumulators(4)
            for kk in range(0, wpad, 16):
                a = ldmatrix_x4(x, lanes(lambda r8, mi: (rw + r8 + 8 * (mi % 2), kk + 8 * (mi // 2))))
                for np_ in range(2):
                    n0 = cw + 16 * np_
                    need0, need1 = (n0 + 7 >= rw, n0 + 15 >= rw) if rev else (n0 <= rw + 15, n0 + 8 <= rw + 15)
                    if need0 or need1:
                        b = ldmatrix_x4(y, lanes(lambda r8, mi: (n0 + r8 + 8 * (mi // 2), kk + 8 * (mi % 2))))
                        if need0: mma_ntile(aw[2 * np_], a, b, 0)
                        if need1: mma_ntile(aw[2 * np_ + 1], a, b, 1)
                    bm = ldmatrix_x4(ms, lanes(lambda r8, mi: (kk + r8 + 8 * (mi % 2), n0 + 8 * (mi // 2))), trans=True)
                    mma_x4(ao, np_, a, bm)
            for m in range(4):
                for lane in range(32):
                    ao[m][lane] *= oscale
            for (r, c), v in frag_to_tile(aw, rw, cw).items():
                ws[r, c] = wscale * v if keep(c, r) else 0.0
            ao_all[warp] = ao
        for warp in range(8):
            rw, cw = 16 * (warp >> 1), 32 * (warp & 1)
            ao = ao_all[warp]
            for s0 in range(0, 64, 16):
                if (s0 + 15 < rw) if rev else (s0 > rw + 15):
                    continue
                a = ldmatrix_x4(ws, lanes(lambda r8, mi: (rw + r8 + 8 * (mi % 2), s0 + 8 * (mi // 2))))
                for np_ in range(2):
                    b = ldmatrix_x4(f, lanes(lambda r8, mi: (s0 + r8 + 8 * (mi % 2), cw + 16 * np_ + 8 * (mi // 2))), trans=True)
                    mma_x4(ao, np_, a, b)
            for (r, c), v in frag_to_tile(ao, rw, cw).items():
                if r < L:
                    out[c0 + r, c] = v
            for rg in range(2):
                if rw + 64 * rg >= wpad:
                    continue
                part = accumulators(4)
                for kk in range(0, 64, 16):
                    a = ldmatrix_x4(y, lanes(lambda r8, mi: (kk + r8 + 8 * (mi // 2), rw + 64 * rg + 8 * (mi % 2))), trans=True)
                    for np_ in range(2):
                        b = ldmatrix_x4(f, lanes(lambda r8, mi: (kk + r8 + 8 * (mi % 2), cw + 16 * np_ + 8 * (mi // 2))), trans=True)
                        mma_x4(part, np_, a, b)
                for m in range(4):
                    for lane in range(32):
                        acc_m[warp][rg][m][lane] += mscale * part[m][lane]
    return out, m_matrix()[:wide]

def fused_reference(X, Y, F, M0, rev, wscale, oscale, mscale):
    # Chunk c sees M0 plus the chunks before it (forward) or after it (reverse); the final state
    # has every chunk.
    T = X.shape[0]
    out = np.zeros((T, 64))
    for c0 in range(0, T, 64):
        L = min(64, T - c0)
        seen = slice(c0 + L, T) if rev else slice(0, c0)
        M = M0 + mscale * (Y[seen].T @ F[seen])
        x, y, f = X[c0:c0 + L], Y[c0:c0 + L], F[c0:c0 + L]
        W = wscale * (x @ y.T)
        W = np.triu(W) if rev else np.tril(W)
        out[c0:c0 + L] = oscale * (x @ M) + W @ f
    return out, M0 + mscale * (Y.T @ F)

# The kernel's modes as (rev, wscale, oscale, mscale): forward, dq, and dv / dk.
for name, rev, ws_, os_, mscale in (("forward", False, None, None, 1.0), ("dq", False, 1.0, 1.0, 1.0), ("dv/dk", True, None, 1.0, None)):
    for wide, T in ((128, 150), (40, 70), (72, 100)):
        scale = wide ** -0.5
        X = np.maximum(rng.standard_normal((T, wide)), 0); Y = np.maximum(rng.standard_normal((T, wide)), 0)
        F = rng.standard_normal((T, 64)); M0 = rng.standard_normal((wide, 64))
        args = (rev, scale if ws_ is None else ws_, scale if os_ is None else os_, scale if mscale is None else mscale)
        out, M = fused_pass(X, Y, F, M0, *args)
        ref, Mref = fused_reference(X, Y, F, M0, *args)
        e6, e7 = np.abs(out - ref).max(), np.abs(M - Mref).max()
        report(f"chunk_fused {name} output (wide {wide}, T {T}):", e6 < 1e-9, e6)
        report(f"chunk_fused {name} final state (wide {wide}, T {T}):", e7 < 1e-9, e7)

# The forward against the causal sums themselves: o_t = scale·q_t·(S0 + Σ_{s≤t} k_s v_sᵀ).
T, kd = 150, 128
Q = np.maximum(rng.standard_normal((T, kd)), 0); Kx = np.maximum(rng.standard_normal((T, kd)), 0)
V = rng.standard_normal((T, 64)); S0 = rng.standard_normal((kd, 64)); scale = kd ** -0.5
out, S = fused_pass(Q, Kx, V, S0, False, scale, scale, 1.0)
ref = np.zeros((T, 64)); St = S0.copy()
for t in range(T):
    St = St + np.outer(Kx[t], V[t])
    ref[t] = scale * Q[t] @ St
e8 = max(np.abs(out - ref).max(), np.abs(S - St).max())
report("chunk_fused forward against the causal sums:", e8 < 1e-9, e8)
sys.exit(1 if failures else 0)
