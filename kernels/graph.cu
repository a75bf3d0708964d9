// Graph message passing primitives (SPEC §6): gather_rows, segment_reduce, spmm (multi-head),
// sddmm, segment softmax and its backward.
// Why it is deterministic and fast enough: one thread per output element walks its destination
// row's edges in the fixed CSR order — no atomics, and the threads of a warp read neighbouring
// columns of the same source row (coalesced). Rows longer than p.chunk edges (hubs) are split
// into segments that a first pass reduces in parallel into f32 partials, which the row's thread
// then combines in segment order: a hub costs its share of the edges, and the result is still
// deterministic. The softmax takes per-(node, head) statistics the same way, then writes every
// edge in parallel. Index arrays arrive as raw 32-bit words in one buffer: row_ptr [N + 1] |
// src [E] | perm [E] | src_coo [E] | dst_coo [E] | long_rows [L] | long_seg_ptr [L + 1] |
// seg_long [S].
#include "common.cuh"

struct GraphParams {
    uint32_t num_nodes, num_edges, dim, reduce, has_weight, heads;
    float eps;
    uint32_t has_y, num_long, num_segs, chunk;
    uint32_t folded;  // long rows' partials folded into each row's first segment (seg_fold_impl)
};

struct Csr {
    const uint32_t *row_ptr, *src, *perm, *src_coo, *dst_coo, *long_rows, *long_seg_ptr, *seg_long;
    uint32_t num_long, chunk;
    __device__ Csr(const uint32_t* idx, const GraphParams& p)
        : row_ptr(idx), src(idx + p.num_nodes + 1), perm(idx + p.num_nodes + 1 + p.num_edges),
          src_coo(idx + p.num_nodes + 1 + 2 * (size_t)p.num_edges), dst_coo(idx + p.num_nodes + 1 + 3 * (size_t)p.num_edges),
          long_rows(idx + p.num_nodes + 1 + 4 * (size_t)p.num_edges), long_seg_ptr(long_rows + p.num_long), seg_long(long_seg_ptr + p.num_long + 1),
          num_long(p.num_long), chunk(p.chunk) {}
    // The index of long row `row` in long_rows (ascending).
    __device__ uint32_t find_long(uint32_t row) const {
        uint32_t lo = 0, hi = num_long;
        while (hi - lo > 1) {
            const uint32_t mid = (lo + hi) / 2;
            if (long_rows[mid] <= row) lo = mid; else hi = mid;
        }
        return lo;
    }
    // The CSR range [lo, hi) of segment k.
    __device__ __forceinline__ uint2 seg_range(size_t k) const {
        const uint32_t li = seg_long[k], row = long_rows[li];
        const uint32_t lo = row_ptr[row] + ((uint32_t)k - long_seg_ptr[li]) * chunk;
        return make_uint2(lo, min(lo + chunk, row_ptr[row + 1]));
    }
};

// Up to W consecutive CSR positions lo .. lo + n − 1 of a group of W lanes (W a power of two up
// to 32, the warp's groups side by side; every lane of the warp calls): lane l of the group loads
// position lo + l's edge id and row (the source row for spmm, else the edge's own), once for the
// group, and edge(j) / row(j) broadcast position lo + j's (j < W) to the group by shuffles.
template <bool SPMM>
struct WarpEdges {
    uint32_t e, r, width;
    __device__ __forceinline__ WarpEdges(const Csr& g, uint32_t lo, uint32_t n, uint32_t lane, uint32_t w = 32) : width(w) {
        e = lane < n ? g.perm[lo + lane] : 0u;
        r = SPMM ? (lane < n ? g.src[lo + lane] : 0u) : e;
    }
    __device__ __forceinline__ uint32_t edge(uint32_t j) const { return __shfl_sync(0xffffffffu, e, j, width); }
    __device__ __forceinline__ uint32_t row(uint32_t j) const { return __shfl_sync(0xffffffffu, r, j, width); }
};

// A running reduction and its first arg (max/min). `a` then `b` in CSR order: sums add (spmm
// and reduce 0/1); max/min keep the earlier arg on ties.
struct Acc {
    float v;
    uint32_t arg;
};
__device__ __forceinline__ Acc combine(bool sum, uint32_t reduce, Acc a, Acc b, bool first) {
    if (sum) return {a.v + b.v, a.arg};
    if (first || (reduce == 2 && b.v > a.v) || (reduce == 3 && b.v < a.v)) return b;
    return a;
}

#define GRID_STRIDE(i, total) for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (total); i += (size_t)gridDim.x * blockDim.x)

// Four consecutive elements of a row: one 16-byte (f32) or 8-byte (f16/bf16) load when the row
// width is a multiple of four, otherwise four scalar loads.
template <typename T>
__device__ __forceinline__ void load4(const T* __restrict__ ptr, bool vec, float out[4]) {
    if (vec) {
        if constexpr (sizeof(T) == 4) {
            const float4 f = *reinterpret_cast<const float4*>(ptr);
            out[0] = f.x, out[1] = f.y, out[2] = f.z, out[3] = f.w;
        } else {
            const uint2 u = *reinterpret_cast<const uint2*>(ptr);
            out[0] = bits16_to_f32<T>(u.x & 0xffffu), out[1] = bits16_to_f32<T>(u.x >> 16);
            out[2] = bits16_to_f32<T>(u.y & 0xffffu), out[3] = bits16_to_f32<T>(u.y >> 16);
        }
    } else {
#pragma unroll
        for (int c = 0; c < 4; ++c) out[c] = to_f32(ptr[c]);
    }
}

// Four consecutive elements of a row from f32: one 16-byte (f32) or 8-byte (f16/bf16) store when
// the row width is a multiple of four, otherwise four scalar stores.
template <typename T>
__device__ __forceinline__ void store4(T* __restrict__ ptr, bool vec, const float v[4]) {
    if (vec) {
        if constexpr (sizeof(T) == 4) {
            *reinterpret_cast<float4*>(ptr) = make_float4(v[0], v[1], v[2], v[3]);
        } else {
            union {
                T h[4];
                uint2 u;
            } pk;
#pragma unroll
            for (int c = 0; c < 4; ++c) pk.h[c] = from_f32<T>(v[c]);
            *reinterpret_cast<uint2*>(ptr) = pk.u;
        }
    } else {
#pragma unroll
        for (int c = 0; c < 4; ++c) ptr[c] = from_f32<T>(v[c]);
    }
}

