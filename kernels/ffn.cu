// BatchNorm over tokens (the RePaViT FFN's norm, SPEC §3): per-channel statistics, the affine
// apply, and the backward. Activations are f32/f16/bf16; parameters and statistics are f32.
// Why it is fast: the per-channel reductions run in two levels (BN_TILE_CHANNELS in
// src/ops/ffn/mod.rs), so a batch of many rows fills the GPU with (channel tile × row chunk)
// blocks whose warps each read one row's 32 consecutive channels (coalesced, four rows' loads in
// flight a thread), instead of one thread per channel walking every row. Both levels add in a
// fixed order: deterministic, no atomics. The element-wise passes are grid-stride loops over
// 16-byte pieces.
#include "common.cuh"

struct BnParams {
    uint32_t rows, channels, train, has_extra;
    float eps, momentum;
    uint32_t chunk_rows, chunks;
};

constexpr uint32_t BN_TILE = 32, BN_LANES = 8;

// Block (BN_TILE, BN_LANES) on (tile of channels, chunk of rows): this thread's channel and the
// chunk's row range.
struct BnChunk {
    uint32_t c, r0, r1;
    bool live;
};

__device__ __forceinline__ BnChunk bn_chunk(const BnParams& p) {
    BnChunk b;
    b.c = blockIdx.x * BN_TILE + threadIdx.x;
    b.r0 = blockIdx.y * p.chunk_rows;
    b.r1 = min(p.rows, b.r0 + p.chunk_rows);
    b.live = b.c < p.channels;
    return b;
}

// BN_STEP of this thread's rows of its chunk at once from r (every BN_LANES-th row), their loads
// issued together so that a thread keeps BN_STEP in flight; rows past the chunk read as `pad`.
constexpr uint32_t BN_STEP = 4;
template <typename T>
__device__ __forceinline__ void bn_load_step(const T* __restrict__ x, const BnChunk& b, uint32_t n, uint32_t r, float pad, float (&v)[BN_STEP]) {
#pragma unroll
    for (uint32_t u = 0; u < BN_STEP; ++u) {
        const uint32_t row = r + u * BN_LANES;
        v[u] = row < b.r1 ? to_f32(x[(size_t)row * n + b.c]) : pad;
    }
}

// The chunk's N partials for this thread's channel (array i at part[i·chunks·C ..]), from row
// lane 0.
template <uint32_t N>
__device__ __forceinline__ void bn_put_partials(const BnChunk& b, float* __restrict__ part, const float (&v)[N], const BnParams& p) {
    if (b.live && threadIdx.y == 0) {
#pragma unroll
        for (uint32_t i = 0; i < N; ++i) part[((size_t)i * p.chunks + blockIdx.y) * p.channels + b.c] = v[i];
    }
}

// The sum of a column's BN_LANES row-lane values in lane order, returned to every lane.
__device__ __forceinline__ float bn_lane_sum(float v, float (*red)[BN_TILE]) {
    red[threadIdx.y][threadIdx.x] = v;
    __syncthreads();
    float s = 0.0f;
#pragma unroll
    for (uint32_t l = 0; l < BN_LANES; ++l) s += red[l][threadIdx.x];
    __syncthreads();
    return s;
}

// Per chunk and channel: the chunk's mean and centred sum of squares M2 (two sweeps over the
// chunk, the second from cache), into part = [mean | M2 | mean_lo], chunks·C floats each.
// Corrected two-pass algorithm: the second sweep also sums the deviations e = Σ(x − mean), the
// first sweep's rounding error, so that mean + e/n is the mean to far below an ulp however large it
// is against the spread; both go to part unadded, as the chunk's mean and mean_lo (and M2 − e²/n
// is the matching M2).
template <typename T>
__device__ __forceinline__ void bn_partials_impl(const T* __restrict__ x, float* __restrict__ part, const BnParams& p) {
    __shared__ float red[BN_LANES][BN_TILE];
    const BnChunk b = bn_chunk(p);
    const uint32_t n = p.channels;
    float s = 0.0f, v[BN_STEP];
    if (b.live)
        for (uint32_t r = b.r0 + threadIdx.y; r < b.r1; r += BN_STEP * BN_LANES) {
            bn_load_step(x, b, n, r, 0.0f, v);
#pragma unroll
            for (uint32_t u = 0; u < BN_STEP; ++u) s += v[u];
        }
    const float rows = (float)(b.r1 - b.r0);
    const float mean = bn_lane_sum(s, red) / rows;
    float e = 0.0f, q = 0.0f;
    if (b.live)
        for (uint32_t r = b.r0 + threadIdx.y; r < b.r1; r += BN_STEP * BN_LANES) {
            bn_load_step(x, b, n, r, mean, v);
#pragma unroll
            for (uint32_t u = 0; u < BN_STEP; ++u) {
                const float d = v[u] - mean;
                e += d;
                q += d * d;
            }
        }
    const float es = bn_lane_sum(e, red);
    const float out[3] = {mean, bn_lane_sum(q, red) - es * es / rows, es / rows};
    bn_put_partials(b, part, out, p);
}

