// GEMM with fused epilogue (SPEC §1) and the two helpers of its backward.
// Why it is fast: each workgroup owns a 64×64 tile of C (128×128 or 128×64 in the wide forms)
// and stages A and B through workgroup memory in 16-deep K slices (by 16-byte loads where the
// layout allows), so every element loaded from storage is reused 64 (128) times; each invocation
// keeps a 4×4 (8×8, 8×4) register tile and reads vec4s from workgroup memory. Bias, activation,
// residual and the saved pre-activation are applied in the same pass that writes C, on
// accumulators named by constant indices.
// All buffers are u32 words; 16-bit dtypes hold two elements a word (see _dtype_*.wgsl).

struct Params {
    m: u32, n: u32, k: u32, batch: u32,
    lda: u32, ldb: u32, ldc: u32, ldr: u32,
    sa: u32, sb: u32, sc: u32, sr: u32,
    a_km: u32, b_kn: u32, act: u32, act_cols: u32,
    has_bias: u32, has_r: u32, has_z: u32, alpha: f32,
    beta: f32, off_a: u32, off_b: u32, off_bias: u32,
    off_r: u32, off_c: u32, off_z: u32, a_cs: u32,
    b_cs: u32, c_cs: u32, bias_bs: u32, bias_cs: u32,
    kc: u32, splits: u32, vec_a: u32, vec_b: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a_buf: array<u32>;
@group(0) @binding(2) var<storage, read> b_buf: array<u32>;
@group(0) @binding(3) var<storage, read> bias_buf: array<u32>;
@group(0) @binding(4) var<storage, read> r_buf: array<u32>;
// A and B again as 16-byte words, for the K slabs' 16-byte loads (vec_a / vec_b).
@group(0) @binding(5) var<storage, read> a_vec: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> b_vec: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read_write> c_buf: array<atomic<u32>>;
@group(0) @binding(8) var<storage, read_write> z_buf: array<atomic<u32>>;

fn ld_a(i: u32) -> f32 { return unpack_elem(a_buf[i >> ELEM_SHIFT], i & ELEM_SHIFT); }
fn ld_b(i: u32) -> f32 { return unpack_elem(b_buf[i >> ELEM_SHIFT], i & ELEM_SHIFT); }
fn ld_bias(i: u32) -> f32 { return unpack_elem(bias_buf[i >> ELEM_SHIFT], i & ELEM_SHIFT); }
fn ld_r(i: u32) -> f32 { return unpack_elem(r_buf[i >> ELEM_SHIFT], i & ELEM_SHIFT); }

fn put_word(which: u32, w: u32, bits: u32) {
    if (which == 0u) { atomicStore(&c_buf[w], bits); } else { atomicStore(&z_buf[w], bits); }
}

// A 16-bit element whose word-mate belongs to another invocation (a row end when the row stride
// is odd, or a gap element): integer and/or on its half only, so the result is the same whatever
// the order. No float atomics anywhere.
fn put_half(which: u32, e: u32, v: f32) {
    let w = e >> 1u;
    let sh = (e & 1u) * 16u;
    let keep = ~(0xffffu << sh);
    let bits = pack_elem(v) << sh;
    if (which == 0u) {
        atomicAnd(&c_buf[w], keep);
        atomicOr(&c_buf[w], bits);
    } else {
        atomicAnd(&z_buf[w], keep);
        atomicOr(&z_buf[w], bits);
    }
}

// Element `base` alone: a whole word for f32, else a half-word.
fn put_one(which: u32, e: u32, v: f32) {
    if (ELEM_SHIFT == 0u) { put_word(which, e, pack_elem(v)); } else { put_half(which, e, v); }
}

// Elements e and e + 1 (e even, 16-bit, both this invocation's): one whole word.
fn put_two(which: u32, e: u32, lo: f32, hi: f32) {
    put_word(which, e >> 1u, pack_pair(lo, hi));
}

// Stores the first `count` (≤ 4) elements of v from element index `base`, `stride` apart; for
// consecutive 16-bit elements, whole words wherever this invocation owns both halves. Every
// element is named by a constant index: a loop indexing an array at run time here (even one
// never entered) cost lavapipe a quarter of a small GEMM's time.
fn store_run(which: u32, base: u32, count: u32, stride: u32, v: vec4<f32>) {
    if (ELEM_SHIFT == 0u || stride != 1u) {
        if (count > 0u) { put_one(which, base, v.x); }
        if (count > 1u) { put_one(which, base + stride, v.y); }
        if (count > 2u) { put_one(which, base + 2u * stride, v.z); }
        if (count > 3u) { put_one(which, base + 3u * stride, v.w); }
    } else if ((base & 1u) == 0u) {
        // Pairs (0, 1) and (2, 3); a lone last element as a half-word.
        if (count > 1u) { put_two(which, base, v.x, v.y); } else if (count == 1u) { put_one(which, base, v.x); }
        if (count > 3u) { put_two(which, base + 2u, v.z, v.w); } else if (count == 3u) { put_one(which, base + 2u, v.z); }
    } else {
        // Element 0 ends a word, (1, 2) fill the next, 3 starts another.
        if (count > 0u) { put_one(which, base, v.x); }
        if (count > 2u) { put_two(which, base + 1u, v.y, v.z); } else if (count == 2u) { put_one(which, base + 1u, v.y); }
        if (count > 3u) { put_one(which, base + 3u, v.w); }
    }
}

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

fn a_index(bz: u32, mm: u32, kk: u32) -> u32 {
    let base = p.off_a + bz * p.sa;
    if (p.a_km == 0u) { return base + mm * p.lda + kk * p.a_cs; }
    return base + kk * p.lda + mm * p.a_cs;
}

fn b_index(bz: u32, nn: u32, kk: u32) -> u32 {
    let base = p.off_b + bz * p.sb;
    if (p.b_kn == 0u) { return base + nn * p.ldb + kk * p.b_cs; }
    return base + kk * p.ldb + nn * p.b_cs;
}

// Element e of a K slab (BK deep, `rows` wide) of A or B, walking the operand's contiguous
// dimension so that consecutive invocations load consecutive elements: its row (of M or N) and
// k inside the slab, and its value (0 past the edges).
struct SlabElem {
    row: u32,
    k: u32,
    v: f32,
}

fn a_elem(bz: u32, e: u32, rows: u32, m0: u32, k0: u32, k_hi: u32) -> SlabElem {
    var x = SlabElem(e / BK, e % BK, 0.0);
    if (p.a_km != 0u) { x.row = e % rows; x.k = e / rows; }
    if (m0 + x.row < p.m && k0 + x.k < k_hi) { x.v = ld_a(a_index(bz, m0 + x.row, k0 + x.k)); }
    return x;
}

fn b_elem(bz: u32, e: u32, rows: u32, n0: u32, k0: u32, k_hi: u32) -> SlabElem {
    var x = SlabElem(e / BK, e % BK, 0.0);
    if (p.b_kn != 0u) { x.row = e % rows; x.k = e / rows; }
    if (n0 + x.row < p.n && k0 + x.k < k_hi) { x.v = ld_b(b_index(bz, n0 + x.row, k0 + x.k)); }
    return x;
}

// Elements in one 16-byte load.
const VEC: u32 = 4u << ELEM_SHIFT;

// Staging a K slab into workgroup memory: element (row, k) of operand op's slab goes to
// component row % 4 of entry k·stride + row / 4 of Aw (A) or Bw (B).

fn put_slab(op: u32, i: u32, c: u32, v: f32) {
    if (op == 0u) { Aw[i][c] = v; } else { Bw[i][c] = v; }
}

fn put_slab4(op: u32, i: u32, v: vec4<f32>) {
    if (op == 0u) { Aw[i] = v; } else { Bw[i] = v; }
}

// VEC consecutive elements of operand `op` (0 A, 1 B) from element index e (a multiple of VEC):
// one 16-byte load, or its words one by one where the 16-byte view ends before the buffer does.
fn load_vec(op: u32, e: u32) -> array<vec4<f32>, 2> {
    let w = e >> ELEM_SHIFT;
    var u: vec4<u32>;
    if (op == 0u) {
        if ((w >> 2u) < arrayLength(&a_vec)) { u = a_vec[w >> 2u]; } else {
            let last = arrayLength(&a_buf) - 1u;
            u = vec4<u32>(a_buf[min(w, last)], a_buf[min(w + 1u, last)], a_buf[min(w + 2u, last)], a_buf[min(w + 3u, last)]);
        }
    } else {
        if ((w >> 2u) < arrayLength(&b_vec)) { u = b_vec[w >> 2u]; } else {
            let last = arrayLength(&b_buf) - 1u;
            u = vec4<u32>(b_buf[min(w, last)], b_buf[min(w + 1u, last)], b_buf[min(w + 2u, last)], b_buf[min(w + 3u, last)]);
        }
    }
    if (ELEM_SHIFT == 0u) { return array<vec4<f32>, 2>(bitcast<vec4<f32>>(u), vec4<f32>(0.0)); }
    return array<vec4<f32>, 2>(
        vec4<f32>(unpack_elem(u.x, 0u), unpack_elem(u.x, 1u), unpack_elem(u.y, 0u), unpack_elem(u.y, 1u)),
        vec4<f32>(unpack_elem(u.z, 0u), unpack_elem(u.z, 1u), unpack_elem(u.w, 0u), unpack_elem(u.w, 1u)));
}

// Operand op's K slab [k0, k0 + BK) ∩ [.., k_hi) of rows r0 .. r0 + rows − 1 into workgroup
// memory, rows past M or N and k past k_hi as 0. With vec_a / vec_b (the launcher's check: the
// operand's contiguous dimension has stride 1 and its row stride, batch stride and offset are
// multiples of VEC) each invocation takes VEC consecutive elements along that dimension in one
// 16-byte load: a quarter (for 16-bit types an eighth) of the loads of one element at a time.
fn stage_slab(op: u32, lid: u32, bz: u32, rows: u32, r0: u32, k0: u32, k_hi: u32, stride: u32) {
    let vec = select(p.vec_a, p.vec_b, op == 1u) != 0u;
    if (!vec) {
        for (var e = lid; e < rows * BK; e = e + 256u) {
            var x: SlabElem;
            if (op == 0u) { x = a_elem(bz, e, rows, r0, k0, k_hi); } else { x = b_elem(bz, e, rows, r0, k0, k_hi); }
            put_slab(op, x.k * stride + x.row / 4u, x.row % 4u, x.v);
        }
        return;
    }
    // The slab walks K first for [rows, K] storage (VEC values of k in one row, stored as
    // scalars), else rows first (VEC rows at one k, whole vec4s: rows is a multiple of 4).
    let kfast = select(p.a_km, p.b_kn, op == 1u) == 0u;
    let lim = select(p.m, p.n, op == 1u);
    let offs = vec4<u32>(0u, 1u, 2u, 3u);
    for (var g = lid; g < rows * BK / VEC; g = g + 256u) {
        let e = g * VEC;
        let row = select(e % rows, e / BK, kfast);
        let k = select(e / rows, e % BK, kfast);
        var v = array<vec4<f32>, 2>(vec4<f32>(0.0), vec4<f32>(0.0));
        if (r0 + row < lim && k0 + k < k_hi) {
            var idx: u32;
            if (op == 0u) { idx = a_index(bz, r0 + row, k0 + k); } else { idx = b_index(bz, r0 + row, k0 + k); }
            v = load_vec(op, idx);
            // Zeros past the walked dimension's end (K's, or M's / N's).
            let first = select(r0 + row, k0 + k, kfast);
            let end = select(lim, k_hi, kfast);
            v[0] = select(vec4<f32>(0.0), v[0], vec4<u32>(first) + offs < vec4<u32>(end));
            v[1] = select(vec4<f32>(0.0), v[1], vec4<u32>(first + 4u) + offs < vec4<u32>(end));
        }
        if (kfast) {
            let i = k * stride + row / 4u;
            let c = row % 4u;
            put_slab(op, i, c, v[0].x);
            put_slab(op, i + stride, c, v[0].y);
            put_slab(op, i + 2u * stride, c, v[0].z);
            put_slab(op, i + 3u * stride, c, v[0].w);
            if (ELEM_SHIFT != 0u) {
                put_slab(op, i + 4u * stride, c, v[1].x);
                put_slab(op, i + 5u * stride, c, v[1].y);
                put_slab(op, i + 6u * stride, c, v[1].z);
                put_slab(op, i + 7u * stride, c, v[1].w);
            }
        } else {
            put_slab4(op, k * stride + row / 4u, v[0]);
            if (ELEM_SHIFT != 0u) { put_slab4(op, k * stride + row / 4u + 1u, v[1]); }
        }
    }
}

// The workgroup's wm×wn tile of C (64×64, or 128×32 for the skinny form) over K slice
// [k_lo, k_hi), one 4×4 register tile an invocation: (ty, tx) = (lid / (wn/4), lid % (wn/4))
// holds rows 4·ty.., columns 4·tx.. in acc. A's slab is staged in Aw, B's in Bw.
fn mainloop4x4(lid: u32, bz: u32, m0: u32, n0: u32, k_lo: u32, k_hi: u32, wm: u32, wn: u32) -> array<vec4<f32>, 4> {
    let tx = lid % (wn / 4u);
    let ty = lid / (wn / 4u);
    var acc: array<vec4<f32>, 4>;
    for (var k0 = k_lo; k0 < k_hi; k0 = k0 + BK) {
        stage_slab(0u, lid, bz, wm, m0, k0, k_hi, wm / 4u);
        stage_slab(1u, lid, bz, wn, n0, k0, k_hi, wn / 4u);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            let av = Aw[kk * (wm / 4u) + ty];
            let bv = Bw[kk * (wn / 4u) + tx];
            acc[0] = acc[0] + av.x * bv;
            acc[1] = acc[1] + av.y * bv;
            acc[2] = acc[2] + av.z * bv;
            acc[3] = acc[3] + av.w * bv;
        }
        workgroupBarrier();
    }
    return acc;
}

