// Shared device helpers: dtype conversion and the activations of SPEC §1
// (identity 0, relu 1, silu 2, gelu_erf 3, gelu_tanh 4).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
// Two adjacent 16-bit elements as one 4-byte value, and both widened.
template <typename T> struct Pair;
template <> struct Pair<__half> { using type = __half2; };
template <> struct Pair<__nv_bfloat16> { using type = __nv_bfloat162; };
__device__ __forceinline__ float2 to_f32x2(__half2 x) { return __half22float2(x); }
__device__ __forceinline__ float2 to_f32x2(__nv_bfloat162 x) { return __bfloat1622float2(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// A 16-bit element from its bits.
template <typename T>
__device__ __forceinline__ float bits16_to_f32(uint32_t b);
template <>
__device__ __forceinline__ float bits16_to_f32<__half>(uint32_t b) {
    return __half2float(__ushort_as_half((unsigned short)b));
}
template <>
__device__ __forceinline__ float bits16_to_f32<__nv_bfloat16>(uint32_t b) {
    return __bfloat162float(__ushort_as_bfloat16((unsigned short)b));
}
template <>
__device__ __forceinline__ float bits16_to_f32<float>(uint32_t b) {
    return __uint_as_float(b);
}

// N floats from 16-byte aligned `src`, 4 a load: a lane's per-channel parameters for one 16-byte
// piece of a row (LayerNorm's γ, β; BatchNorm's statistics), where element loads would ask
// floats 4 or 8 apart of every lane (a sector a lane per request, one request a float).
template <uint32_t N>
__device__ __forceinline__ void load_f32s(const float* __restrict__ src, float (&out)[N]) {
    static_assert(N % 4 == 0, "whole float4s");
#pragma unroll
    for (uint32_t c = 0; c < N; c += 4) {
        const float4 f = *reinterpret_cast<const float4*>(src + c);
        out[c] = f.x, out[c + 1] = f.y, out[c + 2] = f.z, out[c + 3] = f.w;
    }
}

// 16 bytes of a row as f32 (eight f16/bf16 or four f32 values), and back.
template <typename T>
__device__ __forceinline__ void unpack16(const uint4 u, float (&out)[16 / sizeof(T)]) {
    if constexpr (sizeof(T) == 4) {
        out[0] = __uint_as_float(u.x), out[1] = __uint_as_float(u.y), out[2] = __uint_as_float(u.z), out[3] = __uint_as_float(u.w);
    } else {
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) out[2 * i] = bits16_to_f32<T>(w[i] & 0xffffu), out[2 * i + 1] = bits16_to_f32<T>(w[i] >> 16);
    }
}
template <typename T>
__device__ __forceinline__ uint4 pack16(const float (&v)[16 / sizeof(T)]) {
    union {
        T h[16 / sizeof(T)];
        uint4 u;
    } pk;
#pragma unroll
    for (uint32_t i = 0; i < 16 / sizeof(T); ++i) pk.h[i] = from_f32<T>(v[i]);
    return pk.u;
}

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

// Dynamic shared memory: the array, and its size in bytes as launched.
#if !defined(FFKERN_EMU)  // scripts/cuda-emu/emu.h supplies these and the mma helpers on the host
#define FFKERN_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
__device__ __forceinline__ uint32_t dynamic_smem_bytes() {
    uint32_t have;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(have));
    return have;
}

// Tensor-core helpers (sm_80+): 16-byte cp.async (zero-filled past src_bytes), ldmatrix and
// mma.sync.m16n8k16 with f32 accumulation.
namespace mma {
__device__ __forceinline__ uint32_t smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
// The same with each 8×8 matrix transposed.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

template <typename T> __device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void mma16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
}  // namespace mma
#endif
