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

// Four consecutive elements col .. col + 3 of chunk_ld's operand `which` at local row r.
fn chunk_ld4(which: u32, start: u32, len: u32, h: u32, r: u32, col: u32) -> vec4<f32> {
    return vec4<f32>(chunk_ld(which, start, len, h, r, col), chunk_ld(which, start, len, h, r, col + 1u),
                     chunk_ld(which, start, len, h, r, col + 2u), chunk_ld(which, start, len, h, r, col + 3u));
}

// The chunk products give each invocation a 4×4 block of a 64×64 tile: rows tile_row(lid, a),
// columns tile_col(lid, b), element [a][b] of an array<vec4<f32>, 4>. Their operands are staged
// in slabs of 16 steps of the reduction, four consecutive rows or columns a vec4 ([16][64] as
// [16][16] vec4), so that each step of a block takes one vec4 per operand for 16 products.
fn tile_row(lid: u32, a: u32) -> u32 {
    return 4u * (lid / 16u) + a;
}
fn tile_col(lid: u32, b: u32) -> u32 {
    return 4u * (lid % 16u) + b;
}

var<workgroup> slab_x: array<vec4<f32>, 256>;
var<workgroup> slab_y: array<vec4<f32>, 256>;
var<workgroup> slab_s: array<vec4<f32>, 256>;

// acc[a] + x[a]·y: the 4×4 block's step.
fn outer4(acc: array<vec4<f32>, 4>, x: vec4<f32>, y: vec4<f32>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(acc[0] + x.x * y, acc[1] + x.y * y, acc[2] + x.z * y, acc[3] + x.w * y);
}

// The workgroup's 64×64 tile (rows i0.. of K, columns j0.. of V) of Xᵀ·Y over the chunk's 64
// rows, X = operand xw, Y = operand yw (as chunk_ld): invocation lid gets rows i0 +
// tile_row(lid, a), columns j0 + tile_col(lid, b) in acc, and xsum[a] = Σ_r X[r][i0 +
// tile_row(lid, a)] (weighted by the family's `row_weight(r)` when `weighted`). Rows are staged 16
// at a time; every invocation is busy whatever K is.
struct Outer {
    acc: array<vec4<f32>, 4>,
    xsum: vec4<f32>,
}

fn chunk_outer(lid: u32, xw: u32, yw: u32, start: u32, len: u32, h: u32, i0: u32, j0: u32, weighted: bool) -> Outer {
    var o: Outer;
    for (var r0 = 0u; r0 < 64u; r0 += 16u) {
        slab_x[lid] = chunk_ld4(xw, start, len, h, r0 + lid / 16u, i0 + tile_col(lid, 0u));
        slab_y[lid] = chunk_ld4(yw, start, len, h, r0 + lid / 16u, j0 + tile_col(lid, 0u));
        workgroupBarrier();
        for (var rr = 0u; rr < 16u; rr++) {
            let x = slab_x[rr * 16u + lid / 16u];
            o.xsum += x * select(1.0, row_weight(r0 + rr), weighted);
            o.acc = outer4(o.acc, x, slab_y[rr * 16u + lid % 16u]);
        }
        workgroupBarrier();
    }
    return o;
}

// Invocation lid's 4×4 block of a chunk_outer tile (rows tile.x.., columns tile.y..) into slot
// `slot` of the family's K×V matrices (`mat_put`): stored, or added to them when `add`.
fn tile_put(slot: u32, lid: u32, tile: vec2<u32>, acc: array<vec4<f32>, 4>, add: bool) {
    for (var a = 0u; a < 4u; a++) {
        let i = tile.x + tile_row(lid, a);
        if (i >= p.k) { return; }
        for (var b = 0u; b < 4u; b++) {
            let col = tile.y + tile_col(lid, b);
            if (col < p.v) { mat_put((slot * p.k + i) * p.v + col, acc[a][b], add); }
        }
    }
}

// The 64×64 tile of a chunk_outer workgroup: (i0, j0) from wg.x over ceil(K/64)·ceil(V/64) tiles.
fn outer_tile(x: u32) -> vec2<u32> {
    let nvt = (p.v + 63u) / 64u;
    return vec2<u32>((x / nvt) * 64u, (x % nvt) * 64u);
}

// ---- The per-chunk products' first pass (linattn_chunk_output; chunk_grad in linattn_bwd).
// Over slabs of 16 of the reduction width r1, invocation lid accumulates, for the chunk's rows
// t = tile_row(lid, a) and the columns tile_col(lid, b), the scores w[a][b] = X[t]·Y[tile_col]
// and acc[a][b] = X[t]·M[·][c0 + tile_col], with X, Y the chunk operands xw, yw (chunk_ld) and
// M the family's [K, V] matrix of head bh (`slab_m`), read transposed when `m_t` (the output
// columns index K); with `with_z` also xz[a] = X[t]·z (z from the family's `slab_z`). The scores
// are computed once per 64 output columns. X and Y go into their slabs transposed (step, row), a
// component at a time, from loads of four consecutive elements of a row.
var<workgroup> sz: array<f32, 16>;

