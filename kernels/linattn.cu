// Causal linear attention, fused recurrent form (SPEC §5), which is also the decode step (T = 1).
// Why it is fast for a scan: one block per (batch·head, 16 value columns); each thread keeps its
// slice of the state S (rows kl, kl + 16, … of 16 columns) in registers for the whole sequence,
// so the state is read and written once per call; q̃, k̃, v of a step are staged in shared memory.
#include "common.cuh"

struct LinAttnParams {
    uint32_t batch, seq, heads, k, v, feature_map, normalize;
    float eps, scale;
    uint32_t count0, varlen, aux;
};

__device__ __forceinline__ float phi(uint32_t map, float x) {
    switch (map) {
    case 1: return x > 0.0f ? x + 1.0f : __expf(x);
    case 2: return fmaxf(x, 0.0f);
    default: return x;
    }
}

// Tensor-core helpers of the chunk kernels: TF32 conversion, mma.sync.m16n8k8 (TF32 in, f32
// accumulate) and its A fragment from shared memory.
#if !defined(FFKERN_EMU)
__device__ __forceinline__ uint32_t tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

// c += a·b on tensor cores from f32 fragments: TF32 (SPLIT false) or 3xTF32 (true: each operand
// split into a TF32 head and tail, tail·head + head·tail + head·head, f32-accurate).
template <bool SPLIT>
__device__ __forceinline__ void mma_f32(float (&c)[4], const float (&a)[4], float b0, float b1) {
    uint32_t ah[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) ah[r] = tf32(a[r]);
    const uint32_t bh0 = tf32(b0), bh1 = tf32(b1);
    if constexpr (SPLIT) {
        uint32_t al[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) al[r] = tf32(a[r] - __uint_as_float(ah[r]));
        mma_tf32(c, al, bh0, bh1);
        mma_tf32(c, ah, tf32(b0 - __uint_as_float(bh0)), tf32(b1 - __uint_as_float(bh1)));
    }
    mma_tf32(c, ah, bh0, bh1);
}

// The A fragment (16×8, row-major) at rows r0.., columns k0.. of a shared f32 array with row
// stride ld: a0/a2 row g, a1/a3 row g + 8; a0/a1 column t, a2/a3 column t + 4.
__device__ __forceinline__ void frag_a(float (&a)[4], const float* s, uint32_t ld, uint32_t r0, uint32_t k0) {
    const uint32_t g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    a[0] = s[(r0 + g) * ld + k0 + t];
    a[1] = s[(r0 + g + 8) * ld + k0 + t];
    a[2] = s[(r0 + g) * ld + k0 + t + 4];
    a[3] = s[(r0 + g + 8) * ld + k0 + t + 4];
}

template <typename T>
__device__ __forceinline__ void recurrent_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, float* state,
                                               const float* __restrict__ z_init, const uint32_t* __restrict__ starts, float* z, T* __restrict__ o,
                                               const LinAttnParams& p) {
    __shared__ float qs[256], ks[256], zs[256], vs[16], red[16][17], zred[16], outv[16];
    const uint32_t lid = threadIdx.x, kl = lid / 16, vl = lid % 16;
    // The y·z grid folds past 65535 sequence·heads; blocks past the end leave before any barrier.
    const uint32_t bh = blockIdx.y + blockIdx.z * gridDim.y, b = bh / p.heads, h = bh % p.heads;
    if (bh >= p.batch * p.heads) return;
    const uint32_t col = blockIdx.x * 16 + vl;
    const uint32_t nk = (p.k + 15) / 16;
    float s[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        const uint32_t ki = kl + 16 * i;
        s[i] = (i < (int)nk && ki < p.k && col < p.v) ? state[((size_t)bh * p.k + ki) * p.v + col] : 0.0f;
    }
    // Tile 0 reads the initial normalizer and writes the final one; the other tiles need it only
    // for the Normalizer, from a copy.
    if (lid < p.k) zs[lid] = blockIdx.x == 0 ? z[(size_t)bh * p.k + lid] : p.normalize == 1 ? z_init[(size_t)bh * p.k + lid] : 0.0f;
    // Sequence b is rows starts[b] .. starts[b + 1] (cu_seqlens), or b·T .. (b + 1)·T (varlen 0:
    // starts is not read).
    const uint32_t start = p.varlen == 0 ? b * p.seq : starts[b], len = p.varlen == 0 ? p.seq : starts[b + 1] - start;
    // A chunk's first position in its sequence (varlen 2), for Count mode.
    const uint32_t pos0 = p.varlen == 2 ? starts[p.batch + 1 + b] : 0;
    for (uint32_t t = 0; t < len; ++t) {
        const size_t row = ((size_t)start + t) * p.heads + h;
        if (lid < p.k) {
            qs[lid] = p.scale * phi(p.feature_map, to_f32(q[row * p.k + lid]));
            const float kt = phi(p.feature_map, to_f32(k[row * p.k + lid]));
            ks[lid] = kt;
            zs[lid] += kt;
        }
        if (lid < 16) vs[lid] = blockIdx.x * 16 + lid < p.v ? to_f32(v[row * p.v + blockIdx.x * 16 + lid]) : 0.0f;
        __syncthreads();
        float part = 0.0f, zp = 0.0f;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            const uint32_t ki = kl + 16 * i;
            if (i < (int)nk && ki < p.k) {
                s[i] += ks[ki] * vs[vl];
                part += s[i] * qs[ki];
                zp += qs[ki] * zs[ki];
            }
        }
        if (p.aux == 1) {
            // State only: the next step's staging waits for this step's reads.
            __syncthreads();
            continue;
        }
        red[kl][vl] = part;
        if (vl == 0) zred[kl] = zp;
        __syncthreads();
        if (lid < 16) {
            float n = 0.0f;
            for (int r = 0; r < 16; ++r) n += red[r][lid];
            float den = 1.0f;
            if (p.normalize == 1) {
                den = p.eps;
                for (int r = 0; r < 16; ++r) den += zred[r];
            } else if (p.normalize == 2) {
                den = (float)(p.count0 + pos0 + t + 1);
            }
            outv[lid] = n / den;
        }
        __syncthreads();
        if (lid < 16 && blockIdx.x * 16 + lid < p.v) o[row * p.v + blockIdx.x * 16 + lid] = from_f32<T>(outv[lid]);
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        const uint32_t ki = kl + 16 * i;
        if (i < (int)nk && ki < p.k && col < p.v) state[((size_t)bh * p.k + ki) * p.v + col] = s[i];
    }
    if (blockIdx.x == 0 && lid < p.k) z[(size_t)bh * p.k + lid] = zs[lid];
}

// The block's 64×64 tile (rows i0.. of K, columns j0.. of V) of Xᵀ·Y over a chunk's 64 rows, and
// xsum = Σ_r x(r, i)·w(r) (the chunked forward's K̃ᵀ·V and Σ k̃, the backward's Q̃ᵀ·dN and Q̃ᵀ·dd);
// x(r, i), y(r, j) take absolute columns and return 0 past the chunk or the width. Rows are staged 16 at a time;
// every thread is busy whatever K is.
// MMA (the default): on tensor cores in 3xTF32 — each operand split into a TF32 head and a TF32
// tail, head·head + head·tail + tail·head — which keeps the f32 state's accuracy (it is checked
// to the f32 budget) at several times the FMA rate; when `split` is false (both operands exact in
// TF32, see tf32_exact) the tails are zero and one product per step gives the same sums bit for
// bit. Warp w owns rows 16⌊w/2⌋.., columns 32(w % 2)..
// of the tile in mma fragments, thread lid < 64 the xsum of row lid. Otherwise f32 FMA: thread
// (i, quarter) = (lid / 4, lid % 4) owns row i, columns 16m + 4·quarter + (0..3) in acc[m].
// chunk_outer's staging: element (r0 + e / 64, e % 64) of X and Y for e = lid + 256·it.
template <typename X, typename Y>
__device__ __forceinline__ void outer_fetch(float (&nx)[4], float (&ny)[4], X x, Y y, uint32_t r0, uint32_t i0, uint32_t j0) {
#pragma unroll
    for (uint32_t it = 0; it < 4; ++it) {
        const uint32_t e = threadIdx.x + 256 * it;
        nx[it] = x(r0 + e / 64, i0 + e % 64);
        ny[it] = y(r0 + e / 64, j0 + e % 64);
    }
}

template <bool MMA, typename X, typename Y, typename W>
__device__ __forceinline__ void chunk_outer(float (&acc)[4][4], float& xsum, X x, Y y, W w, uint32_t i0, uint32_t j0, bool split = true) {
    __shared__ float ox[16][72], oy[16][72]; // padded: conflict-free fragment reads
    const uint32_t lid = threadIdx.x, i = lid / 4, quarter = lid % 4;
    const uint32_t warp = lid >> 5, g = (lid & 31) >> 2, tq = lid & 3, rw = 16 * (warp >> 1), cw = 32 * (warp & 1);
    // Registers carry the next 16 rows while the staged ones multiply, so a slab's loads overlap
    // the previous slab's products instead of stalling every staging pass.
    // (The FMA fallback stages each slab as it goes: it has no registers to spare.)
    float nx[4], ny[4];
    if (MMA) outer_fetch(nx, ny, x, y, 0, i0, j0);
    for (uint32_t r0 = 0; r0 < 64; r0 += 16) {
        if (!MMA) outer_fetch(nx, ny, x, y, r0, i0, j0);
#pragma unroll
        for (uint32_t it = 0; it < 4; ++it) {
            const uint32_t e = lid + 256 * it;
            ox[e / 64][e % 64] = nx[it];
            oy[e / 64][e % 64] = ny[it];
        }
        __syncthreads();
        if (MMA && r0 + 16 < 64) outer_fetch(nx, ny, x, y, r0 + 16, i0, j0);
        if constexpr (MMA) {
            if (lid < 64)
                for (int rr = 0; rr < 16; ++rr) xsum += ox[rr][lid] * w(r0 + rr);
#pragma unroll
            for (uint32_t ks = 0; ks < 16; ks += 8) {
                // A[i][r] = X[r][i]: the staged rows are A's columns.
                const float a[4] = {ox[ks + tq][rw + g], ox[ks + tq][rw + g + 8], ox[ks + tq + 4][rw + g], ox[ks + tq + 4][rw + g + 8]};
                if (split) {
#pragma unroll
                    for (uint32_t n = 0; n < 4; ++n) mma_f32<true>(acc[n], a, oy[ks + tq][cw + 8 * n + g], oy[ks + tq + 4][cw + 8 * n + g]);
                } else {
#pragma unroll
                    for (uint32_t n = 0; n < 4; ++n) mma_f32<false>(acc[n], a, oy[ks + tq][cw + 8 * n + g], oy[ks + tq + 4][cw + 8 * n + g]);
                }
            }
        } else {
#pragma unroll 2
            for (int rr = 0; rr < 16; ++rr) {
                const float xv = ox[rr][i];
                xsum += xv * w(r0 + rr);
#pragma unroll
                for (int m = 0; m < 4; ++m)
#pragma unroll
                    for (int cc = 0; cc < 4; ++cc) acc[m][cc] += xv * oy[rr][m * 16 + quarter * 4 + cc];
            }
        }
        __syncthreads();
    }
}

// Where element (m, cc) of a thread's chunk_outer tile lies in the 64×64 tile: row, column.
template <bool MMA>
__device__ __forceinline__ uint2 outer_at(uint32_t m, uint32_t cc) {
    const uint32_t lid = threadIdx.x, warp = lid >> 5, g = (lid & 31) >> 2, tq = lid & 3;
    if (MMA) return make_uint2(16 * (warp >> 1) + g + 8 * (cc >> 1), 32 * (warp & 1) + 8 * m + 2 * tq + (cc & 1)); // fragment m, element cc
    return make_uint2(lid / 4, m * 16 + (lid % 4) * 4 + cc);
}

// Moves a chunk_outer tile (and the xsum rows) between a thread's registers and slot `slot` of a
// [slots, K, V] matrix array and its [slots, K] vector array (`vec` may be null; only the tiles of
// column 0 move it). STORE: registers → memory, else memory → registers.
template <bool MMA, bool STORE>
__device__ __forceinline__ void move_outer(float (&acc)[4][4], float& xsum, float* mat, float* vec, size_t slot, uint32_t i0, uint32_t j0, const LinAttnParams& p) {
#pragma unroll
    for (uint32_t m = 0; m < 4; ++m)
#pragma unroll
        for (uint32_t cc = 0; cc < 4; ++cc) {
            const uint2 at = outer_at<MMA>(m, cc);
            const uint32_t i = i0 + at.x, col = j0 + at.y;
            if (i < p.k && col < p.v) {
                float& x = mat[(slot * p.k + i) * p.v + col];
                if (STORE) x = acc[m][cc];
                else acc[m][cc] = x;
            }
        }
    const bool owner = MMA ? threadIdx.x < 64 : threadIdx.x % 4 == 0;
    const uint32_t zi = i0 + (MMA ? threadIdx.x : threadIdx.x / 4);
    if (vec != nullptr && j0 == 0 && owner && zi < p.k) {
        if (STORE) vec[slot * p.k + zi] = xsum;
        else xsum = vec[slot * p.k + zi];
    }
}

// Whether the state sums' operands are exact in TF32, so that one TF32 product per step is as
// exact as 3xTF32: f16 and bf16 values are (11 and 8 significant bits, TF32 keeps 11), and so
// are φ of them for identity and relu; the forward's other operand is v, the reverse's do/den
// with den = 1 (normalize none). The reverse sweep multiplies by the scale after the product.
template <typename T>
__device__ __forceinline__ bool tf32_exact(const LinAttnParams& p, bool reverse) {
    return sizeof(T) == 2 && p.feature_map != 1 && (!reverse || p.normalize == 0);
}

template <typename T, bool MMA>
__device__ __forceinline__ void chunk_state_impl(const T* __restrict__ k, const T* __restrict__ v, float* __restrict__ state, const uint32_t* __restrict__ starts,
                                                 float* __restrict__ z, const LinAttnParams& p) {
    const uint32_t bh = blockIdx.y + blockIdx.z * gridDim.y, c = bh / p.heads, h = bh % p.heads;
    if (bh >= p.batch * p.heads) return;
    const uint32_t start = starts[c], len = starts[c + 1] - start, nvt = (p.v + 63) / 64;
    const uint32_t i0 = blockIdx.x / nvt * 64, j0 = blockIdx.x % nvt * 64;
    const auto row = [&](uint32_t r) { return ((size_t)start + r) * p.heads + h; };
    float acc[4][4] = {}, zacc = 0.0f;
    chunk_outer<MMA>(
        acc, zacc, [&](uint32_t r, uint32_t i) { return r < len && i < p.k ? phi(p.feature_map, to_f32(k[row(r) * p.k + i])) : 0.0f; },
        [&](uint32_t r, uint32_t j) { return r < len && j < p.v ? to_f32(v[row(r) * p.v + j]) : 0.0f; }, [](uint32_t) { return 1.0f; }, i0, j0,
        !tf32_exact<T>(p, false));
    move_outer<MMA, true>(acc, zacc, state, z, bh, i0, j0, p);
}

// A chunk of one head: its index, head, chunk·head, first row and length.
struct ChunkRow {
    uint32_t c, h, bh, start, len;
};

