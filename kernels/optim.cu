// Noisy optimizers (SPEC §7): Philox4x32-10 noise, the fused SGD/Adam update, the deterministic
// global-norm reduction for clipping, and the raw Philox words/normals.
// Why it is fast: one pass reads each gradient, parameter and state element once (16-byte loads
// where aligned) and writes parameter and state once; the noise is generated in registers — one
// Philox block per thread covers four consecutive elements — instead of being read from memory.
#include "common.cuh"

struct OptimParams {
    uint32_t n, rule, has_momentum, nesterov;
    float lr, wd;
    uint32_t decoupled;
    float mu, sigma;
    uint32_t seed_lo, seed_hi, step;
    float beta1, beta2, eps, bc1, bc2;
    uint32_t clip;
    float max_norm;
    uint32_t base;  // list index of this launch's element 0
};

constexpr uint32_t CHUNK = 2048;  // elements per block of the norm reduction

__device__ __forceinline__ uint4 philox(uint4 c, uint2 k) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        if (r > 0) {
            k.x += 0x9E3779B9u;
            k.y += 0xBB67AE85u;
        }
        const uint32_t hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
        const uint32_t hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
        c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

// Block j of step t (counter (j, 0, t, 0): lists stay under 2^32 elements).
__device__ __forceinline__ uint4 noise_words(const OptimParams& p, uint32_t j) {
    return philox(make_uint4(j, 0u, p.step, 0u), make_uint2(p.seed_lo, p.seed_hi));
}

__device__ __forceinline__ float2 box_muller(uint32_t a, uint32_t b) {
    const float u1 = (float)((a >> 8) + 1u) * (1.0f / 16777216.0f);
    const float r = sqrtf(-2.0f * logf(u1));
    float s, c;
    sincospif((float)(b >> 8) * (1.0f / 8388608.0f), &s, &c);  // angle 2π·(b>>8)/2^24, exact argument
    return make_float2(r * c, r * s);
}

__device__ __forceinline__ float4 normals(const OptimParams& p, uint32_t j) {
    const uint4 w = noise_words(p, j);
    const float2 a = box_muller(w.x, w.y), b = box_muller(w.z, w.w);
    return make_float4(a.x, a.y, b.x, b.y);
}

__device__ __forceinline__ float comp(const float4& v, int e) { return e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w; }

#if !defined(FFKERN_SM90A)
extern "C" __global__ void philox_words(uint32_t* out, OptimParams p) {
    for (uint32_t j = blockIdx.x * blockDim.x + threadIdx.x; j < p.n; j += gridDim.x * blockDim.x)
        reinterpret_cast<uint4*>(out)[j] = noise_words(p, j);
}

extern "C" __global__ void philox_normal(float* out, OptimParams p) {
    for (uint32_t j = blockIdx.x * blockDim.x + threadIdx.x; 4 * j < p.n; j += gridDim.x * blockDim.x) {
        const float4 z = normals(p, j);
#pragma unroll
        for (int e = 0; e < 4; ++e)
            if (4 * j + e < p.n) out[4 * j + e] = comp(z, e);
    }
}

#endif

// Sum of squares of g (clip then noise) or g + σz (noise then clip) over one CHUNK per block,
// in a fixed order: 8 elements per thread, then a fixed tree.
template <typename G>
__device__ __forceinline__ void clip_partial_impl(const G* __restrict__ grad, float* __restrict__ partial, const OptimParams& p) {
    __shared__ float red[256];
    float acc = 0.0f;
#pragma unroll
    for (int b = 0; b < 2; ++b) {
        const uint32_t j = blockIdx.x * (CHUNK / 4) + threadIdx.x * 2 + b;
        if (4 * j < p.n) {
            float4 z = make_float4(0.f, 0.f, 0.f, 0.f);
            if (p.clip == 2 && p.sigma > 0.0f) {
                z = normals(p, j);
                z = make_float4(p.sigma * z.x, p.sigma * z.y, p.sigma * z.z, p.sigma * z.w);
            }
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (4 * j + e < p.n) {
                    const float g = to_f32(grad[4 * j + e]) + comp(z, e);
                    acc += g * g;
                }
        }
    }
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = red[0];
}

#if !defined(FFKERN_SM90A)
// One block: the partials in a fixed order, then scale = min(1, max_norm / (‖g‖ + 1e-6)) at slot `count`.
extern "C" __global__ void clip_final(float* partial, OptimParams p) {
    __shared__ float red[256];
    const uint32_t count = (p.n + CHUNK - 1) / CHUNK;
    float acc = 0.0f;
    for (uint32_t k = threadIdx.x; k < count; k += 256) acc += partial[k];
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[count] = fminf(1.0f, p.max_norm / (sqrtf(red[0]) + 1e-6f));
}
#endif