// out[e, h, :] = w[e, h]·X[src_coo[e], h, :] (w optional)
template <typename T>
__device__ __forceinline__ void gather_impl(const uint32_t* idx, const T* __restrict__ x, const float* __restrict__ w, T* __restrict__ out,
                                            const GraphParams& p) {
    const Csr g(idx, p);
    const uint32_t dh = p.dim / p.heads;
    const size_t total = (size_t)p.num_edges * p.dim;
    // Four consecutive outputs per thread: one source index, one 16- or 8-byte load when the width
    // allows.
    GRID_STRIDE(gi, (total + 3) / 4) {
        const size_t i0 = gi * 4, e0 = i0 / p.dim;
        const uint32_t d0 = (uint32_t)(i0 % p.dim);
        float xv[4];
        if (d0 + 4 <= p.dim) {
            load4(x + (size_t)g.src_coo[e0] * p.dim + d0, p.dim % 4 == 0, xv);
            if (p.has_weight) {
#pragma unroll
                for (int c = 0; c < 4; ++c) xv[c] *= w[e0 * p.heads + (d0 + c) / dh];
            }
            store4(out + i0, p.dim % 4 == 0, xv);
            continue;
        } else {
#pragma unroll
            for (int c = 0; c < 4; ++c) xv[c] = i0 + c < total ? to_f32(x[(size_t)g.src_coo[(i0 + c) / p.dim] * p.dim + (i0 + c) % p.dim]) : 0.0f;
        }
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const size_t i = i0 + c;
            if (i >= total) break;
            const size_t e = i / p.dim, d = i % p.dim;
            out[i] = from_f32<T>(p.has_weight ? w[e * p.heads + d / dh] * xv[c] : xv[c]);
        }
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

// Column d of kernel SPMM (Y[i, h, :] = Σ w[perm q, h]·X[src q, h, :]) or of the segment
// reduction (reduce over M[perm q, d], weighted by w[e, h] if given) over CSR positions [lo, hi).
template <bool SPMM, typename T>
__device__ __forceinline__ Acc reduce_range(const Csr& g, const T* __restrict__ x, const float* __restrict__ w, uint32_t lo, uint32_t hi, size_t d,
                                            const GraphParams& p) {
    const uint32_t h = (uint32_t)d / (p.dim / p.heads);
    Acc r = {0.0f, p.num_edges};
    for (uint32_t q = lo; q < hi; ++q) {
        const uint32_t e = g.perm[q];
        const float xv = to_f32(x[(size_t)(SPMM ? g.src[q] : e) * p.dim + d]);
        const Acc v = {p.has_weight ? w[(size_t)e * p.heads + h] * xv : xv, e};
        r = combine(SPMM || p.reduce <= 1, p.reduce, r, v, q == lo);
    }
    return r;
}

// Columns d0 .. d0 + n − 1 (n ≤ 4, within one row) of reduce_range: each edge's indices and
// weight are read once for the four. Edges go four at a time — their indices, then their rows,
// then the combines in edge order — so four row loads are in flight instead of one dependent
// index-then-row chain per edge; with WARP_RANGE a warp whose lanes share one range takes its
// indices in one load.
template <bool SPMM, bool WARP_RANGE = false, typename T>
__device__ __forceinline__ void reduce4(const Csr& g, const T* __restrict__ x, const float* __restrict__ w, uint32_t lo, uint32_t hi, uint32_t d0,
                                        uint32_t n, const GraphParams& p, Acc r[4]) {
    const uint32_t dh = p.dim / p.heads;
    const bool vec = p.dim % 4 == 0;
#pragma unroll
    for (int c = 0; c < 4; ++c) r[c] = {0.0f, p.num_edges};
    const auto load_row = [&](uint32_t src_row, float (&xv)[4]) {
        const T* row = x + (size_t)src_row * p.dim + d0;
        if (n == 4) {
            load4(row, vec, xv);
        } else {
#pragma unroll
            for (int c = 0; c < 4; ++c) xv[c] = (uint32_t)c < n ? to_f32(row[c]) : 0.0f;
        }
    };
    const auto add = [&](uint32_t q, uint32_t e, const float (&xv)[4]) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const float v = p.has_weight && (uint32_t)c < n ? w[(size_t)e * p.heads + (d0 + c) / dh] * xv[c] : xv[c];
            r[c] = combine(SPMM || p.reduce <= 1, p.reduce, r[c], {v, e}, q == lo);
        }
    };
    const auto row_of = [&](uint32_t q, uint32_t e, float (&xv)[4]) { load_row(SPMM ? g.src[q] : e, xv); };
    // WARP_RANGE (the long rows' segments, D ≥ 128): a whole warp on one range of at most 32
    // edges loads position lo + l's edge id and source in lane l, once for the warp, and the
    // edges' rows go out four at a time behind shuffles instead of behind each group's own index
    // loads (a segment of 32 edges was 8 such chains, 16 round trips for spmm, on a hub's
    // critical path). Not in the row kernel: its registers would go from 54 to 89.
    const uint32_t all = 0xffffffffu, lane = threadIdx.x & 31;
    if (WARP_RANGE && hi - lo <= 32 && __activemask() == all && __match_any_sync(all, lo) == all && __match_any_sync(all, hi) == all) {
        const uint32_t m = hi - lo;  // uniform over the warp
        const WarpEdges<SPMM> we(g, lo, m, lane);
        for (uint32_t j = 0; j < m; j += 4) {  // j ≤ 28: every source lane below 32
            float xv[4][4];
#pragma unroll
            for (uint32_t t = 0; t < 4; ++t) {
                const uint32_t src_row = we.row(j + t);
                if (j + t < m) load_row(src_row, xv[t]);
            }
#pragma unroll
            for (uint32_t t = 0; t < 4; ++t) {
                const uint32_t e = we.edge(j + t);
                if (j + t < m) add(lo + j + t, e, xv[t]);
            }
        }
        return;
    }
    uint32_t q = lo;
    for (; q + 4 <= hi; q += 4) {
        uint32_t e[4];
        float xv[4][4];
#pragma unroll
        for (int j = 0; j < 4; ++j) e[j] = g.perm[q + j];
#pragma unroll
        for (int j = 0; j < 4; ++j) row_of(q + j, e[j], xv[j]);
#pragma unroll
        for (int j = 0; j < 4; ++j) add(q + j, e[j], xv[j]);
    }
    for (; q < hi; ++q) {
        const uint32_t e = g.perm[q];
        float xv[4];
        row_of(q, e, xv);
        add(q, e, xv);
    }
}

// The partials of long-row segments: one thread per (segment, four columns) writes the f32
// values and args into part = [values S·dim | args S·dim].
template <bool SPMM, typename T>
__device__ __forceinline__ void seg_partial_impl(const uint32_t* idx, const T* __restrict__ x, const float* __restrict__ w, float* __restrict__ part,
                                                 const GraphParams& p) {
    const Csr g(idx, p);
    const uint32_t groups = (p.dim + 3) / 4;
    uint32_t* part_arg = reinterpret_cast<uint32_t*>(part) + (size_t)p.num_segs * p.dim;
    GRID_STRIDE(t, (size_t)p.num_segs * groups) {
        // 32-bit index arithmetic (every count fits; ops::graph checked).
        const uint32_t k = (uint32_t)t / groups, d0 = ((uint32_t)t % groups) * 4;
        const uint2 range = g.seg_range(k);
        const uint32_t n = min(4u, p.dim - d0);
        Acc r[4];
        reduce4<SPMM, true>(g, x, w, range.x, range.y, d0, n, p, r);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            if ((uint32_t)c < n) {
                part[(size_t)k * p.dim + d0 + c] = r[c].v;
                part_arg[(size_t)k * p.dim + d0 + c] = r[c].arg;
            }
        }
    }
}