fn mainloop(lid: u32, bz: u32, m0: u32, n0: u32, k_lo: u32, k_hi: u32) -> array<vec4<f32>, 4> {
    return mainloop4x4(lid, bz, m0, n0, k_lo, k_hi, BM, BN);
}

// α·sums + bias, the activation and β·R of four columns from gn0, and the pre-activation; columns
// past N read column N − 1 (and are never stored).
struct Epi4 { out: vec4<f32>, pre: vec4<f32> }

fn epi4(bz: u32, gm: u32, gn0: u32, sums: vec4<f32>) -> Epi4 {
    let offs = vec4<u32>(0u, 1u, 2u, 3u);
    let cols = min(gn0 + offs, vec4<u32>(p.n - 1u));
    var v = p.alpha * sums;
    if (p.has_bias != 0u) {
        let b = p.off_bias + bz * p.bias_bs;
        v = v + vec4<f32>(ld_bias(b + cols.x * p.bias_cs), ld_bias(b + cols.y * p.bias_cs), ld_bias(b + cols.z * p.bias_cs), ld_bias(b + cols.w * p.bias_cs));
    }
    let pre = v;
    if (gn0 < p.act_cols) {
        let a = vec4<f32>(activate(p.act, v.x), activate(p.act, v.y), activate(p.act, v.z), activate(p.act, v.w));
        v = select(v, a, gn0 + offs < vec4<u32>(p.act_cols));
    }
    if (p.has_r != 0u) {
        let r = p.off_r + bz * p.sr + gm * p.ldr;
        v = v + p.beta * vec4<f32>(ld_r(r + cols.x), ld_r(r + cols.y), ld_r(r + cols.z), ld_r(r + cols.w));
    }
    return Epi4(v, pre);
}

