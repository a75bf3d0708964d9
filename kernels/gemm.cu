// GEMM with fused epilogue (SPEC §1) and the two helpers of its backward.
//
// f16/bf16: tensor cores through mma.sync.m16n8k16 (f32 accumulate). Why it is fast: a 128×128
// block tile fed by a 3-stage cp.async pipeline (16-byte copies straight to shared memory, the
// next two K slices in flight while the current one is multiplied), ldmatrix fragment loads from
// padded (conflict-free) shared rows, and a 64×32 warp tile that reuses each A fragment 4× and
// each B fragment 4× from registers.
// f32: SIMT, 128×128×8 block tile, 8×8 register tile per thread, float4 shared-memory reads and
// register double buffering of the next K slice (no TF32, so results keep f32 accuracy).
// Both: bias, partial activation, residual and the saved pre-activation are applied to the
// accumulators in registers and written once.
//
// `_vec` entries take 16-byte copies and need A as [M,K] and B as [N,K] with 16-byte-aligned rows
// (the launcher checks); `_gen` entries read any layout and stride element by element, `_gen_a`
// entries A alone (B by 16-byte copies, `_bk` K-major).
#include "common.cuh"
#include <cuda.h>  // CUtensorMap

struct GemmParams {
    uint32_t m, n, k, batch;
    uint32_t lda, ldb, ldc, ldr;
    uint32_t sa, sb, sc, sr;
    uint32_t a_km, b_kn, act, act_cols;
    uint32_t has_bias, has_r, has_z;
    float alpha, beta;
    uint32_t off_a, off_b, off_bias, off_r, off_c, off_z;  // offsets: WGSL only (CUDA takes views)
    uint32_t a_cs, b_cs, c_cs;                             // inner strides (1 = contiguous)
    uint32_t bias_bs, bias_cs;                            // bias element (b, n) at b·bias_bs + n·bias_cs
    uint32_t kc, splits, vec_a, vec_b;                    // split-K, 16-byte slab loads: WGSL only
};

// ---------------------------------------------------------------------------------------------
// Epilogue: one or two adjacent columns of one row.
template <typename T>
__device__ __forceinline__ void epilogue2(const GemmParams& p, const T* __restrict__ bias, const T* __restrict__ R,
                                          T* __restrict__ C, T* __restrict__ Z, uint32_t bz, uint32_t row, uint32_t col,
                                          float acc0, float acc1) {
    if (row >= p.m || col >= p.n) return;
    const bool two = col + 1 < p.n;
    float v[2] = {p.alpha * acc0, p.alpha * acc1};
    float pre[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const uint32_t c = col + j;
        if (j == 1 && !two) break;
        if (p.has_bias) v[j] += to_f32(bias[(size_t)bz * p.bias_bs + (size_t)c * p.bias_cs]);
        pre[j] = v[j];
        if (c < p.act_cols) v[j] = act_apply(p.act, v[j]);
        if (p.has_r) v[j] += p.beta * to_f32(R[(size_t)bz * p.sr + (size_t)row * p.ldr + c]);
    }
    const size_t o = (size_t)bz * p.sc + (size_t)row * p.ldc + (size_t)col * p.c_cs;
    C[o] = from_f32<T>(v[0]);
    if (two) C[o + p.c_cs] = from_f32<T>(v[1]);
    if (p.has_z) {
        Z[o] = from_f32<T>(pre[0]);
        if (two) Z[o + p.c_cs] = from_f32<T>(pre[1]);
    }
}

// Split-K, for products with few output tiles and a long K (weight gradients summed over tens of
// thousands of rows would otherwise run on a handful of blocks): block z of a SPLIT launch sums
// only K slice [z·kc, (z + 1)·kc) of a single matrix (batch 1) and leaves its raw f32 tile in
// ws[z]; gemm_splitk_<dtype> then adds the slices in order (deterministic) and applies the
// epilogue.
// Whether the batches interleave in C (inner stride above 1, batches closer than it: BlockShuffle's
// output), so that each batch writes only part of every 32-byte sector. Such products take their
// tiles batch fastest, so that neighbouring blocks fill each sector together while L2 holds it,
// where in batch-major order each part would reach memory on its own.
__device__ __forceinline__ bool batches_interleave(const GemmParams& p) { return p.c_cs > 1 && p.sc < p.c_cs; }

// Tile t of a product's `batches` × `tiles` tiles (`tiles_n` to a row of tiles) in the order the
// blocks take them: batch-major, or batch fastest where batches_interleave.
struct TileAt {
    uint32_t bz, tm, tn;
};
__device__ __forceinline__ TileAt tile_at(const GemmParams& p, uint32_t t, uint32_t batches, uint32_t tiles, uint32_t tiles_n) {
    const bool fast = batches_interleave(p);
    const uint32_t bz = fast ? t % batches : t / tiles, rem = fast ? t / batches : t % tiles;
    return {bz, rem / tiles_n, rem % tiles_n};
}

// A block's tile (grid x: column tiles, y: row tiles, z: batches or K slices): its batch, first
// row and column, and K range.
struct KRange {
    uint32_t bz, m0, n0, k0, k1;
};
template <bool SPLIT, int BM, int BN>
__device__ __forceinline__ KRange k_range(const GemmParams& p, uint32_t kc) {
    if (SPLIT) {
        const uint32_t k0 = blockIdx.z * kc;
        return {0, blockIdx.y * BM, blockIdx.x * BN, k0, min(p.k, k0 + kc)};
    }
    // Blocks start in launch order (x fastest).
    const TileAt t = tile_at(p, blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z), gridDim.z, gridDim.x * gridDim.y, gridDim.x);
    return {t.bz, t.tm * BM, t.tn * BN, 0, p.k};
}

// One or two adjacent columns of one row: the epilogue, or (SPLIT) the raw sums into ws[z].
template <bool SPLIT, typename T>
__device__ __forceinline__ void finish2(const GemmParams& p, const T* __restrict__ bias, const T* __restrict__ R, T* __restrict__ C,
                                        T* __restrict__ Z, float* __restrict__ ws, uint32_t bz, uint32_t row, uint32_t col, float acc0,
                                        float acc1) {
    if (!SPLIT) {
        epilogue2<T>(p, bias, R, C, Z, bz, row, col, acc0, acc1);
        return;
    }
    if (row >= p.m || col >= p.n) return;
    float* o = ws + ((size_t)blockIdx.z * p.m + row) * p.n + col;
    o[0] = acc0;
    if (col + 1 < p.n) o[1] = acc1;
}