// Each long row's segment partials folded into its first segment's slot (p.folded then tells
// the row kernels to combine that one partial): block (column group of 32, long row), its eight
// warps each combining a contiguous eighth of the row's segments in order, then warp 0 the eight
// results in order. Why: a hub's hundreds of partials combined by the row's own thread were one
// chain of memory round trips (the critical path of a power-law graph); here each chain is an
// eighth as long and runs beside the others. A fixed partition, so the sums repeat bit for bit.
// p.reduce: 0 or 1 sums (spmm folds with 0), 2 max, 3 min (the first arg kept on ties).
__device__ __forceinline__ void seg_fold_impl(const uint32_t* idx, float* __restrict__ part, const GraphParams& p) {
    __shared__ Acc red[8][32];
    __shared__ bool any[8];
    const Csr g(idx, p);
    const bool sum = p.reduce <= 1;
    uint32_t* part_arg = reinterpret_cast<uint32_t*>(part) + (size_t)p.num_segs * p.dim;
    const uint32_t w = threadIdx.x / 32, c = blockIdx.x * 32 + (threadIdx.x & 31);
    for (uint32_t li = blockIdx.y; li < p.num_long; li += gridDim.y) {
        const uint32_t k0 = g.long_seg_ptr[li], n = g.long_seg_ptr[li + 1] - k0;
        const uint32_t a = k0 + w * n / 8, b = k0 + (w + 1) * n / 8;
        Acc r = {0.0f, p.num_edges};
        if (c < p.dim) {
#pragma unroll 8
            for (uint32_t k = a; k < b; ++k) {
                const size_t t = (size_t)k * p.dim + c;
                r = combine(sum, p.reduce, r, {part[t], sum ? p.num_edges : part_arg[t]}, k == a);
            }
        }
        red[w][threadIdx.x & 31] = r;
        if ((threadIdx.x & 31) == 0) any[w] = b > a;
        __syncthreads();
        if (w == 0 && c < p.dim) {
            Acc total = {0.0f, p.num_edges};
            bool first = true;
            for (uint32_t j = 0; j < 8; ++j) {
                if (!any[j]) continue;
                total = combine(sum, p.reduce, total, red[j][threadIdx.x], first);
                first = false;
            }
            part[(size_t)k0 * p.dim + c] = total.v;
            if (!sum) part_arg[(size_t)k0 * p.dim + c] = total.arg;
        }
        __syncthreads();
    }
}

// Columns d .. d + n − 1 (n ≤ 4) of long row `row`: its segments' partials combined in segment
// order. A hub has hundreds of segments, and one load after another would make its row the
// critical path (one memory round trip a segment); SEG_BATCH segments' loads go out together
// before their combines, in the same order, so the sums are the same.
constexpr uint32_t SEG_BATCH = 4;
template <bool SPMM>
__device__ __forceinline__ void combine_segments(const Csr& g, const float* __restrict__ part, uint32_t row, size_t d, uint32_t n, const GraphParams& p,
                                                 Acc r[4]) {
    const bool sum = SPMM || p.reduce <= 1;
    const uint32_t li = g.find_long(row), k0 = g.long_seg_ptr[li], k1 = p.folded ? k0 + 1 : g.long_seg_ptr[li + 1];
    const uint32_t* part_arg = reinterpret_cast<const uint32_t*>(part) + (size_t)p.num_segs * p.dim;
#pragma unroll
    for (int c = 0; c < 4; ++c) r[c] = {0.0f, p.num_edges};
    for (uint32_t k = k0; k < k1; k += SEG_BATCH) {
        Acc v[SEG_BATCH][4];
#pragma unroll
        for (uint32_t j = 0; j < SEG_BATCH; ++j) {
#pragma unroll
            for (uint32_t c = 0; c < 4; ++c) {
                const bool in = k + j < k1 && c < n;
                const size_t t = (size_t)(k + j) * p.dim + d + c;
                v[j][c] = {in ? part[t] : 0.0f, in && !sum ? part_arg[t] : p.num_edges};
            }
        }
#pragma unroll
        for (uint32_t j = 0; j < SEG_BATCH; ++j) {
#pragma unroll
            for (uint32_t c = 0; c < 4; ++c) {
                if (k + j < k1) r[c] = combine(sum, p.reduce, r[c], v[j][c], k + j == k0);
            }
        }
    }
}

// Output element i's reduction over its row; a long row combines its segments' partials.
template <bool SPMM, typename T>
__device__ __forceinline__ Acc row_element(const Csr& g, const T* __restrict__ x, const float* __restrict__ w, const float* __restrict__ part, size_t i,
                                           const GraphParams& p) {
    const size_t row = i / p.dim, d = i % p.dim;
    const uint32_t lo = g.row_ptr[row], hi = g.row_ptr[row + 1];
    if (hi - lo <= p.chunk) return reduce_range<SPMM>(g, x, w, lo, hi, d, p);
    Acc r[4];
    combine_segments<SPMM>(g, part, (uint32_t)row, d, 1, p, r);
    return r[0];
}

// out[i, d] = the row's reduction, four consecutive outputs per thread (groups that straddle a
// row take the one-element path); a long row combines its segments' partials in order. Mean
// divides by the degree; max/min write the first arg (E for an empty row).
template <bool SPMM, typename T>
__device__ __forceinline__ void row_reduce_impl(const uint32_t* idx, const T* __restrict__ x, const float* __restrict__ w, const float* __restrict__ part,
                                                T* __restrict__ out, uint32_t* __restrict__ arg, const GraphParams& p) {
    const Csr g(idx, p);
    const size_t total = (size_t)p.num_nodes * p.dim;
    GRID_STRIDE(gi, (total + 3) / 4) {
        const size_t i0 = gi * 4, row = i0 / p.dim;
        const uint32_t d0 = (uint32_t)(i0 % p.dim), lo = g.row_ptr[row], hi = g.row_ptr[row + 1];
        Acc r[4];
        if (d0 + 4 <= p.dim) {
            if (hi - lo <= p.chunk) {
                reduce4<SPMM>(g, x, w, lo, hi, d0, 4, p, r);
            } else {
                combine_segments<SPMM>(g, part, (uint32_t)row, d0, 4, p, r);
            }
            float v[4];
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                v[c] = r[c].v;
                if (!SPMM && p.reduce == 1 && hi > lo) v[c] /= (float)(hi - lo);
                if (!SPMM && p.reduce >= 2) arg[i0 + c] = r[c].arg;
            }
            store4(out + i0, p.dim % 4 == 0, v);
            continue;
        } else {
#pragma unroll
            for (int c = 0; c < 4; ++c) r[c] = i0 + c < total ? row_element<SPMM>(g, x, w, part, i0 + c, p) : Acc{0.0f, p.num_edges};
        }
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const size_t i = i0 + c;
            if (i >= total) break;
            const size_t ri = i / p.dim;
            const uint32_t deg = g.row_ptr[ri + 1] - g.row_ptr[ri];
            float v = r[c].v;
            if (!SPMM && p.reduce == 1 && deg > 0) v /= (float)deg;
            if (!SPMM && p.reduce >= 2) arg[i] = r[c].arg;
            out[i] = from_f32<T>(v);
        }
    }
}