// stats = [mean | rstd | scale | shift | dgamma | dbeta | mean_lo], C floats each; affine =
// [gamma | beta]. Per channel: in train mode the chunks' (mean, M2, mean_lo) combined in chunk
// order (Chan et al.'s pairwise update for M2), the biased variance for the batch and the unbiased
// one for the running update; in eval mode the running statistics (mean_lo 0). Then scale =
// γ·rstd and shift = β − mean·scale. The batch mean is kept as mean + mean_lo, its f32 rounding
// and the remainder: x − mean is exact where x is near the mean, so (x − mean) − mean_lo centres
// x as well as f32 holds the deviation, where an f32 mean alone would leave its rounding, up to
// half an ulp of the mean, in every deviation (a mean large against a small spread).
__device__ __forceinline__ void bn_prepare_impl(const float* __restrict__ part, const float* __restrict__ affine, float* running_mean,
                                                float* running_var, float* __restrict__ stats, const BnParams& p) {
    const uint32_t n = p.channels;
    const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n) return;
    float mean = running_mean[c], var = running_var[c], mean_lo = 0.0f;
    if (p.train) {
        float m = 0.0f, q = 0.0f, count = 0.0f;
        // The mean itself as the first chunk's plus the row-weighted sum of the others' small
        // differences from it: no bigger error than the chunks' own, however many there are.
        const float pivot = part[c];
        float shift = 0.0f;
        for (uint32_t j = 0; j < p.chunks; ++j) {
            const float nb = (float)min(p.chunk_rows, p.rows - j * p.chunk_rows);
            const float total = count + nb;
            const float hi = part[(size_t)j * n + c], lo = part[((size_t)2 * p.chunks + j) * n + c];
            const float delta = (hi + lo) - m;
            m += delta * (nb / total);
            q += part[((size_t)p.chunks + j) * n + c] + delta * delta * (count * nb / total);
            shift += nb * ((hi - pivot) + lo);
            count = total;
        }
        // mean_lo: what the rounding of pivot + t left out (exact where |t| ≤ |pivot|, the case
        // that needs it).
        const float t = shift / (float)p.rows;
        mean = pivot + t;
        mean_lo = (pivot - mean) + t;
        var = q / (float)p.rows;
        const float unbiased = p.rows > 1 ? q / (float)(p.rows - 1) : var;
        running_mean[c] = (1.0f - p.momentum) * running_mean[c] + p.momentum * mean;
        running_var[c] = (1.0f - p.momentum) * running_var[c] + p.momentum * unbiased;
    }
    const float rstd = 1.0f / sqrtf(var + p.eps);
    const float scale = affine[c] * rstd;
    stats[c] = mean;
    stats[n + c] = rstd;
    stats[2 * n + c] = scale;
    stats[3 * n + c] = affine[n + c] - mean * scale;
    stats[6 * n + c] = mean_lo;
}

// Whether every row is whole 16-byte pieces and each pointer 16-byte aligned (null: absent). The
// statistics and affine arrays are among them: their per-channel runs (C apart, C a multiple of
// 4 then) are read 16 bytes at a time too.
template <typename T, typename... P>
__device__ __forceinline__ bool bn_pieces(const BnParams& p, P... q) {
    const auto ok = [](const void* a) { return ((uintptr_t)a & 15) == 0; };
    return p.channels % (16 / sizeof(T)) == 0 && (ok(q) && ...);
}