// Split-K's second pass: C = epilogue(Σ_z ws[z]), the slices added in order; two columns a thread.
template <typename T>
__device__ __forceinline__ void splitk_sum_impl(const float* __restrict__ ws, uint32_t splits, const T* __restrict__ bias, const T* __restrict__ R,
                                                T* __restrict__ C, T* __restrict__ Z, const GemmParams& p) {
    const uint32_t pairs = (p.n + 1) / 2;
    for (size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x; t < (size_t)p.m * pairs; t += (size_t)gridDim.x * blockDim.x) {
        const uint32_t row = (uint32_t)(t / pairs), col = (uint32_t)(t % pairs) * 2;
        const bool two = col + 1 < p.n;
        float a0 = 0.0f, a1 = 0.0f;
        for (uint32_t z = 0; z < splits; ++z) {
            const float* w = ws + ((size_t)z * p.m + row) * p.n + col;
            a0 += w[0];
            if (two) a1 += w[1];
        }
        epilogue2<T>(p, bias, R, C, Z, 0, row, col, a0, a1);
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core kernel (f16 / bf16).
namespace mma {
constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3, THREADS = 256;
constexpr int LDS = BK + 8;  // padded shared row (80 bytes): ldmatrix rows hit distinct banks
constexpr int LDT = BM + 8;  // a K-major tile's padded row (272 bytes), same reason
static_assert(BM == BN && BK * LDT <= BM * LDS, "a K-major tile fits an operand's share of a stage");
// How a kernel loads its operands: GEN element loads with any strides; VEC 16-byte copies of A
// [M,K] and B [N,K] rows; VEC_BK the same with B stored K-major ([K,N], the weights of dA = dC·W);
// VEC_AKBK with both K-major (A [K,M], B [K,N]: the weight gradient dW = dCᵀ·X); GEN_A and
// GEN_A_BK: A by element loads (any layout and strides, e.g. BlockShuffle's stride-k gather),
// B as VEC or VEC_BK.
enum Load { GEN = 0, VEC = 1, VEC_BK = 2, VEC_AKBK = 3, GEN_A = 4, GEN_A_BK = 5 };
__host__ __device__ constexpr bool a_gen(int load) { return load == GEN || load == GEN_A || load == GEN_A_BK; }
__host__ __device__ constexpr bool b_gen(int load) { return load == GEN; }
__host__ __device__ constexpr bool a_kmajor(int load) { return load == VEC_AKBK; }
__host__ __device__ constexpr bool b_kmajor(int load) { return load == VEC_BK || load == VEC_AKBK || load == GEN_A_BK; }
constexpr int STAGE_ELEMS = (BM + BN) * LDS;
constexpr int SMEM_BYTES = STAGES * STAGE_ELEMS * 2;
static_assert(SMEM_BYTES == 61440, "src/ops/gemm/cuda.rs launches the mma kernels with 61440 bytes of dynamic shared memory");

// 512 pieces of 16 bytes of a row-major global region into a shared tile with LD-element rows:
// tile row r = c / PER_ROW, columns 8·(c % PER_ROW) .. + 7 for piece c (two a thread), from global
// row row0 + r (`stride` elements apart), columns col0 + ..; zero-filled past `rows` and `cols`.
template <typename T, int PER_ROW, int LD>
__device__ __forceinline__ void copy_pieces(T* __restrict__ s, const T* __restrict__ g, uint32_t rows, uint32_t cols, uint32_t row0, uint32_t col0,
                                            uint32_t stride) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int c = threadIdx.x + i * THREADS;
        const int r = c / PER_ROW, cc = (c % PER_ROW) * 8;
        const uint32_t gr = row0 + r, gc = col0 + cc;
        int bytes = 0;
        const T* src = g;
        if (gr < rows && gc < cols) {
            bytes = (int)min(8u, cols - gc) * 2;
            src = g + (size_t)gr * stride + gc;
        }
        cp_async16(s + r * LD + cc, src, bytes);
    }
}

// The element-load path (any layout and strides): one thread's 16 elements of a 128×32 slice,
// read into registers by gen_fetch and written to a shared tile [128][LDS] by gen_store, so that
// the main loop keeps the next slice's loads in flight while the current one multiplies.
// Consecutive threads go along the dimension of the smaller stride (BlockShuffle's stride-k
// gather reads K at stride k: a warp then spans 32·k elements of one row, not 32 rows).
// Elements 2j and 2j+1 packed in one word: half the registers of one element each.
struct GenSlice {
    uint32_t w[(BM * BK) / THREADS / 2];
};
// Element i of this thread: row r + i·dr, column kk + i·dk of the slice.
struct GenWalk {
    int r, kk, dr, dk;
};
__device__ __forceinline__ GenWalk gen_walk(uint32_t rs, uint32_t ks) {
    const int t = threadIdx.x;
    if (ks <= rs) return {t / BK, t % BK, THREADS / BK, 0};
    return {t % BM, t / BM, 0, THREADS / BM};
}
template <typename T>
__device__ __forceinline__ void gen_fetch(GenSlice& f, const T* __restrict__ g, uint32_t rows, uint32_t K, uint32_t r0, uint32_t k0,
                                          uint32_t rs, uint32_t ks) {
    static_assert(sizeof(T) == 2, "16-bit elements");
    const GenWalk w = gen_walk(rs, ks);
    const uint32_t gr = r0 + w.r, gk = k0 + w.kk;
    const uint16_t* src = reinterpret_cast<const uint16_t*>(g) + (size_t)gr * rs + (size_t)gk * ks;
    const size_t step = (size_t)w.dr * rs + (size_t)w.dk * ks;
    auto at = [&](int i) -> uint32_t { return (gr + i * w.dr < rows && gk + i * w.dk < K) ? src[i * step] : 0u; };
#pragma unroll
    for (int j = 0; j < (BM * BK) / THREADS / 2; ++j) f.w[j] = at(2 * j) | (at(2 * j + 1) << 16);
}
__device__ __forceinline__ void gen_store(void* __restrict__ s, const GenSlice& f, uint32_t rs, uint32_t ks) {
    const GenWalk w = gen_walk(rs, ks);
    uint16_t* dst = reinterpret_cast<uint16_t*>(s) + w.r * LDS + w.kk;
    const int step = w.dr * LDS + w.dk;
#pragma unroll
    for (int j = 0; j < (BM * BK) / THREADS / 2; ++j) {
        dst[2 * j * step] = (uint16_t)f.w[j];
        dst[(2 * j + 1) * step] = (uint16_t)(f.w[j] >> 16);
    }
}

// Rows [r0, r0+128) × K slice [k0, k0+32) of an operand stored K-major (element (r, k) at
// k·ks + r, rows contiguous) into a shared tile [32][LDT] of k rows: 16-byte cp.async along the
// rows, zero-filled past the edges (rows a multiple of 8 elements apart, checked by the launcher).
template <typename T>
__device__ __forceinline__ void load_tile_kmajor(T* __restrict__ s, const T* __restrict__ g, uint32_t rows, uint32_t K, uint32_t r0, uint32_t k0,
                                                 uint32_t ks) {
    copy_pieces<T, BM / 8, LDT>(s, g, K, rows, k0, r0, ks);
}

template <typename T, int LOAD, bool SPLIT>
__device__ __forceinline__ void gemm_mma(const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ bias,
                                         const T* __restrict__ R, T* __restrict__ C, T* __restrict__ Z, const GemmParams& p, uint32_t kc,
                                         float* __restrict__ ws) {
    FFKERN_DYNAMIC_SMEM(smem_raw);
    T* smem = reinterpret_cast<T*>(smem_raw);
    const KRange kr = k_range<SPLIT, BM, BN>(p, kc);
    const uint32_t bz = kr.bz, m0 = kr.m0, n0 = kr.n0;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;
    const T* Ab = A + (size_t)bz * p.sa;
    const T* Bb = B + (size_t)bz * p.sb;
    const uint32_t a_rs = p.a_km ? p.a_cs : p.lda, a_ks = p.a_km ? p.lda : p.a_cs;
    const uint32_t b_rs = p.b_kn ? p.b_cs : p.ldb, b_ks = p.b_kn ? p.ldb : p.b_cs;

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    const int KT = (kr.k1 - kr.k0 + BK - 1) / BK;
    // An operand on element loads: the slice into registers (fetch), then into the stage
    // (store, after the current slice's products); the others copy straight into the stage with
    // cp.async.
    GenSlice fa, fb;
    auto fetch = [&](int kt) {
        const uint32_t k0 = kr.k0 + kt * BK;
        if (a_gen(LOAD)) gen_fetch<T>(fa, Ab, p.m, kr.k1, m0, k0, a_rs, a_ks);
        if (b_gen(LOAD)) gen_fetch<T>(fb, Bb, p.n, kr.k1, n0, k0, b_rs, b_ks);
    };
    auto store = [&](int stage) {
        T* sA = smem + stage * STAGE_ELEMS;
        if (a_gen(LOAD)) gen_store(sA, fa, a_rs, a_ks);
        if (b_gen(LOAD)) gen_store(sA + BM * LDS, fb, b_rs, b_ks);
    };
    auto copy = [&](int stage, int kt) {
        T* sA = smem + stage * STAGE_ELEMS;
        T* sB = sA + BM * LDS;
        const uint32_t k0 = kr.k0 + kt * BK;
        if (a_kmajor(LOAD)) load_tile_kmajor<T>(sA, Ab, p.m, kr.k1, m0, k0, a_ks);
        else if (!a_gen(LOAD)) copy_pieces<T, BK / 8, LDS>(sA, Ab, p.m, kr.k1, m0, k0, a_rs);
        if (b_kmajor(LOAD)) load_tile_kmajor<T>(sB, Bb, p.n, kr.k1, n0, k0, b_ks);
        else if (!b_gen(LOAD)) copy_pieces<T, BK / 8, LDS>(sB, Bb, p.n, kr.k1, n0, k0, b_rs);
    };
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < KT) {
            copy(s, s);
            fetch(s);
            store(s);
        }
        cp_async_commit();
    }
    for (int kt = 0; kt < KT; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        // Stage next % STAGES was last read in iteration kt − 1, which every thread has left.
        const int next = kt + STAGES - 1;
        if (next < KT) {
            copy(next % STAGES, next);
            fetch(next);
        }
        cp_async_commit();
        const T* sA = smem + (kt % STAGES) * STAGE_ELEMS;
        const T* sB = sA + BM * LDS;
#pragma unroll
        for (int ks = 0; ks < BK; ks += 16) {
            uint32_t af[4][4], bf[2][4];
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) {
                // K-major tiles give the same fragments through ldmatrix.trans (lane l addresses
                // row l % 8 of matrix l / 8; scripts/check_mma_layouts.py checks both forms).
                if (a_kmajor(LOAD))
                    ldmatrix_x4_trans(af[mt], sA + (ks + (lane % 8) + 8 * ((lane / 8) / 2)) * LDT + wm + mt * 16 + 8 * ((lane / 8) % 2));
                else
                    ldmatrix_x4(af[mt], sA + (wm + mt * 16 + (lane % 16)) * LDS + ks + (lane / 16) * 8);
            }
#pragma unroll
            for (int np = 0; np < 2; ++np) {
                if (b_kmajor(LOAD))
                    ldmatrix_x4_trans(bf[np], sB + (ks + (lane % 8) + 8 * ((lane / 8) % 2)) * LDT + wn + np * 16 + 8 * ((lane / 8) / 2));
                else
                    ldmatrix_x4(bf[np], sB + (wn + np * 16 + (lane % 8) + (lane / 16) * 8) * LDS + ks + ((lane / 8) % 2) * 8);
            }
#pragma unroll
            for (int mt = 0; mt < 4; ++mt)
#pragma unroll
                for (int nt = 0; nt < 4; ++nt) mma16816<T>(acc[mt][nt], af[mt], bf[nt / 2][(nt % 2) * 2], bf[nt / 2][(nt % 2) * 2 + 1]);
        }
        if (next < KT) store(next % STAGES);
    }
    cp_async_wait<0>();
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            const uint32_t row = m0 + wm + mt * 16 + lane / 4;
            const uint32_t col = n0 + wn + nt * 8 + (lane % 4) * 2;
            finish2<SPLIT, T>(p, bias, R, C, Z, ws, bz, row, col, acc[mt][nt][0], acc[mt][nt][1]);
            finish2<SPLIT, T>(p, bias, R, C, Z, ws, bz, row + 8, col, acc[mt][nt][2], acc[mt][nt][3]);
        }
}
}  // namespace mma