// Row gm, columns gn0 .. gn0 + count − 1 of C (and Z) from their sums (see store_run).
fn epilogue(bz: u32, gm: u32, gn0: u32, count: u32, sums: vec4<f32>) {
    let e = epi4(bz, gm, gn0, sums);
    let o = bz * p.sc + gm * p.ldc + gn0 * p.c_cs;
    store_run(0u, p.off_c + o, count, p.c_cs, e.out);
    if (p.has_z != 0u) { store_run(1u, p.off_z + o, count, p.c_cs, e.pre); }
}

@compute @workgroup_size(256)
fn gemm(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let acc = mainloop(lid, wg.z, wg.y * BM, wg.x * BN, 0u, p.k);
    epilogue4x4(wg.z, wg.y * BM + (lid / 16u) * 4u, wg.x * BN + (lid % 16u) * 4u, acc);
}

// Rows gm .. gm + 3, columns gn0 .. gn0 + 3 of C from a 4×4 register tile, named by constant
// indices (see wide_row).
fn epilogue4x4(bz: u32, gm: u32, gn0: u32, acc: array<vec4<f32>, 4>) {
    if (gn0 >= p.n) { return; }
    let count = min(4u, p.n - gn0);
    if (gm < p.m) { epilogue(bz, gm, gn0, count, acc[0]); }
    if (gm + 1u < p.m) { epilogue(bz, gm + 1u, gn0, count, acc[1]); }
    if (gm + 2u < p.m) { epilogue(bz, gm + 2u, gn0, count, acc[2]); }
    if (gm + 3u < p.m) { epilogue(bz, gm + 3u, gn0, count, acc[3]); }
}

