// BatchNorm over tokens (the RePaViT FFN's norm, SPEC §3): per-channel statistics, the affine
// apply, and the backward. Activations are f32/f16/bf16; parameters and statistics are f32.
// Why it is fast enough: every pass reads the activations once with consecutive threads on
// consecutive channels (coalesced rows); the per-channel reductions run in row order (fixed,
// deterministic, no atomics) and the element-wise passes are grid-stride loops.
#include "common.cuh"

struct BnParams {
    uint32_t rows, channels, train, has_extra;
    float eps, momentum;
    uint32_t pad0, pad1;
};

// stats = [mean | rstd | scale | shift | dgamma | dbeta], C floats each; affine = [gamma | beta].
template <typename T>
__device__ __forceinline__ void bn_prepare_impl(const T* __restrict__ x, const float* __restrict__ affine, float* running_mean,
                                                float* running_var, float* __restrict__ stats, const BnParams& p) {
    const uint32_t n = p.channels;
    const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n) return;
    float mean = running_mean[c], var = running_var[c];
    if (p.train) {
        float s = 0.0f;
        for (uint32_t r = 0; r < p.rows; ++r) s += to_f32(x[(size_t)r * n + c]);
        mean = s / (float)p.rows;
        float q = 0.0f;
        for (uint32_t r = 0; r < p.rows; ++r) {
            const float d = to_f32(x[(size_t)r * n + c]) - mean;
            q += d * d;
        }
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

template <typename T>
__device__ __forceinline__ void bn_apply_impl(const T* __restrict__ x, const float* __restrict__ stats, T* __restrict__ y, const BnParams& p) {
    const size_t total = (size_t)p.rows * p.channels;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const uint32_t c = i % p.channels;
        y[i] = from_f32<T>(to_f32(x[i]) * stats[2 * p.channels + c] + stats[3 * p.channels + c]);
    }
}

template <typename T>
__device__ __forceinline__ void bn_backward_reduce_impl(const T* __restrict__ x, const T* __restrict__ dy, float* __restrict__ stats, const BnParams& p) {
    const uint32_t n = p.channels;
    const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n) return;
    const float mean = stats[c], rstd = stats[n + c];
    float db = 0.0f, dg = 0.0f;
    for (uint32_t r = 0; r < p.rows; ++r) {
        const float g = to_f32(dy[(size_t)r * n + c]);
        db += g;
        dg += g * (to_f32(x[(size_t)r * n + c]) - mean) * rstd;
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
    extern "C" __global__ void bn_prepare_##SUFFIX(const T* x, const float* affine, float* rm, float* rv, float* stats,    \
                                                   BnParams p) {                                                           \
        bn_prepare_impl<T>(x, affine, rm, rv, stats, p);                                                                   \
    }                                                                                                                      \
    extern "C" __global__ void bn_apply_##SUFFIX(const T* x, const float* stats, T* y, BnParams p) {                       \
        bn_apply_impl<T>(x, stats, y, p);                                                                                  \
    }                                                                                                                      \
    extern "C" __global__ void bn_backward_reduce_##SUFFIX(const T* x, const T* dy, float* stats, BnParams p) {            \
        bn_backward_reduce_impl<T>(x, dy, stats, p);                                                                       \
    }                                                                                                                      \
    extern "C" __global__ void bn_backward_apply_##SUFFIX(const T* x, const T* dy, const float* affine, const float* stats, \
                                                          const T* extra, T* dx, BnParams p) {                              \
        bn_backward_apply_impl<T>(x, dy, affine, stats, extra, dx, p);                                                     \
    }
#if !defined(FFKERN_SM90A)
BN_ENTRIES(f32, float)
BN_ENTRIES(f16, __half)
BN_ENTRIES(bf16, __nv_bfloat16)
#endif
