// Graph message passing primitives (SPEC §6): gather_rows, segment_reduce, spmm.
// Why it is deterministic and fast enough: one thread per output element walks its destination
// row's edges in the fixed CSR order — no atomics, and the threads of a warp read neighbouring
// columns of the same source row (coalesced). Index arrays arrive as raw 32-bit words.
#include "common.cuh"

struct GraphParams {
    uint32_t num_nodes, num_edges, dim, reduce, has_weight, pad0, pad1, pad2;
};

// out[e, d] = X[src_coo[e], d]
template <typename T>
__device__ __forceinline__ void gather_impl(const uint32_t* __restrict__ src_coo, const T* __restrict__ x, T* __restrict__ out,
                                            const GraphParams& p) {
    const size_t total = (size_t)p.num_edges * p.dim;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t e = i / p.dim;
        out[i] = x[(size_t)src_coo[e] * p.dim + i % p.dim];
    }
}

// out[i, d] = reduce over row i of M[perm[q], d]; max/min keep the first (COO order) arg.
template <typename T>
__device__ __forceinline__ void segment_reduce_impl(const uint32_t* __restrict__ row_ptr, const uint32_t* __restrict__ perm,
                                                    const T* __restrict__ m, T* __restrict__ out, uint32_t* __restrict__ arg,
                                                    const GraphParams& p) {
    const size_t total = (size_t)p.num_nodes * p.dim;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / p.dim, d = i % p.dim;
        const uint32_t lo = row_ptr[row], hi = row_ptr[row + 1];
        float acc = 0.0f;
        uint32_t best = p.num_edges;
        for (uint32_t q = lo; q < hi; ++q) {
            const uint32_t e = perm[q];
            const float v = to_f32(m[(size_t)e * p.dim + d]);
            if (p.reduce <= 1) {
                acc += v;
            } else if (q == lo || (p.reduce == 2 && v > acc) || (p.reduce == 3 && v < acc)) {
                acc = v;
                best = e;
            }
        }
        if (p.reduce == 1 && hi > lo) acc /= (float)(hi - lo);
        if (p.reduce >= 2) arg[i] = best;
        out[i] = from_f32<T>(acc);
    }
}

// Y[i, d] = Σ_{q ∈ row i} w[perm[q]]·X[src[q], d]
template <typename T>
__device__ __forceinline__ void spmm_impl(const uint32_t* __restrict__ row_ptr, const uint32_t* __restrict__ src,
                                          const uint32_t* __restrict__ perm, const T* __restrict__ x, const float* __restrict__ w,
                                          T* __restrict__ out, const GraphParams& p) {
    const size_t total = (size_t)p.num_nodes * p.dim;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / p.dim, d = i % p.dim;
        float acc = 0.0f;
        for (uint32_t q = row_ptr[row]; q < row_ptr[row + 1]; ++q) {
            const float xv = to_f32(x[(size_t)src[q] * p.dim + d]);
            acc += p.has_weight ? w[perm[q]] * xv : xv;
        }
        out[i] = from_f32<T>(acc);
    }
}

#define GRAPH_ENTRIES(SUFFIX, T)                                                                                           \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_gather_##SUFFIX(const uint32_t* src_coo, const T* x, T* out, GraphParams p) {                               \
        gather_impl<T>(src_coo, x, out, p);                                                                                \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) graph_segment_reduce_##SUFFIX(                                       \
        const uint32_t* row_ptr, const uint32_t* perm, const T* m, T* out, uint32_t* arg, GraphParams p) {                 \
        segment_reduce_impl<T>(row_ptr, perm, m, out, arg, p);                                                             \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) graph_spmm_##SUFFIX(                                                 \
        const uint32_t* row_ptr, const uint32_t* src, const uint32_t* perm, const T* x, const float* w, T* out,             \
        GraphParams p) {                                                                                                   \
        spmm_impl<T>(row_ptr, src, perm, x, w, out, p);                                                                    \
    }
#if !defined(FFKERN_SM90A)
GRAPH_ENTRIES(f32, float)
GRAPH_ENTRIES(f16, __half)
GRAPH_ENTRIES(bf16, __nv_bfloat16)
#endif