// BlockShuffle's interleaved 16-bit outputs: a batch stride of 1 and an even column stride put
// batch l's element n at n·cs + l, so the elements of batches 2z and 2z + 1 share each word. The
// one-batch form writes each of them as a half-word with an atomic and/or pair, because the other
// half belongs to another workgroup; here one workgroup computes both batches' tiles in turn and
// writes whole words. The launcher takes it when the offsets and strides keep the pairs aligned.
@compute @workgroup_size(256)
fn gemm_pairs(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let bz = 2u * wg.z;
    let acc0 = mainloop(lid, bz, wg.y * BM, wg.x * BN, 0u, p.k);
    let acc1 = mainloop(lid, bz + 1u, wg.y * BM, wg.x * BN, 0u, p.k);
    let gn0 = wg.x * BN + (lid % 16u) * 4u;
    if (gn0 >= p.n) { return; }
    let count = min(4u, p.n - gn0);
    let gm = wg.y * BM + (lid / 16u) * 4u;
    if (gm < p.m) { epilogue_pairs(bz, gm, gn0, count, acc0[0], acc1[0]); }
    if (gm + 1u < p.m) { epilogue_pairs(bz, gm + 1u, gn0, count, acc0[1], acc1[1]); }
    if (gm + 2u < p.m) { epilogue_pairs(bz, gm + 2u, gn0, count, acc0[2], acc1[2]); }
    if (gm + 3u < p.m) { epilogue_pairs(bz, gm + 3u, gn0, count, acc0[3], acc1[3]); }
}