// Stages den and dd of the chunk's rows (threads below 64): from dendd (Normalizer), the count
// after bounds' positions (Count), else 1 and 0. `bounds`: the p.batch + 1 chunk boundaries, then
// each chunk's position in its sequence.
__device__ __forceinline__ void cb_stage_den(float* cden, float* cdd, const uint32_t* bounds, const float* dendd, const ChunkRow& cr, const LinAttnParams& p) {
    const uint32_t lid = threadIdx.x;
    if (lid < 64) {
        float den = 1.0f, dd = 0.0f;
        if (lid < cr.len) {
            if (p.normalize == 1) {
                const size_t row = ((size_t)cr.start + lid) * p.heads + cr.h;
                den = dendd[2 * row];
                dd = dendd[2 * row + 1];
            } else if (p.normalize == 2) {
                den = (float)(p.count0 + bounds[p.batch + 1 + cr.c] + lid + 1);
            }
        }
        cden[lid] = den;
        cdd[lid] = dd;
    }
}

// The chunk start states in one pass, and the chunked backward's reverse pass in one sweep
// (mirror linattn_chunk_states and linattn_chunk_grad_states in shaders/linattn.wgsl): one block
// per (sequence·head, 64×64 tile of the state) carries the running state through the sequence's
// chunks — forward: written as each chunk's start state S_c, then + K̃ᵀ·V (z: + Σ k̃); REVERSE,
// from the last chunk: written as each chunk's end gradient G_c, then + Q̃ᵀ·dN (g: + Q̃ᵀ·dd) — so
// the chunks' own sums never round-trip through memory. table: [C | chunk bounds (C + 1) |
// positions (C) | each sequence's first chunk (N + 1)]; state, z hold the initial state (or
// gradient) and receive the final one (each element read and written by the same thread); vo is
// v (forward) or do; dendd den, dd per packed row (REVERSE with the Normalizer).
template <typename T, bool MMA, bool REVERSE>
__device__ __forceinline__ void chunk_sweep_impl(const T* __restrict__ qk, const T* __restrict__ vo, const float* __restrict__ dendd, float* __restrict__ state,
                                                 float* __restrict__ z, const uint32_t* __restrict__ table, float* __restrict__ hs, float* __restrict__ zs,
                                                 const LinAttnParams& p) {
    __shared__ float cden[64], cdd[64];
    const uint32_t nh = blockIdx.y + blockIdx.z * gridDim.y;
    if (nh >= p.batch * p.heads) return;
    const uint32_t h = nh % p.heads, nc = table[0], nvt = (p.v + 63) / 64;
    const uint32_t i0 = blockIdx.x / nvt * 64, j0 = blockIdx.x % nvt * 64;
    const uint32_t c_lo = table[2 * nc + 2 + nh / p.heads], c_hi = table[2 * nc + 3 + nh / p.heads];
    float acc[4][4] = {}, zacc = 0.0f;
    move_outer<MMA, false>(acc, zacc, state, z, nh, i0, j0, p);
    for (uint32_t j = c_lo; j < c_hi; ++j) {
        const uint32_t c = REVERSE ? c_hi - 1 - (j - c_lo) : j;
        move_outer<MMA, true>(acc, zacc, hs, zs, (size_t)c * p.heads + h, i0, j0, p);
        const uint32_t start = table[1 + c], len = table[2 + c] - start, heads = p.heads, kd = p.k, vd = p.v, fm = p.feature_map;
        const float scale = REVERSE ? p.scale : 1.0f;  // applied to the chunk's sums
        if (REVERSE) {
            // The chunks' table from its second word; p.batch counts chunks there.
            LinAttnParams pc = p;
            pc.batch = nc;
            cb_stage_den(cden, cdd, table + 1, dendd, ChunkRow{c, h, (uint32_t)(c * p.heads + h), start, len}, pc);
            __syncthreads();
        }
        float part[4][4] = {}, zpart = 0.0f;
        const float *den = cden, *dd = cdd;
        chunk_outer<MMA>(
            part, zpart, [=](uint32_t r, uint32_t i) { return r < len && i < kd ? phi(fm, to_f32(qk[(((size_t)start + r) * heads + h) * kd + i])) : 0.0f; },
            [=](uint32_t r, uint32_t jv) { return r < len && jv < vd ? to_f32(vo[(((size_t)start + r) * heads + h) * vd + jv]) / (REVERSE ? den[r] : 1.0f) : 0.0f; },
            [=](uint32_t r) { return REVERSE ? dd[r] : 1.0f; }, i0, j0, !tf32_exact<T>(p, REVERSE));
#pragma unroll
        for (int m = 0; m < 4; ++m)
#pragma unroll
            for (int cc = 0; cc < 4; ++cc) acc[m][cc] += scale * part[m][cc];
        zacc += scale * zpart;
    }
    move_outer<MMA, true>(acc, zacc, state, z, nh, i0, j0, p);
}

// The same two sweeps on 16-bit tensor cores (FFKERN_LINATTN_KERNEL=mma16), for f16/bf16 inputs
// whose products are exact in their own type: φ identity or relu, and (REVERSE) do with den = 1
// (normalize none) — the launcher checks, and K and V multiples of 8. Why it is fast: a sweep is
// a chain of short steps, one per chunk, so its time is the latency of each step's loads: each
// chunk's 64×64 X and Y tiles arrive by 16-byte cp.async, zero-filled past the chunk, three
// chunks ahead of the one that multiplies (SW_STAGES stages in dynamic shared memory; the
// chunks' row bounds are read a step before their copies), and m16n8k16 takes the operands as
// stored through ldmatrix.trans, so one mma does the work of four TF32 ones and nothing is
// converted. Same warp
// tiling and accumulator layout as chunk_outer's MMA form, so move_outer stores the states. The
// per-chunk states hs go out as f32 (S = float) or rounded to T (S = T: when the chunk products
// that read them take 16-bit states, which halves the largest arrays of the chunked forms); the
// running and final states stay f32. The forward's Σ k̃ (z) is a column sum of the staged tile;
// the reverse's Σ q̃·dd is 0 (dd = 0).
constexpr uint32_t SW_LDS = 72;  // padded 144-byte rows: an ldmatrix phase's 8 rows hit distinct banks
constexpr uint32_t SW_STAGES = 4;
// One stage: the X tile then the Y tile, 64 rows of SW_LDS elements each. Dynamic shared memory of
// the sweeps: SW_STAGES stages of 16-bit elements (SWEEP16_SMEM in src/ops/linattn/cuda.rs).
constexpr uint32_t SW_TILE = 64 * SW_LDS;
constexpr uint32_t SW_SMEM = SW_STAGES * 2 * SW_TILE * 2;

// relu of both 16-bit halves of a fragment register (sign bit set → 0; fmaxf(NaN, 0) is 0 too).
__device__ __forceinline__ uint32_t relu2(uint32_t x) {
    const uint32_t neg = (x >> 15) & 0x00010001u;
    return x & ~(neg * 0xFFFFu);
}

// relu2 on each of a fragment's four registers where `on` (φ = relu on fragments of q̃ or k̃);
// without a branch, so that the fragment loads around it can be scheduled across it.
__device__ __forceinline__ void relu_frag(uint32_t (&f)[4], bool on) {
    const uint32_t keep = on ? 0u : 0xFFFFFFFFu;
#pragma unroll
    for (int i = 0; i < 4; ++i) f[i] = relu2(f[i]) | (f[i] & keep);
}

// The sum of a fragment register's two 16-bit values.
template <typename T>
__device__ __forceinline__ float pair_sum(uint32_t u) {
    const float2 f = to_f32x2(*reinterpret_cast<const typename Pair<T>::type*>(&u));
    return f.x + f.y;
}

// An A fragment's values added into its two rows' sums: z[0] (registers 0 and 2, row g) and z[1]
// (registers 1 and 3, row g + 8); quad_sum then totals a row over its four lanes.
template <typename T>
__device__ __forceinline__ void add_frag_row_sums(float (&z)[2], const uint32_t (&a)[4]) {
    z[0] += pair_sum<T>(a[0]) + pair_sum<T>(a[2]);
    z[1] += pair_sum<T>(a[1]) + pair_sum<T>(a[3]);
}

// The sum over a quad of lanes (4j .. 4j + 3: a fragment row's, or a row's four quarters), in
// every one of them, in a fixed order.
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The B fragments of rows k0 .. k0 + 15 and the two n-tiles of columns n0 .. n0 + 15 of B stored
// [k][n] with row stride ld, through ldmatrix.trans (matrices (k 0–7 | 8–15) × (n 0–7 | 8–15)):
// f[0], f[1] the first n-tile's, f[2], f[3] the second's; through relu first when `relu`.
template <typename T>
__device__ __forceinline__ void frag_kn16(uint32_t (&f)[4], const T* b, uint32_t ld, uint32_t k0, uint32_t n0, bool relu = false) {
    const uint32_t lane = threadIdx.x & 31, mi = lane / 8, r8 = lane % 8;
    mma::ldmatrix_x4_trans(f, b + (k0 + r8 + 8 * (mi % 2)) * ld + n0 + 8 * (mi / 2));
    relu_frag(f, relu);
}

// c0, c1 += a·B over those rows and n-tiles (frag_kn16).
template <typename T>
__device__ __forceinline__ void mma_kn16(float (&c0)[4], float (&c1)[4], const uint32_t (&a)[4], const T* b, uint32_t ld, uint32_t k0, uint32_t n0,
                                         bool relu = false) {
    uint32_t f[4];
    frag_kn16<T>(f, b, ld, k0, n0, relu);
    mma::mma16816<T>(c0, a, f[0], f[1]);
    mma::mma16816<T>(c1, a, f[2], f[3]);
}

// 16 bytes (8 elements) of a [rows·H, width] operand by cp.async: packed row `row` (position ·
// heads + head), columns col .. col + 7; zeros unless `in` (past the chunk or the width, which
// the 16-bit kernels take only as a multiple of 8).
template <typename T>
__device__ __forceinline__ void piece16(T* dst, const T* base, size_t row, uint32_t width, uint32_t col, bool in) {
    mma::cp_async16(dst, in ? base + row * width + col : base, in ? 16 : 0);
}

// Two adjacent 16-bit values, rounded from f32, in one 4-byte store (dst 4-byte aligned).
template <typename T>
__device__ __forceinline__ void store2(T* dst, float a, float b) {
    alignas(4) T h[2] = {from_f32<T>(a), from_f32<T>(b)};
    *reinterpret_cast<uint32_t*>(dst) = *reinterpret_cast<const uint32_t*>(h);
}

// A chunk_outer MMA tile into slot `slot` of a [slots, K, V] array of 16-bit states: a
// fragment's two adjacent columns in one store (V is a multiple of 8 on the 16-bit paths).
template <typename S>
__device__ __forceinline__ void store_outer16(const float (&acc)[4][4], S* mat, size_t slot, uint32_t i0, uint32_t j0, const LinAttnParams& p) {
#pragma unroll
    for (uint32_t m = 0; m < 4; ++m)
#pragma unroll
        for (uint32_t half = 0; half < 2; ++half) {
            const uint2 at = outer_at<true>(m, 2 * half);
            const uint32_t i = i0 + at.x, col = j0 + at.y;
            if (i < p.k && col < p.v) store2(mat + (slot * p.k + i) * p.v + col, acc[m][2 * half], acc[m][2 * half + 1]);
        }
}

template <typename T, bool REVERSE, typename S>
__device__ __forceinline__ void chunk_sweep16_impl(const T* __restrict__ qk, const T* __restrict__ vo, float* __restrict__ state, float* __restrict__ z,
                                                   const uint32_t* __restrict__ table, S* __restrict__ hs, float* __restrict__ zs, const LinAttnParams& p) {
    FFKERN_DYNAMIC_SMEM(sw_smem);
    // A launch with less dynamic shared memory than the stages need is a launcher bug: stop.
    if (dynamic_smem_bytes() < SW_SMEM) __trap();
    T* const stages = reinterpret_cast<T*>(sw_smem);
    const auto xs = [&](uint32_t st) { return stages + st * 2 * SW_TILE; };
    const auto ys = [&](uint32_t st) { return stages + st * 2 * SW_TILE + SW_TILE; };
    const uint32_t nh = blockIdx.y + blockIdx.z * gridDim.y;
    if (nh >= p.batch * p.heads) return;
    const uint32_t lid = threadIdx.x, lane = lid & 31, warp = lid >> 5;
    const uint32_t rw = 16 * (warp >> 1), cw = 32 * (warp & 1);
    const uint32_t h = nh % p.heads, nc = table[0], nvt = (p.v + 63) / 64;
    const uint32_t i0 = blockIdx.x / nvt * 64, j0 = blockIdx.x % nvt * 64;
    const uint32_t c_lo = table[2 * nc + 2 + nh / p.heads], c_hi = table[2 * nc + 3 + nh / p.heads], count = c_hi - c_lo;
    const bool relu = p.feature_map == 2;
    const float scale = REVERSE ? p.scale : 1.0f;  // applied to each chunk's sums
    // z (and zs) move with the tiles of column 0, rows rw + g and rw + g + 8 (g = lane / 4) held
    // by lane 4g of the warps of columns 0–31. Forward, those warps sum Σ φ(k) from the k̃ᵀ
    // fragments they load for the state update; the four lanes of a row combine by shuffles each
    // chunk. Reverse, z is d_z, which every chunk's zs receives unchanged.
    const bool zrows = j0 == 0 && cw == 0, zsum = !REVERSE && zrows;
    const uint32_t zg = lane / 4;
    const auto zat = [&](uint32_t half) { return i0 + rw + zg + 8 * half; };
    const auto zown = [&](uint32_t half) { return zrows && lane % 4 == 0 && zat(half) < p.k; };
    float acc[4][4] = {}, zacc[2] = {}, unused = 0.0f;
    move_outer<true, false>(acc, unused, state, nullptr, nh, i0, j0, p);
#pragma unroll
    for (uint32_t half = 0; half < 2; ++half)
        if (zown(half)) zacc[half] = z[(size_t)nh * p.k + zat(half)];
    const auto chunk = [&](uint32_t j) { return REVERSE ? c_hi - 1 - j : c_lo + j; };
    // Chunk j's first row and the row after its last, read one step before its copies are issued,
    // so that the copies do not wait for a dependent table load on the sweep's critical path.
    const auto bounds = [&](uint32_t j) { return j < count ? make_uint2(table[1 + chunk(j)], table[2 + chunk(j)]) : make_uint2(0, 0); };
    // Chunk j (rows b.x .. b.y) into stage st: 64 rows × 8 pieces of 16 bytes per operand, 2
    // pieces a thread.
    const auto issue = [&](uint2 b, uint32_t st) {
        const uint32_t start = b.x, len = b.y - b.x;
#pragma unroll
        for (uint32_t u = 0; u < 2; ++u) {
            const uint32_t piece = lid + 256 * u, r = piece / 8, col = 8 * (piece % 8);
            const size_t row = ((size_t)start + r) * p.heads + h;
            piece16(xs(st) + r * SW_LDS + col, qk, row, p.k, i0 + col, r < len && i0 + col < p.k);
            piece16(ys(st) + r * SW_LDS + col, vo, row, p.v, j0 + col, r < len && j0 + col < p.v);
        }
    };
    // Commit group g holds chunk g: the first SW_STAGES − 1 here, then one per step.
#pragma unroll
    for (uint32_t g = 0; g + 1 < SW_STAGES; ++g) {
        if (g < count) issue(bounds(g), g);
        mma::cp_async_commit();
    }
    uint2 next = bounds(SW_STAGES - 1);
    for (uint32_t j = 0; j < count; ++j) {
        const uint32_t st = j % SW_STAGES, c = chunk(j);
        // Chunk j + SW_STAGES − 1 into the stage that chunk j − 1 used (released by the barrier
        // that ended the step before).
        if (j + SW_STAGES - 1 < count) issue(next, (j + SW_STAGES - 1) % SW_STAGES);
        mma::cp_async_commit();
        next = bounds(j + SW_STAGES);
        // The running state is the state at this chunk's start (forward) or end (reverse).
        const size_t slot = (size_t)c * p.heads + h;
        if constexpr (sizeof(S) == 4) move_outer<true, true>(acc, unused, hs, nullptr, slot, i0, j0, p);
        else store_outer16(acc, hs, slot, i0, j0, p);
#pragma unroll
        for (uint32_t half = 0; half < 2; ++half)
            if (zown(half)) zs[slot * p.k + zat(half)] = zacc[half];
        mma::cp_async_wait<SW_STAGES - 1>();  // groups 0 .. j have landed
        __syncthreads();
        const T* const sx = xs(st);
        const T* const sy = ys(st);
        float part[4][4] = {}, zp[2] = {};
#pragma unroll
        for (uint32_t kk = 0; kk < 64; kk += 16) {
            // A = X tileᵀ (rows i, k = chunk rows) from X stored [r][i]: matrices (k 0–7 | 8–15) ×
            // (i 0–7 | 8–15), lane l addressing row l % 8 of matrix l / 8.
            const uint32_t m = lane / 8, r8 = lane % 8;
            uint32_t a[4];
            mma::ldmatrix_x4_trans(a, sx + (kk + r8 + 8 * (m / 2)) * SW_LDS + rw + 8 * (m % 2));
            relu_frag(a, relu);
            if (zsum) add_frag_row_sums<T>(zp, a);
            // B = Y rows (k) × 16 columns from Y stored [r][j].
#pragma unroll
            for (uint32_t np = 0; np < 2; ++np) mma_kn16<T>(part[2 * np], part[2 * np + 1], a, sy, SW_LDS, kk, cw + 16 * np);
        }
        if (zsum) {
#pragma unroll
            for (uint32_t half = 0; half < 2; ++half) zacc[half] += quad_sum(zp[half]);
        }
#pragma unroll
        for (int mm = 0; mm < 4; ++mm)
#pragma unroll
            for (int cc = 0; cc < 4; ++cc) acc[mm][cc] += scale * part[mm][cc];
        __syncthreads();  // this stage is refilled by the next iteration's issue
    }
    mma::cp_async_wait<0>();
    move_outer<true, true>(acc, unused, state, nullptr, nh, i0, j0, p);
#pragma unroll
    for (uint32_t half = 0; half < 2; ++half)
        if (zown(half)) z[(size_t)nh * p.k + zat(half)] = zacc[half];
}