// ---------------------------------------------------------------------------------------------
// SIMT kernel (f32).
namespace simt {
constexpr int BM = 128, BN = 128, BK = 8, THREADS = 256;

// Loads 4 elements of rows [r0, r0+128) × [k0, k0+8) into registers; `slot` = which 4.
// VEC (unit K stride, 16-byte-aligned rows): one float4 per thread along K.
template <bool VEC>
__device__ __forceinline__ void load_regs(float (&v)[4], int (&rr)[4], int (&kk)[4], const float* __restrict__ g, uint32_t rows,
                                          uint32_t K, uint32_t r0, uint32_t k0, uint32_t rs, uint32_t ks) {
    const int t = threadIdx.x;
    if (VEC) {
        const int r = t / 2, kc = (t % 2) * 4;
        const uint32_t gr = r0 + r, gk = k0 + kc;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            rr[i] = r;
            kk[i] = kc + i;
        }
        if (gr < rows && gk + 3 < K) {
            const float4 x = *reinterpret_cast<const float4*>(g + (size_t)gr * rs + gk);
            v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w;
        } else {
#pragma unroll
            for (int i = 0; i < 4; ++i) v[i] = (gr < rows && gk + i < K) ? g[(size_t)gr * rs + gk + i] : 0.0f;
        }
    } else {
        const bool k_fast = ks <= rs;  // as the tensor-core kernel's gen_fetch
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int e = t + i * THREADS;
            const int r = k_fast ? e / BK : e % BM;
            const int k = k_fast ? e % BK : e / BM;
            rr[i] = r;
            kk[i] = k;
            const uint32_t gr = r0 + r, gk = k0 + k;
            v[i] = (gr < rows && gk < K) ? g[(size_t)gr * rs + (size_t)gk * ks] : 0.0f;
        }
    }
}

template <bool VEC, bool SPLIT>
__device__ __forceinline__ void gemm_simt(const float* __restrict__ A, const float* __restrict__ B, const float* __restrict__ bias,
                                          const float* __restrict__ R, float* __restrict__ C, float* __restrict__ Z,
                                          const GemmParams& p, uint32_t kc, float* __restrict__ ws) {
    __shared__ __align__(16) float As[2][BK][BM];
    __shared__ __align__(16) float Bs[2][BK][BN];
    const KRange kr = k_range<SPLIT, BM, BN>(p, kc);
    const uint32_t bz = kr.bz, m0 = kr.m0, n0 = kr.n0;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const float* Ab = A + (size_t)bz * p.sa;
    const float* Bb = B + (size_t)bz * p.sb;
    const uint32_t a_rs = p.a_km ? p.a_cs : p.lda, a_ks = p.a_km ? p.lda : p.a_cs;
    const uint32_t b_rs = p.b_kn ? p.b_cs : p.ldb, b_ks = p.b_kn ? p.ldb : p.b_cs;

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

    float va[4], vb[4];
    int ra[4], ka[4], rb[4], kb[4];
    const int KT = (kr.k1 - kr.k0 + BK - 1) / BK;
    load_regs<VEC>(va, ra, ka, Ab, p.m, kr.k1, m0, kr.k0, a_rs, a_ks);
    load_regs<VEC>(vb, rb, kb, Bb, p.n, kr.k1, n0, kr.k0, b_rs, b_ks);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        As[0][ka[i]][ra[i]] = va[i];
        Bs[0][kb[i]][rb[i]] = vb[i];
    }
    __syncthreads();
    for (int kt = 0; kt < KT; ++kt) {
        const int cur = kt & 1;
        if (kt + 1 < KT) {
            load_regs<VEC>(va, ra, ka, Ab, p.m, kr.k1, m0, kr.k0 + (kt + 1) * BK, a_rs, a_ks);
            load_regs<VEC>(vb, rb, kb, Bb, p.n, kr.k1, n0, kr.k0 + (kt + 1) * BK, b_rs, b_ks);
        }
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[8], b[8];
            const float4 a0 = *reinterpret_cast<const float4*>(&As[cur][k][ty * 4]);
            const float4 a1 = *reinterpret_cast<const float4*>(&As[cur][k][64 + ty * 4]);
            const float4 b0 = *reinterpret_cast<const float4*>(&Bs[cur][k][tx * 4]);
            const float4 b1 = *reinterpret_cast<const float4*>(&Bs[cur][k][64 + tx * 4]);
            a[0] = a0.x; a[1] = a0.y; a[2] = a0.z; a[3] = a0.w; a[4] = a1.x; a[5] = a1.y; a[6] = a1.z; a[7] = a1.w;
            b[0] = b0.x; b[1] = b0.y; b[2] = b0.z; b[3] = b0.w; b[4] = b1.x; b[5] = b1.y; b[6] = b1.z; b[7] = b1.w;
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        if (kt + 1 < KT) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                As[cur ^ 1][ka[i]][ra[i]] = va[i];
                Bs[cur ^ 1][kb[i]][rb[i]] = vb[i];
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const uint32_t row = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
#pragma unroll
        for (int j = 0; j < 8; j += 2) {
            const uint32_t col = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + (j - 4));
            finish2<SPLIT, float>(p, bias, R, C, Z, ws, bz, row, col, acc[i][j], acc[i][j + 1]);
        }
    }
}
}  // namespace simt

#if !defined(FFKERN_SM90A)  // the compute_90a PTX carries only the Hopper entries below
#define GEMM_MMA_ENTRY(NAME, T, LOAD)                                                                                      \
    extern "C" __global__ void __launch_bounds__(mma::THREADS) NAME(const T* A, const T* B, const T* bias, const T* R, T* C, \
                                                                    T* Z, GemmParams p) {                                  \
        mma::gemm_mma<T, LOAD, false>(A, B, bias, R, C, Z, p, 0, nullptr);                                                 \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(mma::THREADS) NAME##_split(const T* A, const T* B, GemmParams p, uint32_t kc, \
                                                                            float* ws) {                                   \
        mma::gemm_mma<T, LOAD, true>(A, B, nullptr, nullptr, nullptr, nullptr, p, kc, ws);                                 \
    }