// Row gm, columns gn0 .. gn0 + count − 1 of batches bz (even; the low halves) and bz + 1.
fn epilogue_pairs(bz: u32, gm: u32, gn0: u32, count: u32, s0: vec4<f32>, s1: vec4<f32>) {
    let lo = epi4(bz, gm, gn0, s0);
    let hi = epi4(bz + 1u, gm, gn0, s1);
    let o = bz * p.sc + gm * p.ldc + gn0 * p.c_cs;
    store_pairs(0u, p.off_c + o, count, lo.out, hi.out);
    if (p.has_z != 0u) { store_pairs(1u, p.off_z + o, count, lo.pre, hi.pre); }
}

// The first `count` columns from element `base` (C's column stride apart): column j's word holds
// lo[j] and hi[j]. Constant indices, as in store_run.
fn store_pairs(which: u32, base: u32, count: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if (count > 0u) { put_word(which, base >> 1u, pack_pair(lo.x, hi.x)); }
    if (count > 1u) { put_word(which, (base + p.c_cs) >> 1u, pack_pair(lo.y, hi.y)); }
    if (count > 2u) { put_word(which, (base + 2u * p.c_cs) >> 1u, pack_pair(lo.z, hi.z)); }
    if (count > 3u) { put_word(which, (base + 3u * p.c_cs) >> 1u, pack_pair(lo.w, hi.w)); }
}