// chunk_output (aux 0): o_t = S_cᵀ·q̃_t + Σ_{s≤t} (q̃_t·k̃_s)·v_s from the chunk's start state S_c,
// z_c. One pass over slabs of 16 of K accumulates the masked scores A = Q̃·K̃ᵀ and the S_c term
// for the block's 64 value columns, so the scores are computed once per 64 columns; then A·V, 16
// columns at a time. Thread (t, quarter) owns row t and columns 16j + 4·quarter + (0..3), j < 4.
template <typename T>
__device__ __forceinline__ void chunk_output_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const float* __restrict__ state,
                                                  const uint32_t* __restrict__ starts, const float* __restrict__ z, T* __restrict__ o,
                                                  const LinAttnParams& p) {
    __shared__ float cq[64][16], ck[64][16], cs[16][64], cz[16], ca[64][65];
    const uint32_t lid = threadIdx.x, bh = blockIdx.y + blockIdx.z * gridDim.y, c = bh / p.heads, h = bh % p.heads;
    if (bh >= p.batch * p.heads) return;
    const uint32_t start = starts[c], len = starts[c + 1] - start, pos0 = starts[p.batch + 1 + c];
    const uint32_t c0 = blockIdx.x * 64, t = lid / 4, quarter = lid % 4;
    float a[16] = {}, oi[4][4] = {}, qz = 0.0f;
    for (uint32_t i0 = 0; i0 < p.k; i0 += 16) {
        for (uint32_t e = lid; e < 1024; e += 256) {
            const uint32_t r = e / 16, kk = i0 + e % 16;
            const size_t row = ((size_t)start + r) * p.heads + h;
            const bool in = r < len && kk < p.k;
            cq[r][e % 16] = in ? p.scale * phi(p.feature_map, to_f32(q[row * p.k + kk])) : 0.0f;
            ck[r][e % 16] = in ? phi(p.feature_map, to_f32(k[row * p.k + kk])) : 0.0f;
            const uint32_t si = i0 + e / 64, col = c0 + e % 64;
            cs[e / 64][e % 64] = si < p.k && col < p.v ? state[((size_t)bh * p.k + si) * p.v + col] : 0.0f;
        }
        if (lid < 16) cz[lid] = i0 + lid < p.k ? z[(size_t)bh * p.k + i0 + lid] : 0.0f;
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < 16; ++kk) {
            const float qv = cq[t][kk];
#pragma unroll
            for (int m = 0; m < 16; ++m) a[m] += qv * ck[quarter + 4 * m][kk];
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int cc = 0; cc < 4; ++cc) oi[j][cc] += qv * cs[kk][j * 16 + quarter * 4 + cc];
            qz += qv * cz[kk];
        }
        __syncthreads();
    }
    float asum = 0.0f;
#pragma unroll
    for (int m = 0; m < 16; ++m) {
        ca[t][quarter + 4 * m] = quarter + 4 * m <= t ? a[m] : 0.0f;
        asum += quarter + 4 * m <= t ? a[m] : 0.0f;
    }
    // The row sum of the masked scores: the four quarters' parts.
    asum = quad_sum(asum);
    float den = 1.0f;
    if (p.normalize == 1) den = p.eps + qz + asum;
    else if (p.normalize == 2) den = (float)(p.count0 + pos0 + t + 1);
    const size_t row = ((size_t)start + t) * p.heads + h;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const uint32_t cj = c0 + j * 16;
        if (cj >= p.v) break;
        for (uint32_t e = lid; e < 1024; e += 256) {
            const uint32_t r = e / 16, col = cj + e % 16;
            cq[r][e % 16] = r < len && col < p.v ? to_f32(v[((size_t)(start + r) * p.heads + h) * p.v + col]) : 0.0f;
        }
        __syncthreads();
        if (t < len) {
            float acc[4] = {oi[j][0], oi[j][1], oi[j][2], oi[j][3]};
            for (uint32_t s = 0; s <= t; ++s) {
                const float w = ca[t][s];
#pragma unroll
                for (int cc = 0; cc < 4; ++cc) acc[cc] += w * cq[s][quarter * 4 + cc];
            }
#pragma unroll
            for (int cc = 0; cc < 4; ++cc) {
                const uint32_t col = cj + quarter * 4 + cc;
                if (col < p.v) o[row * p.v + col] = from_f32<T>(acc[cc] / den);
            }
        }
        __syncthreads();
    }
}

__device__ __forceinline__ float phi_grad(uint32_t map, float x) {
    switch (map) {
    case 1: return x > 0.0f ? 1.0f : __expf(x);
    case 2: return x > 0.0f ? 1.0f : 0.0f;
    default: return 1.0f;
    }
}

// The decode step (the math of linattn_decode in shaders/linattn.wgsl; varlen 0, one token per
// sequence): S += k̃·vᵀ, z += k̃, o = Sᵀ·q̃ / den. Why it is fast: the state is all the traffic, and
// each thread issues all its state rows (DECODE_DEPTH of them, 16-byte loads: lane = 4 columns;
// VEC: V % 4 == 0 and a 16-byte aligned state) before it updates the first, so a block has its
// whole 64 KiB state in flight and lasts about one memory round trip; short blocks leave no long
// tail when the last wave only part-fills the device. Warp w owns row group w (rows w, w + 16,
// …); each group sums in row order, then the groups in order through shared memory — the scan's
// order, so a decode loop equals linattn_recurrent bit for bit. One block of DECODE_THREADS per
// sequence·head.
// Two blocks per SM for the 16-byte form (64 registers); the element-wise fallback (V % 4 != 0)
// takes one, with room for its per-element addressing.
constexpr uint32_t DECODE_THREADS = 512, DECODE_DEPTH = 8;  // 16 warps; K ≤ 128 in one round of rows

template <typename T, bool VEC>
__device__ __forceinline__ void decode_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, float* __restrict__ state,
                                            float* __restrict__ z, T* __restrict__ o, const LinAttnParams& p) {
    __shared__ float qs[256], ks[256], zs[256], vs[256], red[16][128], zred[16];
    const uint32_t bh = blockIdx.y + blockIdx.z * gridDim.y, lid = threadIdx.x, warp = lid >> 5, lane = lid & 31;
    if (bh >= p.batch * p.heads) return;
    float* s = state + (size_t)bh * p.k * p.v;
    // Row i, columns c.. of the state (zeros past K or V).
    const auto load_row = [&](uint32_t i, uint32_t c, float (&x)[4]) {
        const float* row = s + (size_t)i * p.v + c;
        if (VEC && i < p.k && c < p.v) {
            const float4 t = *reinterpret_cast<const float4*>(row);
            x[0] = t.x; x[1] = t.y; x[2] = t.z; x[3] = t.w;
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e) x[e] = i < p.k && c + e < p.v ? row[e] : 0.0f;
        }
    };
    // S += k̃_i·v on row i, stored back; acc += q̃_i·S.
    const auto update_row = [&](uint32_t i, uint32_t c, float (&x)[4], float (&acc)[4]) {
        const float kk = ks[i], qq = qs[i];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            x[e] += kk * vs[c + e];
            acc[e] += x[e] * qq;
        }
        float* row = s + (size_t)i * p.v + c;
        if (VEC) {
            *reinterpret_cast<float4*>(row) = make_float4(x[0], x[1], x[2], x[3]);
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (c + e < p.v) row[e] = x[e];
        }
    };
    // One round: the warp's rows i0, i0 + 16, … (DECODE_DEPTH of them) at columns c.
    float x[DECODE_DEPTH][4];
    const auto issue = [&](uint32_t i0, uint32_t c) {
#pragma unroll
        for (uint32_t d = 0; d < DECODE_DEPTH; ++d) load_row(i0 + 16 * d, c, x[d]);
    };
    // The first round is in flight while q̃, k̃, v and z are staged.
    issue(warp, lane * 4);
    if (lid < p.k) {
        qs[lid] = p.scale * phi(p.feature_map, to_f32(q[(size_t)bh * p.k + lid]));
        const float kt = phi(p.feature_map, to_f32(k[(size_t)bh * p.k + lid]));
        ks[lid] = kt;
        const float zn = z[(size_t)bh * p.k + lid] + kt;
        z[(size_t)bh * p.k + lid] = zn;
        zs[lid] = zn;
    }
    if (lid < 256) vs[lid] = lid < p.v ? to_f32(v[(size_t)bh * p.v + lid]) : 0.0f;
    __syncthreads();
    if (lid < 16) {
        float zp = 0.0f;
        for (uint32_t i = lid; i < p.k; i += 16) zp += qs[i] * zs[i];
        zred[lid] = zp;
    }
    for (uint32_t c0 = 0; c0 < p.v; c0 += 128) {
        const uint32_t c = c0 + lane * 4;
        float acc[4] = {};
        for (uint32_t i0 = warp; i0 < p.k; i0 += 16 * DECODE_DEPTH) {
            if (i0 != warp || c0 > 0) issue(i0, c);
#pragma unroll
            for (uint32_t d = 0; d < DECODE_DEPTH; ++d) {
                const uint32_t i = i0 + 16 * d;
                if (i < p.k && c < p.v) update_row(i, c, x[d], acc);
            }
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) red[warp][lane * 4 + e] = acc[e];
        __syncthreads();
        if (lid < 128 && c0 + lid < p.v) {
            float n = 0.0f;
#pragma unroll
            for (int r = 0; r < 16; ++r) n += red[r][lid];
            float den = 1.0f;
            if (p.normalize == 1) {
                den = p.eps;
#pragma unroll
                for (int r = 0; r < 16; ++r) den += zred[r];
            } else if (p.normalize == 2) {
                den = (float)(p.count0 + 1);
            }
            o[(size_t)bh * p.v + c0 + lid] = from_f32<T>(n / den);
        }
        __syncthreads();
    }
}