GEMM_MMA_ENTRY(gemm_f16_vec, __half, mma::VEC)
GEMM_MMA_ENTRY(gemm_f16_gen, __half, mma::GEN)
GEMM_MMA_ENTRY(gemm_f16_vec_bk, __half, mma::VEC_BK)
GEMM_MMA_ENTRY(gemm_f16_vec_akbk, __half, mma::VEC_AKBK)
GEMM_MMA_ENTRY(gemm_f16_gen_a, __half, mma::GEN_A)
GEMM_MMA_ENTRY(gemm_f16_gen_a_bk, __half, mma::GEN_A_BK)
GEMM_MMA_ENTRY(gemm_bf16_vec, __nv_bfloat16, mma::VEC)
GEMM_MMA_ENTRY(gemm_bf16_gen, __nv_bfloat16, mma::GEN)
GEMM_MMA_ENTRY(gemm_bf16_vec_bk, __nv_bfloat16, mma::VEC_BK)
GEMM_MMA_ENTRY(gemm_bf16_vec_akbk, __nv_bfloat16, mma::VEC_AKBK)
GEMM_MMA_ENTRY(gemm_bf16_gen_a, __nv_bfloat16, mma::GEN_A)
GEMM_MMA_ENTRY(gemm_bf16_gen_a_bk, __nv_bfloat16, mma::GEN_A_BK)

#define GEMM_SIMT_ENTRY(NAME, VEC)                                                                                         \
    extern "C" __global__ void __launch_bounds__(simt::THREADS)                                                            \
        NAME(const float* A, const float* B, const float* bias, const float* R, float* C, float* Z, GemmParams p) {       \
        simt::gemm_simt<VEC, false>(A, B, bias, R, C, Z, p, 0, nullptr);                                                   \
    }                                                                                                                      \
    extern "C" __global__ void __launch_bounds__(simt::THREADS)                                                            \
        NAME##_split(const float* A, const float* B, GemmParams p, uint32_t kc, float* ws) {                               \
        simt::gemm_simt<VEC, true>(A, B, nullptr, nullptr, nullptr, nullptr, p, kc, ws);                                   \
    }
GEMM_SIMT_ENTRY(gemm_f32_vec, true)
GEMM_SIMT_ENTRY(gemm_f32_gen, false)

#define GEMM_SPLITK_ENTRY(SUFFIX, T)                                                                                       \
    extern "C" __global__ void __launch_bounds__(256) gemm_splitk_##SUFFIX(const float* ws, uint32_t splits, const T* bias, \
                                                                           const T* R, T* C, T* Z, GemmParams p) {         \
        splitk_sum_impl<T>(ws, splits, bias, R, C, Z, p);                                                                  \
    }
GEMM_SPLITK_ENTRY(f32, float)
GEMM_SPLITK_ENTRY(f16, __half)
GEMM_SPLITK_ENTRY(bf16, __nv_bfloat16)
#endif  // !FFKERN_SM90A

// ---------------------------------------------------------------------------------------------
// Hopper (sm_90a) tensor-core kernel: wgmma. Compiled only into the compute_90a PTX (build.rs
// defines FFKERN_SM90A) and chosen at run time on compute capability 9.0 when A is [M,K] and B is
// [N,K] with 16-byte-aligned rows (the copy engine's requirement); other cases take mma.sync.
//
// Why it is fast: warp specialisation around the copy engine. One producer thread issues TMA
// tensor copies (128-byte-swizzled 128×64 and 256×64 boxes, zero-filled past the edges) into a
// 4-stage shared-memory ring, each stage completing on a "full" mbarrier; two consumer
// warpgroups issue m64n256k16 wgmma straight from shared memory (no per-thread loads at all) and
// hand each stage back through an "empty" mbarrier as soon as its wgmma group retires. Nobody
// waits at a block-wide barrier; the grid is persistent, so the producer prefetches the next tile
// while the consumers run the epilogue, which is staged through shared memory so that C, Z and R
// move in 16-byte coalesced accesses. setmaxnreg gives the producer's registers to the consumers.
//
// Three schedules. Cooperative (PP false): both consumer warpgroups share a 128×256 tile (64 rows
// each), so they run the epilogue together while the tensor cores wait. Ping-pong (PP true): each
// warpgroup owns whole 64×256 tiles, alternate tiles of the block's sequence, so one warpgroup's
// epilogue overlaps the other's products; an "order" mbarrier per warpgroup lets a warpgroup start
// its products only when the other has taken the stages of the tile before (the ring hands the
// stages out in tile order, so that is also what keeps each full-barrier wait unambiguous).
// Epilogue warps (EW true): cooperative tiles, but the consumers only stage α·acc + bias (in T)
// for the whole tile and go on to the next tile's products; warps 1–3 of the producer's
// warpgroup, idle otherwise, apply the activation and residual and write C and Z from the staged
// tile meanwhile (two "staged" mbarriers hand the tile back and forth). The activation then reads
// the pre-activation rounded to T, as Z stores it.
#if defined(FFKERN_SM90A)
namespace hopper {
constexpr int BN = 256, BK = 64, STAGES = 4, THREADS = 384;
// The epilogue-warps schedule (EW): a 3-stage ring, then the whole 128×256 tile's pre-activation
// in T (64 KiB) where the fourth stage and the f32 staging were.
constexpr int EW_STAGES = 3;
template <bool PP> __host__ __device__ constexpr int tile_m() { return PP ? 64 : 128; }
template <bool PP> __host__ __device__ constexpr int stage_bytes() { return (tile_m<PP>() + BN) * BK * 2; }
// Ring + slack to align it to 1024 B (the swizzle atom) + the epilogue staging (64×64 f32 per
// consumer warpgroup).
constexpr int EPI_BYTES = 2 * 64 * 64 * 4;
constexpr int SMEM_BYTES = STAGES * stage_bytes<false>() + 1024 + EPI_BYTES;
static_assert(SMEM_BYTES == 230400, "src/ops/gemm/cuda.rs launches the wgmma kernels with 230400 bytes of dynamic shared memory");
static_assert(STAGES * stage_bytes<true>() + 1024 + EPI_BYTES <= SMEM_BYTES, "the ping-pong ring fits the same allocation");
static_assert(EW_STAGES * stage_bytes<false>() + 1024 + 128 * BN * 2 <= SMEM_BYTES, "the EW ring and staged tile fit the same allocation");

// Descriptor of a K-major tile with 128-byte rows in the 128-byte swizzle (8-row atoms of 1024 B),
// starting at `addr`, K step `ks` (16 elements = 32 bytes inside the row).
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, int ks) {
    uint64_t d = (uint64_t)(((addr + ks * 32) & 0x3FFFF) >> 4);
    d |= (uint64_t)1 << 16;            // leading byte offset: unused with this swizzle
    d |= (uint64_t)(1024 >> 4) << 32;  // stride byte offset: one 8-row atom
    d |= (uint64_t)1 << 62;            // 128-byte swizzle
    return d;
}

