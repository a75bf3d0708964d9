// The CUDA C++ that kernels/*.cu use, on the host: force-included (g++ -include emu.h
// -DFFKERN_EMU) before each kernel file by scripts/cuda-emu/build.sh. A block's threads are fibers
// of one OS thread; __syncthreads and the warp collectives (shuffles, votes, ldmatrix, mma.sync)
// yield to a scheduler (emu.cpp) that releases them when every live participant has arrived, so
// a kernel that would deadlock or read a lane that never came stops with a message instead.
// Fragment layouts are the PTX ISA's (the same tables as scripts/check_mma_layouts.py).
#pragma once
#include <cstdio>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline)) inline
#define __launch_bounds__(...)
// One block runs at a time, so a function's static locals are exactly its block's shared memory.
// build.sh gathers them into one section per kernel file (EMU_SHARED_SECTION), which emu.cpp
// fills with NaN before each block, as it does the dynamic shared memory.
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    uint32_t x = 1, y = 1, z = 1;
};
struct alignas(8) uint2 {
    uint32_t x, y;
};
struct alignas(16) uint4 {
    uint32_t x, y, z, w;
};
struct alignas(8) int2 {
    int32_t x, y;
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
inline uint2 make_uint2(uint32_t x, uint32_t y) { return {x, y}; }
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
inline int2 make_int2(int32_t x, int32_t y) { return {x, y}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// ---- 16-bit floats (bits only; every use converts through f32) ----
struct __half {
    uint16_t x;
};
struct __nv_bfloat16 {
    uint16_t x;
};
struct alignas(4) __half2 {
    __half x, y;
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
inline float __uint_as_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint32_t __float_as_uint(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __int_as_float(int32_t u) { return __uint_as_float((uint32_t)u); }
inline int32_t __float_as_int(float f) { return (int32_t)__float_as_uint(f); }
inline float __half2float(__half h) {
    const uint32_t s = (uint32_t)(h.x & 0x8000) << 16, e = (h.x >> 10) & 0x1f, m = h.x & 0x3ff;
    if (e == 0x1f) return __uint_as_float(s | 0x7f800000u | (m << 13));
    if (e == 0) return (s ? -1.0f : 1.0f) * std::ldexp((float)m, -24);
    return __uint_as_float(s | ((e + 112) << 23) | (m << 13));
}
// Round to nearest even, subnormals and overflow to infinity as the hardware's cvt.rn.f16.f32.
inline __half __float2half_rn(float f) {
    const uint32_t u = __float_as_uint(f), s = (u >> 16) & 0x8000;
    const float a = std::fabs(f);
    if (std::isnan(f)) return {(uint16_t)(s | 0x7e00)};
    if (a >= 65520.0f) return {(uint16_t)(s | 0x7c00)};
    if (a < 6.103515625e-05f) {  // subnormal: a multiple of 2^-24, rounded to nearest even
        const float q = std::nearbyint(std::ldexp(a, 24));
        return {(uint16_t)(s | (uint32_t)q)};
    }
    const uint32_t au = u & 0x7fffffffu;
    uint32_t r = au + 0xfffu + ((au >> 13) & 1u);
    r >>= 13;
    return {(uint16_t)(s | (r - (112u << 10)))};
}
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float((uint32_t)h.x << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    const uint32_t u = __float_as_uint(f);
    if (std::isnan(f)) return {(uint16_t)((u >> 16) | 0x40)};
    return {(uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
inline __half __ushort_as_half(unsigned short b) { return {b}; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return {b}; }
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {__bfloat162float(h.x), __bfloat162float(h.y)}; }

// ---- arithmetic intrinsics ----
inline float __expf(float x) { return expf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline void sincospif(float x, float* s, float* c) {
    const double a = 3.14159265358979323846 * (double)x;
    *s = (float)std::sin(a), *c = (float)std::cos(a);
}
inline float __fdividef(float a, float b) { return a / b; }
inline uint32_t __umulhi(uint32_t a, uint32_t b) { return (uint32_t)(((uint64_t)a * b) >> 32); }
inline int __popc(uint32_t x) { return __builtin_popcount(x); }
inline int __ffs(uint32_t x) { return __builtin_ffs((int)x); }
inline int __clz(uint32_t x) { return x ? __builtin_clz(x) : 32; }
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    return (C)a < (C)b ? (C)a : (C)b;
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    return (C)a < (C)b ? (C)b : (C)a;
}

// ---- the runtime (emu.cpp) ----
namespace emu {
struct Coll;  // one lane's part of a warp collective
struct Thread {
    dim3 tid;
};
extern Thread* cur;
extern dim3 block_idx, block_dim, grid_dim;
extern unsigned char* dyn_smem;
extern uint32_t dyn_smem_bytes;
void syncthreads();
[[noreturn]] void trap(const char* what);
enum Kind : uint32_t { SHFL_IDX, SHFL_XOR, SHFL_DOWN, SHFL_UP, MATCH_ANY, BALLOT, ANY, ALL, ACTIVEMASK, SYNCWARP, LDMATRIX, LDMATRIX_T, MMA_F16, MMA_BF16, MMA_TF32 };
struct Coll {
    Kind kind;
    uint32_t mask;
    uint64_t value;  // shuffled bits, matched value or predicate; an address for ldmatrix
    int32_t arg;     // source lane, lane mask or delta
    int32_t width;
    uint32_t a[4], b[2];
    float c[4];
    uint64_t result;
    uint32_t r[4];
    float d[4];
};
void collective(Coll& c);
// A kernel file's static shared memory: [begin, end) of its section.
struct SharedSection {
    unsigned char *begin, *end;
};
// cp.async: copies queued in commit groups, done when a wait lets them (not earlier), so a read
// of a stage before its wait sees the poison or the previous stage.
void cp_async(void* dst, const void* src, int src_bytes);
void cp_commit();
void cp_wait(int pending);
// A shared-memory read that the kernel makes through the emulator (ldmatrix), for the memory
// profile of a CUDA_EMU_PROFILE build (nothing otherwise).
void note_shared_read(const void* p, uint32_t size);
// Hopper (sm_90a). Shared memory by 32-bit address, as the kernels pass it to PTX: the dynamic
// shared memory from 0, the kernel file's static shared memory from STATIC_SMEM.
constexpr uint32_t STATIC_SMEM = 1u << 20;
uint32_t smem_addr(const void* p);
// mbarrier: phases complete when every expected arrival came and every byte of the
// transactions announced to it (expect_tx) has landed; a wait returns once the phase of the
// given parity has completed, and blocks (never spins) until then.
void mbar_init(uint32_t bar, uint32_t count);
void mbar_arrive(uint32_t bar, uint32_t expect_tx_bytes);
bool mbar_wait(uint32_t bar, uint32_t parity);
void named_barrier(uint32_t id, uint32_t threads);
// setmaxnreg: the block starts with each thread at the registers its launch bounds allow (65536
// over the threads, down to a multiple of 8; what ptxas gives a kernel that uses setmaxnreg), and
// the pool is never more: a dec returns registers to it, an inc blocks until the pool holds what
// it asks — for ever, as on the GPU, where the warpgroups ask for more than the block has.
void setmaxnreg(uint32_t regs, bool inc);
// cp.async.bulk.tensor: queued, and landed (with its bytes counted on `bar`) only when every
// thread of the block has blocked, so that what a thread reads before its wait is stale.
void tma_load(uint32_t dst, const void* map, const int* coords, int rank, uint32_t bar);
// wgmma.mma_async m64nNk16 (f32 accumulators, A and B K-major in shared memory by descriptor):
// each thread's part of D, done when a wgmma.wait_group retires its commit group, reading the
// shared memory then — a stage handed back too early shows as the next stage's data.
enum WgmmaType : uint32_t { WG_F16, WG_BF16 };
void wgmma(float* d, uint32_t n, uint64_t desc_a, uint64_t desc_b, WgmmaType type);
void wgmma_commit();
void wgmma_wait(int pending);
}  // namespace emu
#define threadIdx (emu::cur->tid)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
inline void __syncthreads() { emu::syncthreads(); }
inline void __trap() { emu::trap("__trap"); }

template <typename T>
inline T emu_shfl(emu::Kind k, uint32_t mask, T v, int arg, int width) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    emu::Coll c{};
    c.kind = k, c.mask = mask, c.arg = arg, c.width = width;
    std::memcpy(&c.value, &v, sizeof(T));
    emu::collective(c);
    T out;
    std::memcpy(&out, &c.result, sizeof(T));
    return out;
}
template <typename T> inline T __shfl_sync(uint32_t m, T v, int src, int w = 32) { return emu_shfl(emu::SHFL_IDX, m, v, src, w); }
template <typename T> inline T __shfl_xor_sync(uint32_t m, T v, int lm, int w = 32) { return emu_shfl(emu::SHFL_XOR, m, v, lm, w); }
template <typename T> inline T __shfl_down_sync(uint32_t m, T v, unsigned d, int w = 32) { return emu_shfl(emu::SHFL_DOWN, m, v, (int)d, w); }
template <typename T> inline T __shfl_up_sync(uint32_t m, T v, unsigned d, int w = 32) { return emu_shfl(emu::SHFL_UP, m, v, (int)d, w); }
inline uint32_t emu_vote(emu::Kind k, uint32_t mask, uint64_t v) {
    emu::Coll c{};
    c.kind = k, c.mask = mask, c.value = v;
    emu::collective(c);
    return (uint32_t)c.result;
}
template <typename T> inline uint32_t __match_any_sync(uint32_t m, T v) { return emu_vote(emu::MATCH_ANY, m, (uint64_t)v); }
inline uint32_t __ballot_sync(uint32_t m, int p) { return emu_vote(emu::BALLOT, m, p != 0); }
inline int __any_sync(uint32_t m, int p) { return (int)emu_vote(emu::ANY, m, p != 0); }
inline int __all_sync(uint32_t m, int p) { return (int)emu_vote(emu::ALL, m, p != 0); }
inline uint32_t __activemask() { return emu_vote(emu::ACTIVEMASK, 0xffffffffu, 0); }
inline void __syncwarp(uint32_t m = 0xffffffffu) { emu_vote(emu::SYNCWARP, m, 0); }
// Blocks run one after another and a block's threads switch only at barriers and collectives,
// so global atomics are plain read-modify-writes and fences order nothing further. A spin on a
// flag (__nanosleep in its loop) that no earlier block or thread raised would wait for ever:
// it stops the run instead.
inline uint32_t atomicAdd(uint32_t* a, uint32_t v) {
    const uint32_t old = *a;
    *a = old + v;
    return old;
}
inline uint32_t atomicExch(uint32_t* a, uint32_t v) {
    const uint32_t old = *a;
    *a = v;
    return old;
}
inline void __threadfence() {}
inline void __nanosleep(uint32_t) { emu::trap("a spin-wait that nothing can end (__nanosleep)"); }
template <typename T> inline T __ldcg(const T* p) { return *p; }

// ---- what common.cuh and linattn.cu take from inline PTX ----
#define FFKERN_DYNAMIC_SMEM(name) unsigned char* const name = emu::dyn_smem
inline uint32_t dynamic_smem_bytes() { return emu::dyn_smem_bytes; }
namespace mma {
__attribute__((always_inline)) inline void cp_async16(void* dst, const void* src, int src_bytes) { emu::cp_async(dst, src, src_bytes); }
inline void cp_async_commit() { emu::cp_commit(); }
template <int N> inline void cp_async_wait() { emu::cp_wait(N); }
__attribute__((always_inline)) inline void emu_ldmatrix(emu::Kind k, uint32_t (&r)[4], const void* p) {
    emu::note_shared_read(p, 16);  // for the memory profile: each lane's 16-byte row
    emu::Coll c{};
    c.kind = k, c.mask = 0xffffffffu, c.value = (uint64_t)(uintptr_t)p;
    emu::collective(c);
    for (int i = 0; i < 4; ++i) r[i] = c.r[i];
}
__attribute__((always_inline)) inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) { emu_ldmatrix(emu::LDMATRIX, r, p); }
__attribute__((always_inline)) inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) { emu_ldmatrix(emu::LDMATRIX_T, r, p); }
inline void emu_mma(emu::Kind k, float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    emu::Coll c{};
    c.kind = k, c.mask = 0xffffffffu;
    for (int i = 0; i < 4; ++i) c.a[i] = a[i], c.c[i] = d[i];
    c.b[0] = b0, c.b[1] = b1;
    emu::collective(c);
    for (int i = 0; i < 4; ++i) d[i] = c.d[i];
}
template <typename T> inline void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    emu_mma(std::is_same_v<T, __half> ? emu::MMA_F16 : emu::MMA_BF16, d, a, b0, b1);
}
inline uint32_t smem_addr(const void* p) { return emu::smem_addr(p); }
}  // namespace mma
// cvt.rna.tf32.f32: 10 mantissa bits, ties away from zero.
inline uint32_t tf32(float x) {
    const uint32_t u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;
    return (u + 0x1000u) & 0xffffe000u;
}
inline void mma_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) { mma::emu_mma(emu::MMA_TF32, c, a, b0, b1); }

// ---- Hopper: what gemm.cu's sm_90a kernels take from inline PTX (CUDA_EMU_SM=90) ----
#define __grid_constant__
struct alignas(64) CUtensorMap {
    uint64_t opaque[16];
};
#if defined(FFKERN_SM90A)
namespace hopper {
template <typename T> inline void wgmma_m64n256k16(float (&d)[128], uint64_t da, uint64_t db) {
    emu::wgmma(d, 256, da, db, std::is_same_v<T, __half> ? emu::WG_F16 : emu::WG_BF16);
}
inline void wgmma_fence() {}
inline void wgmma_commit() { emu::wgmma_commit(); }
template <int N> inline void wgmma_wait() { emu::wgmma_wait(N); }
inline void mbar_init(uint32_t bar, uint32_t count) { emu::mbar_init(bar, count); }
inline bool mbar_try_wait(uint32_t bar, uint32_t parity) { return emu::mbar_wait(bar, parity); }
inline void mbar_arrive(uint32_t bar) { emu::mbar_arrive(bar, 0); }
inline void mbar_expect_tx(uint32_t bar, uint32_t bytes) { emu::mbar_arrive(bar, bytes); }
inline void tma_load(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, uint32_t bar) {
    const int c[3] = {c0, c1, c2};
    emu::tma_load(dst, map, c, 3, bar);
}
inline void named_barrier(uint32_t id, uint32_t threads) { emu::named_barrier(id, threads); }
inline void fence_mbarrier_init() {}
template <int N> inline void setmaxnreg_dec() { emu::setmaxnreg(N, false); }
template <int N> inline void setmaxnreg_inc() { emu::setmaxnreg(N, true); }
// The special-function unit: subnormals flushed (.ftz); tanh.approx's relative error (about
// 2^-11) as the mantissa cut to 11 bits.
inline float ftz(float x) { return std::fabs(x) < 1.17549435e-38f ? std::copysign(0.0f, x) : x; }
inline float rcp_approx(float x) { return ftz(1.0f / ftz(x)); }
inline float ex2_approx(float x) { return ftz(std::exp2(ftz(x))); }
inline float tanh_approx(float x) { return __uint_as_float(__float_as_uint(std::tanh(x)) & 0xfffff000u); }
}  // namespace hopper
#endif