// The element-wise passes' walk: f(i0, n) for each 16-byte piece of n = 16/sizeof(T) elements
// from i0 (all within one row), or for each element (n = 1) where the rows are not whole pieces.
template <typename T, typename F>
__device__ __forceinline__ void bn_walk(const BnParams& p, bool pieces, F&& f) {
    const size_t total = (size_t)p.rows * p.channels, step = (size_t)gridDim.x * blockDim.x;
    constexpr uint32_t V = 16 / sizeof(T);
    if (pieces) {
        for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total / V; t += step) f(t * V, V);
    } else {
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += step) f(i, 1u);
    }
}

// y = ((x − mean) − mean_lo)·scale + β: centred first, so a mean large against the spread does
// not cancel.
// Why it is fast: 16-byte loads and stores where the rows are whole pieces.
template <typename T>
__device__ __forceinline__ void bn_apply_impl(const T* __restrict__ x, const float* __restrict__ stats, const float* __restrict__ affine,
                                              T* __restrict__ y, const BnParams& p) {
    constexpr uint32_t V = 16 / sizeof(T);
    const uint32_t n = p.channels;
    bn_walk<T>(p, bn_pieces<T>(p, x, y, stats, affine), [&](size_t i0, uint32_t count) {
        const uint32_t c0 = i0 % n;
        if (count == V) {
            float v[V], mean[V], lo[V], scale[V], beta[V];
            unpack16<T>(*reinterpret_cast<const uint4*>(x + i0), v);
            load_f32s(stats + c0, mean);
            load_f32s(stats + 6 * n + c0, lo);
            load_f32s(stats + 2 * n + c0, scale);
            load_f32s(affine + n + c0, beta);
#pragma unroll
            for (uint32_t e = 0; e < V; ++e) v[e] = ((v[e] - mean[e]) - lo[e]) * scale[e] + beta[e];
            *reinterpret_cast<uint4*>(y + i0) = pack16<T>(v);
        } else {
            y[i0] = from_f32<T>(((to_f32(x[i0]) - stats[c0]) - stats[6 * n + c0]) * stats[2 * n + c0] + affine[n + c0]);
        }
    });
}

// Per chunk and channel: Σ dy·x̂ and Σ dy (x̂ = ((x − mean) − mean_lo)·rstd) into part = [dγ | dβ].
template <typename T>
__device__ __forceinline__ void bn_backward_partials_impl(const T* __restrict__ x, const T* __restrict__ dy, const float* __restrict__ stats,
                                                          float* __restrict__ part, const BnParams& p) {
    __shared__ float red[BN_LANES][BN_TILE];
    const BnChunk b = bn_chunk(p);
    const uint32_t n = p.channels;
    float db = 0.0f, dg = 0.0f, rstd = 0.0f;
    if (b.live) {
        const float mean = stats[b.c], lo = stats[6 * n + b.c];
        rstd = stats[n + b.c];
        float g[BN_STEP], xv[BN_STEP];
        for (uint32_t r = b.r0 + threadIdx.y; r < b.r1; r += BN_STEP * BN_LANES) {
            bn_load_step(dy, b, n, r, 0.0f, g);
            bn_load_step(x, b, n, r, mean, xv);
#pragma unroll
            for (uint32_t u = 0; u < BN_STEP; ++u) {
                db += g[u];
                dg += g[u] * ((xv[u] - mean) - lo);
            }
        }
    }
    const float v[2] = {bn_lane_sum(dg, red) * rstd, bn_lane_sum(db, red)};
    bn_put_partials(b, part, v, p);
}

// Per channel: the chunks' dγ and dβ summed in chunk order into stats[4C..6C].
__device__ __forceinline__ void bn_backward_reduce_impl(const float* __restrict__ part, float* __restrict__ stats, const BnParams& p) {
    const uint32_t n = p.channels;
    const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n) return;
    float dg = 0.0f, db = 0.0f;
    for (uint32_t j = 0; j < p.chunks; ++j) {
        dg += part[(size_t)j * n + c];
        db += part[((size_t)p.chunks + j) * n + c];
    }
    stats[4 * n + c] = dg;
    stats[5 * n + c] = db;
}