#if !defined(FFKERN_EMU)  // scripts/cuda-emu/emu.h supplies the PTX below on the host (sm_90 emulation)
template <typename T> __device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t da, uint64_t db);
template <> __device__ __forceinline__ void wgmma_m64n256k16<__half>(float (&d)[128], uint64_t da, uint64_t db) {
    asm volatile(
        "{\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
        "%128, %129, 1, 1, 1, 0, 0;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(da), "l"(db));
}

template <> __device__ __forceinline__ void wgmma_m64n256k16<__nv_bfloat16>(float (&d)[128], uint64_t da, uint64_t db) {
    asm volatile(
        "{\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
        "%128, %129, 1, 1, 1, 0, 0;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(da), "l"(db));
}


__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
    uint32_t ok;
    asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(ok)
                 : "r"(bar), "r"(parity)
                 : "memory");
    return ok != 0;
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// One box of a 3-D tensor map (coordinates innermost first) into shared memory, completing on `bar`.
__device__ __forceinline__ void tma_load(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
        : "memory");
}
__device__ __forceinline__ void named_barrier(uint32_t id, uint32_t threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void fence_mbarrier_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N> __device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
// The special-function unit's approximations (rcp and ex2 flush subnormals).
__device__ __forceinline__ float rcp_approx(float x) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ float ex2_approx(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ float tanh_approx(float x) {
    float r;
    asm("tanh.approx.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}
#endif  // !FFKERN_EMU
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    while (!mbar_try_wait(bar, parity)) {
    }
}

// What the writer reads of GemmParams, small enough to pass to it in registers; oc and orr are
// the batch's offsets into C (and Z) and R.
struct EpiArgs {
    uint32_t m, n, ldc, ldr, act, act_cols, has_r, has_z;
    uint32_t cs;  // C's (and Z's) inner stride: column c of a row at c·cs
    float beta;
    size_t oc, orr;
    bool vec;   // every 8-column group's C (and R, Z) is 16-byte aligned: see tile_epi
    bool tvec;  // C (and Z) transposed (rows 1 apart) with every 8-row group 16-byte aligned
};

// The writer's arguments for a tile of batch bz. vec: whether 8 consecutive columns from a
// multiple of 8 always start 16 bytes aligned in C, R and Z (bases and row strides), decided once
// per tile instead of per 8 columns; tvec: the same of 8 consecutive rows in a C (and Z) stored
// transposed (BlockShuffle's gathered first product).
template <typename T>
__device__ __forceinline__ EpiArgs tile_epi(const GemmParams& p, uint32_t bz, const T* R, const T* C, const T* Z) {
    static_assert(sizeof(T) == 2, "16-bit outputs");
    const size_t oc = (size_t)bz * p.sc, orr = (size_t)bz * p.sr;
    const auto al = [](const T* base, size_t off, uint32_t ld) { return ((reinterpret_cast<uintptr_t>(base + off) & 15) == 0) && ld % 8 == 0; };
    const bool vec = p.c_cs == 1 && al(C, oc, p.ldc) && (!p.has_r || al(R, orr, p.ldr)) && (!p.has_z || al(Z, oc, p.ldc));
    const bool tvec = p.ldc == 1 && al(C, oc, p.c_cs) && (!p.has_z || al(Z, oc, p.c_cs));
    return EpiArgs{p.m, p.n, p.ldc, p.ldr, p.act, p.act_cols, p.has_r, p.has_z, p.c_cs, p.beta, oc, orr, vec, tvec};
}

// The activations of the wgmma epilogue, whose outputs are f16/bf16: gelu_tanh takes the hardware
// tanh (tanh.approx.f32, relative error about 2^-11, within half an f16 ulp) and silu a fast
// division, where act_eval's accurate tanhf and IEEE division cost several times as many
// instructions per element; gelu_erf takes erf by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7)
// on the hardware reciprocal and exp2: one polynomial and no selects, about half of erff's
// instructions (erff picks one of two polynomials per element, with a select per coefficient),
// and as close to exact GELU in f32 as erff (largest error about 4.7e-7 against 4.2e-7). The
// others are act_eval's.
template <uint32_t ACT>
__device__ __forceinline__ float act16(float x) {
    if constexpr (ACT == 3) {
        // erf(u) at u = x/√2, with 1/√2 folded into the constants (one multiply fewer).
        // rcp and ex2 flush subnormals: the divisor is ≥ 1, and e^(−u²) below 2^-126 is 0 here.
        const float a = fabsf(x);
        const float t = rcp_approx(fmaf(0.3275911f * 0.70710678118654752f, a, 1.0f));
        const float e = ex2_approx(a * a * (-0.5f * 1.4426950408889634f));
        const float p = t * fmaf(fmaf(fmaf(fmaf(1.061405429f, t, -1.453152027f), t, 1.421413741f), t, -0.284496736f), t, 0.254829592f);
        const float erf = copysignf(fmaf(-p, e, 1.0f), x);
        const float h = 0.5f * x;
        return fmaf(h, erf, h);
    } else if constexpr (ACT == 4) {
        const float t = tanh_approx(0.79788456080286536f * (x + 0.044715f * x * x * x));
        return 0.5f * x * (1.0f + t);
    } else if constexpr (ACT == 2) {
        return __fdividef(x, 1.0f + __expf(-fmaxf(x, -80.0f)));
    } else {
        return act_eval(ACT, x);
    }
}

// The warp-specialised kernel's epilogue, second half: 8 consecutive columns of one row from the
// staged pre-activation z (bias already added): activation, residual, then 16-byte stores of C
// (and Z) where aligned, element stores at the edges. ACT is the activation as a template
// argument: the 8 columns are then 8 independent branch-free chains that the scheduler
// interleaves, where a run-time switch per element made each one wait out the last (the
// epilogue runs while the tensor cores idle, so its latency is the kernel's). ALL: every column
// of the chunk is below act_cols (no per-column test).
template <typename T, uint32_t ACT, bool ALL>
__device__ __forceinline__ void epilogue8(const EpiArgs& p, const T* __restrict__ R, T* __restrict__ C, T* __restrict__ Z,
                                          uint32_t row, uint32_t col, const float (&z)[8]) {
    const size_t o = p.oc + (size_t)row * p.ldc + (size_t)col * p.cs;
    const size_t orr = p.orr + (size_t)row * p.ldr + col;
    alignas(16) T out[8];
    if (p.vec && col + 8 <= p.n) {
        alignas(16) T rv[8];
        if (p.has_r) *reinterpret_cast<uint4*>(rv) = *reinterpret_cast<const uint4*>(R + orr);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float a = act16<ACT>(z[j]);
            float v = ALL || col + j < p.act_cols ? a : z[j];
            if (p.has_r) v += p.beta * to_f32(rv[j]);
            out[j] = from_f32<T>(v);
        }
        *reinterpret_cast<uint4*>(C + o) = *reinterpret_cast<const uint4*>(out);
        if (p.has_z) {
#pragma unroll
            for (int j = 0; j < 8; ++j) out[j] = from_f32<T>(z[j]);
            *reinterpret_cast<uint4*>(Z + o) = *reinterpret_cast<const uint4*>(out);
        }
        return;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j)
        if (col + j < p.n) {
            float v = z[j];
            if (ALL || col + j < p.act_cols) v = act16<ACT>(v);
            if (p.has_r) v += p.beta * to_f32(R[orr + j]);
            C[o + j * p.cs] = from_f32<T>(v);
            if (p.has_z) Z[o + j * p.cs] = from_f32<T>(z[j]);
        }
}

// One staged 64×64 chunk of a consumer warpgroup's tile, written out by its 128 threads (8
// columns each, 16 rows per pass).
template <typename T, uint32_t ACT, bool ALL>
__device__ __forceinline__ void epilogue_chunk_act(const EpiArgs& p, const T* __restrict__ R, T* __restrict__ C, T* __restrict__ Z,
                                                   const float* stage, uint32_t row0, uint32_t col0, int t) {
#pragma unroll 1
    for (int pass = 0; pass < 4; ++pass) {
        const int lr = pass * 16 + t / 8, lc = (t % 8) * 8;
        const uint32_t grow = row0 + lr, gcol = col0 + lc;
        if (grow < p.m && gcol < p.n) {
            // The 8 lanes of a quarter-warp read the 8 groups of one staged row; groups 4–7 take
            // their upper half first, so that each 16-byte load meets every bank once (in order,
            // groups g and g + 4 would share banks: two wavefronts a load).
            const int g = (t % 8) ^ (lr & 7), h = (g >> 2) & 1;
            const float* src = stage + lr * 64 + g * 8;
            const float4 a = *reinterpret_cast<const float4*>(src + 4 * h);
            const float4 b = *reinterpret_cast<const float4*>(src + 4 - 4 * h);
            const float4 lo = h ? b : a, hi = h ? a : b;
            const float z[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
            epilogue8<T, ACT, ALL>(p, R, C, Z, grow, gcol, z);
        }
    }
}

// The element writer of epilogue_chunk_strided: thread t keeps column t mod 64 of the chunk and
// walks every second row from row t / 64 (DOWN: keeps a row and walks columns), so that its
// addresses in the stage, C, R and Z each advance by a constant and its edge test is a trip count;
// four staged values are read before the first is used, and the activation is a select, not a
// branch. EXTRA: R or Z is present (without, their tests leave the loop). Per element, the index
// arithmetic, predicated R and Z accesses and branches had cost more than the activation.
template <typename T, uint32_t ACT, bool DOWN, bool EXTRA>
__device__ __forceinline__ void epilogue_chunk_walk(const EpiArgs& p, const T* __restrict__ R, T* __restrict__ C, T* __restrict__ Z,
                                                    const float* stage, uint32_t row0, uint32_t col0, int t) {
    const uint32_t fixed = t % 64, first = t / 64;
    const uint32_t lr = DOWN ? fixed : first, lc = DOWN ? first : fixed;
    const uint32_t grow = row0 + lr, gcol = col0 + lc;
    if (grow >= p.m || gcol >= p.n) return;
    const uint32_t edge = DOWN ? min(64u, p.n - col0) : min(64u, p.m - row0), steps = (edge - first + 1) / 2;
    size_t o = p.oc + (size_t)grow * p.ldc + (size_t)gcol * p.cs, orr = p.orr + (size_t)grow * p.ldr + gcol;
    const size_t dc = 2 * (size_t)(DOWN ? p.cs : p.ldc), dr = DOWN ? 2 : 2 * (size_t)p.ldr;
#pragma unroll 1
    for (uint32_t i = 0; i < steps; i += 4) {
        float z[4];
#pragma unroll
        for (uint32_t j = 0; j < 4; ++j) {
            const uint32_t w = first + 2 * (i + j), r = DOWN ? fixed : w, c = DOWN ? w : fixed;
            z[j] = i + j < steps ? stage[r * 64 + (c ^ ((r & 7) << 3))] : 0.0f;
        }
#pragma unroll
        for (uint32_t j = 0; j < 4; ++j) {
            if (i + j >= steps) break;
            const bool on = (DOWN ? gcol + 2 * (i + j) : gcol) < p.act_cols;
            const float a = act16<ACT>(z[j]);
            float v = on ? a : z[j];
            if (EXTRA && p.has_r) v += p.beta * to_f32(R[orr + j * dr]);
            C[o + j * dc] = from_f32<T>(v);
            if (EXTRA && p.has_z) Z[o + j * dc] = from_f32<T>(z[j]);
        }
        o += 4 * dc, orr += 4 * dr;
    }
}

// A staged 64×64 chunk for a C with an inner stride (BlockShuffle's interleaved output, columns
// cs elements apart, or its transposed first product, rows 1 apart), where there are no 16-byte
// groups to store: consecutive threads walk the nearer of rows and columns, so that a warp's store
// spans 32 elements that stride apart (the fewest sectors such a C allows), where 8 columns of 4
// rows each would touch 4× as many or, transposed, 32 scattered ones.
// A C stored transposed with aligned 8-row groups (tvec) takes them as 16-byte stores instead:
// a warp's lanes take 16 columns × 2 adjacent row groups, so each column's 32 bytes are one whole
// sector and the staged reads (the swizzle spreads a row group's 8 rows over 8 bank groups) meet
// at most 2 to a bank.
template <typename T, uint32_t ACT>
__device__ __forceinline__ void epilogue_chunk_strided(const EpiArgs& p, const T* __restrict__ R, T* __restrict__ C, T* __restrict__ Z,
                                                       const float* stage, uint32_t row0, uint32_t col0, int t) {
    if (p.tvec) {
        const int lane = t % 32;
#pragma unroll 1
        for (int u = t / 32; u < 16; u += 4) {
            const int lc = 16 * (u % 4) + lane % 16, lr0 = 8 * (2 * (u / 4) + lane / 16);
            const uint32_t grow = row0 + lr0, gcol = col0 + lc;
            if (grow >= p.m || gcol >= p.n) continue;
            float z[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) z[j] = stage[(lr0 + j) * 64 + (lc ^ (j << 3))];  // (lr0 + j) mod 8 = j
            const bool a = gcol < p.act_cols, whole = grow + 8 <= p.m;
            alignas(16) T out[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                float v = a ? act16<ACT>(z[j]) : z[j];
                if (p.has_r && (whole || grow + j < p.m)) v += p.beta * to_f32(R[p.orr + (size_t)(grow + j) * p.ldr + gcol]);
                out[j] = from_f32<T>(v);
            }
            const size_t o = p.oc + grow + (size_t)gcol * p.cs;  // ldc = 1
            if (whole) {
                *reinterpret_cast<uint4*>(C + o) = *reinterpret_cast<const uint4*>(out);
                if (p.has_z) {
#pragma unroll
                    for (int j = 0; j < 8; ++j) out[j] = from_f32<T>(z[j]);
                    *reinterpret_cast<uint4*>(Z + o) = *reinterpret_cast<const uint4*>(out);
                }
            } else {
#pragma unroll
                for (int j = 0; j < 8; ++j)
                    if (grow + j < p.m) {
                        C[o + j] = out[j];
                        if (p.has_z) Z[o + j] = from_f32<T>(z[j]);
                    }
            }
        }
        return;
    }
    // A C with rows closer than its columns (transposed, not in 8-row groups) is rare: one form.
    if (p.ldc < p.cs) epilogue_chunk_walk<T, ACT, true, true>(p, R, C, Z, stage, row0, col0, t);
    else if (p.has_r || p.has_z) epilogue_chunk_walk<T, ACT, false, true>(p, R, C, Z, stage, row0, col0, t);
    else epilogue_chunk_walk<T, ACT, false, false>(p, R, C, Z, stage, row0, col0, t);
}

// Calls f(Act<k>{}) with activation k = act as a compile-time constant (0, the identity, for any
// other value), so that each activation's writer is instantiated on its own.
template <uint32_t K>
struct Act {
    static constexpr uint32_t value = K;
};
template <typename F>
__device__ __forceinline__ void with_act(uint32_t act, F&& f) {
    switch (act) {
    case 1: f(Act<1>{}); break;
    case 2: f(Act<2>{}); break;
    case 3: f(Act<3>{}); break;
    case 4: f(Act<4>{}); break;
    case 5: f(Act<5>{}); break;
    default: f(Act<0>{}); break;
    }
}

// The activation is chosen once per chunk: a chunk wholly past act_cols (RePaViT's idle
// channels, half of its first product's columns) takes the identity instead of evaluating the
// activation only to discard it — the same values — and a chunk wholly before it skips the
// per-column test. Out of line: the unrolled caller would otherwise copy it 4×.
template <typename T>
__device__ __noinline__ void epilogue_chunk(const EpiArgs p, const T* __restrict__ R, T* __restrict__ C, T* __restrict__ Z, const float* stage,
                                            uint32_t row0, uint32_t col0, int t) {
    with_act(col0 >= p.act_cols ? 0u : p.act, [&](auto a) {
        constexpr uint32_t K = decltype(a)::value;
        if (p.cs != 1) epilogue_chunk_strided<T, K>(p, R, C, Z, stage, row0, col0, t);
        else if constexpr (K == 0) epilogue_chunk_act<T, 0, true>(p, R, C, Z, stage, row0, col0, t);
        else if (col0 + 64 <= p.act_cols) epilogue_chunk_act<T, K, true>(p, R, C, Z, stage, row0, col0, t);
        else epilogue_chunk_act<T, K, false>(p, R, C, Z, stage, row0, col0, t);
    });
}

// The epilogue warps' writer (EW): the staged 128×256 tile (pre-activation in T, row r's
// 16-byte group g at r·512 + (g ^ (r mod 8))·16) by 96 threads, 8 columns each.
template <typename T, uint32_t ACT>
__device__ __forceinline__ void epilogue_staged_act(const EpiArgs& p, const T* __restrict__ R, T* __restrict__ C, T* __restrict__ Z,
                                                    const unsigned char* st, uint32_t m0, uint32_t n0, int et) {
#pragma unroll 1
    for (int g = et; g < 128 * 32; g += 96) {
        const int r = g / 32, grp = g % 32;
        const uint32_t grow = m0 + r, gcol = n0 + grp * 8;
        if (grow < p.m && gcol < p.n) {
            const uint4 raw = *reinterpret_cast<const uint4*>(st + r * 512 + ((grp ^ (r & 7)) * 16));
            const T* h = reinterpret_cast<const T*>(&raw);
            float z[8];
#pragma unroll
            for (int k = 0; k < 8; ++k) z[k] = to_f32(h[k]);
            epilogue8<T, ACT, false>(p, R, C, Z, grow, gcol, z);
        }
    }
}
template <typename T>
__device__ __forceinline__ void epilogue_staged(const EpiArgs& p, const T* __restrict__ R, T* __restrict__ C, T* __restrict__ Z, const unsigned char* st,
                                                uint32_t m0, uint32_t n0, int et) {
    with_act(p.act, [&](auto a) { epilogue_staged_act<T, decltype(a)::value>(p, R, C, Z, st, m0, n0, et); });
}

template <typename T, bool PP, bool EW>
__device__ __forceinline__ void gemm_wgmma(const CUtensorMap* tmA, const CUtensorMap* tmB, const T* __restrict__ bias,
                                           const T* __restrict__ R, T* __restrict__ C, T* __restrict__ Z, const GemmParams& p) {
    static_assert(!(PP && EW), "one schedule");
    constexpr int BM = tile_m<PP>(), STAGE_BYTES = stage_bytes<PP>(), NST = EW ? EW_STAGES : STAGES;
    FFKERN_DYNAMIC_SMEM(smem_raw);
    // full[0, NST), empty[STAGES, STAGES + NST), order[2·STAGES + w]: warpgroup w may start its
    // next tile's products (ping-pong only); staged[2·STAGES + 2 + {0, 1}]: the tile's
    // pre-activation is in the staging tile / the epilogue warps are done with it (EW only).
    __shared__ __align__(8) uint64_t bars[2 * STAGES + 4];
    const uint32_t base = (mma::smem_addr(smem_raw) + 1023) & ~1023u;
    const uint32_t bar0 = mma::smem_addr(bars), order0 = bar0 + 8 * (2 * STAGES), staged0 = order0 + 16;
    if (threadIdx.x == 0) {
        for (int s = 0; s < NST; ++s) {
            mbar_init(bar0 + 8 * s, 1);                        // the producer's arrive.expect_tx
            mbar_init(bar0 + 8 * (STAGES + s), PP ? 4 : 8);  // one arrival per consuming warp
        }
        mbar_init(order0, 1);
        mbar_init(order0 + 8, 1);
        mbar_init(staged0, 8);      // one arrival per consumer warp
        mbar_init(staged0 + 8, 3);  // one per epilogue warp
        fence_mbarrier_init();
    }
    __syncthreads();
    const uint32_t tiles_m = (p.m + BM - 1) / BM, tiles_n = (p.n + BN - 1) / BN;
    const uint32_t per_batch = tiles_m * tiles_n, total = per_batch * p.batch;
    const int KT = (p.k + BK - 1) / BK;
    const int wg = threadIdx.x / 128;
    if (wg == 0) {
        // The block holds 384 · 168 = 64512 registers (__launch_bounds__(384, 1)), never more:
        // 40·128 + 232·256, or EW, 72·128 + 216·256 with the epilogue warps. An inc past the
        // pool waits for ever.
        if (EW) setmaxnreg_dec<72>();
        else setmaxnreg_dec<40>();
        if (EW && threadIdx.x >= 32) {
            // Warps 1–3: the epilogue of each staged tile while the consumers multiply the next.
            uint32_t j = 0;
            for (uint32_t tile = blockIdx.x; tile < total; tile += gridDim.x, ++j) {
                const TileAt o = tile_at(p, tile, p.batch, per_batch, tiles_n);
                const uint32_t bz = o.bz, m0 = o.tm * BM, n0 = o.tn * BN;
                mbar_wait(staged0, j & 1);
                epilogue_staged<T>(tile_epi<T>(p, bz, R, C, Z), R, C, Z, smem_raw + (base - mma::smem_addr(smem_raw)) + EW_STAGES * STAGE_BYTES, m0, n0, threadIdx.x - 32);
                __syncwarp();
                if ((threadIdx.x & 31) == 0) mbar_arrive(staged0 + 8);
            }
        }
        if (threadIdx.x == 0) {
            uint32_t it = 0;
            for (uint32_t tile = blockIdx.x; tile < total; tile += gridDim.x) {
                const TileAt o = tile_at(p, tile, p.batch, per_batch, tiles_n);
                const int bz = o.bz, m0 = o.tm * BM, n0 = o.tn * BN;
                const int za = p.sa ? bz : 0, zb = p.sb ? bz : 0;
                for (int kt = 0; kt < KT; ++kt, ++it) {
                    const uint32_t s = it % NST, ph = (it / NST) & 1;
                    mbar_wait(bar0 + 8 * (STAGES + s), ph ^ 1);
                    const uint32_t sA = base + s * STAGE_BYTES, full = bar0 + 8 * s;
                    mbar_expect_tx(full, STAGE_BYTES);
                    tma_load(sA, tmA, kt * BK, m0, za, full);
                    tma_load(sA + BM * BK * 2, tmB, kt * BK, n0, zb, full);
                }
            }
        }
    } else {
        if (EW) setmaxnreg_inc<216>();
        else setmaxnreg_inc<232>();
        const int cw = wg - 1, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32, t = threadIdx.x % 128;
        float* stage = reinterpret_cast<float*>(smem_raw + (base - mma::smem_addr(smem_raw)) + STAGES * stage_bytes<false>()) + cw * 64 * 64;
        // Tile i of the block's sequence is blockIdx.x + i·gridDim.x; cooperative: every i, rows
        // 64·cw.. of it; ping-pong: i ≡ cw (mod 2), all of it.
        for (uint32_t i = PP ? cw : 0;; i += PP ? 2 : 1) {
            const uint32_t tile = blockIdx.x + i * gridDim.x;
            if (tile >= total) break;
            const TileAt o = tile_at(p, tile, p.batch, per_batch, tiles_n);
            const uint32_t bz = o.bz, m0 = o.tm * BM, n0 = o.tn * BN;
            const uint32_t row0 = m0 + (PP ? 0 : cw * 64);
            // Wait for the other warpgroup to have taken tile i − 1's stages (its ((i − 1) / 2)-th
            // arrival on this barrier).
            if (PP && i > 0) mbar_wait(order0 + 8 * cw, ((i - 1) / 2) & 1);
            float d[128];
#pragma unroll
            for (int j = 0; j < 128; ++j) d[j] = 0.0f;
            int prev = -1;
            uint32_t it = i * KT;
            for (int kt = 0; kt < KT; ++kt, ++it) {
                const uint32_t s = it % NST, ph = (it / NST) & 1;
                mbar_wait(bar0 + 8 * s, ph);
                const uint32_t sA = base + s * STAGE_BYTES;
                const uint32_t sB = sA + BM * BK * 2;
                wgmma_fence();
#pragma unroll
                for (int ks = 0; ks < BK / 16; ++ks) wgmma_m64n256k16<T>(d, make_desc(sA + (PP ? 0 : cw * 64 * 128), ks), make_desc(sB, ks));
                wgmma_commit();
                // One group stays in flight; the one before it has retired, so its stage is free.
                wgmma_wait<1>();
                if (prev >= 0 && lane == 0) mbar_arrive(bar0 + 8 * (STAGES + prev));
                prev = (int)s;
            }
            if (PP && t == 0) mbar_arrive(order0 + 8 * (1 - cw));
            wgmma_wait<0>();
            if (prev >= 0 && lane == 0) mbar_arrive(bar0 + 8 * (STAGES + prev));
            // Epilogue, 64 columns at a time: α·acc + bias (f32) into the staging tile, then each
            // thread takes 8 consecutive columns of a row. A chunk's bias loads are all in flight
            // before the barrier; a chunk wholly inside N of a unit-stride bias with 4-byte-aligned
            // pairs reads each of its 8 column pairs in one load at a constant offset, otherwise
            // element by element with the edge checks.
            const T* bias_b = bias + (size_t)bz * p.bias_bs;
            const bool bias_pairs = p.has_bias && p.bias_cs == 1 && (reinterpret_cast<uintptr_t>(bias_b) & 3) == 0;
            // This thread's bias pairs of chunk q (columns n0 + 64q + 8jj + 2(lane mod 4), + 1).
            const auto load_bias = [&](int q, float2 (&bv)[8]) {
                const uint32_t gc0 = n0 + q * 64 + (lane % 4) * 2;
                if (bias_pairs && n0 + q * 64 + 64 <= p.n) {
#pragma unroll
                    for (int jj = 0; jj < 8; ++jj) bv[jj] = to_f32x2(*reinterpret_cast<const typename Pair<T>::type*>(bias_b + gc0 + jj * 8));
                } else {
#pragma unroll
                    for (int jj = 0; jj < 8; ++jj) {
                        const uint32_t gc = gc0 + jj * 8;
                        bv[jj].x = (p.has_bias && gc < p.n) ? to_f32(bias_b[(size_t)gc * p.bias_cs]) : 0.0f;
                        bv[jj].y = (p.has_bias && gc + 1 < p.n) ? to_f32(bias_b[(size_t)(gc + 1) * p.bias_cs]) : 0.0f;
                    }
                }
            };
            if (EW) {
                // α·acc + bias in T into the staged tile (the epilogue warps have finished the
                // previous one), then straight on to the next tile's products while the epilogue
                // warps write this one out.
                mbar_wait(staged0 + 8, (i & 1) ^ 1);
                unsigned char* st = smem_raw + (base - mma::smem_addr(smem_raw)) + EW_STAGES * STAGE_BYTES;
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    float2 bv[8];
                    load_bias(q, bv);
#pragma unroll
                    for (int jj = 0; jj < 8; ++jj) {
                        const int j = q * 8 + jj, lr = cw * 64 + warp * 16 + lane / 4;
                        unsigned char* at = st + lr * 512 + ((j ^ (lr & 7)) * 16) + (lane % 4) * 4;
                        typename Pair<T>::type lo, hi;
                        lo.x = from_f32<T>(p.alpha * d[4 * j] + bv[jj].x);
                        lo.y = from_f32<T>(p.alpha * d[4 * j + 1] + bv[jj].y);
                        hi.x = from_f32<T>(p.alpha * d[4 * j + 2] + bv[jj].x);
                        hi.y = from_f32<T>(p.alpha * d[4 * j + 3] + bv[jj].y);
                        *reinterpret_cast<typename Pair<T>::type*>(at) = lo;
                        *reinterpret_cast<typename Pair<T>::type*>(at + 8 * 512) = hi;  // row lr + 8, same (lr mod 8)
                    }
                }
                __syncwarp();
                if (lane == 0) mbar_arrive(staged0);
                continue;
            }
            const EpiArgs epi = tile_epi<T>(p, bz, R, C, Z);
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                float2 bv[8];
                load_bias(q, bv);
                named_barrier(1 + cw, 128);
#pragma unroll
                for (int jj = 0; jj < 8; ++jj) {
                    const int j = q * 8 + jj;
                    const int lr = warp * 16 + lane / 4, lc = jj * 8 + (lane % 4) * 2;
                    const float b0 = bv[jj].x, b1 = bv[jj].y;
                    // 8-column groups are XOR-permuted by row (bank spread; groups stay contiguous).
                    const int g0 = (lc ^ ((lr & 7) << 3)), g1 = (lc ^ (((lr + 8) & 7) << 3));
                    *reinterpret_cast<float2*>(stage + lr * 64 + g0) = make_float2(p.alpha * d[4 * j] + b0, p.alpha * d[4 * j + 1] + b1);
                    *reinterpret_cast<float2*>(stage + (lr + 8) * 64 + g1) =
                        make_float2(p.alpha * d[4 * j + 2] + b0, p.alpha * d[4 * j + 3] + b1);
                }
                named_barrier(1 + cw, 128);
                epilogue_chunk<T>(epi, R, C, Z, stage, row0, n0 + q * 64, t);
            }
        }
    }
}
}  // namespace hopper