// The fused recurrent backward (mirrors shaders/linattn_bwd.wgsl): dq, dk, dv and dS0 from do
// and dS_T, every feature map and normalize mode, packed sequences.
// Why it is fast for a scan: one block per (sequence·head, 16 value columns); thread i < K owns
// row i of the state's 16-column slice in registers. A forward scan rebuilds S_t and writes this
// tile's part of dq_t = S_t·dn_t (+ z_t·dd_t); a reverse scan carries G = Σ_{τ≥t} q̃_τ·dn_τᵀ + dS_T
// in the same registers, writes this tile's part of dk_t = G·v_t (+ Σ q̃·dd) and all of dv_t's 16
// columns = Gᵀ·k̃_t (a shared-memory reduction over K). The reduce kernel sums the tiles' parts
// in order (deterministic, no atomics) and applies φ'.
template <typename T>
__device__ __forceinline__ void backward_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ o,
                                              const T* __restrict__ d_o, const float* __restrict__ s0, const float* __restrict__ z0,
                                              const float* __restrict__ d_state, const float* __restrict__ d_z, const uint32_t* __restrict__ starts,
                                              float* __restrict__ dq_part, float* __restrict__ dk_part, float* dendd, float* __restrict__ ds0,
                                              float* __restrict__ dz0, T* __restrict__ dv, const LinAttnParams& p) {
    __shared__ float qs[256], ks[256], zs[256], vs[16], dns[16], red[16][17], prod[256][16], scal[2];
    const uint32_t lid = threadIdx.x, bh = blockIdx.y + blockIdx.z * gridDim.y, b = bh / p.heads, h = bh % p.heads;
    if (bh >= p.batch * p.heads) return;
    const uint32_t c0 = blockIdx.x * 16, start = starts[b], len = starts[b + 1] - start;
    // A chunk's first position in its sequence (varlen 2), for Count mode.
    const uint32_t pos0 = p.varlen == 2 ? starts[p.batch + 1 + b] : 0;
    const bool mine = lid < p.k;
    const size_t rhk = (size_t)starts[p.batch] * p.heads * p.k;
    float* dq_t = dq_part + blockIdx.x * rhk;
    float* dk_t = dk_part + blockIdx.x * rhk;
    float* dd_t = dendd + (size_t)blockIdx.x * 2 * starts[p.batch] * p.heads;
    float s[16];
#pragma unroll
    for (int j = 0; j < 16; ++j) s[j] = mine && c0 + j < p.v ? s0[((size_t)bh * p.k + lid) * p.v + c0 + j] : 0.0f;
    if (mine) zs[lid] = z0[(size_t)bh * p.k + lid];
    // Forward: S_t, z_t, the step's denominator and dd = −(do·o)/den, this tile's part of dq.
    for (uint32_t t = 0; t < len; ++t) {
        const size_t row = ((size_t)start + t) * p.heads + h;
        if (mine) {
            qs[lid] = p.scale * phi(p.feature_map, to_f32(q[row * p.k + lid]));
            const float kt = phi(p.feature_map, to_f32(k[row * p.k + lid]));
            ks[lid] = kt;
            zs[lid] += kt;
        }
        if (lid < 16) vs[lid] = c0 + lid < p.v ? to_f32(v[row * p.v + c0 + lid]) : 0.0f;
        __syncthreads();
        if (lid < 16) {
            float qz = 0.0f, dot = 0.0f;
            for (uint32_t r = lid; r < p.k; r += 16) qz += qs[r] * zs[r];
            if (p.normalize == 1)
                for (uint32_t c = lid; c < p.v; c += 16) dot += to_f32(d_o[row * p.v + c]) * to_f32(o[row * p.v + c]);
            red[0][lid] = qz;
            red[1][lid] = dot;
        }
        __syncthreads();
        if (lid == 0) {
            float den = 1.0f, dd = 0.0f;
            if (p.normalize == 1) {
                den = p.eps;
                float dot = 0.0f;
                for (int r = 0; r < 16; ++r) {
                    den += red[0][r];
                    dot += red[1][r];
                }
                dd = -dot / den;
            } else if (p.normalize == 2) {
                den = (float)(p.count0 + pos0 + t + 1);
            }
            scal[0] = den;
            scal[1] = dd;
            dd_t[2 * row] = den;
            dd_t[2 * row + 1] = dd;
        }
        __syncthreads();
        if (lid < 16) dns[lid] = c0 + lid < p.v ? to_f32(d_o[row * p.v + c0 + lid]) / scal[0] : 0.0f;
        __syncthreads();
        if (mine) {
            float acc = 0.0f;
#pragma unroll
            for (int j = 0; j < 16; ++j) {
                s[j] += ks[lid] * vs[j];
                acc += s[j] * dns[j];
            }
            if (blockIdx.x == 0) acc += zs[lid] * scal[1];
            dq_t[row * p.k + lid] = acc;
        }
        __syncthreads();
    }
    // Reverse: G = dS_T + Σ_{τ≥t} q̃_τ·dn_τᵀ, hz = dz_T + Σ_{τ≥t} q̃_τ·dd_τ.
#pragma unroll
    for (int j = 0; j < 16; ++j) s[j] = mine && c0 + j < p.v ? d_state[((size_t)bh * p.k + lid) * p.v + c0 + j] : 0.0f;
    float hz = mine ? d_z[(size_t)bh * p.k + lid] : 0.0f;
    for (uint32_t step = 0; step < len; ++step) {
        const uint32_t t = len - 1 - step;
        const size_t row = ((size_t)start + t) * p.heads + h;
        if (mine) {
            qs[lid] = p.scale * phi(p.feature_map, to_f32(q[row * p.k + lid]));
            ks[lid] = phi(p.feature_map, to_f32(k[row * p.k + lid]));
        }
        if (lid < 16) {
            const bool in = c0 + lid < p.v;
            vs[lid] = in ? to_f32(v[row * p.v + c0 + lid]) : 0.0f;
            dns[lid] = in ? to_f32(d_o[row * p.v + c0 + lid]) / dd_t[2 * row] : 0.0f;
        }
        if (lid == 0) scal[1] = dd_t[2 * row + 1];
        __syncthreads();
        if (mine) {
            hz += qs[lid] * scal[1];
            float acc = 0.0f;
#pragma unroll
            for (int j = 0; j < 16; ++j) {
                s[j] += qs[lid] * dns[j];
                acc += s[j] * vs[j];
                prod[lid][j] = s[j] * ks[lid];
            }
            if (blockIdx.x == 0) acc += hz;
            dk_t[row * p.k + lid] = acc;
        }
        __syncthreads();
        // dv_t[j] = Σ_i G[i, j]·k̃_t[i]: 16 partial sums per column, then one per column.
        const uint32_t g = lid / 16, j = lid % 16;
        float r = 0.0f;
        for (uint32_t i = g; i < p.k; i += 16) r += prod[i][j];
        red[g][j] = r;
        __syncthreads();
        if (lid < 16 && c0 + lid < p.v) {
            float acc = 0.0f;
            for (int gg = 0; gg < 16; ++gg) acc += red[gg][lid];
            dv[row * p.v + c0 + lid] = from_f32<T>(acc);
        }
        __syncthreads();
    }
    if (mine) {
#pragma unroll
        for (int j = 0; j < 16; ++j)
            if (c0 + j < p.v) ds0[((size_t)bh * p.k + lid) * p.v + c0 + j] = s[j];
        if (blockIdx.x == 0) dz0[(size_t)bh * p.k + lid] = hz;
    }
}

// dq (aux 0) or dk (1) = the sum of the p.count0 value tiles' parts, times scale·φ'(q) or φ'(k).
template <typename T>
__device__ __forceinline__ void backward_reduce_impl(const T* __restrict__ x, const float* __restrict__ part, const uint32_t* __restrict__ starts,
                                                     T* __restrict__ out, const LinAttnParams& p) {
    const size_t total = (size_t)starts[p.batch] * p.heads * p.k;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (uint32_t tile = 0; tile < p.count0; ++tile) acc += part[tile * total + i];
        const float g = phi_grad(p.feature_map, to_f32(x[i]));
        out[i] = from_f32<T>(p.aux == 0 ? acc * p.scale * g : acc * g);
    }
}

// ---- Chunked backward as matrix products (mirrors the chunk kernels of shaders/linattn_bwd.wgsl;
// the sequences are chunks of at most 64 rows, varlen 2). Per chunk, with dn_t = do_t/den_t and
// dd_t = −(do_t·o_t)/den_t (0 unless Normalizer), the masked scores A[t][s] = q̃_t·k̃_s and
// B[t][s] = dn_t·v_s + dd_t (s ≤ t), the start state S_c, z_c and the gradient at the chunk's end
// G_c, g_c:  dq̃ = dN·S_cᵀ + dd·z_cᵀ + B·K̃,  dk̃ = V·G_cᵀ + 1·g_cᵀ + Bᵀ·Q̃,  dv = K̃·G_c + Aᵀ·dN,
// and the chunk's own Q̃ᵀ·dN, Q̃ᵀ·dd. Why it is fast: every term is a product of 64-row blocks
// staged in shared memory, no barrier per row and every thread busy. `bounds` holds the C + 1
// chunk boundaries then each chunk's position in its sequence; `dendd` den, dd per packed row
// (Normalizer only; written by linattn_chunk_den).
__device__ __forceinline__ bool chunk_of(ChunkRow& r, const uint32_t* bounds, const LinAttnParams& p) {
    r.bh = blockIdx.y + blockIdx.z * gridDim.y;
    if (r.bh >= p.batch * p.heads) return false;
    r.c = r.bh / p.heads;
    r.h = r.bh % p.heads;
    r.start = bounds[r.c];
    r.len = bounds[r.c + 1] - r.start;
    return true;
}

// Operand `which` of local row r, element col: 0 q̃, 1 k̃, 2 v, 3 dn (den staged in cden); 0 past
// the chunk or the width.
template <typename T>
__device__ __forceinline__ float cb_ld(uint32_t which, const T* q, const T* k, const T* v, const T* d_o, const float* cden, const ChunkRow& cr,
                                       uint32_t r, uint32_t col, const LinAttnParams& p) {
    const uint32_t width = which < 2 ? p.k : p.v;
    if (r >= cr.len || col >= width) return 0.0f;
    const size_t i = (((size_t)cr.start + r) * p.heads + cr.h) * width + col;
    switch (which) {
    case 0: return p.scale * phi(p.feature_map, to_f32(q[i]));
    case 1: return phi(p.feature_map, to_f32(k[i]));
    case 2: return to_f32(v[i]);
    default: return to_f32(d_o[i]) / cden[r];
    }
}

// Normalizer only, one block per chunk·head: den_t = eps + q̃_t·(z_c + Σ_{s≤t} k̃_s) (prefix sums
// of k̃ down each slab's columns), dd_t, and the chunk's own Q̃ᵀ·dd into hz (unless null).
template <typename T>
__device__ __forceinline__ void chunk_den_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ o, const T* __restrict__ d_o,
                                               const uint32_t* __restrict__ bounds, const float* __restrict__ z, float* __restrict__ dendd,
                                               float* __restrict__ hz, const LinAttnParams& p) {
    __shared__ float sa[64][16], sb[64][16], red[2][256], cdd[64];
    ChunkRow cr;
    if (!chunk_of(cr, bounds, p)) return;
    const uint32_t lid = threadIdx.x, t = lid / 4, quarter = lid % 4;
    float qz = 0.0f;
    for (uint32_t i0 = 0; i0 < p.k; i0 += 16) {
        for (uint32_t e = lid; e < 1024; e += 256) {
            sa[e / 16][e % 16] = cb_ld<T>(0, q, k, nullptr, nullptr, nullptr, cr, e / 16, i0 + e % 16, p);
            sb[e / 16][e % 16] = cb_ld<T>(1, q, k, nullptr, nullptr, nullptr, cr, e / 16, i0 + e % 16, p);
        }
        __syncthreads();
        if (lid < 16) {
            float run = i0 + lid < p.k ? z[(size_t)cr.bh * p.k + i0 + lid] : 0.0f;
            for (int r = 0; r < 64; ++r) {
                run += sb[r][lid];
                sb[r][lid] = run;
            }
        }
        __syncthreads();
#pragma unroll
        for (int cc = 0; cc < 4; ++cc) qz += sa[t][quarter * 4 + cc] * sb[t][quarter * 4 + cc];
        __syncthreads();
    }
    float dot = 0.0f;
    if (t < cr.len) {
        const size_t row = ((size_t)cr.start + t) * p.heads + cr.h;
        for (uint32_t j = quarter; j < p.v; j += 4) dot += to_f32(d_o[row * p.v + j]) * to_f32(o[row * p.v + j]);
    }
    red[0][lid] = qz;
    red[1][lid] = dot;
    __syncthreads();
    if (lid < 64) {
        const float den = p.eps + red[0][4 * lid] + red[0][4 * lid + 1] + red[0][4 * lid + 2] + red[0][4 * lid + 3];
        const float dd = -(red[1][4 * lid] + red[1][4 * lid + 1] + red[1][4 * lid + 2] + red[1][4 * lid + 3]) / den;
        cdd[lid] = lid < cr.len ? dd : 0.0f;
        if (lid < cr.len) {
            const size_t row = ((size_t)cr.start + lid) * p.heads + cr.h;
            dendd[2 * row] = den;
            dendd[2 * row + 1] = dd;
        }
    }
    __syncthreads();
    if (lid < p.k && hz != nullptr) {
        float acc = 0.0f;
        for (uint32_t r = 0; r < cr.len; ++r) acc += cb_ld<T>(0, q, k, nullptr, nullptr, nullptr, cr, r, lid, p) * cdd[r];
        hz[(size_t)cr.bh * p.k + lid] = acc;
    }
}

// The chunk's own Q̃ᵀ·dN (the block's 64×64 tile) into g.
template <typename T, bool MMA>
__device__ __forceinline__ void chunk_dstate_impl(const T* __restrict__ q, const T* __restrict__ d_o, const uint32_t* __restrict__ bounds,
                                                  const float* __restrict__ dendd, float* __restrict__ g, const LinAttnParams& p) {
    __shared__ float cden[64], cdd[64];
    ChunkRow cr;
    if (!chunk_of(cr, bounds, p)) return;
    const uint32_t nvt = (p.v + 63) / 64, i0 = blockIdx.x / nvt * 64, j0 = blockIdx.x % nvt * 64;
    cb_stage_den(cden, cdd, bounds, dendd, cr, p);
    __syncthreads();
    float acc[4][4] = {}, qsum = 0.0f;
    chunk_outer<MMA>(
        acc, qsum, [&](uint32_t r, uint32_t i) { return cb_ld<T>(0, q, nullptr, nullptr, d_o, cden, cr, r, i, p); },
        [&](uint32_t r, uint32_t j) { return cb_ld<T>(3, q, nullptr, nullptr, d_o, cden, cr, r, j, p); }, [](uint32_t) { return 1.0f; }, i0, j0);
    move_outer<MMA, true>(acc, qsum, g, nullptr, cr.bh, i0, j0, p);
}

// dv (MODE 1), dq (2) or dk (3) in f32 FMA (mirrors chunk_grad in shaders/linattn_bwd.wgsl), the
// block's 64 output columns (of V for dv, of K for dq and dk); thread (t, quarter) owns row t and
// columns 16j + 4·quarter + (0..3), j < 4. One pass over slabs of 16 of the reduction width (K
// for dv, V for dq and dk) accumulates the chunk's masked scores W once per 64 columns, together
// with the matrix term X·M:
//   dv: W[t][s] = k̃_t·q̃_s (s ≥ t),        X = K̃,  M = G_c,  then + W·dN
//   dq: W[t][s] = dn_t·v_s + dd_t (s ≤ t), X = dN, M = S_cᵀ, then + dd_t·z_c + W·K̃
//   dk: W[t][s] = v_t·dn_s + dd_s (s ≥ t), X = V,  M = G_cᵀ, then + g_c + W·Q̃
// and dq, dk are multiplied by scale·φ'(q) or φ'(k). `m` is S_c or G_c, `zv` z_c or g_c.
template <typename T, int MODE>
__device__ __forceinline__ void chunk_grad_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ d_o,
                                                const uint32_t* __restrict__ bounds, const float* __restrict__ dendd, const float* __restrict__ m,
                                                const float* __restrict__ zv, T* __restrict__ out, const LinAttnParams& p) {
    constexpr bool LOWER = MODE == 2;  // scores kept for s ≤ t (else s ≥ t)
    constexpr uint32_t XW = MODE == 1 ? 1 : MODE == 2 ? 3 : 2, YW = MODE == 1 ? 0 : MODE == 2 ? 2 : 3, FW = MODE == 1 ? 3 : MODE == 2 ? 1 : 0;
    __shared__ float sa[64][16], sb[64][16], sm[16][65], cw[64][65], cz[16], cden[64], cdd[64];
    ChunkRow cr;
    if (!chunk_of(cr, bounds, p)) return;
    const uint32_t lid = threadIdx.x, c0 = blockIdx.x * 64, t = lid / 4, quarter = lid % 4;
    const uint32_t width = MODE == 1 ? p.v : p.k, r1 = MODE == 1 ? p.k : p.v;
    cb_stage_den(cden, cdd, bounds, dendd, cr, p);
    float w[16] = {}, acc[4][4] = {};
    for (uint32_t r0 = 0; r0 < r1; r0 += 16) {
        __syncthreads();  // cden staged; the previous slab read
        for (uint32_t e = lid; e < 1024; e += 256) {
            sa[e / 16][e % 16] = cb_ld<T>(XW, q, k, v, d_o, cden, cr, e / 16, r0 + e % 16, p);
            sb[e / 16][e % 16] = cb_ld<T>(YW, q, k, v, d_o, cden, cr, e / 16, r0 + e % 16, p);
            // M's [16][64] slab: G_c [K, V] for dv; S_c, G_c read transposed for dq, dk.
            const uint32_t r = e / 64, col = e % 64;
            float mv = 0.0f;
            if (r0 + r < r1 && c0 + col < width)
                mv = MODE == 1 ? m[((size_t)cr.bh * p.k + r0 + r) * p.v + c0 + col] : m[((size_t)cr.bh * p.k + c0 + col) * p.v + r0 + r];
            sm[r][col] = mv;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < 16; ++kk) {
            const float xv = sa[t][kk];
#pragma unroll
            for (int mm = 0; mm < 16; ++mm) w[mm] += xv * sb[quarter + 4 * mm][kk];
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int cc = 0; cc < 4; ++cc) acc[j][cc] += xv * sm[kk][j * 16 + quarter * 4 + cc];
        }
    }
    __syncthreads();