// dx = γ·rstd/R · (R·dy − dβ − x̂·dγ) (+ extra), in 16-byte pieces where the rows allow.
template <typename T>
__device__ __forceinline__ void bn_backward_apply_impl(const T* __restrict__ x, const T* __restrict__ dy, const float* __restrict__ affine,
                                                       const float* __restrict__ stats, const T* __restrict__ extra, T* __restrict__ dx,
                                                       const BnParams& p) {
    constexpr uint32_t V = 16 / sizeof(T);
    const uint32_t n = p.channels;
    const float rows = (float)p.rows;
    // From the channel's mean (and its remainder lo), rstd, γ, dβ and dγ.
    const auto grad = [&](float mean, float lo, float rstd, float gamma, float dbeta, float dgamma, float xv, float g) {
        const float xhat = ((xv - mean) - lo) * rstd;
        return gamma * rstd / rows * (rows * g - dbeta - xhat * dgamma);
    };
    bn_walk<T>(p, bn_pieces<T>(p, x, dy, dx, p.has_extra ? extra : nullptr, stats, affine), [&](size_t i0, uint32_t count) {
        const uint32_t c0 = i0 % n;
        if (count == V) {
            float xv[V], g[V], e[V] = {}, mean[V], lo[V], rstd[V], gamma[V], dbeta[V], dgamma[V];
            unpack16<T>(*reinterpret_cast<const uint4*>(x + i0), xv);
            unpack16<T>(*reinterpret_cast<const uint4*>(dy + i0), g);
            if (p.has_extra) unpack16<T>(*reinterpret_cast<const uint4*>(extra + i0), e);
            load_f32s(stats + c0, mean);
            load_f32s(stats + 6 * n + c0, lo);
            load_f32s(stats + n + c0, rstd);
            load_f32s(affine + c0, gamma);
            load_f32s(stats + 5 * n + c0, dbeta);
            load_f32s(stats + 4 * n + c0, dgamma);
#pragma unroll
            for (uint32_t j = 0; j < V; ++j) xv[j] = grad(mean[j], lo[j], rstd[j], gamma[j], dbeta[j], dgamma[j], xv[j], g[j]) + (p.has_extra ? e[j] : 0.0f);
            *reinterpret_cast<uint4*>(dx + i0) = pack16<T>(xv);
        } else {
            float d = grad(stats[c0], stats[6 * n + c0], stats[n + c0], affine[c0], stats[5 * n + c0], stats[4 * n + c0], to_f32(x[i0]), to_f32(dy[i0]));
            if (p.has_extra) d += to_f32(extra[i0]);
            dx[i0] = from_f32<T>(d);
        }
    });
}

#define BN_ENTRIES(SUFFIX, T)                                                                                              \
    extern "C" __global__ void bn_partials_##SUFFIX(const T* x, float* part, BnParams p) { bn_partials_impl<T>(x, part, p); }     \
    extern "C" __global__ void bn_apply_##SUFFIX(const T* x, const float* stats, const float* affine, T* y, BnParams p) {  \
        bn_apply_impl<T>(x, stats, affine, y, p);                                                                          \
    }                                                                                                                      \
    extern "C" __global__ void bn_backward_partials_##SUFFIX(const T* x, const T* dy, const float* stats, float* part,     \
                                                             BnParams p) {                                                 \
        bn_backward_partials_impl<T>(x, dy, stats, part, p);                                                               \
    }                                                                                                                      \
    extern "C" __global__ void bn_backward_apply_##SUFFIX(const T* x, const T* dy, const float* affine, const float* stats, \
                                                          const T* extra, T* dx, BnParams p) {                              \
        bn_backward_apply_impl<T>(x, dy, affine, stats, extra, dx, p);                                                     \
    }
#if !defined(FFKERN_SM90A)
BN_ENTRIES(f32, float)
BN_ENTRIES(f16, __half)
BN_ENTRIES(bf16, __nv_bfloat16)
extern "C" __global__ void bn_prepare(const float* part, const float* affine, float* rm, float* rv, float* stats, BnParams p) {
    bn_prepare_impl(part, affine, rm, rv, stats, p);
}
extern "C" __global__ void bn_backward_reduce(const float* part, float* stats, BnParams p) { bn_backward_reduce_impl(part, stats, p); }
#endif