// The wide forms for products with many 128-row tiles: each invocation keeps an 8×8 register
// tile (rows 4·ty.. and 64 + 4·ty.., columns 4·tx.. and 64 + 4·tx..) of a 128×128 tile, or 8×4
// (columns 4·tx..) of a 128×64 tile (`halves` = 1, for products only 64 or fewer columns wide,
// such as a low-rank factor's), so a K step reads four (three) vec4s from workgroup memory for 64
// (32) multiply-adds, twice (1.3×) the reuse of the 4×4 form, and the staging of a 16-deep slab
// feeds four (2.7×) times the arithmetic.
const WM: u32 = 128u;

var<workgroup> Aw: array<vec4<f32>, 512>; // [BK][WM/4]
var<workgroup> Bw: array<vec4<f32>, 512>; // [BK][128/4] (64/4 used by the 128×64 form)

// An invocation's eight rows (a0's four, then a1's) of one column half: lo the first 64 columns'
// four, hi the second 64's.
struct WideAcc {
    lo: array<vec4<f32>, 8>,
    hi: array<vec4<f32>, 8>,
}

// One K step of one column half: row r + a_r · b. Values in and out, every index a constant: an
// array indexed at run time leaves registers for local memory on a GPU.
fn fma_rows(acc: array<vec4<f32>, 8>, a0: vec4<f32>, a1: vec4<f32>, b: vec4<f32>) -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(acc[0] + a0.x * b, acc[1] + a0.y * b, acc[2] + a0.z * b, acc[3] + a0.w * b,
                               acc[4] + a1.x * b, acc[5] + a1.y * b, acc[6] + a1.z * b, acc[7] + a1.w * b);
}

fn mainloop_wide(lid: u32, bz: u32, m0: u32, n0: u32, halves: u32) -> WideAcc {
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: WideAcc;
    for (var k0 = 0u; k0 < p.k; k0 = k0 + BK) {
        stage_slab(0u, lid, bz, WM, m0, k0, p.k, 32u);
        stage_slab(1u, lid, bz, 64u * halves, n0, k0, p.k, 32u);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            let a0 = Aw[kk * 32u + ty];
            let a1 = Aw[kk * 32u + 16u + ty];
            acc.lo = fma_rows(acc.lo, a0, a1, Bw[kk * 32u + tx]);
            if (halves == 2u) { acc.hi = fma_rows(acc.hi, a0, a1, Bw[kk * 32u + 16u + tx]); }
        }
        workgroupBarrier();
    }
    return acc;
}