template <typename G>
__device__ __forceinline__ void update_impl(const G* __restrict__ grad, float* __restrict__ param, float* __restrict__ m,
                                            float* __restrict__ v, const float* __restrict__ scratch, const OptimParams p) {
    // One thread per Philox block of the list (4 consecutive list elements); this launch updates
    // list elements base..base + n, stored at 0..n of its buffers.
    const float scale = p.clip ? scratch[(p.n + CHUNK - 1) / CHUNK] : 1.0f;
    for (uint32_t j = p.base / 4 + blockIdx.x * blockDim.x + threadIdx.x; 4 * j < p.base + p.n; j += gridDim.x * blockDim.x) {
        float4 z = make_float4(0.f, 0.f, 0.f, 0.f);
        if (p.sigma > 0.0f) {
            z = normals(p, j);
            z = make_float4(p.sigma * z.x, p.sigma * z.y, p.sigma * z.z, p.sigma * z.w);
        }
        // Local index of the block's first element (may be "negative" for the first block when
        // base is not a multiple of 4: those elements belong to the previous tensor).
        const int64_t i0 = (int64_t)4 * j - p.base;
        const bool full = p.base % 4 == 0 && i0 >= 0 && i0 + 4 <= p.n;  // 16-byte aligned only then
        // Whole blocks move as 16-byte vectors (arenas are 16-byte aligned, checked by the launcher).
        float w[4], g[4], mm[4] = {0.f, 0.f, 0.f, 0.f}, vv[4] = {0.f, 0.f, 0.f, 0.f};
        if (full) {
            *reinterpret_cast<float4*>(w) = *reinterpret_cast<const float4*>(param + i0);
            if (p.has_momentum) *reinterpret_cast<float4*>(mm) = *reinterpret_cast<const float4*>(m + i0);
            if (p.rule == 1) *reinterpret_cast<float4*>(vv) = *reinterpret_cast<const float4*>(v + i0);
#pragma unroll
            for (int e = 0; e < 4; ++e) g[e] = to_f32(grad[i0 + e]);
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const bool in = i0 + e >= 0 && i0 + e < p.n;
                w[e] = in ? param[i0 + e] : 0.f;
                g[e] = in ? to_f32(grad[i0 + e]) : 0.f;
                if (p.has_momentum) mm[e] = in ? m[i0 + e] : 0.f;
                if (p.rule == 1) vv[e] = in ? v[i0 + e] : 0.f;
            }
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            float ge = g[e];
            if (p.clip == 1) ge = ge * scale + comp(z, e);
            else if (p.clip == 2) ge = (ge + comp(z, e)) * scale;
            else ge = ge + comp(z, e);
            const float w0 = w[e];
            float we = w0;
            if (p.wd > 0.0f) {
                if (p.decoupled) we = we - p.lr * p.wd * w0;
                else ge = ge + p.wd * w0;
            }
            if (p.rule == 0) {
                float d = ge;
                if (p.has_momentum) {
                    const float mv = p.mu * mm[e] + ge;
                    mm[e] = mv;
                    d = p.nesterov ? ge + p.mu * mv : mv;
                }
                we = we - p.lr * d;
            } else {
                const float mv = p.beta1 * mm[e] + (1.0f - p.beta1) * ge;
                const float vv2 = p.beta2 * vv[e] + (1.0f - p.beta2) * ge * ge;
                mm[e] = mv;
                vv[e] = vv2;
                we = we - p.lr * (mv * p.bc1) / (sqrtf(vv2 * p.bc2) + p.eps);
            }
            w[e] = we;
        }
        if (full) {
            *reinterpret_cast<float4*>(param + i0) = *reinterpret_cast<const float4*>(w);
            if (p.has_momentum) *reinterpret_cast<float4*>(m + i0) = *reinterpret_cast<const float4*>(mm);
            if (p.rule == 1) *reinterpret_cast<float4*>(v + i0) = *reinterpret_cast<const float4*>(vv);
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (i0 + e >= 0 && i0 + e < p.n) {
                    param[i0 + e] = w[e];
                    if (p.has_momentum) m[i0 + e] = mm[e];
                    if (p.rule == 1) v[i0 + e] = vv[e];
                }
        }
    }
}

#define OPTIM_ENTRIES(SUFFIX, G)                                                                                           \
    extern "C" __global__ void clip_partial_##SUFFIX(const G* grad, float* partial, OptimParams p) {                        \
        clip_partial_impl<G>(grad, partial, p);                                                                            \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        optim_update_##SUFFIX(const G* grad, float* param, float* m, float* v, const float* scratch, OptimParams p) {       \
        update_impl<G>(grad, param, m, v, scratch, p);                                                                     \
    }
#if !defined(FFKERN_SM90A)
OPTIM_ENTRIES(f32, float)
OPTIM_ENTRIES(f16, __half)
OPTIM_ENTRIES(bf16, __nv_bfloat16)
#endif
