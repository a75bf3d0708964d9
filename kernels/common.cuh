// Shared device helpers: dtype conversion and the activations of SPEC §1
// (identity 0, relu 1, silu 2, gelu_erf 3, gelu_tanh 4).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float act_eval(uint32_t act, float x) {
    switch (act) {
    case 1: return fmaxf(x, 0.0f);
    case 5: return fmaxf(x, 0.2f * x);
    case 2: return x / (1.0f + __expf(-fmaxf(x, -80.0f)));
    case 3: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case 4: return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    default: return x;
    }
}

// Out of line for the epilogues that call it from many unrolled sites (one copy keeps the code
// small); the staged wgmma epilogue inlines act_eval instead.
__device__ __noinline__ float act_apply(uint32_t act, float x) { return act_eval(act, x); }

__device__ __forceinline__ float act_grad_apply(uint32_t act, float x) {
    switch (act) {
    case 1: return x > 0.0f ? 1.0f : 0.0f;
    case 5: return x > 0.0f ? 1.0f : 0.2f;
    case 2: {
        float s = 1.0f / (1.0f + __expf(-fmaxf(x, -80.0f)));
        return s * (1.0f + x * (1.0f - s));
    }
    case 3: return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) + x * __expf(-0.5f * x * x) * 0.39894228040143268f;
    case 4: {
        const float c = 0.79788456080286536f;
        float t = tanhf(c * (x + 0.044715f * x * x * x));
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * c * (1.0f + 3.0f * 0.044715f * x * x);
    }
    default: return 1.0f;
    }
}