#pragma unroll
    for (int mm = 0; mm < 16; ++mm) {
        const uint32_t s = quarter + 4 * mm;
        float x = w[mm];
        if (MODE == 2) x += cdd[t];
        if (MODE == 3) x += cdd[s];
        cw[t][s] = (LOWER ? s <= t : s >= t) ? x : 0.0f;
    }
    const size_t row = ((size_t)cr.start + t) * p.heads + cr.h;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const uint32_t cj = c0 + j * 16;
        if (cj >= width) break;
        for (uint32_t e = lid; e < 1024; e += 256) sa[e / 16][e % 16] = cb_ld<T>(FW, q, k, v, d_o, cden, cr, e / 16, cj + e % 16, p);
        if (lid < 16) cz[lid] = MODE != 1 && cj + lid < p.k ? zv[(size_t)cr.bh * p.k + cj + lid] : 0.0f;
        __syncthreads();
        if (t < cr.len) {
            // The z term: dd_t·z_c (dq), g_c (dk), none (dv: cz is 0).
            const float zw = MODE == 2 ? cdd[t] : 1.0f;
#pragma unroll
            for (int cc = 0; cc < 4; ++cc) acc[j][cc] += zw * cz[quarter * 4 + cc];
            const uint32_t lo = LOWER ? 0 : t, hi = LOWER ? t + 1 : cr.len;
            for (uint32_t s = lo; s < hi; ++s) {
                const float ws = cw[t][s];
#pragma unroll
                for (int cc = 0; cc < 4; ++cc) acc[j][cc] += ws * sa[s][quarter * 4 + cc];
            }
#pragma unroll
            for (int cc = 0; cc < 4; ++cc) {
                const uint32_t col = cj + quarter * 4 + cc;
                if (col >= width) continue;
                float val = acc[j][cc];
                if (MODE == 2) val *= p.scale * phi_grad(p.feature_map, to_f32(q[row * p.k + col]));
                if (MODE == 3) val *= phi_grad(p.feature_map, to_f32(k[row * p.k + col]));
                out[row * width + col] = from_f32<T>(val);
            }
        }
        __syncthreads();
    }
}

// ---- The same per-chunk score products (chunk_output, chunk_grad) on tensor cores. Why
// it is fast: each warp owns a 16×32 block of the chunk's 64×64 masked scores and of the block's
// 64 output columns and issues mma.sync.m16n8k8 (TF32 operands, f32 accumulate) on operands
// staged as f32 in shared memory; k-steps wholly in the masked half are skipped per warp. For
// f16/bf16, one TF32 product: it holds the inputs exactly and rounds the intermediates (scores,
// states, do/den) to 11 significant bits, within the f16 and bf16 budgets; for f32, 3xTF32
// (three products per step), f32-accurate. MODE 0: forward output (X = Q̃, Y = K̃, M = S_c, F = V, s ≤ t), 1: dv
// (K̃, Q̃, G_c, dN, s ≥ t), 2: dq (dN, V, S_cᵀ, K̃, s ≤ t, + dd_t), 3: dk (V, dN, G_cᵀ, Q̃, s ≥ t,
// + dd_s): W = mask(X·Yᵀ), out = X·M + W·F, then each mode's normalization or φ'.
template <typename T, int MODE>
__device__ __forceinline__ void chunk_mma_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ d_o,
                                               const uint32_t* __restrict__ bounds, const float* __restrict__ dendd, const float* __restrict__ m,
                                               const float* __restrict__ zv, T* __restrict__ out, const LinAttnParams& p) {
    constexpr bool LOWER = MODE == 0 || MODE == 2; // scores kept for s ≤ t (else s ≥ t)
    constexpr bool OUT_K = MODE >= 2;              // output columns index K (else V)
    constexpr uint32_t XW = MODE == 0 ? 0 : MODE == 1 ? 1 : MODE == 2 ? 3 : 2; // cb_ld operands
    constexpr uint32_t YW = MODE == 0 ? 1 : MODE == 1 ? 0 : MODE == 2 ? 2 : 3;
    constexpr uint32_t FW = MODE == 0 ? 2 : MODE == 1 ? 3 : MODE == 2 ? 1 : 0;
    constexpr uint32_t LX = 20, LM = 72, LW = 68, LF = 72; // padded strides: conflict-free fragments
    constexpr bool SPLIT = sizeof(T) == 4;                 // f32 inputs: 3xTF32, f32-accurate
    // Phase 1: xs, ys [64][LX], ms [16][LM]; phase 2: ws [64][LW], fs [64][LF] over the same bytes.
    __shared__ float smem[64 * LW + 64 * LF];
    __shared__ float cden[64], cdd[64], cz[64];
    float* xs = smem;
    float* ys = smem + 64 * LX;
    float* ms = smem + 128 * LX;
    float* ws = smem;
    float* fs = smem + 64 * LW;
    ChunkRow cr;
    if (!chunk_of(cr, bounds, p)) return;
    const uint32_t lid = threadIdx.x, warp = lid >> 5, g = (lid & 31) >> 2, tq = lid & 3;
    const uint32_t rw = 16 * (warp >> 1), cw = 32 * (warp & 1), c0 = blockIdx.x * 64;
    const uint32_t width = OUT_K ? p.k : p.v, r1 = MODE <= 1 ? p.k : p.v;
    if (MODE != 0) cb_stage_den(cden, cdd, bounds, dendd, cr, p);
    __syncthreads();
    float acc_w[4][4] = {}, acc_o[4][4] = {}, qz = 0.0f;
    // Registers carry the next slab while the staged one multiplies, so its loads overlap the
    // products instead of stalling each pass; phase 2's F tile is loaded all at once.
    float px[4], py[4], pm[4], pz = 0.0f, pf[16];
    const auto fetch = [&](uint32_t r0) {
#pragma unroll
        for (uint32_t it = 0; it < 4; ++it) {
            const uint32_t e = lid + 256 * it, r = e / 16, c = e % 16;
            px[it] = cb_ld<T>(XW, q, k, v, d_o, cden, cr, r, r0 + c, p);
            py[it] = cb_ld<T>(YW, q, k, v, d_o, cden, cr, r, r0 + c, p);
            // M's [16][64] slab; the transposed sources (dq, dk) are read along their rows.
            const uint32_t mr = OUT_K ? e % 16 : e / 64, mc = OUT_K ? e / 16 : e % 64;
            const uint32_t ri = r0 + mr, ci = c0 + mc;
            float mv = 0.0f;
            if (ri < r1 && ci < width) mv = OUT_K ? m[((size_t)cr.bh * p.k + ci) * p.v + ri] : m[((size_t)cr.bh * p.k + ri) * p.v + ci];
            pm[it] = mv;
        }
        if (MODE == 0 && lid < 16) pz = r0 + lid < p.k ? zv[(size_t)cr.bh * p.k + r0 + lid] : 0.0f;
    };
    const auto fetch_f = [&]() {
#pragma unroll
        for (uint32_t it = 0; it < 16; ++it) {
            const uint32_t e = lid + 256 * it;
            pf[it] = cb_ld<T>(FW, q, k, v, d_o, cden, cr, e / 64, c0 + e % 64, p);
        }
    };
    // dq and dk fetch each slab as it comes and keep three blocks per SM instead (measured on an
    // H200: with the prefetch's registers they ran two blocks per SM and 1.6× slower).
    constexpr bool PREFETCH = MODE <= 1;
    if (PREFETCH) fetch(0);
    for (uint32_t r0 = 0; r0 < r1; r0 += 16) {
        if (!PREFETCH) fetch(r0);
#pragma unroll
        for (uint32_t it = 0; it < 4; ++it) {
            const uint32_t e = lid + 256 * it, r = e / 16, c = e % 16;
            const uint32_t mr = OUT_K ? e % 16 : e / 64, mc = OUT_K ? e / 16 : e % 64;
            xs[r * LX + c] = px[it];
            ys[r * LX + c] = py[it];
            ms[mr * LM + mc] = pm[it];
        }
        if (MODE == 0 && lid < 16) cz[lid] = pz;
        __syncthreads();
        if (PREFETCH && r0 + 16 < r1) fetch(r0 + 16);
#pragma unroll
        for (uint32_t ks = 0; ks < 16; ks += 8) {
            float a[4];
            frag_a(a, xs, LX, rw, ks);
#pragma unroll
            for (uint32_t n = 0; n < 4; ++n) {
                const uint32_t s0 = cw + 8 * n;
                if (LOWER ? s0 <= rw + 15 : s0 + 7 >= rw)
                    mma_f32<SPLIT>(acc_w[n], a, ys[(s0 + g) * LX + ks + tq], ys[(s0 + g) * LX + ks + tq + 4]);
                mma_f32<SPLIT>(acc_o[n], a, ms[(ks + tq) * LM + s0 + g], ms[(ks + tq + 4) * LM + s0 + g]);
            }
        }
        if (MODE == 0 && p.normalize == 1) {
#pragma unroll
            for (uint32_t cc = 0; cc < 4; ++cc) qz += xs[(lid / 4) * LX + (lid % 4) * 4 + cc] * cz[(lid % 4) * 4 + cc];
        }
        __syncthreads();
    }
    // The masked scores (plus dd for dq, dk) into ws.
#pragma unroll
    for (uint32_t n = 0; n < 4; ++n)
#pragma unroll
        for (uint32_t i = 0; i < 4; ++i) {
            const uint32_t row = rw + g + 8 * (i >> 1), s = cw + 8 * n + 2 * tq + (i & 1);
            float w = acc_w[n][i];
            if (MODE == 2) w += cdd[row];
            if (MODE == 3) w += cdd[s];
            ws[row * LW + s] = (LOWER ? s <= row : s >= row) ? w : 0.0f;
        }
    fetch_f();
#pragma unroll
    for (uint32_t it = 0; it < 16; ++it) {
        const uint32_t e = lid + 256 * it;
        fs[(e / 64) * LF + e % 64] = pf[it];
    }
    if (OUT_K && lid < 64) cz[lid] = c0 + lid < p.k ? zv[(size_t)cr.bh * p.k + c0 + lid] : 0.0f;
    __syncthreads();
    if (MODE == 0) {
        // den of row t = lid / 4: eps + q̃_t·z_c + Σ_s W[t][s] (Normalizer) or the count.
        const uint32_t t = lid / 4, quarter = lid % 4;
        float asum = 0.0f;
#pragma unroll
        for (uint32_t s = 0; s < 16; ++s) asum += ws[t * LW + quarter * 16 + s];
        asum = quad_sum(asum);
        qz = quad_sum(qz);
        float den = 1.0f;
        if (p.normalize == 1) den = p.eps + qz + asum;
        else if (p.normalize == 2) den = (float)(p.count0 + bounds[p.batch + 1 + cr.c] + t + 1);
        if (quarter == 0) cden[t] = den;
        __syncthreads();
    }
#pragma unroll
    for (uint32_t s0 = 0; s0 < 64; s0 += 8) {
        if (LOWER ? s0 > rw + 15 : s0 + 7 < rw) continue;
        float a[4];
        frag_a(a, ws, LW, rw, s0);
#pragma unroll
        for (uint32_t n = 0; n < 4; ++n) mma_f32<SPLIT>(acc_o[n], a, fs[(s0 + tq) * LF + cw + 8 * n + g], fs[(s0 + tq + 4) * LF + cw + 8 * n + g]);
    }
#pragma unroll
    for (uint32_t n = 0; n < 4; ++n)
#pragma unroll
        for (uint32_t i = 0; i < 4; ++i) {
            const uint32_t row = rw + g + 8 * (i >> 1), lc = cw + 8 * n + 2 * tq + (i & 1), col = c0 + lc;
            if (row >= cr.len || col >= width) continue;
            const size_t at = (((size_t)cr.start + row) * p.heads + cr.h) * width + col;
            float val = acc_o[n][i];
            if (MODE == 0) val /= cden[row];
            if (MODE == 2) val = (val + cdd[row] * cz[lc]) * p.scale * phi_grad(p.feature_map, to_f32(q[at]));
            if (MODE == 3) val = (val + cz[lc]) * phi_grad(p.feature_map, to_f32(k[at]));
            out[at] = from_f32<T>(val);
        }
}

// ---- The per-chunk products on 16-bit tensor cores (FFKERN_LINATTN_KERNEL=mma16): bf16 inputs,
// φ identity or relu, normalize none (the forward output also Count), K and V multiples of 8 —
// the launcher checks. Same four modes, operands and warp tiling as chunk_mma_impl. Why it is
// fast: the chunk's q, k, v, do slabs arrive by 16-byte cp.async as stored (two stages: the next
// slab lands while this one multiplies, and F's tile while phase 1 runs), m16n8k16 takes them
// through ldmatrix with nothing converted, and one mma does the work of two TF32 ones. The
// matrix term M (S_c, G_c) arrives as bf16 (the 16-bit sweeps store it so, at half the bytes of
// f32, as flash-linear-attention does) and the masked scores W are rounded to bf16 for their
// product; mode 0 scales the X·M sums and stages scale·W, modes 1 and 3 scale W (their q̃ is a
// scores operand or F), mode 2 scales the output as chunk_mma_impl does.
constexpr uint32_t C16_LX = 40;  // X, Y slab rows: 32 + 8 padding (80 bytes: conflict-free ldmatrix)
constexpr uint32_t C16_LM = 72;  // M slab, W and F rows: 64 + 8 padding (144 bytes)

