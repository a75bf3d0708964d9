// Shared by the linear-attention families (linattn, linattn_bwd): the parameter block, the
// q, k, v inputs, the packed output and the feature map.

struct Params {
    batch: u32, seq: u32, heads: u32, k: u32,
    v: u32, feature_map: u32, normalize: u32, eps: f32,
    scale: f32, count0: u32, varlen: u32, aux: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q_buf: array<u32>;
@group(0) @binding(2) var<storage, read> k_buf: array<u32>;
@group(0) @binding(3) var<storage, read> v_buf: array<u32>;
// o (forward), dv (backward) or dq / dk (backward reduce), packed in the dtype.
@group(0) @binding(8) var<storage, read_write> out_buf: array<atomic<u32>>;

// The (sequence or chunk)·head of a workgroup: the y·z grid folds past 65535 (many sequences
// decoding at once); workgroups past the end return before any barrier.
fn seq_head(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.y + wg.z * nwg.y;
}

// Element i of q (which 0), k (1) or v (2).
fn ld(which: u32, i: u32) -> f32 {
    let w = i >> ELEM_SHIFT;
    let h = i & ELEM_SHIFT;
    switch which {
        case 0u: { return unpack_elem(q_buf[w], h); }
        case 1u: { return unpack_elem(k_buf[w], h); }
        default: { return unpack_elem(v_buf[w], h); }
    }
}

// One element of the output; 16-bit halves are set with integer and/or (the word's other half
// belongs to another invocation or workgroup).
fn put_out(e: u32, v: f32) {
    if (ELEM_SHIFT == 0u) {
        atomicStore(&out_buf[e], pack_elem(v));
    } else {
        let w = e >> 1u;
        let sh = (e & 1u) * 16u;
        atomicAnd(&out_buf[w], ~(0xffffu << sh));
        atomicOr(&out_buf[w], pack_elem(v) << sh);
    }
}

fn phi(x: f32) -> f32 {
    switch p.feature_map {
        case 1u: { return select(exp(x), x + 1.0, x > 0.0); }
        case 2u: { return max(x, 0.0); }
        default: { return x; }
    }
}

fn phi_grad(x: f32) -> f32 {
    switch p.feature_map {
        case 1u: { return select(exp(x), 1.0, x > 0.0); }
        case 2u: { return select(0.0, 1.0, x > 0.0); }
        default: { return 1.0; }
    }
}

// One step's staging shared by the scans: q̃ = scale·φ(q), k̃ = φ(k) (and z += k̃ when `add_z`)
// for invocations below K, and the 16 values of the tile starting at column c0.
var<workgroup> qs: array<f32, 256>;
var<workgroup> ks: array<f32, 256>;
var<workgroup> zs: array<f32, 256>;
var<workgroup> vs: array<f32, 16>;

fn stage_step(lid: u32, row: u32, c0: u32, add_z: bool) {
    if (lid < p.k) {
        qs[lid] = p.scale * phi(ld(0u, row * p.k + lid));
        let kt = phi(ld(1u, row * p.k + lid));
        ks[lid] = kt;
        if (add_z) { zs[lid] = zs[lid] + kt; }
    }
    if (lid < 16u) {
        var vv = 0.0;
        if (c0 + lid < p.v) { vv = ld(2u, row * p.v + c0 + lid); }
        vs[lid] = vv;
    }
}

// ---- The chunked kernels (the sequences are chunks of at most 64 rows, varlen 2).
// Operand `which` of local row r of the chunk (start, len) of head h, element col: 0 q̃ =
// scale·φ(q), 1 k̃ = φ(k), 2 v, 3 the family's fourth operand (`fourth_operand`: dn = do/den in
// the backward); 0 past the chunk or the width (K for q̃, k̃, V otherwise).
fn chunk_ld(which: u32, start: u32, len: u32, h: u32, r: u32, col: u32) -> f32 {
    let width = select(p.v, p.k, which < 2u);
    if (r >= len || col >= width) { return 0.0; }
    let i = ((start + r) * p.heads + h) * width + col;
    switch which {
        case 0u: { return p.scale * phi(ld(0u, i)); }
        case 1u: { return phi(ld(1u, i)); }
        case 2u: { return ld(2u, i); }
        default: { return fourth_operand(i, r); }
    }
}

// The workgroup's 64×64 tile (rows i0.. of K, columns j0.. of V) of Xᵀ·Y over the chunk's 64
// rows, X = operand xw, Y = operand yw (as chunk_ld): invocation (i, quarter) = (lid / 4, lid % 4)
// gets row i0 + i, columns j0 + 16m + 4·quarter + (0..3) in acc[m], and xsum = Σ_r X[r][i0 + i]
// (weighted by the family's `row_weight(r)` when `weighted`).
// Rows are staged 16 at a time ([16 rows][64] in sa and sb, which chunk_slabs also uses); every
// invocation is busy whatever K is.

struct Outer {
    acc: array<vec4<f32>, 4>,
    xsum: f32,
}

fn chunk_outer(lid: u32, xw: u32, yw: u32, start: u32, len: u32, h: u32, i0: u32, j0: u32, weighted: bool) -> Outer {
    var o: Outer;
    let i = lid / 4u;
    let quarter = lid % 4u;
    for (var r0 = 0u; r0 < 64u; r0 += 16u) {
        for (var e = lid; e < 1024u; e += 256u) {
            sa[e] = chunk_ld(xw, start, len, h, r0 + e / 64u, i0 + e % 64u);
            sb[e] = chunk_ld(yw, start, len, h, r0 + e / 64u, j0 + e % 64u);
        }
        workgroupBarrier();
        for (var rr = 0u; rr < 16u; rr++) {
            let xv = sa[rr * 64u + i];
            o.xsum += xv * select(1.0, row_weight(r0 + rr), weighted);
            for (var m = 0u; m < 4u; m++) {
                let b = rr * 64u + m * 16u + quarter * 4u;
                o.acc[m] += xv * vec4<f32>(sb[b], sb[b + 1u], sb[b + 2u], sb[b + 3u]);
            }
        }
        workgroupBarrier();
    }
    return o;
}

// The 64×64 tile of a chunk_outer workgroup: (i0, j0) from wg.x over ceil(K/64)·ceil(V/64) tiles.
fn outer_tile(x: u32) -> vec2<u32> {
    let nvt = (p.v + 63u) / 64u;
    return vec2<u32>((x / nvt) * 64u, (x % nvt) * 64u);
}

// ---- The per-chunk products' first pass (linattn_chunk_output; chunk_grad in linattn_bwd).
// Over slabs of 16 of the reduction width r1, invocation (t, quarter) = (lid / 4, lid % 4)
// accumulates the scores w[m] = X[t]·Y[quarter + 4m] and acc[j] = X[t]·M[·][c0 + 16j +
// 4·quarter + (0..3)], with X, Y the chunk operands xw, yw (chunk_ld) and M the family's [K, V]
// matrix of head bh (`slab_m`), read transposed when `m_t` (the output columns index K); with
// `with_z` also xz = X[t]·z (z from the family's `slab_z`). The scores are computed once per 64
// output columns. After it, sa and cw are free for the caller's second pass.
var<workgroup> sa: array<f32, 1024>; // [64 rows][16] row-operand slab (X), then 16 columns of F
var<workgroup> sb: array<f32, 1024>; // [64 rows][16] column-operand slab (Y)
var<workgroup> sm: array<f32, 1024>; // [16][64] slab of M
var<workgroup> sz: array<f32, 16>;
var<workgroup> cw: array<f32, 4160>; // [64][65] masked scores (the caller's)

struct Slabs {
    w: array<f32, 16>,
    acc: array<vec4<f32>, 4>,
    xz: f32,
}

fn chunk_slabs(lid: u32, xw: u32, yw: u32, start: u32, len: u32, h: u32, bh: u32, r1: u32, c0: u32, width: u32, m_t: bool, with_z: bool) -> Slabs {
    var o: Slabs;
    let t = lid / 4u;
    let quarter = lid % 4u;
    for (var r0 = 0u; r0 < r1; r0 += 16u) {
        workgroupBarrier(); // the caller's staging done; the previous slab read
        for (var e = lid; e < 1024u; e += 256u) {
            sa[e] = chunk_ld(xw, start, len, h, e / 16u, r0 + e % 16u);
            sb[e] = chunk_ld(yw, start, len, h, e / 16u, r0 + e % 16u);
            let r = e / 64u;
            let col = e % 64u;
            var mv = 0.0;
            if (r0 + r < r1 && c0 + col < width) {
                if (m_t) { mv = slab_m(bh, c0 + col, r0 + r); } else { mv = slab_m(bh, r0 + r, c0 + col); }
            }
            sm[e] = mv;
        }
        if (with_z && lid < 16u) {
            var zv = 0.0;
            if (r0 + lid < r1) { zv = slab_z(bh, r0 + lid); }
            sz[lid] = zv;
        }
        workgroupBarrier();
        for (var rr = 0u; rr < 16u; rr++) {
            let xv = sa[t * 16u + rr];
            for (var m = 0u; m < 16u; m++) { o.w[m] += xv * sb[(quarter + 4u * m) * 16u + rr]; }
            for (var j = 0u; j < 4u; j++) {
                let mb = rr * 64u + j * 16u + quarter * 4u;
                o.acc[j] += xv * vec4<f32>(sm[mb], sm[mb + 1u], sm[mb + 2u], sm[mb + 3u]);
            }
            if (with_z) { o.xz += xv * sz[rr]; }
        }
    }
    workgroupBarrier();
    return o;
}
