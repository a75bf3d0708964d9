// Graph message passing primitives (SPEC §6): gather_rows, segment_reduce, spmm (multi-head),
// sddmm, segment softmax and its backward.
// Why it is deterministic and fast enough: one thread per output element walks its destination
// row's edges in the fixed CSR order — no atomics, and the threads of a warp read neighbouring
// columns of the same source row (coalesced). The per-edge kernels take one thread per
// (node, head) and write each of the row's edges once. Index arrays arrive as raw 32-bit words
// in one buffer: row_ptr [N + 1] | src [E] | perm [E] | src_coo [E] | dst_coo [E].
#include "common.cuh"

struct GraphParams {
    uint32_t num_nodes, num_edges, dim, reduce, has_weight, heads;
    float eps;
    uint32_t has_y;
};

struct Csr {
    const uint32_t *row_ptr, *src, *perm, *src_coo, *dst_coo;
    __device__ Csr(const uint32_t* idx, const GraphParams& p)
        : row_ptr(idx), src(idx + p.num_nodes + 1), perm(idx + p.num_nodes + 1 + p.num_edges),
          src_coo(idx + p.num_nodes + 1 + 2 * (size_t)p.num_edges), dst_coo(idx + p.num_nodes + 1 + 3 * (size_t)p.num_edges) {}
};

#define GRID_STRIDE(i, total) for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (total); i += (size_t)gridDim.x * blockDim.x)

// out[e, h, :] = w[e, h]·X[src_coo[e], h, :] (w optional)
template <typename T>
__device__ __forceinline__ void gather_impl(const uint32_t* idx, const T* __restrict__ x, const float* __restrict__ w, T* __restrict__ out,
                                            const GraphParams& p) {
    const Csr g(idx, p);
    const uint32_t dh = p.dim / p.heads;
    GRID_STRIDE(i, (size_t)p.num_edges * p.dim) {
        const size_t e = i / p.dim, d = i % p.dim;
        const float xv = to_f32(x[(size_t)g.src_coo[e] * p.dim + d]);
        out[i] = from_f32<T>(p.has_weight ? w[e * p.heads + d / dh] * xv : xv);
    }
}

// out[e, h] = ⟨x[e, h, :], y[e, h, :]⟩ over edge features (f32).
template <typename T>
__device__ __forceinline__ void edge_dot_impl(const T* __restrict__ x, const T* __restrict__ y, float* __restrict__ out, const GraphParams& p) {
    const uint32_t dh = p.dim / p.heads;
    GRID_STRIDE(t, (size_t)p.num_edges * p.heads) {
        const size_t base = (t / p.heads) * p.dim + (t % p.heads) * dh;
        float acc = 0.0f;
        for (uint32_t k = 0; k < dh; ++k) acc += to_f32(x[base + k]) * to_f32(y[base + k]);
        out[t] = acc;
    }
}