// spmm and the sum/mean segment reduction with one warp per 32 16-byte column pieces of an output
// row (FFKERN_GRAPH_KERNEL=warp or auto; the width a multiple of 16 bytes, with weights also each
// head's): lane l of a row's g-th warp takes piece 32·g + l, so each edge's source row is read in
// whole 512-byte warp accesses, and a range's indices arrive in one coalesced load (a lane an
// edge) and go round by shuffles; edges go four at a time with their rows in flight. A row of D
// 512 in bf16 (64 pieces) gets two warps, so the last wave of a small graph leaves less idle.
// A row of 16 pieces or fewer (D 128 in bf16: 16) takes a group of as many lanes, rounded up to a
// power of two, and the warp's groups take consecutive rows side by side: where a whole warp on
// such a row left half its lanes idle, every lane has a row's piece to load.
// A graph with long rows runs in this one launch too. Blocks take tickets in the order they
// start (the scratch's first word), and the ticket, not blockIdx, says what a block does: first
// the long rows' segments (a warp a segment's piece group: its partial into the scratch, then a
// flag), then one block for each long row's piece group, which waits for its segments' flags and
// combines their partials, then the short rows. A block only ever waits for lower tickets, whose
// blocks already run, so it cannot deadlock; the combine is a fixed partition (eight warps on
// an eighth of the segments each, in order, then the eight in order), so runs repeat bit for bit.
// Why it is fast: a hub's segments, their combine and the short rows share one launch, where
// three launches and a scratch allocation each waited for the previous one to drain. The sums
// of a short row run in edge order from 0, as row_reduce_impl's. Integer atomics only; each
// launch leaves the ticket, the finish count and every flag 0 for the next.
// Scratch (long rows only): [ticket, finished, flag (segment k, group g) at 2 + k·G + g, padding to
// 4 words | partials S·dim f32].
__host__ __device__ constexpr uint32_t graph_sync_words(uint32_t flags) { return (2 + flags + 3) / 4 * 4; }
// The lanes that take one row's (or segment's, or edge head's) pieces together: the power of two
// at or above the pieces, up to 32 (ops/graph/cuda.rs's lane_group sizes the grids by the same
// rule).
__host__ __device__ constexpr uint32_t graph_lane_group(uint32_t pieces) {
    uint32_t w = 1;
    while (w < pieces && w < 32) w *= 2;
    return w;
}

// Lane sl's piece (d0 .. d0 + V − 1) of the sum over CSR positions [lo, hi) of its group of W
// lanes (W a power of two up to 32, uniform over the warp; each group its own range, an empty one
// where it has no work): source rows (spmm) or edge rows, times each edge's head weight, in edge
// order. Every lane of the warp calls; the groups' loops run to the warp's longest range.
template <bool SPMM, typename T>
__device__ __forceinline__ void group_range_sum(const Csr& g, const T* __restrict__ x, const float* __restrict__ w, uint32_t lo, uint32_t hi, uint32_t W,
                                                uint32_t sl, bool live, uint32_t d0, const GraphParams& p, float (&acc)[16 / sizeof(T)]) {
    constexpr uint32_t V = 16 / sizeof(T);
    const uint32_t dh = p.dim / p.heads, len = hi - lo;
    uint32_t most = len;
    if (W < 32) {
#pragma unroll
        for (uint32_t m = 16; m >= 1; m /= 2) most = max(most, __shfl_xor_sync(0xffffffffu, most, m));
    }
    for (uint32_t base = 0; base < most; base += W) {
        const uint32_t n = len > base ? min(W, len - base) : 0u, n_most = min(W, most - base);  // the group's; the warp's
        const WarpEdges<SPMM> we(g, lo + base, n, sl, W);
        for (uint32_t j = 0; j < n_most; j += 4) {  // a source index past the group wraps within it, unused
            uint4 raw[4];
#pragma unroll
            for (uint32_t t = 0; t < 4; ++t) {
                const uint32_t r = we.row(j + t);
                if (live && j + t < n) raw[t] = *reinterpret_cast<const uint4*>(x + (size_t)r * p.dim + d0);
            }
#pragma unroll
            for (uint32_t t = 0; t < 4; ++t) {
                const uint32_t e = we.edge(j + t);
                if (live && j + t < n) {
                    float xv[V];
                    unpack16<T>(raw[t], xv);
                    const float wt = p.has_weight ? w[(size_t)e * p.heads + d0 / dh] : 1.0f;
#pragma unroll
                    for (uint32_t c = 0; c < V; ++c) acc[c] += p.has_weight ? wt * xv[c] : xv[c];
                }
            }
        }
    }
}

