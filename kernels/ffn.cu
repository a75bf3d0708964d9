// BatchNorm over tokens (the RePaViT FFN's norm, SPEC §3): per-channel statistics, the affine
// apply, and the backward. Activations are f32/f16/bf16; parameters and statistics are f32.
// Why it is fast: the per-channel reductions run in two levels (BN_TILE_CHANNELS in
// src/ops/ffn/mod.rs), so a batch of many rows fills the GPU with (channel tile × row chunk)
// blocks whose warps each read one row's 32 consecutive channels (coalesced), instead of one
// thread per channel walking every row. Both levels add in a fixed order: deterministic, no
// atomics. The element-wise passes are grid-stride loops.
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

// The chunk's two partials for this thread's channel, from row lane 0.
__device__ __forceinline__ void bn_put_partials(const BnChunk& b, float* __restrict__ part, float first, float second, const BnParams& p) {
    if (b.live && threadIdx.y == 0) {
        part[(size_t)blockIdx.y * p.channels + b.c] = first;
        part[((size_t)p.chunks + blockIdx.y) * p.channels + b.c] = second;
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
// chunk, the second from cache), into part = [mean | M2], chunks·C floats each.
template <typename T>
__device__ __forceinline__ void bn_partials_impl(const T* __restrict__ x, float* __restrict__ part, const BnParams& p) {
    __shared__ float red[BN_LANES][BN_TILE];
    const BnChunk b = bn_chunk(p);
    const uint32_t n = p.channels;
    float s = 0.0f;
    if (b.live)
        for (uint32_t r = b.r0 + threadIdx.y; r < b.r1; r += BN_LANES) s += to_f32(x[(size_t)r * n + b.c]);
    const float mean = bn_lane_sum(s, red) / (float)(b.r1 - b.r0);
    float q = 0.0f;
    if (b.live)
        for (uint32_t r = b.r0 + threadIdx.y; r < b.r1; r += BN_LANES) {
            const float d = to_f32(x[(size_t)r * n + b.c]) - mean;
            q += d * d;
        }
    bn_put_partials(b, part, mean, bn_lane_sum(q, red), p);
}

// stats = [mean | rstd | scale | shift | dgamma | dbeta], C floats each; affine = [gamma | beta].
// Per channel: in train mode the chunks' (mean, M2) combined in chunk order (Chan et al.'s
// pairwise update), the biased variance for the batch and the unbiased one for the running
// update; in eval mode the running statistics. Then scale = γ·rstd and shift = β − mean·scale.
__device__ __forceinline__ void bn_prepare_impl(const float* __restrict__ part, const float* __restrict__ affine, float* running_mean,
                                                float* running_var, float* __restrict__ stats, const BnParams& p) {
    const uint32_t n = p.channels;
    const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n) return;
    float mean = running_mean[c], var = running_var[c];
    if (p.train) {
        float m = 0.0f, q = 0.0f, count = 0.0f;
        for (uint32_t j = 0; j < p.chunks; ++j) {
            const float nb = (float)min(p.chunk_rows, p.rows - j * p.chunk_rows);
            const float total = count + nb;
            const float delta = part[(size_t)j * n + c] - m;
            m += delta * (nb / total);
            q += part[((size_t)p.chunks + j) * n + c] + delta * delta * (count * nb / total);
            count = total;
        }
        mean = m;
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
}

// y = (x − mean)·scale + β: centred first, so a mean large against the spread does not cancel.
template <typename T>
__device__ __forceinline__ void bn_apply_impl(const T* __restrict__ x, const float* __restrict__ stats, const float* __restrict__ affine,
                                              T* __restrict__ y, const BnParams& p) {
    const size_t total = (size_t)p.rows * p.channels;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const uint32_t c = i % p.channels;
        y[i] = from_f32<T>((to_f32(x[i]) - stats[c]) * stats[2 * p.channels + c] + affine[p.channels + c]);
    }
}

// Per chunk and channel: Σ dy·x̂ and Σ dy (x̂ = (x − mean)·rstd) into part = [dγ | dβ].
template <typename T>
__device__ __forceinline__ void bn_backward_partials_impl(const T* __restrict__ x, const T* __restrict__ dy, const float* __restrict__ stats,
                                                          float* __restrict__ part, const BnParams& p) {
    __shared__ float red[BN_LANES][BN_TILE];
    const BnChunk b = bn_chunk(p);
    const uint32_t n = p.channels;
    float db = 0.0f, dg = 0.0f, rstd = 0.0f;
    if (b.live) {
        const float mean = stats[b.c];
        rstd = stats[n + b.c];
        for (uint32_t r = b.r0 + threadIdx.y; r < b.r1; r += BN_LANES) {
            const float g = to_f32(dy[(size_t)r * n + b.c]);
            db += g;
            dg += g * (to_f32(x[(size_t)r * n + b.c]) - mean);
        }
    }
    dg = bn_lane_sum(dg, red) * rstd;
    bn_put_partials(b, part, dg, bn_lane_sum(db, red), p);
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

template <typename T>
__device__ __forceinline__ void bn_backward_apply_impl(const T* __restrict__ x, const T* __restrict__ dy, const float* __restrict__ affine,
                                                       const float* __restrict__ stats, const T* __restrict__ extra, T* __restrict__ dx,
                                                       const BnParams& p) {
    const uint32_t n = p.channels;
    const size_t total = (size_t)p.rows * n;
    const float rows = (float)p.rows;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const uint32_t c = i % n;
        const float rstd = stats[n + c];
        const float xhat = (to_f32(x[i]) - stats[c]) * rstd;
        float d = affine[c] * rstd / rows * (rows * to_f32(dy[i]) - stats[5 * n + c] - xhat * stats[4 * n + c]);
        if (p.has_extra) d += to_f32(extra[i]);
        dx[i] = from_f32<T>(d);
    }
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