// A and B are passed (unused) so that the launcher records their use on the stream; the kernel
// reads them through the tensor maps.
#define GEMM_WGMMA_ENTRY(NAME, T, PP, EW)                                                                                  \
    extern "C" __global__ void __launch_bounds__(hopper::THREADS, 1)                                                       \
        NAME(const T* A, const T* B, const T* bias, const T* R, T* C, T* Z, GemmParams p,                                   \
             const __grid_constant__ CUtensorMap tmA, const __grid_constant__ CUtensorMap tmB) {                           \
        hopper::gemm_wgmma<T, PP, EW>(&tmA, &tmB, bias, R, C, Z, p);                                                       \
    }
GEMM_WGMMA_ENTRY(gemm_f16_wgmma, __half, false, false)
GEMM_WGMMA_ENTRY(gemm_bf16_wgmma, __nv_bfloat16, false, false)
GEMM_WGMMA_ENTRY(gemm_f16_wgmma_pp, __half, true, false)
GEMM_WGMMA_ENTRY(gemm_bf16_wgmma_pp, __nv_bfloat16, true, false)
GEMM_WGMMA_ENTRY(gemm_f16_wgmma_ew, __half, false, true)
GEMM_WGMMA_ENTRY(gemm_bf16_wgmma_ew, __nv_bfloat16, false, true)
#endif  // FFKERN_SM90A