// out[i, d] = reduce over row i of M[perm[q], d] (weighted by w[e, h] if given); max/min keep
// the first (COO order) arg.
template <typename T>
__device__ __forceinline__ void segment_reduce_impl(const uint32_t* idx, const T* __restrict__ m, const float* __restrict__ w, T* __restrict__ out,
                                                    uint32_t* __restrict__ arg, const GraphParams& p) {
    const Csr g(idx, p);
    const uint32_t dh = p.dim / p.heads;
    GRID_STRIDE(i, (size_t)p.num_nodes * p.dim) {
        const size_t row = i / p.dim, d = i % p.dim;
        const uint32_t lo = g.row_ptr[row], hi = g.row_ptr[row + 1];
        float acc = 0.0f;
        uint32_t best = p.num_edges;
        for (uint32_t q = lo; q < hi; ++q) {
            const uint32_t e = g.perm[q];
            const float mv = to_f32(m[(size_t)e * p.dim + d]);
            const float v = p.has_weight ? w[(size_t)e * p.heads + d / dh] * mv : mv;
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

// Y[i, h, :] = Σ_{q ∈ row i} w[perm[q], h]·X[src[q], h, :]
template <typename T>
__device__ __forceinline__ void spmm_impl(const uint32_t* idx, const T* __restrict__ x, const float* __restrict__ w, T* __restrict__ out,
                                          const GraphParams& p) {
    const Csr g(idx, p);
    const uint32_t dh = p.dim / p.heads;
    GRID_STRIDE(i, (size_t)p.num_nodes * p.dim) {
        const size_t row = i / p.dim, d = i % p.dim;
        const uint32_t h = (uint32_t)d / dh;
        float acc = 0.0f;
        for (uint32_t q = g.row_ptr[row]; q < g.row_ptr[row + 1]; ++q) {
            const float xv = to_f32(x[(size_t)g.src[q] * p.dim + d]);
            acc += p.has_weight ? w[(size_t)g.perm[q] * p.heads + h] * xv : xv;
        }
        out[i] = from_f32<T>(acc);
    }
}

// s[e, h] = ⟨A[dst e, h, :], B[src e, h, :]⟩ (f32, COO order), one thread per (node, head).
template <typename T>
__device__ __forceinline__ void sddmm_impl(const uint32_t* idx, const T* __restrict__ a, const T* __restrict__ b, float* __restrict__ s,
                                           const GraphParams& p) {
    const Csr g(idx, p);
    const uint32_t dh = p.dim / p.heads;
    GRID_STRIDE(t, (size_t)p.num_nodes * p.heads) {
        const size_t i = t / p.heads, h = t % p.heads;
        const T* ai = a + i * p.dim + h * dh;
        for (uint32_t q = g.row_ptr[i]; q < g.row_ptr[i + 1]; ++q) {
            const T* bj = b + (size_t)g.src[q] * p.dim + h * dh;
            float acc = 0.0f;
            for (uint32_t k = 0; k < dh; ++k) acc += to_f32(ai[k]) * to_f32(bj[k]);
            s[(size_t)g.perm[q] * p.heads + h] = acc;
        }
    }
}

// Max-subtracted softmax over the edges into each node, per head (f32, COO order).
__device__ __forceinline__ void softmax_impl(const uint32_t* idx, const float* __restrict__ s, float* __restrict__ out, const GraphParams& p) {
    const Csr g(idx, p);
    GRID_STRIDE(t, (size_t)p.num_nodes * p.heads) {
        const size_t i = t / p.heads, h = t % p.heads;
        const uint32_t lo = g.row_ptr[i], hi = g.row_ptr[i + 1];
        float mx = -3.4028235e38f, sum = 0.0f;
        for (uint32_t q = lo; q < hi; ++q) mx = fmaxf(mx, s[(size_t)g.perm[q] * p.heads + h]);
        for (uint32_t q = lo; q < hi; ++q) sum += expf(s[(size_t)g.perm[q] * p.heads + h] - mx);
        for (uint32_t q = lo; q < hi; ++q) {
            const size_t e = (size_t)g.perm[q] * p.heads + h;
            out[e] = expf(s[e] - mx) / sum;
        }
    }
}

// ds = α·(dα − Σ_row α·dα), per head.
__device__ __forceinline__ void softmax_backward_impl(const uint32_t* idx, const float* __restrict__ alpha, const float* __restrict__ d_alpha,
                                                      float* __restrict__ out, const GraphParams& p) {
    const Csr g(idx, p);
    GRID_STRIDE(t, (size_t)p.num_nodes * p.heads) {
        const size_t i = t / p.heads, h = t % p.heads;
        const uint32_t lo = g.row_ptr[i], hi = g.row_ptr[i + 1];
        float dot = 0.0f;
        for (uint32_t q = lo; q < hi; ++q) {
            const size_t e = (size_t)g.perm[q] * p.heads + h;
            dot += alpha[e] * d_alpha[e];
        }
        for (uint32_t q = lo; q < hi; ++q) {
            const size_t e = (size_t)g.perm[q] * p.heads + h;
            out[e] = alpha[e] * (d_alpha[e] - dot);
        }
    }
}

// The edge MLP's "concat trick": m[e, d] = act(Ee[e, d] + P[src e, d] + P[dst e, D + d]) with
// P = [H·W_sᵀ | H·W_dᵀ] computed per node, so the [E, 3D] concatenation never exists.
template <typename T>
__device__ __forceinline__ void edge_combine_impl(const uint32_t* idx, const T* __restrict__ ee, const T* __restrict__ pn, T* __restrict__ m,
                                                  const GraphParams& p) {
    const Csr g(idx, p);
    GRID_STRIDE(i, (size_t)p.num_edges * p.dim) {
        const size_t e = i / p.dim, d = i % p.dim, w = 2 * (size_t)p.dim;
        const float z = to_f32(ee[i]) + to_f32(pn[g.src_coo[e] * w + d]) + to_f32(pn[g.dst_coo[e] * w + p.dim + d]);
        m[i] = from_f32<T>(act_eval(p.reduce, z));
    }
}

// LayerNorm (SPEC §6): one block per row reduces in shared memory (two passes: the variance
// of x − μ); the parameter gradients take one thread per column summing its rows in order.
__device__ __forceinline__ float block_sum(float v, float* red) {
    red[threadIdx.x] = v;
    __syncthreads();
    for (uint32_t s = 128; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    const float r = red[0];
    __syncthreads();
    return r;
}

template <typename T>
__device__ __forceinline__ void ln_forward_impl(const T* __restrict__ x, const float* __restrict__ affine, T* __restrict__ y,
                                                float* __restrict__ stats, const GraphParams& p) {
    __shared__ float red[256];
    const float *gamma = affine, *beta = affine + p.dim;
    for (size_t r = blockIdx.x; r < p.num_nodes; r += gridDim.x) {
        const T* xr = x + r * p.dim;
        float acc = 0.0f;
        for (uint32_t k = threadIdx.x; k < p.dim; k += 256) acc += to_f32(xr[k]);
        const float mu = block_sum(acc, red) / (float)p.dim;
        acc = 0.0f;
        for (uint32_t k = threadIdx.x; k < p.dim; k += 256) {
            const float c = to_f32(xr[k]) - mu;
            acc += c * c;
        }
        const float rs = rsqrtf(block_sum(acc, red) / (float)p.dim + p.eps);
        for (uint32_t k = threadIdx.x; k < p.dim; k += 256) y[r * p.dim + k] = from_f32<T>((to_f32(xr[k]) - mu) * rs * gamma[k] + beta[k]);
        if (threadIdx.x == 0) {
            stats[r] = mu;
            stats[p.num_nodes + r] = rs;
        }
    }
}

template <typename T>
__device__ __forceinline__ void ln_backward_impl(const T* __restrict__ x, const T* __restrict__ dy, const float* __restrict__ gamma,
                                                 const float* __restrict__ stats, T* __restrict__ dx, const GraphParams& p) {
    __shared__ float red[256];
    for (size_t r = blockIdx.x; r < p.num_nodes; r += gridDim.x) {
        const size_t base = r * p.dim;
        const float mu = stats[r], rs = stats[p.num_nodes + r];
        float a = 0.0f, b = 0.0f;
        for (uint32_t k = threadIdx.x; k < p.dim; k += 256) {
            const float g = to_f32(dy[base + k]) * gamma[k];
            a += g;
            b += g * (to_f32(x[base + k]) - mu) * rs;
        }
        const float mg = block_sum(a, red) / (float)p.dim, mgx = block_sum(b, red) / (float)p.dim;
        for (uint32_t k = threadIdx.x; k < p.dim; k += 256) {
            const float xhat = (to_f32(x[base + k]) - mu) * rs;
            dx[base + k] = from_f32<T>(rs * (to_f32(dy[base + k]) * gamma[k] - mg - xhat * mgx));
        }
    }
}

template <typename T>
__device__ __forceinline__ void ln_params_impl(const T* __restrict__ x, const T* __restrict__ dy, const float* __restrict__ stats,
                                               float* __restrict__ out, const GraphParams& p) {
    GRID_STRIDE(k, p.dim) {
        float dg = 0.0f, db = 0.0f;
        for (size_t r = 0; r < p.num_nodes; ++r) {
            const float d = to_f32(dy[r * p.dim + k]);
            dg += d * (to_f32(x[r * p.dim + k]) - stats[r]) * stats[p.num_nodes + r];
            db += d;
        }
        out[k] = dg;
        out[p.dim + k] = db;
    }
}

// Row-wise helpers of the OneForecast layer (gate, residuals, casts): one thread per element,
// rows of `dim` over `num_nodes` rows, no graph.
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + __expf(-fmaxf(x, -80.0f))); }

// out = act(s·x + y), s = w[row] if has_weight, y if has_y.
template <typename T>
__device__ __forceinline__ void scale_add_impl(const T* __restrict__ x, const T* __restrict__ y, const float* __restrict__ w, T* __restrict__ out,
                                               const GraphParams& p) {
    GRID_STRIDE(i, (size_t)p.num_nodes * p.dim) {
        float z = to_f32(x[i]);
        if (p.has_weight) z *= w[i / p.dim];
        if (p.has_y) z += to_f32(y[i]);
        out[i] = from_f32<T>(act_eval(p.reduce, z));
    }
}

// g[r] = mean_k σ(x[r, k]) (f32), one thread per row.
template <typename T>
__device__ __forceinline__ void gate_mean_impl(const T* __restrict__ x, float* __restrict__ out, const GraphParams& p) {
    GRID_STRIDE(r, (size_t)p.num_nodes) {
        float acc = 0.0f;
        for (uint32_t k = 0; k < p.dim; ++k) acc += sigmoid(to_f32(x[r * p.dim + k]));
        out[r] = acc / (float)p.dim;
    }
}

// d logit = dg[r] / dim · σ'(logit)
template <typename T>
__device__ __forceinline__ void gate_backward_impl(const T* __restrict__ x, const float* __restrict__ dg, T* __restrict__ out, const GraphParams& p) {
    GRID_STRIDE(i, (size_t)p.num_nodes * p.dim) {
        const float s = sigmoid(to_f32(x[i]));
        out[i] = from_f32<T>(dg[i / p.dim] / (float)p.dim * s * (1.0f - s));
    }
}

template <typename T>
__device__ __forceinline__ void to_f32_impl(const T* __restrict__ x, float* __restrict__ out, const GraphParams& p) {
    GRID_STRIDE(i, (size_t)p.num_nodes * p.dim) out[i] = to_f32(x[i]);
}

template <typename T>
__device__ __forceinline__ void from_f32_impl(const float* __restrict__ v, T* __restrict__ out, const GraphParams& p) {
    GRID_STRIDE(i, (size_t)p.num_nodes * p.dim) out[i] = from_f32<T>(v[i]);
}

#define GRAPH_ENTRIES(SUFFIX, T)                                                                                           \
    extern "C" __global__ void __launch_bounds__(256) graph_gather_##SUFFIX(const uint32_t* idx, const T* x, const float* w, T* out, GraphParams p) { \
        gather_impl<T>(idx, x, w, out, p);                                                                                    \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_segment_reduce_##SUFFIX(const uint32_t* idx, const T* m, const float* w, T* out, uint32_t* arg, GraphParams p) { \
        segment_reduce_impl<T>(idx, m, w, out, arg, p);                                                                       \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_spmm_##SUFFIX(const uint32_t* idx, const T* x, const float* w, T* out, GraphParams p) {                    \
        spmm_impl<T>(idx, x, w, out, p);                                                                                   \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_sddmm_##SUFFIX(const uint32_t* idx, const T* a, const T* b, float* s, GraphParams p) {                      \
        sddmm_impl<T>(idx, a, b, s, p);                                                                                    \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_edge_combine_##SUFFIX(const uint32_t* idx, const T* ee, const T* pn, T* m, GraphParams p) {                  \
        edge_combine_impl<T>(idx, ee, pn, m, p);                                                                           \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_edge_dot_##SUFFIX(const T* x, const T* y, float* out, GraphParams p) {                                       \
        edge_dot_impl<T>(x, y, out, p);                                                                                    \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) graph_ln_forward_##SUFFIX(                                           \
        const T* x, const float* affine, T* y, float* stats, GraphParams p) {                                              \
        ln_forward_impl<T>(x, affine, y, stats, p);                                                                        \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) graph_ln_backward_##SUFFIX(                                          \
        const T* x, const T* dy, const float* gamma, const float* stats, T* dx, GraphParams p) {                           \
        ln_backward_impl<T>(x, dy, gamma, stats, dx, p);                                                                   \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_ln_params_##SUFFIX(const T* x, const T* dy, const float* stats, float* out, GraphParams p) {                \
        ln_params_impl<T>(x, dy, stats, out, p);                                                                           \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_scale_add_##SUFFIX(const T* x, const T* y, const float* w, T* out, GraphParams p) {                          \
        scale_add_impl<T>(x, y, w, out, p);                                                                                \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) graph_gate_mean_##SUFFIX(const T* x, float* out, GraphParams p) {   \
        gate_mean_impl<T>(x, out, p);                                                                                      \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_gate_backward_##SUFFIX(const T* x, const float* dg, T* out, GraphParams p) {                                 \
        gate_backward_impl<T>(x, dg, out, p);                                                                              \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) graph_to_f32_##SUFFIX(const T* x, float* out, GraphParams p) {       \
        to_f32_impl<T>(x, out, p);                                                                                         \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) graph_from_f32_##SUFFIX(const float* v, T* out, GraphParams p) {     \
        from_f32_impl<T>(v, out, p);                                                                                       \
    }
#if !defined(FFKERN_SM90A)
GRAPH_ENTRIES(f32, float)
GRAPH_ENTRIES(f16, __half)
GRAPH_ENTRIES(bf16, __nv_bfloat16)
extern "C" __global__ void __launch_bounds__(256) graph_softmax(const uint32_t* idx, const float* s, float* out, GraphParams p) {
    softmax_impl(idx, s, out, p);
}
extern "C" __global__ void __launch_bounds__(256)
    graph_softmax_backward(const uint32_t* idx, const float* alpha, const float* d_alpha, float* out, GraphParams p) {
    softmax_backward_impl(idx, alpha, d_alpha, out, p);
}
#endif