template <typename T, int MODE>
__device__ __forceinline__ void chunk16_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ d_o,
                                             const uint32_t* __restrict__ bounds, const T* __restrict__ m, const float* __restrict__ zv,
                                             T* __restrict__ out, const LinAttnParams& p) {
    constexpr bool LOWER = MODE == 0 || MODE == 2;  // scores kept for s ≤ t (else s ≥ t)
    constexpr bool OUT_K = MODE >= 2;               // output columns index K (else V)
    constexpr uint32_t XW = MODE == 0 ? 0 : MODE == 1 ? 1 : MODE == 2 ? 3 : 2;  // 0 q, 1 k, 2 v, 3 do
    constexpr uint32_t YW = MODE == 0 ? 1 : MODE == 1 ? 0 : MODE == 2 ? 2 : 3;
    constexpr uint32_t FW = MODE == 0 ? 2 : MODE == 1 ? 3 : MODE == 2 ? 1 : 0;
    // Phase 1: xs, ys [2 stages][64 rows][C16_LX], ms [2][32][C16_LM]; phase 2: ws [64][C16_LM]
    // over xs; fs [64][C16_LM] throughout.
    __shared__ __align__(16) T xs[2 * 64 * C16_LX], ys[2 * 64 * C16_LX], ms[2 * 32 * C16_LM], fs[64 * C16_LM];
    static_assert(2 * 64 * C16_LX >= 64 * C16_LM, "W fits over the X stages");
    T* ws = xs;
    ChunkRow cr;
    if (!chunk_of(cr, bounds, p)) return;
    const uint32_t lid = threadIdx.x, lane = lid & 31, warp = lid >> 5, g = lane >> 2, tq = lane & 3;
    const uint32_t mi = lane / 8, r8 = lane % 8;  // ldmatrix: lane addresses row r8 of matrix mi
    const uint32_t rw = 16 * (warp >> 1), cw = 32 * (warp & 1), c0 = blockIdx.x * 64;
    const uint32_t width = OUT_K ? p.k : p.v, r1 = MODE <= 1 ? p.k : p.v;
    const bool relu = p.feature_map == 2;
    const float wscale = MODE == 2 ? 1.0f : p.scale;
    // A 16-byte piece of operand `which` (0 q, 1 k, 2 v, 3 do): chunk row r, columns col .. col + 7;
    // zero past the chunk or the operand's width (a multiple of 8).
    const auto piece = [&](T* dst, uint32_t which, uint32_t r, uint32_t col) {
        const T* base = which == 0 ? q : which == 1 ? k : which == 2 ? v : d_o;
        const uint32_t w = which < 2 ? p.k : p.v;
        piece16(dst, base, ((size_t)cr.start + r) * p.heads + cr.h, w, col, r < cr.len && col < w);
    };
    // F's [64][64] tile first (two pieces a thread): it lands while phase 1 runs.
#pragma unroll
    for (uint32_t u = 0; u < 2; ++u) {
        const uint32_t pc = lid + 256 * u, r = pc / 8, col = 8 * (pc % 8);
        piece(&fs[r * C16_LM + col], FW, r, c0 + col);
    }
    mma::cp_async_commit();
    // A slab of 32 of the reduction width: X and Y rows (one piece each a thread) by cp.async; M's
    // [32][64] slab through registers (two 8-byte pieces of 4 values a thread) into ms [k][n].
    const auto issue_xy = [&](uint32_t r0, uint32_t st) {
        const uint32_t r = lid / 4, col = 8 * (lid % 4);
        piece(&xs[(st * 64 + r) * C16_LX + col], XW, r, r0 + col);
        piece(&ys[(st * 64 + r) * C16_LX + col], YW, r, r0 + col);
    };
    uint2 pm[2];  // 4 values of T each
    const auto fetch_m = [&](uint32_t r0) {
#pragma unroll
        for (uint32_t u = 0; u < 2; ++u) {
            const uint32_t e = lid + 256 * u;
            uint2 x = make_uint2(0u, 0u);
            if (!OUT_K) {
                // M = S_c or G_c [K][V]: slab row r, columns 4·(e % 16) .. + 3.
                const uint32_t r = e / 16, col = 4 * (e % 16);
                if (r0 + r < r1 && c0 + col < width) x = *reinterpret_cast<const uint2*>(m + ((size_t)cr.bh * p.k + r0 + r) * p.v + c0 + col);
            } else {
                // M = S_cᵀ or G_cᵀ: column e / 8 is state row c0 + e / 8, slab rows 4·(e % 8) .. + 3.
                const uint32_t col = e / 8, r = 4 * (e % 8);
                if (c0 + col < width && r0 + r < r1) x = *reinterpret_cast<const uint2*>(m + ((size_t)cr.bh * p.k + c0 + col) * p.v + r0 + r);
            }
            pm[u] = x;
        }
    };
    const auto store_m = [&](uint32_t st) {
#pragma unroll
        for (uint32_t u = 0; u < 2; ++u) {
            const uint32_t e = lid + 256 * u;
            if (!OUT_K) {
                const uint32_t r = e / 16, col = 4 * (e % 16);
                *reinterpret_cast<uint2*>(&ms[(st * 32 + r) * C16_LM + col]) = pm[u];
            } else {
                // Row r + ρ at step i, ρ = (i + (e mod 8) / 2) mod 4: the 8 lanes of a column
                // (rows 4 apart, 144 bytes each: two bank offsets) then meet 8 bank offsets,
                // where in row order four of them met at each (four wavefronts a store).
                const uint32_t col = e / 8, r = 4 * (e % 8);
#pragma unroll
                for (uint32_t i = 0; i < 4; ++i) {
                    const uint32_t rho = (i + (e % 8) / 2) % 4, w = rho & 2 ? pm[u].y : pm[u].x;
                    reinterpret_cast<uint16_t*>(ms)[(st * 32 + r + rho) * C16_LM + col] = (uint16_t)(rho & 1 ? w >> 16 : w & 0xffffu);
                }
            }
        }
    };
    float acc_w[4][4] = {}, acc_o[4][4] = {};
    const uint32_t nslab = (r1 + 31) / 32;
    issue_xy(0, 0);
    mma::cp_async_commit();
    fetch_m(0);
    store_m(0);
    for (uint32_t i = 0; i < nslab; ++i) {
        const uint32_t st = i & 1, r0 = 32 * i;
        const bool more = i + 1 < nslab;
        if (more) issue_xy(r0 + 32, st ^ 1);
        mma::cp_async_commit();
        if (more) fetch_m(r0 + 32);
        mma::cp_async_wait<1>();
        __syncthreads();
#pragma unroll
        for (uint32_t ks = 0; ks < 32; ks += 16) {
            // A: the warp's 16 rows of X, k = ks .. ks + 15 (matrices rows 0–7 | 8–15 × k 0–7 | 8–15).
            uint32_t a[4];
            mma::ldmatrix_x4(a, &xs[(st * 64 + rw + r8 + 8 * (mi % 2)) * C16_LX + ks + 8 * (mi / 2)]);
            relu_frag(a, relu && XW < 2);  // operands 0 and 1 are q̃ and k̃
#pragma unroll
            for (uint32_t np = 0; np < 2; ++np) {
                const uint32_t n0 = cw + 16 * np;
                // The scores' B = Yᵀ from Y stored [s][k]: (s 0–7, k 0–7), (s 0–7, k 8–15), then s 8–15;
                // n-tiles wholly in the masked half are skipped.
                const bool need0 = LOWER ? n0 <= rw + 15 : n0 + 7 >= rw, need1 = LOWER ? n0 + 8 <= rw + 15 : n0 + 15 >= rw;
                if (need0 || need1) {
                    uint32_t b[4];
                    mma::ldmatrix_x4(b, &ys[(st * 64 + n0 + r8 + 8 * (mi / 2)) * C16_LX + ks + 8 * (mi % 2)]);
                    relu_frag(b, relu && YW < 2);
                    if (need0) mma::mma16816<T>(acc_w[2 * np], a, b[0], b[1]);
                    if (need1) mma::mma16816<T>(acc_w[2 * np + 1], a, b[2], b[3]);
                }
                // X·M's B from M stored [k][n].
                mma_kn16<T>(acc_o[2 * np], acc_o[2 * np + 1], a, &ms[st * 32 * C16_LM], C16_LM, ks, n0);
            }
        }
        if (more) store_m(st ^ 1);
        __syncthreads();
    }
    mma::cp_async_wait<0>();
    if (MODE == 0) {
        // o = scale·(q̃·S_c) + (scale·W)·V: the X·M sums so far take the scale.
#pragma unroll
        for (uint32_t mm = 0; mm < 4; ++mm)
#pragma unroll
            for (uint32_t cc = 0; cc < 4; ++cc) acc_o[mm][cc] *= p.scale;
    }
    // The masked scores times wscale, rounded to T, into ws [t][s] (two columns a store).
#pragma unroll
    for (uint32_t mm = 0; mm < 4; ++mm)
#pragma unroll
        for (uint32_t half = 0; half < 2; ++half) {
            const uint32_t row = rw + g + 8 * half, s0 = cw + 8 * mm + 2 * tq;
            const bool k0 = LOWER ? s0 <= row : s0 >= row, k1 = LOWER ? s0 + 1 <= row : s0 + 1 >= row;
            store2(&ws[row * C16_LM + s0], k0 ? wscale * acc_w[mm][2 * half] : 0.0f, k1 ? wscale * acc_w[mm][2 * half + 1] : 0.0f);
        }
    __syncthreads();
    // out += W·F over the score columns s, 16 at a time; blocks wholly in the masked half skipped.
#pragma unroll
    for (uint32_t s0 = 0; s0 < 64; s0 += 16) {
        if (LOWER ? s0 > rw + 15 : s0 + 15 < rw) continue;
        uint32_t a[4];
        mma::ldmatrix_x4(a, &ws[(rw + r8 + 8 * (mi % 2)) * C16_LM + s0 + 8 * (mi / 2)]);
#pragma unroll
        for (uint32_t np = 0; np < 2; ++np) mma_kn16<T>(acc_o[2 * np], acc_o[2 * np + 1], a, fs, C16_LM, s0, cw + 16 * np, relu && FW < 2);
    }
    // Each mode's normalization or φ', two adjacent columns a store.
#pragma unroll
    for (uint32_t mm = 0; mm < 4; ++mm)
#pragma unroll
        for (uint32_t half = 0; half < 2; ++half) {
            const uint32_t row = rw + g + 8 * half, col = c0 + cw + 8 * mm + 2 * tq;
            if (row >= cr.len || col >= width) continue;
            const size_t at = (((size_t)cr.start + row) * p.heads + cr.h) * width + col;
            float val[2] = {acc_o[mm][2 * half], acc_o[mm][2 * half + 1]};
#pragma unroll
            for (uint32_t j = 0; j < 2; ++j) {
                if (MODE == 0 && p.normalize == 2) val[j] /= (float)(p.count0 + bounds[p.batch + 1 + cr.c] + row + 1);
                if (MODE == 2) val[j] *= p.scale * phi_grad(p.feature_map, to_f32(q[at + j]));
                if (MODE == 3) val[j] = (val[j] + zv[(size_t)cr.bh * p.k + col + j]) * phi_grad(p.feature_map, to_f32(k[at + j]));
            }
            store2(out + at, val[0], val[1]);
        }
}

#define LINATTN_MMA_ENTRIES(SUFFIX, T)                                                                                     \
    extern "C" __global__ void __launch_bounds__(256, 2) linattn_chunk_output_mma_##SUFFIX(                                \
        const T* q, const T* k, const T* v, const float* state, const uint32_t* starts, const float* z, T* o, LinAttnParams p) { \
        chunk_mma_impl<T, 0>(q, k, v, nullptr, starts, nullptr, state, z, o, p);                                          \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256, 2) linattn_chunk_dv_mma_##SUFFIX(                                       \
        const T* q, const T* k, const T* d_o, const uint32_t* bounds, const float* dendd, const float* g, T* dv,           \
        LinAttnParams p) {                                                                                                 \
        chunk_mma_impl<T, 1>(q, k, nullptr, d_o, bounds, dendd, g, nullptr, dv, p);                                       \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256, 3) linattn_chunk_dq_mma_##SUFFIX(                                       \
        const T* q, const T* k, const T* v, const T* d_o, const uint32_t* bounds, const float* dendd, const float* m,      \
        const float* zv, T* out, LinAttnParams p) {                                                                        \
        chunk_mma_impl<T, 2>(q, k, v, d_o, bounds, dendd, m, zv, out, p);                                                 \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256, 3) linattn_chunk_dk_mma_##SUFFIX(                                       \
        const T* q, const T* k, const T* v, const T* d_o, const uint32_t* bounds, const float* dendd, const float* m,      \
        const float* zv, T* out, LinAttnParams p) {                                                                        \
        chunk_mma_impl<T, 3>(q, k, v, d_o, bounds, dendd, m, zv, out, p);                                                 \
    }

#define LINATTN_ENTRIES(SUFFIX, T, SWEEP_BLOCKS)                                                                           \
    extern "C" __global__ void __launch_bounds__(DECODE_THREADS, 1)                                                       \
        linattn_decode_##SUFFIX(const T* q, const T* k, const T* v, float* state, float* z, T* o, LinAttnParams p) {       \
        decode_impl<T, false>(q, k, v, state, z, o, p);                                                                    \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(DECODE_THREADS, 2)                                                       \
        linattn_decode_vec_##SUFFIX(const T* q, const T* k, const T* v, float* state, float* z, T* o, LinAttnParams p) {   \
        decode_impl<T, true>(q, k, v, state, z, o, p);                                                                     \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        linattn_recurrent_##SUFFIX(const T* q, const T* k, const T* v, float* state, const float* z_init,                    \
                                   const uint32_t* starts, float* z, T* o, LinAttnParams p) {                             \
        recurrent_impl<T>(q, k, v, state, z_init, starts, z, o, p);                                                                        \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        linattn_chunk_state_##SUFFIX(const T* k, const T* v, float* state, const uint32_t* starts, float* z, LinAttnParams p) { \
        chunk_state_impl<T, false>(k, v, state, starts, z, p);                                                                 \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256, 1) linattn_chunk_states_##SUFFIX(                                    \
        const T* k, const T* v, float* state, float* z, const uint32_t* table, float* hs, float* zs, LinAttnParams p) {     \
        chunk_sweep_impl<T, false, false>(k, v, nullptr, state, z, table, hs, zs, p);                                      \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256, SWEEP_BLOCKS) linattn_chunk_states_mma_##SUFFIX(                                \
        const T* k, const T* v, float* state, float* z, const uint32_t* table, float* hs, float* zs, LinAttnParams p) {     \
        chunk_sweep_impl<T, true, false>(k, v, nullptr, state, z, table, hs, zs, p);                                       \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256, 1) linattn_chunk_grad_states_##SUFFIX(                               \
        const T* q, const T* d_o, const float* dendd, float* d_state, float* d_z, const uint32_t* table, float* gs,         \
        float* gzs, LinAttnParams p) {                                                                                     \
        chunk_sweep_impl<T, false, true>(q, d_o, dendd, d_state, d_z, table, gs, gzs, p);                                  \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256, SWEEP_BLOCKS) linattn_chunk_grad_states_mma_##SUFFIX(                           \
        const T* q, const T* d_o, const float* dendd, float* d_state, float* d_z, const uint32_t* table, float* gs,        \
        float* gzs, LinAttnParams p) {                                                                                     \
        chunk_sweep_impl<T, true, true>(q, d_o, dendd, d_state, d_z, table, gs, gzs, p);                                   \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        linattn_chunk_state_mma_##SUFFIX(const T* k, const T* v, float* state, const uint32_t* starts, float* z, LinAttnParams p) { \
        chunk_state_impl<T, true>(k, v, state, starts, z, p);                                                              \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) linattn_chunk_output_##SUFFIX(                                       \
        const T* q, const T* k, const T* v, const float* state, const uint32_t* starts, const float* z, T* o, LinAttnParams p) { \
        chunk_output_impl<T>(q, k, v, state, starts, z, o, p);                                                             \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) linattn_backward_##SUFFIX(                                           \
        const T* q, const T* k, const T* v, const T* o, const T* d_o, const float* s0, const float* z0, const float* d_state, \
        const float* d_z, const uint32_t* starts, float* dq_part, float* dk_part, float* dendd, float* ds0, float* dz0, T* dv, \
        LinAttnParams p) {                                                                                                 \
        backward_impl<T>(q, k, v, o, d_o, s0, z0, d_state, d_z, starts, dq_part, dk_part, dendd, ds0, dz0, dv, p);          \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        linattn_backward_reduce_##SUFFIX(const T* x, const float* part, const uint32_t* starts, T* out, LinAttnParams p) { \
        backward_reduce_impl<T>(x, part, starts, out, p);                                                                  \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) linattn_chunk_den_##SUFFIX(                                          \
        const T* q, const T* k, const T* o, const T* d_o, const uint32_t* bounds, const float* z, float* dendd, float* hz, \
        LinAttnParams p) {                                                                                                 \
        chunk_den_impl<T>(q, k, o, d_o, bounds, z, dendd, hz, p);                                                          \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) linattn_chunk_dstate_##SUFFIX(                                       \
        const T* q, const T* d_o, const uint32_t* bounds, const float* dendd, float* g, LinAttnParams p) {                 \
        chunk_dstate_impl<T, false>(q, d_o, bounds, dendd, g, p);                                                              \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) linattn_chunk_dstate_mma_##SUFFIX(                                   \
        const T* q, const T* d_o, const uint32_t* bounds, const float* dendd, float* g, LinAttnParams p) {                 \
        chunk_dstate_impl<T, true>(q, d_o, bounds, dendd, g, p);                                                           \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) linattn_chunk_dv_##SUFFIX(                                           \
        const T* q, const T* k, const T* d_o, const uint32_t* bounds, const float* dendd, const float* g, T* dv,           \
        LinAttnParams p) {                                                                                                 \
        chunk_grad_impl<T, 1>(q, k, nullptr, d_o, bounds, dendd, g, nullptr, dv, p);                                       \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) linattn_chunk_dq_##SUFFIX(                                           \
        const T* q, const T* k, const T* v, const T* d_o, const uint32_t* bounds, const float* dendd, const float* m,      \
        const float* zv, T* out, LinAttnParams p) {                                                                        \
        chunk_grad_impl<T, 2>(q, k, v, d_o, bounds, dendd, m, zv, out, p);                                                 \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) linattn_chunk_dk_##SUFFIX(                                           \
        const T* q, const T* k, const T* v, const T* d_o, const uint32_t* bounds, const float* dendd, const float* m,      \
        const float* zv, T* out, LinAttnParams p) {                                                                        \
        chunk_grad_impl<T, 3>(q, k, v, d_o, bounds, dendd, m, zv, out, p);                                                 \
    }