// ---------------------------------------------------------------------------------------------
// Backward helpers.

// out = dc ⊙ act'(z) on columns < act_cols, compact [rows, cols] (grid-stride).
template <typename T>
__device__ __forceinline__ void act_grad_impl(const T* __restrict__ dc, const T* __restrict__ z, T* __restrict__ out, uint32_t rows,
                                              uint32_t cols, uint32_t act, uint32_t act_cols) {
    const size_t total = (size_t)rows * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        float g = to_f32(dc[i]);
        if ((uint32_t)(i % cols) < act_cols) g *= act_grad_apply(act, to_f32(z[i]));
        out[i] = from_f32<T>(g);
    }
}

// out[j] = Σ_i x[i, j] in two fixed-order passes (deterministic, no atomics). First, block
// (column group, row chunk) owns 32 columns of chunk_rows rows (COL_SUM_ROWS in
// src/ops/gemm/mod.rs): its 8 row groups each sum a strided subset in order, then the 8 partials
// are added in order into part[chunk][col] (f32). Then one thread a column adds the chunks in
// order. The chunks spread a long column (a bias gradient over tens of thousands of rows) over
// many blocks.
template <typename T>
__device__ __forceinline__ void col_sum_impl(const T* __restrict__ x, float* __restrict__ part, uint32_t rows, uint32_t cols, uint32_t chunk_rows) {
    __shared__ float red[8][33];
    const uint32_t col = blockIdx.x * 32 + threadIdx.x, r0 = blockIdx.y * chunk_rows, r1 = min(rows, r0 + chunk_rows);
    float s = 0.0f;
    if (col < cols)
        for (uint32_t r = r0 + threadIdx.y; r < r1; r += 8) s += to_f32(x[(size_t)r * cols + col]);
    red[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        float t = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) t += red[i][threadIdx.x];
        part[(size_t)blockIdx.y * cols + col] = t;
    }
}