template <bool SPMM, typename T>
__device__ __forceinline__ void row_reduce_warp_impl(const uint32_t* idx, const T* __restrict__ x, const float* __restrict__ w, uint32_t* sync,
                                                     T* __restrict__ out, const GraphParams& p) {
    constexpr uint32_t V = 16 / sizeof(T);
    __shared__ uint32_t ticket;
    __shared__ float4 red[8][32][V / 4];
    const Csr g(idx, p);
    const uint32_t lane = threadIdx.x & 31, wid = threadIdx.x / 32;
    // Rows of 16 pieces or fewer share a warp: groups of W lanes (the power of two at or above
    // the pieces), 32 / W items a warp, so narrow rows do not leave half a warp idle.
    const uint32_t pieces = p.dim / V, W = graph_lane_group(pieces), per_warp = 32 / W, sub = lane / W, sl = lane % W;
    const uint32_t G = (pieces + 31) / 32;  // a row's groups (1 where W < 32)
    const uint32_t seg_blocks = (p.num_segs * G + 8 * per_warp - 1) / (8 * per_warp), fold_blocks = p.num_long * G;
    uint32_t b = blockIdx.x;
    if (p.num_long > 0) {
        if (threadIdx.x == 0) ticket = atomicAdd(&sync[0], 1u);
        __syncthreads();
        b = ticket;
    }
    uint32_t* flag = sync + 2;
    float* part = reinterpret_cast<float*>(sync + graph_sync_words(p.num_segs * G));
    float acc[V];
#pragma unroll
    for (uint32_t c = 0; c < V; ++c) acc[c] = 0.0f;
    uint32_t out_row = ~0u, out_d0 = 0;  // this lane's output piece, if it has one
    if (b < seg_blocks) {
        // A segment's piece group: its partial, then (after a fence) its flag.
        const uint32_t q = (b * 8 + wid) * per_warp + sub, k = q / G, pc = q % G * W + sl;
        const bool has = q < p.num_segs * G, live = has && pc < pieces;
        const uint2 range = has ? g.seg_range(k) : make_uint2(0, 0);
        group_range_sum<SPMM, T>(g, x, w, range.x, range.y, W, sl, live, pc * V, p, acc);
        if (live) {
#pragma unroll
            for (uint32_t i = 0; i < V / 4; ++i) {
                *reinterpret_cast<float4*>(part + (size_t)k * p.dim + pc * V + 4 * i) = make_float4(acc[4 * i], acc[4 * i + 1], acc[4 * i + 2], acc[4 * i + 3]);
            }
        }
        // The group's partial stores happen before its first lane's fence (the warp barrier), and
        // the fence before the flag: a block that sees the flag sees the partial.
        __syncwarp();
        if (has && sl == 0) {
            __threadfence();
            atomicExch(&flag[q], 1u);
        }
    } else if (b < seg_blocks + fold_blocks) {
        // One long row's piece group: warp wid combines segments [a, e) in order once their flags
        // are up (and takes them down), then warp 0 the eight in order.
        const uint32_t li = (b - seg_blocks) / G, gi = (b - seg_blocks) % G, pc = gi * 32 + lane, d0 = pc * V;
        const uint32_t k0 = g.long_seg_ptr[li], n = g.long_seg_ptr[li + 1] - k0;
        const uint32_t a = k0 + wid * n / 8, e = k0 + (wid + 1) * n / 8;
        for (uint32_t k = a + lane; k < e; k += 32) {
            volatile uint32_t* f = &flag[k * G + gi];
            while (*f == 0) __nanosleep(100);
            *f = 0;
        }
        // Each lane's fence after the flags it saw, then the warp barrier: every lane's loads
        // below come after every flag of the range.
        __threadfence();
        __syncwarp();
        if (pc < pieces) {
            // SEG_BATCH segments' 16-byte loads in flight at once, from L2 (written by other SMs).
            for (uint32_t k = a; k < e; k += SEG_BATCH) {
                float4 pv[SEG_BATCH][V / 4];
#pragma unroll
                for (uint32_t j = 0; j < SEG_BATCH; ++j) {
#pragma unroll
                    for (uint32_t i = 0; i < V / 4; ++i) {
                        pv[j][i] = k + j < e ? __ldcg(reinterpret_cast<const float4*>(part + (size_t)(k + j) * p.dim + d0 + 4 * i)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                    }
                }
#pragma unroll
                for (uint32_t j = 0; j < SEG_BATCH; ++j) {
#pragma unroll
                    for (uint32_t i = 0; i < V / 4; ++i) {
                        acc[4 * i] += pv[j][i].x, acc[4 * i + 1] += pv[j][i].y, acc[4 * i + 2] += pv[j][i].z, acc[4 * i + 3] += pv[j][i].w;
                    }
                }
            }
        }
#pragma unroll
        for (uint32_t i = 0; i < V / 4; ++i) red[wid][lane][i] = make_float4(acc[4 * i], acc[4 * i + 1], acc[4 * i + 2], acc[4 * i + 3]);
        __syncthreads();
        if (wid == 0 && pc < pieces) {
#pragma unroll
            for (uint32_t c = 0; c < V; ++c) acc[c] = 0.0f;
            for (uint32_t j = 0; j < 8; ++j) {
#pragma unroll
                for (uint32_t i = 0; i < V / 4; ++i) {
                    const float4 v = red[j][lane][i];
                    acc[4 * i] += v.x, acc[4 * i + 1] += v.y, acc[4 * i + 2] += v.z, acc[4 * i + 3] += v.w;
                }
            }
            out_row = g.long_rows[li], out_d0 = d0;
        }
    } else {
        // A short row's piece group (a long row's groups have nothing to do here).
        const uint32_t q = ((b - seg_blocks - fold_blocks) * 8 + wid) * per_warp + sub, row = q / G, pc = q % G * W + sl;
        uint32_t lo = 0, hi = 0;
        if (row < p.num_nodes) lo = g.row_ptr[row], hi = g.row_ptr[row + 1];
        const bool has = row < p.num_nodes && hi - lo <= p.chunk;
        if (!has) lo = hi = 0;
        group_range_sum<SPMM, T>(g, x, w, lo, hi, W, sl, has && pc < pieces, pc * V, p, acc);
        if (has && pc < pieces) out_row = row, out_d0 = pc * V;
    }
    // One place for the rows' stores (and the mean's division, whose slow path is a call).
    if (out_row != ~0u) {
        const uint32_t deg = g.row_ptr[out_row + 1] - g.row_ptr[out_row];
        if (!SPMM && p.reduce == 1 && deg > 0) {
            // The mean: the reciprocal, then one correction of each quotient by an fma (within a
            // unit in the last place of the division, which here cost a call whose register saves
            // ptxas counts as spills).
            const float n = (float)deg, r = __fdividef(1.0f, n);
#pragma unroll
            for (uint32_t c = 0; c < V; ++c) {
                const float q = acc[c] * r;
                acc[c] = fmaf(fmaf(-q, n, acc[c]), r, q);
            }
        }
        *reinterpret_cast<uint4*>(out + (size_t)out_row * p.dim + out_d0) = pack16<T>(acc);
    }
    if (p.num_long > 0) {
        // The last block to finish sets the ticket and the count back to 0 (every block took its
        // ticket before it counted itself).
        __syncthreads();
        if (threadIdx.x == 0 && atomicAdd(&sync[1], 1u) == gridDim.x - 1) sync[0] = 0, sync[1] = 0;
    }
}

// gather_impl in whole 16-byte pieces (the width a multiple of 16 bytes, with weights also each
// head's; x and out 16-byte aligned; E·pieces < 2³¹: the launcher checks). Why it is fast: a
// thread moves one 16-byte piece, so a warp copies 512 contiguous bytes of a source row with one
// load and one store instruction, and the index arithmetic is 32-bit (one division per piece,
// where the element path divides in 64 bits for every four elements).
template <typename T>
__device__ __forceinline__ void gather16_impl(const uint32_t* idx, const T* __restrict__ x, const float* __restrict__ w, T* __restrict__ out,
                                              const GraphParams& p) {
    constexpr uint32_t V = 16 / sizeof(T);
    const Csr g(idx, p);
    const uint32_t pieces = p.dim / V, dh = p.dim / p.heads, total = p.num_edges * pieces;
    for (uint32_t t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const uint32_t e = t / pieces, d0 = (t - e * pieces) * V;
        uint4 raw = *reinterpret_cast<const uint4*>(x + (size_t)g.src_coo[e] * p.dim + d0);
        if (p.has_weight) {
            float v[V];
            unpack16<T>(raw, v);
            const float wt = w[(size_t)e * p.heads + d0 / dh];
#pragma unroll
            for (uint32_t c = 0; c < V; ++c) v[c] *= wt;
            raw = pack16<T>(v);
        }
        *reinterpret_cast<uint4*>(out + (size_t)e * p.dim + d0) = raw;
    }
}

// s[e, h] = ⟨A[dst e, h, :], B[src e, h, :]⟩ (f32, COO order), one thread per (edge, head), so
// a hub's edges spread over the grid like any others.
template <typename T>
__device__ __forceinline__ void sddmm_impl(const uint32_t* idx, const T* __restrict__ a, const T* __restrict__ b, float* __restrict__ s,
                                           const GraphParams& p) {
    const Csr g(idx, p);
    const uint32_t dh = p.dim / p.heads;
    GRID_STRIDE(t, (size_t)p.num_edges * p.heads) {
        const size_t e = t / p.heads, h = t % p.heads;
        const T* ai = a + (size_t)g.dst_coo[e] * p.dim + h * dh;
        const T* bj = b + (size_t)g.src_coo[e] * p.dim + h * dh;
        float acc = 0.0f;
        for (uint32_t k = 0; k < dh; ++k) acc += to_f32(ai[k]) * to_f32(bj[k]);
        s[t] = acc;
    }
}

// sddmm and edge_dot in 16-byte pieces (each head's columns a multiple of 16 bytes, both operands
// 16-byte aligned: the launcher checks): g lanes per (edge, head), g the power of two at or above
// the head's piece count (at most 32; a lane then takes every 32nd piece), each lane's products
// summed in piece order, then the group's sums by a butterfly of shuffles (a fixed order, so runs
// repeat bit for bit). Why it is fast: a group reads the two head rows side by side in 16-byte
// loads, whole sectors, where one thread per (edge, head) walks its rows one element at a time
// and a warp's loads touch 32 rows at once (the WGSL twin: graph_sg.wgsl).
template <bool SDDMM, typename T>
__device__ __forceinline__ void dot16_impl(const uint32_t* idx, const T* __restrict__ x, const T* __restrict__ y, float* __restrict__ out,
                                           const GraphParams& p) {
    constexpr uint32_t V = 16 / sizeof(T);
    const uint32_t dh = p.dim / p.heads, pieces = dh / V, g = graph_lane_group(pieces);
    const uint32_t lane = threadIdx.x & 31, sub = lane & (g - 1), per_warp = 32 / g;
    const size_t tasks = (size_t)p.num_edges * p.heads, warps = (size_t)gridDim.x * (blockDim.x / 32);
    // Every lane of a warp runs the same iterations: the shuffles need the whole warp.
    for (size_t t0 = ((size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * per_warp; t0 < tasks; t0 += warps * per_warp) {
        const size_t t = t0 + lane / g;
        float acc = 0.0f;
        if (t < tasks) {
            const size_t e = t / p.heads, h = t % p.heads;
            size_t ra = e, rb = e;
            if constexpr (SDDMM) {
                const Csr gr(idx, p);
                ra = gr.dst_coo[e];
                rb = gr.src_coo[e];
            }
            const T* ap = x + ra * p.dim + h * dh;
            const T* bp = y + rb * p.dim + h * dh;
            for (uint32_t q = sub; q < pieces; q += g) {
                float av[V], bv[V];
                unpack16<T>(*reinterpret_cast<const uint4*>(ap + (size_t)q * V), av);
                unpack16<T>(*reinterpret_cast<const uint4*>(bp + (size_t)q * V), bv);
#pragma unroll
                for (uint32_t c = 0; c < V; ++c) acc = fmaf(av[c], bv[c], acc);
            }
        }
        for (uint32_t o = g / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (t < tasks && sub == 0) out[t] = acc;
    }
}

// Segment softmax (p.reduce = 0) and its backward (p.reduce = 1), per (node, head), in three
// steps: partial statistics of long rows' segments, the statistics of every row (short rows
// directly, long rows by combining partials in order), then every edge in parallel. Forward
// statistics are (max, Σ exp(s − max)) of the scores w; backward, Σ α·dα (w = α, v = dα).
__device__ __forceinline__ float2 stats_range(const Csr& g, const float* __restrict__ w, const float* __restrict__ v, size_t h, uint32_t lo, uint32_t hi,
                                              const GraphParams& p) {
    if (p.reduce == 1) {
        float dot = 0.0f;
        for (uint32_t q = lo; q < hi; ++q) {
            const size_t e = (size_t)g.perm[q] * p.heads + h;
            dot += w[e] * v[e];
        }
        return make_float2(0.0f, dot);
    }
    float mx = -3.4028235e38f, sum = 0.0f;
    for (uint32_t q = lo; q < hi; ++q) mx = fmaxf(mx, w[(size_t)g.perm[q] * p.heads + h]);
    for (uint32_t q = lo; q < hi; ++q) sum += expf(w[(size_t)g.perm[q] * p.heads + h] - mx);
    return make_float2(mx, sum);
}

__device__ __forceinline__ void softmax_partial_impl(const uint32_t* idx, const float* __restrict__ w, const float* __restrict__ v,
                                                     float2* __restrict__ part, const GraphParams& p) {
    const Csr g(idx, p);
    GRID_STRIDE(t, (size_t)p.num_segs * p.heads) {
        const uint2 range = g.seg_range(t / p.heads);
        part[t] = stats_range(g, w, v, t % p.heads, range.x, range.y, p);
    }
}

__device__ __forceinline__ void softmax_stats_impl(const uint32_t* idx, const float* __restrict__ w, const float* __restrict__ v,
                                                   const float2* __restrict__ part, float2* __restrict__ stats, const GraphParams& p) {
    const Csr g(idx, p);
    GRID_STRIDE(t, (size_t)p.num_nodes * p.heads) {
        const size_t i = t / p.heads, h = t % p.heads;
        const uint32_t lo = g.row_ptr[i], hi = g.row_ptr[i + 1];
        if (hi - lo <= p.chunk) {
            stats[t] = stats_range(g, w, v, h, lo, hi, p);
            continue;
        }
        // M = max m_k, L = Σ l_k·exp(m_k − M) over the segments in order.
        const uint32_t li = g.find_long((uint32_t)i), k0 = g.long_seg_ptr[li], k1 = g.long_seg_ptr[li + 1];
        // A hub's hundreds of partials: 16 loads in flight at a time (the same order of operations).
        float m = -3.4028235e38f, l = 0.0f;
#pragma unroll 16
        for (uint32_t k = k0; k < k1; ++k) m = fmaxf(m, part[(size_t)k * p.heads + h].x);
#pragma unroll 16
        for (uint32_t k = k0; k < k1; ++k) {
            const float2 s = part[(size_t)k * p.heads + h];
            l += p.reduce == 1 ? s.y : s.y * expf(s.x - m);
        }
        stats[t] = make_float2(p.reduce == 1 ? 0.0f : m, l);
    }
}

// α = exp(s − M)/L, or ds = α·(dα − Σ α·dα), one thread per (edge, head).
__device__ __forceinline__ void softmax_write_impl(const uint32_t* idx, const float* __restrict__ w, const float* __restrict__ v,
                                                   const float2* __restrict__ stats, float* __restrict__ out, const GraphParams& p) {
    const Csr g(idx, p);
    GRID_STRIDE(t, (size_t)p.num_edges * p.heads) {
        const float2 s = stats[(size_t)g.dst_coo[t / p.heads] * p.heads + t % p.heads];
        out[t] = p.reduce == 1 ? w[t] * (v[t] - s.y) : expf(w[t] - s.x) / s.y;
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

// edge_combine in whole 16-byte pieces (dim a multiple of 16 bytes; Ee, P and m 16-byte aligned;
// E·dim/V < 2³¹: the launcher checks), the same sums in the same order. Why it is faster: a thread
// moves V elements with three 16-byte loads and one store and divides in 32 bits once per piece,
// where the element form divided in 64 bits and loaded two bytes per element.
template <typename T>
__device__ __forceinline__ void edge_combine16_impl(const uint32_t* idx, const T* __restrict__ ee, const T* __restrict__ pn, T* __restrict__ m,
                                                    const GraphParams& p) {
    constexpr uint32_t V = 16 / sizeof(T);
    const Csr g(idx, p);
    const uint32_t pieces = p.dim / V, total = p.num_edges * pieces;
    const size_t w = 2 * (size_t)p.dim;
    for (uint32_t t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const uint32_t e = t / pieces, d0 = (t - e * pieces) * V;
        float z[V], s[V], r[V];
        unpack16<T>(*reinterpret_cast<const uint4*>(ee + (size_t)e * p.dim + d0), z);
        unpack16<T>(*reinterpret_cast<const uint4*>(pn + g.src_coo[e] * w + d0), s);
        unpack16<T>(*reinterpret_cast<const uint4*>(pn + g.dst_coo[e] * w + p.dim + d0), r);
#pragma unroll
        for (uint32_t c = 0; c < V; ++c) z[c] = act_eval(p.reduce, z[c] + s[c] + r[c]);
        *reinterpret_cast<uint4*>(m + (size_t)e * p.dim + d0) = pack16<T>(z);
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

// LayerNorm with one warp per row in 16-byte pieces (the row at most 512 elements in whole pieces,
// 16 floats a lane; x, y, dy, dx and γ, β 16-byte aligned: the launcher checks). Why it is fast: the row stays in registers
// between its passes (read once, where the block form above reads it three times) and the sums
// are shuffles within the warp instead of barriers across a block of 256; a 512-wide bf16 row is
// two pieces a lane, eight rows a block. Lanes sum their elements in order, then a fixed
// butterfly: the same result on every run.
template <typename T>
constexpr uint32_t LN_PIECES = 16 / (16 / sizeof(T));  // pieces a lane: 16 floats
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (uint32_t o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
// The lane's pieces lane, lane + 32, … of row r of `src` (zeros past the row).
template <typename T>
__device__ __forceinline__ void ln_load(const T* __restrict__ src, size_t r, uint32_t lane, const GraphParams& p, float (&v)[LN_PIECES<T>][16 / sizeof(T)]) {
    constexpr uint32_t V = 16 / sizeof(T);
#pragma unroll
    for (uint32_t i = 0; i < LN_PIECES<T>; ++i) {
        const uint32_t q = lane + 32 * i;
        if (q * V < p.dim) unpack16<T>(*reinterpret_cast<const uint4*>(src + r * p.dim + q * V), v[i]);
        else
#pragma unroll
            for (uint32_t c = 0; c < V; ++c) v[i][c] = 0.0f;
    }
}
template <typename T>
__device__ __forceinline__ void ln_forward16_impl(const T* __restrict__ x, const float* __restrict__ affine, T* __restrict__ y,
                                                  float* __restrict__ stats, const GraphParams& p) {
    constexpr uint32_t V = 16 / sizeof(T);
    const float *gamma = affine, *beta = affine + p.dim;
    const uint32_t lane = threadIdx.x & 31;
    const size_t warps = (size_t)gridDim.x * (blockDim.x / 32);
    for (size_t r = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < p.num_nodes; r += warps) {
        float v[LN_PIECES<T>][V];
        ln_load<T>(x, r, lane, p, v);
        float s = 0.0f;
#pragma unroll
        for (uint32_t i = 0; i < LN_PIECES<T>; ++i)
#pragma unroll
            for (uint32_t c = 0; c < V; ++c) s += v[i][c];
        const float mu = warp_sum(s) / (float)p.dim;
        float ss = 0.0f;
#pragma unroll
        for (uint32_t i = 0; i < LN_PIECES<T>; ++i)
#pragma unroll
            for (uint32_t c = 0; c < V; ++c) {
                const float d = (lane + 32 * i) * V < p.dim ? v[i][c] - mu : 0.0f;
                ss += d * d;
            }
        const float rs = rsqrtf(warp_sum(ss) / (float)p.dim + p.eps);
#pragma unroll
        for (uint32_t i = 0; i < LN_PIECES<T>; ++i) {
            const uint32_t k0 = (lane + 32 * i) * V;
            if (k0 >= p.dim) break;
            float o[V], gm[V], bt[V];
            load_f32s(gamma + k0, gm);
            load_f32s(beta + k0, bt);
#pragma unroll
            for (uint32_t c = 0; c < V; ++c) o[c] = (v[i][c] - mu) * rs * gm[c] + bt[c];
            *reinterpret_cast<uint4*>(y + r * p.dim + k0) = pack16<T>(o);
        }
        if (lane == 0) {
            stats[r] = mu;
            stats[p.num_nodes + r] = rs;
        }
    }
}
template <typename T>
__device__ __forceinline__ void ln_backward16_impl(const T* __restrict__ x, const T* __restrict__ dy, const float* __restrict__ gamma,
                                                   const float* __restrict__ stats, T* __restrict__ dx, const GraphParams& p) {
    constexpr uint32_t V = 16 / sizeof(T);
    const uint32_t lane = threadIdx.x & 31;
    const size_t warps = (size_t)gridDim.x * (blockDim.x / 32);
    for (size_t r = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < p.num_nodes; r += warps) {
        const float mu = stats[r], rs = stats[p.num_nodes + r];
        float xv[LN_PIECES<T>][V], g[LN_PIECES<T>][V];
        ln_load<T>(x, r, lane, p, xv);
        ln_load<T>(dy, r, lane, p, g);
        float a = 0.0f, b = 0.0f;
#pragma unroll
        for (uint32_t i = 0; i < LN_PIECES<T>; ++i) {
            const uint32_t k0 = (lane + 32 * i) * V;
            float gm[V] = {};
            if (k0 < p.dim) load_f32s(gamma + k0, gm);
#pragma unroll
            for (uint32_t c = 0; c < V; ++c) {
                g[i][c] *= gm[c];
                xv[i][c] = (xv[i][c] - mu) * rs;
                a += g[i][c];
                b += g[i][c] * xv[i][c];
            }
        }
        const float mg = warp_sum(a) / (float)p.dim, mgx = warp_sum(b) / (float)p.dim;
#pragma unroll
        for (uint32_t i = 0; i < LN_PIECES<T>; ++i) {
            const uint32_t k0 = (lane + 32 * i) * V;
            if (k0 >= p.dim) break;
            float o[V];
#pragma unroll
            for (uint32_t c = 0; c < V; ++c) o[c] = rs * (g[i][c] - mg - xv[i][c] * mgx);
            *reinterpret_cast<uint4*>(dx + r * p.dim + k0) = pack16<T>(o);
        }
    }
}

// LayerNorm's [dγ | dβ] in two fixed-order passes: partial sums over chunks of `chunk` rows, one
// thread per (chunk, column), then the chunk sum. A column's rows spread over many blocks instead
// of one thread walking all of them (E = 61,440 edge rows serialised one thread for 60 ms).
template <typename T>
__device__ __forceinline__ void ln_params_impl(const T* __restrict__ x, const T* __restrict__ dy, const float* __restrict__ stats,
                                               float* __restrict__ part, const GraphParams& p) {
    GRID_STRIDE(t, (size_t)p.num_segs * p.dim) {
        const size_t c = t / p.dim, k = t % p.dim;
        const size_t r1 = min((size_t)p.num_nodes, (c + 1) * p.chunk);
        float dg = 0.0f, db = 0.0f;
        for (size_t r = c * p.chunk; r < r1; ++r) {
            const float d = to_f32(dy[r * p.dim + k]);
            dg += d * (to_f32(x[r * p.dim + k]) - stats[r]) * stats[p.num_nodes + r];
            db += d;
        }
        part[c * 2 * p.dim + k] = dg;
        part[c * 2 * p.dim + p.dim + k] = db;
    }
}

// The chunks' partial [dγ | dβ] summed in chunk order: one thread per output.
__device__ __forceinline__ void ln_params_sum_impl(const float* __restrict__ part, float* __restrict__ out, const GraphParams& p) {
    GRID_STRIDE(j, 2 * (size_t)p.dim) {
        float acc = 0.0f;
        // 2·dim threads each walk every chunk: 16 loads in flight at a time, summed in order.
#pragma unroll 16
        for (size_t c = 0; c < p.num_segs; ++c) acc += part[c * 2 * p.dim + j];
        out[j] = acc;
    }
}

// Row-wise helpers of the OneForecast layer (gate, residuals, casts): one thread per element,
// rows of `dim` over `num_nodes` rows, no graph.
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + __expf(-fmaxf(x, -80.0f))); }

// out = act(s·x + y), s = w[row] if has_weight, y if has_y: [rows, dim] (1) or a bias [dim] (2).
template <typename T>
__device__ __forceinline__ void scale_add_impl(const T* __restrict__ x, const T* __restrict__ y, const float* __restrict__ w, T* __restrict__ out,
                                               const GraphParams& p) {
    GRID_STRIDE(i, (size_t)p.num_nodes * p.dim) {
        float z = to_f32(x[i]);
        if (p.has_weight) z *= w[i / p.dim];
        if (p.has_y) z += to_f32(y[p.has_y == 2 ? i % p.dim : i]);
        out[i] = from_f32<T>(act_eval(p.reduce, z));
    }
}

// scale_add in whole 16-byte pieces (dim a multiple of 16 bytes; x, y and out 16-byte aligned;
// rows·dim/V < 2³¹: the launcher checks), the same operations in the same order, for the reason
// edge_combine16 gives.
template <typename T>
__device__ __forceinline__ void scale_add16_impl(const T* __restrict__ x, const T* __restrict__ y, const float* __restrict__ w, T* __restrict__ out,
                                                 const GraphParams& p) {
    constexpr uint32_t V = 16 / sizeof(T);
    const uint32_t pieces = p.dim / V, total = p.num_nodes * pieces;
    for (uint32_t t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        const uint32_t r = t / pieces, d0 = (t - r * pieces) * V;
        const size_t i = (size_t)r * p.dim + d0;
        float z[V], a[V];
        unpack16<T>(*reinterpret_cast<const uint4*>(x + i), z);
        if (p.has_y) unpack16<T>(*reinterpret_cast<const uint4*>(y + (p.has_y == 2 ? d0 : i)), a);
#pragma unroll
        for (uint32_t c = 0; c < V; ++c) {
            if (p.has_weight) z[c] *= w[r];
            if (p.has_y) z[c] += a[c];
            z[c] = act_eval(p.reduce, z[c]);
        }
        *reinterpret_cast<uint4*>(out + i) = pack16<T>(z);
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
    extern "C" __global__ void __launch_bounds__(256) graph_gather16_##SUFFIX(const uint32_t* idx, const T* x, const float* w, T* out, GraphParams p) { \
        gather16_impl<T>(idx, x, w, out, p);                                                                                  \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) graph_segment_reduce_##SUFFIX(                                       \
        const uint32_t* idx, const T* m, const float* w, const float* part, T* out, uint32_t* arg, GraphParams p) {        \
        row_reduce_impl<false, T>(idx, m, w, part, out, arg, p);                                                           \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_spmm_##SUFFIX(const uint32_t* idx, const T* x, const float* w, const float* part, T* out, GraphParams p) {  \
        row_reduce_impl<true, T>(idx, x, w, part, out, nullptr, p);                                                        \
    }                                                                                                                      \
    /* (256, 1): with (256) alone ptxas held the sm_90a builds to 48 registers and spilled. */                           \
    extern "C" __global__ void __launch_bounds__(256, 1) graph_segment_sum_warp_##SUFFIX(                                     \
        const uint32_t* idx, const T* m, const float* w, uint32_t* sync, T* out, GraphParams p) {                          \
        row_reduce_warp_impl<false, T>(idx, m, w, sync, out, p);                                                           \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256, 1)                                                                   \
        graph_spmm_warp_##SUFFIX(const uint32_t* idx, const T* x, const float* w, uint32_t* sync, T* out, GraphParams p) { \
        row_reduce_warp_impl<true, T>(idx, x, w, sync, out, p);                                                            \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_seg_partial_reduce_##SUFFIX(const uint32_t* idx, const T* m, const float* w, float* part, GraphParams p) {   \
        seg_partial_impl<false, T>(idx, m, w, part, p);                                                                    \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_seg_partial_spmm_##SUFFIX(const uint32_t* idx, const T* x, const float* w, float* part, GraphParams p) {     \
        seg_partial_impl<true, T>(idx, x, w, part, p);                                                                     \
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
        graph_edge_combine16_##SUFFIX(const uint32_t* idx, const T* ee, const T* pn, T* m, GraphParams p) {                \
        edge_combine16_impl<T>(idx, ee, pn, m, p);                                                                         \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_edge_dot_##SUFFIX(const T* x, const T* y, float* out, GraphParams p) {                                       \
        edge_dot_impl<T>(x, y, out, p);                                                                                    \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_sddmm16_##SUFFIX(const uint32_t* idx, const T* a, const T* b, float* s, GraphParams p) {                    \
        dot16_impl<true, T>(idx, a, b, s, p);                                                                              \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_edge_dot16_##SUFFIX(const T* x, const T* y, float* out, GraphParams p) {                                     \
        dot16_impl<false, T>(nullptr, x, y, out, p);                                                                       \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) graph_ln_forward_##SUFFIX(                                           \
        const T* x, const float* affine, T* y, float* stats, GraphParams p) {                                              \
        ln_forward_impl<T>(x, affine, y, stats, p);                                                                        \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) graph_ln_backward_##SUFFIX(                                          \
        const T* x, const T* dy, const float* gamma, const float* stats, T* dx, GraphParams p) {                           \
        ln_backward_impl<T>(x, dy, gamma, stats, dx, p);                                                                   \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) graph_ln_forward16_##SUFFIX(                                         \
        const T* x, const float* affine, T* y, float* stats, GraphParams p) {                                              \
        ln_forward16_impl<T>(x, affine, y, stats, p);                                                                      \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) graph_ln_backward16_##SUFFIX(                                        \
        const T* x, const T* dy, const float* gamma, const float* stats, T* dx, GraphParams p) {                           \
        ln_backward16_impl<T>(x, dy, gamma, stats, dx, p);                                                                 \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_ln_params_##SUFFIX(const T* x, const T* dy, const float* stats, float* part, GraphParams p) {               \
        ln_params_impl<T>(x, dy, stats, part, p);                                                                          \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_scale_add_##SUFFIX(const T* x, const T* y, const float* w, T* out, GraphParams p) {                          \
        scale_add_impl<T>(x, y, w, out, p);                                                                                \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                                      \
        graph_scale_add16_##SUFFIX(const T* x, const T* y, const float* w, T* out, GraphParams p) {                        \
        scale_add16_impl<T>(x, y, w, out, p);                                                                              \
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
extern "C" __global__ void __launch_bounds__(256) graph_ln_params_sum(const float* part, float* out, GraphParams p) {
    ln_params_sum_impl(part, out, p);
}
extern "C" __global__ void __launch_bounds__(256) graph_seg_fold(const uint32_t* idx, float* part, GraphParams p) {
    seg_fold_impl(idx, part, p);
}
extern "C" __global__ void __launch_bounds__(256)
    graph_softmax_partial(const uint32_t* idx, const float* w, const float* v, float2* part, GraphParams p) {
    softmax_partial_impl(idx, w, v, part, p);
}
extern "C" __global__ void __launch_bounds__(256)
    graph_softmax_stats(const uint32_t* idx, const float* w, const float* v, const float2* part, float2* stats, GraphParams p) {
    softmax_stats_impl(idx, w, v, part, stats, p);
}
extern "C" __global__ void __launch_bounds__(256)
    graph_softmax_write(const uint32_t* idx, const float* w, const float* v, const float2* stats, float* out, GraphParams p) {
    softmax_write_impl(idx, w, v, stats, out, p);
}
#endif