#if !defined(FFKERN_SM90A)
// Chunked form, inter-chunk pass (mirrors linattn_chunk_scan in shaders/linattn.wgsl): with each
// chunk's own ΔS_c, Δz_c in hs, zs (from a state-only pass over the chunks), replaces them by the
// state at the chunk's start S_0 + Σ_{c' < c} ΔS_c' and leaves each sequence's final state in
// state, z (which hold S_0, z_0 on entry). One thread per (sequence, head, element of S and z);
// the chunks of sequence n are seq_chunk0[n] .. seq_chunk0[n + 1].
extern "C" __global__ void __launch_bounds__(256)
    linattn_chunk_scan(float* state, float* z, float* hs, float* zs, const uint32_t* seq_chunk0, LinAttnParams p) {
    const size_t kv = (size_t)p.k * p.v, per = kv + p.k;
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < (size_t)p.batch * p.heads * per; t += (size_t)gridDim.x * blockDim.x) {
        const size_t nh = t / per, e = t % per, n = nh / p.heads, h = nh % p.heads;
        const bool in_s = e < kv;
        float* mine = in_s ? &state[nh * kv + e] : &z[nh * p.k + (e - kv)];
        float acc = *mine;
        for (uint32_t j = seq_chunk0[n]; j < seq_chunk0[n + 1]; ++j) {
            // aux 1: from the last chunk back (the backward's gradients at each chunk's end).
            const uint32_t c = p.aux == 1 ? seq_chunk0[n + 1] - 1 - (j - seq_chunk0[n]) : j;
            float* slot = in_s ? &hs[((size_t)c * p.heads + h) * kv + e] : &zs[((size_t)c * p.heads + h) * p.k + (e - kv)];
            const float d = *slot;
            *slot = acc;
            acc += d;
        }
        *mine = acc;
    }
}

// SWEEP_BLOCKS: the tensor-core sweeps' blocks per SM. They are latency-bound (one chunk after
// another), so two blocks per SM hide each other's staging; f16/bf16 fit in 128 registers with
// one TF32 product, f32's 3xTF32 would spill.
LINATTN_ENTRIES(f32, float, 1)
LINATTN_ENTRIES(f16, __half, 2)
LINATTN_ENTRIES(bf16, __nv_bfloat16, 2)

// The 16-bit sweeps, with the parameter lists of linattn_chunk_states / linattn_chunk_grad_states
// (dendd unused: they run with normalize none only). NAME_mma16: f32 per-chunk states (hs, gs of
// type S = float); NAME_mma16s: 16-bit ones (S = T), for the 16-bit chunk products.
#define LINATTN_SWEEP16_ENTRIES(NAME, SUFFIX, T, S)                                                                        \
    extern "C" __global__ void __launch_bounds__(256, 2) linattn_chunk_states_##NAME##_##SUFFIX(                           \
        const T* k, const T* v, float* state, float* z, const uint32_t* table, S* hs, float* zs, LinAttnParams p) {         \
        chunk_sweep16_impl<T, false, S>(k, v, state, z, table, hs, zs, p);                                                 \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256, 2) linattn_chunk_grad_states_##NAME##_##SUFFIX(                      \
        const T* q, const T* d_o, const float* dendd, float* d_state, float* d_z, const uint32_t* table, S* gs,            \
        float* gzs, LinAttnParams p) {                                                                                     \
        chunk_sweep16_impl<T, true, S>(q, d_o, d_state, d_z, table, gs, gzs, p);                                           \
    }
LINATTN_SWEEP16_ENTRIES(mma16, f16, __half, float)
LINATTN_SWEEP16_ENTRIES(mma16, bf16, __nv_bfloat16, float)
LINATTN_SWEEP16_ENTRIES(mma16s, bf16, __nv_bfloat16, __nv_bfloat16)

// The 16-bit chunk products (bf16 only: the rounded state could overflow f16), with the parameter
// lists of their TF32 twins but the per-chunk states (state, g, m) in bf16 (dendd unused:
// normalize none or Count).
extern "C" __global__ void __launch_bounds__(256, 2) linattn_chunk_output_mma16_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                                                                     const __nv_bfloat16* state, const uint32_t* starts, const float* z,
                                                                                     __nv_bfloat16* o, LinAttnParams p) {
    chunk16_impl<__nv_bfloat16, 0>(q, k, v, nullptr, starts, state, z, o, p);
}
extern "C" __global__ void __launch_bounds__(256, 2) linattn_chunk_dv_mma16_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* d_o,
                                                                                 const uint32_t* bounds, const float* dendd, const __nv_bfloat16* g,
                                                                                 __nv_bfloat16* dv, LinAttnParams p) {
    chunk16_impl<__nv_bfloat16, 1>(q, k, nullptr, d_o, bounds, g, nullptr, dv, p);
}
extern "C" __global__ void __launch_bounds__(256, 2) linattn_chunk_dq_mma16_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                                                                 const __nv_bfloat16* d_o, const uint32_t* bounds, const float* dendd,
                                                                                 const __nv_bfloat16* m, const float* zv, __nv_bfloat16* out, LinAttnParams p) {
    chunk16_impl<__nv_bfloat16, 2>(q, k, v, d_o, bounds, m, zv, out, p);
}
extern "C" __global__ void __launch_bounds__(256, 2) linattn_chunk_dk_mma16_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                                                                 const __nv_bfloat16* d_o, const uint32_t* bounds, const float* dendd,
                                                                                 const __nv_bfloat16* m, const float* zv, __nv_bfloat16* out, LinAttnParams p) {
    chunk16_impl<__nv_bfloat16, 3>(q, k, v, d_o, bounds, m, zv, out, p);
}
LINATTN_MMA_ENTRIES(f32, float)
LINATTN_MMA_ENTRIES(f16, __half)
LINATTN_MMA_ENTRIES(bf16, __nv_bfloat16)
// ---- The chunked forward and the chunked backward's dq, dv and dk, each in one pass (mirror
// linattn_chunk_fused in shaders/linattn.wgsl and linattn_chunk_fused_grad in linattn_bwd.wgsl)
// (FFKERN_LINATTN_KERNEL=fused; the 16-bit chunk products' conditions: bf16, φ identity or relu,
// normalize none (the forward also Count), K and V multiples of 8, the wide width below ≤ 128 —
// the launcher checks). One block per (sequence·head, 64 output columns) carries its slice M of
// a running state through the sequence's chunks in f32 registers, as chunk_sweep16_impl carries
// its tile, and computes each chunk's output from it on the spot, as chunk16_impl does from a
// stored one (rounded to bf16 in shared memory exactly as the two-pass form stores it), then adds
// the chunk to M. chunk16_impl's four modes, with its operands:
//   0 forward, chunks in order:  X = q̃, Y = k̃, F = v,  M = S[:, c],  out = scale·X·M + mask≤(scale·X·Yᵀ)·F, M += Yᵀ·F;
//   2 dq, in order:              X = do, Y = v, F = k̃, M = Sᵀ[:, c], out = scale·φ'(q)·(X·M + mask≤(X·Yᵀ)·F), M += Yᵀ·F;
//   1 dv, last chunk first:      X = k̃, Y = q̃, F = do, M = G[:, c],  out = X·M + mask≥(scale·X·Yᵀ)·F, M += scale·Yᵀ·F;
//   3 dk, last chunk first:      X = v, Y = do, F = q̃, M = Gᵀ[:, c], out = φ'(k)·(X·M + mask≥(scale·X·Yᵀ)·F + dz_T), M += scale·Yᵀ·F;
// where S starts at the initial state and G, the gradient of the state at a chunk's end, at dS_T
// (normalize none: the normalizer's gradient stays dz_T). X and Y are as wide as K (modes 0, 1)
// or V (2, 3), F's 64 columns are the output's. Mode 0 leaves the final state (and z) in
// state, mode 1 dS0 in it. Why it is fast: the per-chunk states, the two-pass form's largest
// arrays (written by a sweep, read back by the products), never leave the SM, and the inputs are
// read once, in one kernel; the next two chunks' tiles land by cp.async while this one multiplies
// (one block per SM: the state and the products need more than half its registers). A block runs
// its chunks one after another, so a step's time is its critical path: no global load waits in
// it (what the epilogue reads is loaded as the step starts) and no shared-memory pass beyond the
// products (Σ k̃ comes from the fragments M's update loads). Warp w owns
// rows 16⌊w/2⌋ of the chunk (scores, output) and of each 64-row half of M, columns 32(w % 2).
constexpr uint32_t FU_LQ = 136;  // X, Y tile rows: up to 128 + 8 padding (272 bytes: conflict-free ldmatrix)
constexpr uint32_t FU_LV = 72;   // F, M and W rows: 64 + 8 padding (144 bytes)
constexpr uint32_t FU_STAGES = 3;
constexpr uint32_t FU_STAGE = 2 * 64 * FU_LQ + 64 * FU_LV;  // one stage's elements: X, Y, F tiles
// The stages, then M_c [128][FU_LV], then W [64][FU_LV] (bytes; within an A100's 163 KB a block).
constexpr uint32_t FU_SMEM = (FU_STAGES * FU_STAGE + 128 * FU_LV + 64 * FU_LV) * 2;

// One k-step's fragments of the scores and X·M_c: X (A), Y's two n-tile pairs and M_c's (B).
struct ScoreFrags {
    uint32_t a[4], y[2][4], m[2][4];
};