fn gemm_wide_tile(lid: u32, wg: vec3<u32>, halves: u32) {
    let acc = mainloop_wide(lid, wg.z, wg.y * WM, wg.x * 64u * halves, halves);
    wide_row(lid, wg, halves, 0u, acc.lo[0], acc.hi[0]);
    wide_row(lid, wg, halves, 1u, acc.lo[1], acc.hi[1]);
    wide_row(lid, wg, halves, 2u, acc.lo[2], acc.hi[2]);
    wide_row(lid, wg, halves, 3u, acc.lo[3], acc.hi[3]);
    wide_row(lid, wg, halves, 4u, acc.lo[4], acc.hi[4]);
    wide_row(lid, wg, halves, 5u, acc.lo[5], acc.hi[5]);
    wide_row(lid, wg, halves, 6u, acc.lo[6], acc.hi[6]);
    wide_row(lid, wg, halves, 7u, acc.lo[7], acc.hi[7]);
}

// Row r of an invocation's eight (row 4·ty + r % 4 of the tile's upper or lower 64), both column
// halves. Called with constant r and accumulators: a loop over r would index the accumulators at
// run time, which a CPU adapter (lavapipe) turns into a walk over all sixteen for every row.
fn wide_row(lid: u32, wg: vec3<u32>, halves: u32, r: u32, lo: vec4<f32>, hi: vec4<f32>) {
    let gm = wg.y * WM + (r / 4u) * 64u + (lid / 16u) * 4u + r % 4u;
    let gn0 = wg.x * 64u * halves + (lid % 16u) * 4u;
    if (gm >= p.m) { return; }
    if (gn0 < p.n) { epilogue(wg.z, gm, gn0, min(4u, p.n - gn0), lo); }
    if (halves == 2u && gn0 + 64u < p.n) { epilogue(wg.z, gm, gn0 + 64u, min(4u, p.n - gn0 - 64u), hi); }
}

@compute @workgroup_size(256)
fn gemm_wide(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    gemm_wide_tile(lid, wg, 2u);
}

@compute @workgroup_size(256)
fn gemm_tall(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    gemm_wide_tile(lid, wg, 1u);
}

// The skinny form for products 32 or fewer columns wide (block-diagonal stages with narrow
// blocks, a per-head dot product's single column): 128×32 tiles, invocation (ty, tx) = (lid / 8,
// lid % 8) holding rows 4·ty.., columns 4·tx.. — the 64×64 form's 4×4 register tile and K step,
// on a tile that pads N to 32 instead of 64, so a 24-wide block wastes a quarter of its loads and
// multiply-adds instead of five eighths.
@compute @workgroup_size(256)
fn gemm_skinny(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let acc = mainloop4x4(lid, wg.z, wg.y * WM, wg.x * 32u, 0u, p.k, WM, 32u);
    epilogue4x4(wg.z, wg.y * WM + (lid / 8u) * 4u, wg.x * 32u + (lid % 8u) * 4u, acc);
}

// Split-K (mirrors the CUDA split, see ops::gemm::split_k): workgroup z of a single product
// (batch 1) sums K slice [z·kc, (z + 1)·kc) and leaves its raw f32 tile in slice z of the
// workspace bound as C; gemm_splitk adds the slices in order and applies the epilogue.
@compute @workgroup_size(256)
fn gemm_split(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let k_lo = wg.z * p.kc;
    let acc = mainloop(lid, 0u, wg.y * BM, wg.x * BN, k_lo, min(p.k, k_lo + p.kc));
    let gn0 = wg.x * BN + (lid % 16u) * 4u;
    if (gn0 >= p.n) { return; }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let gm = wg.y * BM + (lid / 16u) * 4u + i;
        if (gm >= p.m) { break; }
        for (var j = 0u; j < min(4u, p.n - gn0); j = j + 1u) {
            atomicStore(&c_buf[(wg.z * p.m + gm) * p.n + gn0 + j], bitcast<u32>(acc[i][j]));
        }
    }
}