struct Slabs {
    w: array<vec4<f32>, 4>,
    acc: array<vec4<f32>, 4>,
    xz: vec4<f32>,
}

fn chunk_slabs(lid: u32, xw: u32, yw: u32, start: u32, len: u32, h: u32, bh: u32, r1: u32, c0: u32, width: u32, m_t: bool, with_z: bool) -> Slabs {
    var o: Slabs;
    let t = lid / 4u;
    let f0 = 4u * (lid % 4u);
    for (var r0 = 0u; r0 < r1; r0 += 16u) {
        workgroupBarrier(); // the caller's staging done; the previous slab read
        let xv = chunk_ld4(xw, start, len, h, t, r0 + f0);
        let yv = chunk_ld4(yw, start, len, h, t, r0 + f0);
        for (var c = 0u; c < 4u; c++) {
            slab_x[(f0 + c) * 16u + t / 4u][t % 4u] = xv[c];
            slab_y[(f0 + c) * 16u + t / 4u][t % 4u] = yv[c];
        }
        var mv = vec4<f32>(0.0);
        let mr = r0 + lid / 16u;
        for (var b = 0u; b < 4u; b++) {
            let col = c0 + tile_col(lid, b);
            if (mr < r1 && col < width) {
                if (m_t) { mv[b] = slab_m(bh, col, mr); } else { mv[b] = slab_m(bh, mr, col); }
            }
        }
        slab_s[lid] = mv;
        if (with_z && lid < 16u) {
            var zv = 0.0;
            if (r0 + lid < r1) { zv = slab_z(bh, r0 + lid); }
            sz[lid] = zv;
        }
        workgroupBarrier();
        for (var rr = 0u; rr < 16u; rr++) {
            let x = slab_x[rr * 16u + lid / 16u];
            o.w = outer4(o.w, x, slab_y[rr * 16u + lid % 16u]);
            o.acc = outer4(o.acc, x, slab_s[rr * 16u + lid % 16u]);
            if (with_z) { o.xz += x * sz[rr]; }
        }
    }
    workgroupBarrier();
    return o;
}

// ---- The per-chunk products' second pass: the masked scores W (from chunk_slabs, with the
// caller's additions) in cw transposed, cw[s·16 + ⌊t/4⌋][t % 4] = W[t][s], then acc += W·F over
// the chunk's rows s, F (chunk_ld's operand fw, columns f0 + tile_col) staged 16 rows at a time.
// `lower`: W is kept for s ≤ t, else for s ≥ t. Also wsum[a] = Σ_s W[t][s] for the rows t.
var<workgroup> cw: array<vec4<f32>, 1024>; // [64 s][16]

fn put_scores(lid: u32, w: array<vec4<f32>, 4>, lower: bool) {
    for (var b = 0u; b < 4u; b++) {
        let s = tile_col(lid, b);
        var col = vec4<f32>(w[0][b], w[1][b], w[2][b], w[3][b]);
        for (var a = 0u; a < 4u; a++) {
            let t = tile_row(lid, a);
            if ((lower && s > t) || (!lower && s < t)) { col[a] = 0.0; }
        }
        cw[s * 16u + lid / 16u] = col;
    }
}

struct Scored {
    acc: array<vec4<f32>, 4>,
    wsum: vec4<f32>,
}

fn scores_times(lid: u32, acc: array<vec4<f32>, 4>, fw: u32, start: u32, len: u32, h: u32, f0: u32, lower: bool) -> Scored {
    var o: Scored;
    o.acc = acc;
    let t0 = tile_row(lid, 0u);
    for (var s0 = 0u; s0 < 64u; s0 += 16u) {
        workgroupBarrier(); // the scores stored; the previous rows of F read
        slab_x[lid] = chunk_ld4(fw, start, len, h, s0 + lid / 16u, f0 + tile_col(lid, 0u));
        workgroupBarrier();
        // Rows s wholly masked for the block's four rows are skipped.
        if (select(s0 + 15u >= t0, s0 <= t0 + 3u, lower)) {
            for (var rr = 0u; rr < 16u; rr++) {
                let wv = cw[(s0 + rr) * 16u + lid / 16u];
                o.wsum += wv;
                o.acc = outer4(o.acc, wv, slab_x[rr * 16u + lid % 16u]);
            }
        }
    }
    workgroupBarrier();
    return o;
}