template <typename T>
__device__ __forceinline__ void col_sum_finish_impl(const float* __restrict__ part, T* __restrict__ out, uint32_t chunks, uint32_t cols) {
    const uint32_t col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= cols) return;
    float t = 0.0f;
    // Few threads (one a column) each walk every chunk: 16 loads in flight at a time, the sums
    // still in chunk order.
#pragma unroll 16
    for (uint32_t c = 0; c < chunks; ++c) t += part[(size_t)c * cols + col];
    out[col] = from_f32<T>(t);
}

#define HELPER_ENTRIES(SUFFIX, T)                                                                                          \
    extern "C" __global__ void act_grad_##SUFFIX(const T* dc, const T* z, T* out, uint32_t rows, uint32_t cols, uint32_t act, \
                                                 uint32_t act_cols) {                                                     \
        act_grad_impl<T>(dc, z, out, rows, cols, act, act_cols);                                                           \
    }                                                                                                                      \
    extern "C" __global__ void col_sum_##SUFFIX(const T* x, float* part, uint32_t rows, uint32_t cols, uint32_t chunk_rows) { \
        col_sum_impl<T>(x, part, rows, cols, chunk_rows);                                                                  \
    }                                                                                                                      \
    extern "C" __global__ void col_sum_finish_##SUFFIX(const float* part, T* out, uint32_t chunks, uint32_t cols) {          \
        col_sum_finish_impl<T>(part, out, chunks, cols);                                                                   \
    }
#if !defined(FFKERN_SM90A)
HELPER_ENTRIES(f32, float)
HELPER_ENTRIES(f16, __half)
HELPER_ENTRIES(bf16, __nv_bfloat16)
#endif