// Split-K's second pass: one invocation per row and four columns; the workspace is bound as A.
@compute @workgroup_size(256)
fn gemm_splitk(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let quads = (p.n + 3u) / 4u;
    let t = flat_id(gid, nwg);
    if (t >= p.m * quads) { return; }
    let gm = t / quads;
    let gn0 = (t % quads) * 4u;
    let count = min(4u, p.n - gn0);
    var sums = vec4<f32>(0.0);
    for (var z = 0u; z < p.splits; z = z + 1u) {
        for (var j = 0u; j < count; j = j + 1u) {
            sums[j] = sums[j] + bitcast<f32>(a_buf[(z * p.m + gm) * p.n + gn0 + j]);
        }
    }
    epilogue(0u, gm, gn0, count, sums);
}

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// dC' = dC ⊙ act'(Z) on columns < act_cols over compact [m, n] (a_buf = dC, b_buf = Z, c_buf = out).
// One invocation per word of the output, so it always writes whole words.
@compute @workgroup_size(256)
fn act_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e0 = flat_id(gid, nwg) * 2u;
    let total = p.m * p.n;
    if (e0 >= total) { return; }
    let count = min(2u, total - e0);
    var g = vec4<f32>(0.0);
    for (var j = 0u; j < count; j = j + 1u) {
        let e = e0 + j;
        var x = ld_a(e);
        if (e % p.n < p.act_cols) { x = x * activate_grad(p.act, ld_b(e)); }
        g = select(g, vec4<f32>(x), vec4<u32>(0u, 1u, 2u, 3u) == vec4<u32>(j));
    }
    store_run(0u, e0, count, 1u, g);
}

// out[j] = Σ_i x[i, j] over compact [m, n] in two fixed-order passes (deterministic), each with
// Kahan compensation: col_sum sums chunks of p.kc rows (COL_SUM_ROWS in src/ops/gemm/mod.rs; one
// invocation per chunk and two columns) into f32 partials [chunks, n] (bound as C), col_sum_finish
// adds the chunks in order (the partials bound as A). A long column (a bias gradient over many
// rows) spreads over many invocations. a_buf = x, c_buf = the partials, then out.

fn kahan_add(s: ptr<function, vec2<f32>>, c: ptr<function, vec2<f32>>, x: vec2<f32>) {
    let y = x - *c;
    let t = *s + y;
    *c = (t - *s) - y;
    *s = t;
}

@compute @workgroup_size(256)
fn col_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let pairs = (p.n + 1u) / 2u;
    let t = flat_id(gid, nwg);
    let chunks = max(1u, (p.m + p.kc - 1u) / p.kc);
    if (t >= chunks * pairs) { return; }
    let chunk = t / pairs;
    let j0 = (t % pairs) * 2u;
    let two = j0 + 1u < p.n;
    var s = vec2<f32>(0.0, 0.0);
    var c = vec2<f32>(0.0, 0.0);
    for (var i = chunk * p.kc; i < min(p.m, (chunk + 1u) * p.kc); i = i + 1u) {
        var x = vec2<f32>(ld_a(i * p.n + j0), 0.0);
        if (two) { x.y = ld_a(i * p.n + j0 + 1u); }
        kahan_add(&s, &c, x);
    }
    atomicStore(&c_buf[chunk * p.n + j0], bitcast<u32>(s.x));
    if (two) { atomicStore(&c_buf[chunk * p.n + j0 + 1u], bitcast<u32>(s.y)); }
}

@compute @workgroup_size(256)
fn col_sum_finish(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j0 = flat_id(gid, nwg) * 2u;
    if (j0 >= p.n) { return; }
    let count = min(2u, p.n - j0);
    let chunks = max(1u, (p.m + p.kc - 1u) / p.kc);
    var s = vec2<f32>(0.0, 0.0);
    var c = vec2<f32>(0.0, 0.0);
    for (var k = 0u; k < chunks; k = k + 1u) {
        var x = vec2<f32>(bitcast<f32>(a_buf[k * p.n + j0]), 0.0);
        if (count == 2u) { x.y = bitcast<f32>(a_buf[k * p.n + j0 + 1u]); }
        kahan_add(&s, &c, x);
    }
    store_run(0u, j0, count, 1u, vec4<f32>(s, 0.0, 0.0));
}