// g: the input whose φ' scales the output (q for dq, k for dk); zv: z (forward, in and out) or
// dz_T (dk, read).
template <typename T, int MODE>
__device__ __forceinline__ void chunk_fused_impl(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ f, const T* __restrict__ g_in,
                                                 float* __restrict__ state, float* __restrict__ zv, const uint32_t* __restrict__ table, T* __restrict__ out,
                                                 const LinAttnParams& p) {
    constexpr bool REV = MODE == 1 || MODE == 3;    // chunks from the last; scores kept for s ≥ t
    constexpr bool KWIDE = MODE == 0 || MODE == 1;  // X and Y as wide as K (M = S or G), else V (M transposed)
    FFKERN_DYNAMIC_SMEM(fu_smem);
    // A launch with less dynamic shared memory than the stages need is a launcher bug: stop.
    if (dynamic_smem_bytes() < FU_SMEM) __trap();
    T* const smem = reinterpret_cast<T*>(fu_smem);
    const auto xs = [&](uint32_t st) { return smem + st * FU_STAGE; };
    const auto ys = [&](uint32_t st) { return smem + st * FU_STAGE + 64 * FU_LQ; };
    const auto fs = [&](uint32_t st) { return smem + st * FU_STAGE + 2 * 64 * FU_LQ; };
    T* const ms = smem + FU_STAGES * FU_STAGE;
    T* const ws = ms + 128 * FU_LV;
    const uint32_t nh = blockIdx.y + blockIdx.z * gridDim.y;
    if (nh >= p.batch * p.heads) return;
    const uint32_t lid = threadIdx.x, lane = lid & 31, warp = lid >> 5, g = lane >> 2, tq = lane & 3;
    const uint32_t mi = lane / 8, r8 = lane % 8;  // ldmatrix: lane addresses row r8 of matrix mi
    const uint32_t rw = 16 * (warp >> 1), cw = 32 * (warp & 1), c0 = blockIdx.x * 64;
    const uint32_t h = nh % p.heads, nc = table[0];
    const uint32_t c_lo = table[2 * nc + 2 + nh / p.heads], count = table[2 * nc + 3 + nh / p.heads] - c_lo;
    const uint32_t wide = KWIDE ? p.k : p.v, width = KWIDE ? p.v : p.k;  // X and Y; F and the output
    const uint32_t wpad = (wide + 15) / 16 * 16;
    // φ = relu on the fragments of q̃ and k̃: X and Y in modes 0 and 1, F in 2 and 3.
    const bool relu_xy = p.feature_map == 2 && KWIDE, relu_f = p.feature_map == 2 && !KWIDE;
    // Step j's chunk, its first row and the row after its last.
    const auto chunk = [&](uint32_t j) { return REV ? c_lo + count - 1 - j : c_lo + j; };
    const auto bounds = [&](uint32_t j) { return j < count ? make_uint2(table[1 + chunk(j)], table[2 + chunk(j)]) : make_uint2(0, 0); };
    // Chunk rows b.x .. b.y − 1 into stage st: X and Y rows of `wide` (≤ 16 pieces of 16 bytes),
    // F's 64 columns (8 pieces); zeros past the chunk and the widths.
    const auto issue = [&](uint2 b, uint32_t st) {
        const uint32_t len = b.y - b.x;
#pragma unroll
        for (uint32_t u = 0; u < 4; ++u) {
            const uint32_t pc = lid + 256 * u, r = pc / 16, col = 8 * (pc % 16);
            const size_t row = ((size_t)b.x + r) * p.heads + h;
            piece16(xs(st) + r * FU_LQ + col, x, row, wide, col, r < len && col < wide);
            piece16(ys(st) + r * FU_LQ + col, y, row, wide, col, r < len && col < wide);
        }
#pragma unroll
        for (uint32_t u = 0; u < 2; ++u) {
            const uint32_t pc = lid + 256 * u, r = pc / 8, col = 8 * (pc % 8);
            piece16(fs(st) + r * FU_LV + col, f, ((size_t)b.x + r) * p.heads + h, width, c0 + col, r < len && c0 + col < width);
        }
    };
    // Element (rg, m, cc) of the thread's fragments of M: row w (of the wide width), column c of
    // the block's 64 (fragment rows g, g + 8; two adjacent columns).
    const auto m_row = [&](uint32_t rg, uint32_t cc) { return rw + 64 * rg + g + 8 * (cc >> 1); };
    const auto m_col = [&](uint32_t m, uint32_t cc) { return cw + 8 * m + 2 * tq + (cc & 1); };
    float acc_m[2][4][4];
    // M_c rounded to T into ms [w][c] (all 128 rows: zero past the wide width), two columns a store.
    const auto store_ms = [&]() {
#pragma unroll
        for (uint32_t rg = 0; rg < 2; ++rg)
#pragma unroll
            for (uint32_t m = 0; m < 4; ++m)
#pragma unroll
                for (uint32_t half = 0; half < 2; ++half) store2(&ms[m_row(rg, 2 * half) * FU_LV + m_col(m, 0)], acc_m[rg][m][2 * half], acc_m[rg][m][2 * half + 1]);
    };
    // The block's part of `state` [K][V] (f32) to the fragments, or back (`store`): M[w][c] is
    // state[w][c0 + c] in modes 0 and 1, state[c0 + c][w] in 2 and 3.
    const auto move_state = [&](bool store) {
#pragma unroll
        for (uint32_t rg = 0; rg < 2; ++rg)
#pragma unroll
            for (uint32_t m = 0; m < 4; ++m)
#pragma unroll
                for (uint32_t cc = 0; cc < 4; ++cc) {
                    const uint32_t w = m_row(rg, cc), c = c0 + m_col(m, cc);
                    const bool in = w < wide && c < width;
                    float* at = state + (size_t)nh * p.k * p.v + (KWIDE ? (size_t)w * p.v + c : (size_t)c * p.v + w);
                    if (store && in) *at = acc_m[rg][m][cc];
                    if (!store) acc_m[rg][m][cc] = in ? *at : 0.0f;
                }
    };
    // Commit group g holds step g's chunk: the first FU_STAGES − 1 here, then one per step.
#pragma unroll
    for (uint32_t c = 0; c + 1 < FU_STAGES; ++c) {
        if (c < count) issue(bounds(c), c);
        mma::cp_async_commit();
    }
    move_state(false);
    store_ms();
    // Forward: Σ k̃ (the normalizer state) from the k̃ᵀ fragments that M's update loads anyway
    // (A of Yᵀ·F: rows g, g + 8 of the warp's 16 state rows, chunk rows 2tq.. and 2tq + 8..), so
    // it costs no shared-memory reads. Each thread sums its fragments over the whole sequence:
    // the warps of columns cw = 0 and 32 take k-steps 0–31 and 32–63 of each chunk, block x the
    // row groups rg ≡ x (mod gridDim.x); lanes and warps are added once, after the last chunk.
    float zr[2][2] = {};
    const auto zsum = [&](uint32_t rg, uint32_t kk) { return MODE == 0 && rg % gridDim.x == blockIdx.x && kk / 32 == (warp & 1); };
    // The scores' scale: all but dq take it on W (dq scales its output).
    const float wscale = MODE == 2 ? 1.0f : p.scale;
    // Which of the warp's score n-tiles (pair np, tile 0 or 1: columns cw + 16np + 8·tile ..) hold
    // unmasked scores in its rows: the rest are skipped.
    bool need[2][2];
#pragma unroll
    for (uint32_t np = 0; np < 2; ++np) {
        const uint32_t n0 = cw + 16 * np;
        need[np][0] = REV ? n0 + 7 >= rw : n0 <= rw + 15;
        need[np][1] = REV ? n0 + 15 >= rw : n0 + 8 <= rw + 15;
    }
    // dk: dz_T at the thread's output columns, the same in every chunk.
    float dz[4][2] = {};
    if (MODE == 3) {
#pragma unroll
        for (uint32_t mm = 0; mm < 4; ++mm) {
            const uint32_t col = c0 + cw + 8 * mm + 2 * tq;
            if (col < width) dz[mm][0] = zv[(size_t)nh * p.k + col], dz[mm][1] = zv[(size_t)nh * p.k + col + 1];
        }
    }
    uint2 next = bounds(FU_STAGES - 1);
    // Two block barriers a step: one as it starts (step j − 1 is over in every warp: its stage
    // may be refilled, M_c is in ms, W may be overwritten) and one before W·F (W is complete and
    // every warp is done reading M_c, which the step's end overwrites).
    for (uint32_t j = 0; j < count; ++j) {
        const uint32_t st = j % FU_STAGES;
        const uint2 b = bounds(j);
        const uint32_t len = b.y - b.x;
        // What the output's epilogue reads from global memory, loaded now so that the loads pass
        // under the products: the chunk's first position (Count) and the pairs of q or k whose φ'
        // scales dq or dk (φ ≠ identity; as a 4-byte pair: the width is a multiple of 8).
        const float pos = MODE == 0 && p.normalize == 2 ? (float)(p.count0 + table[nc + 2 + chunk(j)]) : 0.0f;
        uint32_t gpair[4][2] = {};
        if ((MODE == 2 || MODE == 3) && p.feature_map != 0) {
#pragma unroll
            for (uint32_t mm = 0; mm < 4; ++mm)
#pragma unroll
                for (uint32_t half = 0; half < 2; ++half) {
                    const uint32_t row = rw + g + 8 * half, col = c0 + cw + 8 * mm + 2 * tq;
                    if (row < len && col < width) gpair[mm][half] = *reinterpret_cast<const uint32_t*>(g_in + (((size_t)b.x + row) * p.heads + h) * width + col);
                }
        }
        mma::cp_async_wait<FU_STAGES - 2>();  // groups 0 .. j have landed
        __syncthreads();
        // Step j + FU_STAGES − 1 into the stage that step j − 1 used; its bounds were read a step
        // ahead, so the copies wait on no table load.
        if (j + FU_STAGES - 1 < count) issue(next, (j + FU_STAGES - 1) % FU_STAGES);
        mma::cp_async_commit();
        next = bounds(j + FU_STAGES);
        const T* const sx = xs(st);
        const T* const sy = ys(st);
        const T* const sf = fs(st);
        // Scores W = X·Yᵀ (n-tiles wholly in the masked half skipped) and X·M_c over the wide width.
        // The next k-step's fragments load while this one's products run (one k-step of fragments
        // in flight per warp: two warps a scheduler leave the loads' latency exposed otherwise).
        float acc_w[4][4] = {}, acc_o[4][4] = {};
        const auto load_frags = [&](uint32_t kk, ScoreFrags& fr) {
            mma::ldmatrix_x4(fr.a, sx + (rw + r8 + 8 * (mi % 2)) * FU_LQ + kk + 8 * (mi / 2));
            relu_frag(fr.a, relu_xy);
#pragma unroll
            for (uint32_t np = 0; np < 2; ++np) {
                const uint32_t n0 = cw + 16 * np;
                if (need[np][0] || need[np][1]) {
                    mma::ldmatrix_x4(fr.y[np], sy + (n0 + r8 + 8 * (mi / 2)) * FU_LQ + kk + 8 * (mi % 2));
                    relu_frag(fr.y[np], relu_xy);
                }
                frag_kn16<T>(fr.m[np], ms, FU_LV, kk, n0);
            }
        };
        const auto mma_step = [&](const ScoreFrags& cur) {
#pragma unroll
            for (uint32_t np = 0; np < 2; ++np) {
                if (need[np][0]) mma::mma16816<T>(acc_w[2 * np], cur.a, cur.y[np][0], cur.y[np][1]);
                if (need[np][1]) mma::mma16816<T>(acc_w[2 * np + 1], cur.a, cur.y[np][2], cur.y[np][3]);
                mma::mma16816<T>(acc_o[2 * np], cur.a, cur.m[np][0], cur.m[np][1]);
                mma::mma16816<T>(acc_o[2 * np + 1], cur.a, cur.m[np][2], cur.m[np][3]);
            }
        };
        // Two k-steps an iteration, f0 and f1 taking turns (named, so they stay in registers).
        ScoreFrags f0, f1;
        load_frags(0, f0);
        for (uint32_t kk = 0; kk < wpad; kk += 32) {
            if (kk + 16 < wpad) load_frags(kk + 16, f1);
            mma_step(f0);
            if (kk + 16 >= wpad) break;
            if (kk + 32 < wpad) load_frags(kk + 32, f0);
            mma_step(f1);
        }
        if (MODE == 0) {
#pragma unroll
            for (uint32_t mm = 0; mm < 4; ++mm)
#pragma unroll
                for (uint32_t cc = 0; cc < 4; ++cc) acc_o[mm][cc] *= p.scale;
        }
#pragma unroll
        for (uint32_t mm = 0; mm < 4; ++mm)
#pragma unroll
            for (uint32_t half = 0; half < 2; ++half) {
                const uint32_t row = rw + g + 8 * half, s0 = cw + 8 * mm + 2 * tq;
                const bool k0 = REV ? s0 >= row : s0 <= row, k1 = REV ? s0 + 1 >= row : s0 + 1 <= row;
                store2(&ws[row * FU_LV + s0], k0 ? wscale * acc_w[mm][2 * half] : 0.0f, k1 ? wscale * acc_w[mm][2 * half + 1] : 0.0f);
            }
        __syncthreads();
        // out += W·F over the score columns, 16 at a time; blocks wholly in the masked half skipped.
#pragma unroll
        for (uint32_t s0 = 0; s0 < 64; s0 += 16) {
            if (REV ? s0 + 15 < rw : s0 > rw + 15) continue;
            uint32_t a[4];
            mma::ldmatrix_x4(a, ws + (rw + r8 + 8 * (mi % 2)) * FU_LV + s0 + 8 * (mi / 2));
#pragma unroll
            for (uint32_t np = 0; np < 2; ++np) mma_kn16<T>(acc_o[2 * np], acc_o[2 * np + 1], a, sf, FU_LV, s0, cw + 16 * np, relu_f);
        }
#pragma unroll
        for (uint32_t mm = 0; mm < 4; ++mm)
#pragma unroll
            for (uint32_t half = 0; half < 2; ++half) {
                const uint32_t row = rw + g + 8 * half, col = c0 + cw + 8 * mm + 2 * tq;
                if (row >= len || col >= width) continue;
                const size_t at = (((size_t)b.x + row) * p.heads + h) * width + col;
                float v0 = acc_o[mm][2 * half], v1 = acc_o[mm][2 * half + 1];
                const float2 gv = to_f32x2(*reinterpret_cast<const typename Pair<T>::type*>(&gpair[mm][half]));
                if (MODE == 2) {
                    v0 *= p.scale * phi_grad(p.feature_map, gv.x);
                    v1 *= p.scale * phi_grad(p.feature_map, gv.y);
                } else if (MODE == 3) {
                    v0 = (v0 + dz[mm][0]) * phi_grad(p.feature_map, gv.x);
                    v1 = (v1 + dz[mm][1]) * phi_grad(p.feature_map, gv.y);
                } else if (MODE == 0 && p.normalize == 2) {
                    const float n = pos + (float)(row + 1);
                    v0 /= n, v1 /= n;
                }
                store2(out + at, v0, v1);
            }
        // M += Yᵀ·F (times scale in the reverse modes) over the chunk's rows: A = the Y tileᵀ
        // (rows w, k = chunk rows) from Y stored [r][w], B = F rows from F stored [r][c], both
        // through ldmatrix.trans; each k-step's F fragments serve both row groups of M.
        float part[2][4][4] = {};  // the reverse modes: the chunk's own sum, scaled into M after
#pragma unroll
        for (uint32_t kk = 0; kk < 64; kk += 16) {
            uint32_t fb[2][4];
#pragma unroll
            for (uint32_t np = 0; np < 2; ++np) frag_kn16<T>(fb[np], sf, FU_LV, kk, cw + 16 * np, relu_f);
#pragma unroll
            for (uint32_t rg = 0; rg < 2; ++rg) {
                if (rw + 64 * rg >= wpad) continue;
                uint32_t a[4];
                mma::ldmatrix_x4_trans(a, sy + (kk + r8 + 8 * (mi / 2)) * FU_LQ + rw + 64 * rg + 8 * (mi % 2));
                relu_frag(a, relu_xy);
                if (zsum(rg, kk)) add_frag_row_sums<T>(zr[rg], a);
#pragma unroll
                for (uint32_t n = 0; n < 4; ++n) mma::mma16816<T>(REV ? part[rg][n] : acc_m[rg][n], a, fb[n / 2][2 * (n % 2)], fb[n / 2][2 * (n % 2) + 1]);
            }
        }
        if (REV) {
#pragma unroll
            for (uint32_t rg = 0; rg < 2; ++rg)
#pragma unroll
                for (uint32_t m = 0; m < 4; ++m)
#pragma unroll
                    for (uint32_t cc = 0; cc < 4; ++cc) acc_m[rg][m][cc] += p.scale * part[rg][m][cc];
        }
        store_ms();  // M_{c+1} for the next chunk (every warp finished reading M_c before W·F)
    }
    mma::cp_async_wait<0>();
    if (MODE <= 1) move_state(true);
    if (MODE == 0) {
        // The four lanes of a fragment row, then the two warps of a row group (their k-step
        // halves), through the first stage's memory: zpart[warp][rg][row 0–15].
#pragma unroll
        for (uint32_t rg = 0; rg < 2; ++rg)
#pragma unroll
            for (uint32_t half = 0; half < 2; ++half) zr[rg][half] = quad_sum(zr[rg][half]);
        float* const zpart = reinterpret_cast<float*>(fu_smem);
        __syncthreads();  // every warp is done with the last step's stage
        if (tq == 0) {
#pragma unroll
            for (uint32_t rg = 0; rg < 2; ++rg)
#pragma unroll
                for (uint32_t half = 0; half < 2; ++half) zpart[(warp * 2 + rg) * 16 + g + 8 * half] = zr[rg][half];
        }
        __syncthreads();
        // Thread w < 128: state row w, in row group w / 64, from the warps 2·wp and 2·wp + 1.
        const uint32_t rg = lid / 64, wp = lid % 64 / 16, r16 = lid % 16;
        if (lid < 128 && lid < p.k && count > 0 && rg % gridDim.x == blockIdx.x) {
            const float s = zpart[(4 * wp + rg) * 16 + r16] + zpart[(4 * wp + 2 + rg) * 16 + r16];
            zv[(size_t)nh * p.k + lid] += s;
        }
    }
}

// The one-pass chunked forward (linattn_chunk_states' parameters, with q and o): bf16 only, as
// the 16-bit chunk products.
extern "C" __global__ void __launch_bounds__(256, 1) linattn_chunk_fused_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                                                              float* state, float* z, const uint32_t* table, __nv_bfloat16* o,
                                                                              LinAttnParams p) {
    chunk_fused_impl<__nv_bfloat16, 0>(q, k, v, nullptr, state, z, table, o, p);
}
// The chunked backward in one pass per gradient (normalize none: dN = do, the normalizer's
// gradient dz_T throughout): dq from the initial state s0, dk and dv from the state's gradient
// dS_T, in that order, the dv pass turning it into dS0; `state` is s0 (dq, read) or d_state (dk:
// read; dv: in and out).
extern "C" __global__ void __launch_bounds__(256, 1) linattn_chunk_fused_grad_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                                                                                   const __nv_bfloat16* d_o, float* state, float* dz,
                                                                                   const uint32_t* table, __nv_bfloat16* out, LinAttnParams p) {
    // p.aux: 2 dq, 1 dv, 3 dk (chunk16_impl's mode numbers).
    if (p.aux == 2) chunk_fused_impl<__nv_bfloat16, 2>(d_o, v, k, q, state, nullptr, table, out, p);
    else if (p.aux == 1) chunk_fused_impl<__nv_bfloat16, 1>(k, q, d_o, nullptr, state, nullptr, table, out, p);
    else chunk_fused_impl<__nv_bfloat16, 3>(v, d_o, q, k, state, dz, table, out, p);
}
#endif
