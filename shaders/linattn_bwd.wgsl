// Causal linear attention backward, fused recurrent form (SPEC §5): dq, dk, dv and d(initial
// state) from do and d(final state), every feature map and normalize mode, packed sequences.
// One workgroup per (sequence·head, 16 value columns). Invocation i < K owns row i of the
// state's 16-column slice in registers: a forward scan rebuilds S_t and writes this tile's part
// of dq_t = S_t·dn_t (+ z_t·dd_t), then a reverse scan carries G = Σ_{τ≥t} q̃_τ·dn_τᵀ + dS_T in
// the same registers and writes this tile's part of dk_t = G·v_t (+ Σ q̃·dd) and all of dv_t's
// 16 columns = Gᵀ·k̃_t. A second entry sums the tiles' parts of dq and dk (deterministic, no
// atomics) and applies φ'. The state is read once per scan; memory is linear in T. Where the
// tiles' parts would not fit one binding, the tiles run one dispatch each in order instead
// (p.aux = tile + 1), adding their parts to one running sum: the same sums in the same order.

@group(0) @binding(4) var<storage, read> o_buf: array<u32>;
@group(0) @binding(5) var<storage, read> do_buf: array<u32>;
// [S0 (N·H·K·V) | z0 (N·H·K) | dS_T (N·H·K·V) | dz_T (N·H·K) | sequence starts (N + 1) |
//  positions (N, chunks only)], the last two as u32 bits.
@group(0) @binding(6) var<storage, read> fin: array<f32>;
// [dq parts (NV·R·H·K) | dk parts (NV·R·H·K) | dS0 (N·H·K·V) | dz0 (N·H·K) | den, dd per tile
//  (NV·R·H·2)]
@group(0) @binding(7) var<storage, read_write> part: array<f32>;

// o (which 0) or do (1).
fn ld_od(which: u32, i: u32) -> f32 {
    if (which == 0u) {
        return unpack_elem(o_buf[i >> ELEM_SHIFT], i & ELEM_SHIFT);
    }
    return unpack_elem(do_buf[i >> ELEM_SHIFT], i & ELEM_SHIFT);
}

fn state_len() -> u32 {
    return p.batch * p.heads * p.k * p.v;
}
fn z_len() -> u32 {
    return p.batch * p.heads * p.k;
}
fn seq_start(n: u32) -> u32 {
    return bitcast<u32>(fin[2u * state_len() + 2u * z_len() + n]);
}
// Elements of one [R, H, K] gradient, R the packed row count.
fn rhk() -> u32 {
    return seq_start(p.batch) * p.heads * p.k;
}

var<workgroup> dns: array<f32, 16>;
var<workgroup> red: array<f32, 272>; // [16][17]
var<workgroup> prod: array<f32, 4096>; // [K][16]
var<workgroup> scal: array<f32, 2>; // den, dd of the step
var<workgroup> seq_len: u32;

@compute @workgroup_size(256)
fn linattn_bwd(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = seq_head(wg, nwg);
    if (bh >= p.batch * p.heads) { return; }
    let b = bh / p.heads;
    let h = bh % p.heads;
    let start = seq_start(b);
    if (lid == 0u) { seq_len = seq_start(b + 1u) - start; }
    let len = workgroupUniformLoad(&seq_len);
    // One dispatch per tile (p.aux = tile + 1, one workgroup column) or all tiles at once.
    let serial = p.aux > 0u;
    let tile = select(wg.x, p.aux - 1u, serial);
    let c0 = tile * 16u;
    let nv = nwg.x;
    let mine = lid < p.k;
    let dq_off = wg.x * rhk();
    let dk_off = (nv + wg.x) * rhk();
    let ds0_off = 2u * nv * rhk();
    let dz0_off = ds0_off + state_len();
    let dd_off = dz0_off + z_len() + wg.x * 2u * seq_start(p.batch) * p.heads;
    // A chunk's first position in its sequence (varlen 2), for Count mode.
    var pos0 = 0u;
    if (p.varlen == 2u) { pos0 = bitcast<u32>(fin[2u * state_len() + 2u * z_len() + p.batch + 1u + b]); }
    var s: array<f32, 16>;
    for (var j = 0u; j < 16u; j++) {
        s[j] = 0.0;
        if (mine && c0 + j < p.v) { s[j] = fin[(bh * p.k + lid) * p.v + c0 + j]; }
    }
    if (mine) { zs[lid] = fin[state_len() + bh * p.k + lid]; }
    // Forward: S_t, z_t, the step's denominator and dd = −(do·o)/den, this tile's part of dq.
    for (var t = 0u; t < len; t++) {
        let row = (start + t) * p.heads + h;
        stage_step(lid, row, c0, true);
        workgroupBarrier();
        if (lid < 16u) {
            var qz = 0.0;
            // Constant trip counts here and below: the compiler unrolls them.
            for (var i = 0u; i < 16u; i++) {
                let r = lid + 16u * i;
                if (r < p.k) { qz += qs[r] * zs[r]; }
            }
            var dot = 0.0;
            if (p.normalize == 1u) {
                for (var i = 0u; i < 16u; i++) {
                    let c = lid + 16u * i;
                    if (c < p.v) { dot += ld_od(1u, row * p.v + c) * ld_od(0u, row * p.v + c); }
                }
            }
            red[lid] = qz;
            red[16u + lid] = dot;
        }
        workgroupBarrier();
        if (lid == 0u) {
            var den = 1.0;
            var dd = 0.0;
            if (p.normalize == 1u) {
                den = p.eps;
                var dot = 0.0;
                for (var r = 0u; r < 16u; r++) {
                    den += red[r];
                    dot += red[16u + r];
                }
                dd = -dot / den;
            } else if (p.normalize == 2u) {
                den = f32(p.count0 + pos0 + t + 1u);
            }
            scal[0] = den;
            scal[1] = dd;
            part[dd_off + 2u * row] = den;
            part[dd_off + 2u * row + 1u] = dd;
        }
        workgroupBarrier();
        if (lid < 16u) {
            var dn = 0.0;
            if (c0 + lid < p.v) { dn = ld_od(1u, row * p.v + c0 + lid) / scal[0]; }
            dns[lid] = dn;
        }
        workgroupBarrier();
        if (mine) {
            var acc = 0.0;
            for (var j = 0u; j < 16u; j++) {
                s[j] += ks[lid] * vs[j];
                acc += s[j] * dns[j];
            }
            if (tile == 0u) { acc += zs[lid] * scal[1]; }
            let at = dq_off + row * p.k + lid;
            part[at] = select(0.0, part[at], serial && tile > 0u) + acc;
        }
        workgroupBarrier();
    }
    // The steps' den and dd (written by invocation 0 above) are read by others below.
    storageBarrier();
    // Reverse: G = dS_T + Σ_{τ≥t} q̃_τ·dn_τᵀ, hz = dz_T + Σ_{τ≥t} q̃_τ·dd_τ.
    for (var j = 0u; j < 16u; j++) {
        s[j] = 0.0;
        if (mine && c0 + j < p.v) { s[j] = fin[state_len() + p.batch * p.heads * p.k + (bh * p.k + lid) * p.v + c0 + j]; }
    }
    var hz = 0.0;
    if (mine) { hz = fin[2u * state_len() + z_len() + bh * p.k + lid]; }
    for (var step = 0u; step < len; step++) {
        let t = len - 1u - step;
        let row = (start + t) * p.heads + h;
        stage_step(lid, row, c0, false);
        if (lid < 16u) {
            var dn = 0.0;
            if (c0 + lid < p.v) { dn = ld_od(1u, row * p.v + c0 + lid) / part[dd_off + 2u * row]; }
            dns[lid] = dn;
        }
        if (lid == 0u) { scal[1] = part[dd_off + 2u * row + 1u]; }
        workgroupBarrier();
        if (mine) {
            hz += qs[lid] * scal[1];
            var acc = 0.0;
            for (var j = 0u; j < 16u; j++) {
                s[j] += qs[lid] * dns[j];
                acc += s[j] * vs[j];
                prod[lid * 16u + j] = s[j] * ks[lid];
            }
            if (tile == 0u) { acc += hz; }
            let at = dk_off + row * p.k + lid;
            part[at] = select(0.0, part[at], serial && tile > 0u) + acc;
        }
        workgroupBarrier();
        // dv_t[j] = Σ_i G[i, j]·k̃_t[i]: 16 partial sums per column, then one per column.
        let g = lid / 16u;
        let j = lid % 16u;
        var r = 0.0;
        for (var ii = 0u; ii < 16u; ii++) {
            let i = g + 16u * ii;
            if (i < p.k) { r += prod[i * 16u + j]; }
        }
        red[g * 17u + j] = r;
        workgroupBarrier();
        if (lid < 16u && c0 + lid < p.v) {
            var dv = 0.0;
            for (var gg = 0u; gg < 16u; gg++) { dv += red[gg * 17u + lid]; }
            put_out(row * p.v + c0 + lid, dv);
        }
        workgroupBarrier();
    }
    if (mine) {
        for (var j = 0u; j < 16u; j++) {
            if (c0 + j < p.v) { part[ds0_off + (bh * p.k + lid) * p.v + c0 + j] = s[j]; }
        }
        if (tile == 0u) { part[dz0_off + bh * p.k + lid] = hz; }
    }
}

// dq (aux 0) or dk (1): the sum of the value tiles' parts, times scale·φ'(q) or φ'(k); one
// invocation per output word. The tile count is in count0.
@compute @workgroup_size(256)
fn linattn_bwd_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let word = gid.x + gid.y * nwg.x * 256u;
    let total = rhk();
    if (word >= ((total + ELEM_SHIFT) >> ELEM_SHIFT)) { return; }
    var out = array<f32, 2>(0.0, 0.0);
    for (var e = 0u; e <= ELEM_SHIFT; e++) {
        let i = (word << ELEM_SHIFT) + e;
        if (i < total) {
            var acc = 0.0;
            for (var tile = 0u; tile < p.count0; tile++) {
                acc += part[(p.aux * p.count0 + tile) * total + i];
            }
            if (p.aux == 0u) {
                out[e] = acc * p.scale * phi_grad(ld(0u, i));
            } else {
                out[e] = acc * phi_grad(ld(1u, i));
            }
        }
    }
    if (ELEM_SHIFT == 0u) {
        atomicStore(&out_buf[word], pack_elem(out[0]));
    } else {
        atomicStore(&out_buf[word], pack_pair(out[0], out[1]));
    }
}

// ---- Chunked backward as matrix products (the sequences are chunks of at most 64 rows,
// varlen 2). Per chunk, with dn_t = do_t/den_t and dd_t = −(do_t·o_t)/den_t (0 unless
// Normalizer), the scores A[t][s] = q̃_t·k̃_s and B[t][s] = dn_t·v_s + dd_t (both for s ≤ t), the
// start state S_c, z_c and the gradient at the chunk's end G_c, g_c:
//   dq̃ = dN·S_cᵀ + dd·z_cᵀ + B·K̃        dk̃ = V·G_cᵀ + 1·g_cᵀ + Bᵀ·Q̃        dv = K̃·G_c + Aᵀ·dN
// and the chunk's own contribution to the gradient before it, Q̃ᵀ·dN and Q̃ᵀ·dd. Every term is a
// product of 64-row blocks staged in workgroup memory: no barrier per row, every invocation busy.
// Bindings: fin (6) holds [chunk bounds (C + 1) | positions (C) | den, dd per packed row (R·H·2) |
// z_c (C·H·K) | g_c (C·H·K)] (bounds and positions as u32 bits), C = p.batch chunks; part (7) the
// K×V matrices of the pass (S_c or G_c); linattn_chunk_den writes its part of that table through
// part instead.

fn cb_rows_heads(rows: u32) -> u32 {
    return rows * p.heads;
}
fn cb_dd_off() -> u32 {
    return 2u * p.batch + 1u;
}
// Offset of z_c (which 0) or g_c (which 1) in the table, for `rows` packed rows.
fn cb_z_off(rows: u32, which: u32) -> u32 {
    return cb_dd_off() + 2u * cb_rows_heads(rows) + which * p.batch * p.heads * p.k;
}

var<workgroup> cden: array<f32, 64>;
var<workgroup> cdd: array<f32, 64>;

// Operand `which` of local row r of the chunk (chunk_ld); the fourth is dn = do/den (cden staged).
fn fourth_operand(i: u32, r: u32) -> f32 {
    return ld_od(1u, i) / cden[r];
}

fn row_weight(r: u32) -> f32 {
    return cdd[r];
}

// chunk_slabs' matrix: the chunk states or gradients (S_c, G_c) in part.
fn slab_m(bh: u32, row: u32, col: u32) -> f32 {
    return part[(bh * p.k + row) * p.v + col];
}

// chunk_slabs' z (unused here: the backward adds its z terms after the slabs).
fn slab_z(bh: u32, i: u32) -> f32 {
    return 0.0;
}

fn cb_ld(which: u32, cr: ChunkRow, r: u32, col: u32) -> f32 {
    return chunk_ld(which, cr.start, cr.len, cr.h, r, col);
}

// The chunk·head of a workgroup (`ok` false past the end): bounds from the table in fin, or in
// part for linattn_chunk_den, which writes its rows there.
struct ChunkRow {
    ok: bool,
    c: u32,
    h: u32,
    bh: u32,
    start: u32,
    len: u32,
    rows: u32,
    pos: u32, // the position of the chunk's first row in its sequence
}

fn chunk_row(wg: vec3<u32>, nwg: vec3<u32>, in_part: bool) -> ChunkRow {
    var r: ChunkRow;
    r.bh = seq_head(wg, nwg);
    r.ok = r.bh < p.batch * p.heads;
    if (!r.ok) { return r; }
    r.c = r.bh / p.heads;
    r.h = r.bh % p.heads;
    var b = vec4<u32>(bitcast<u32>(fin[r.c]), bitcast<u32>(fin[r.c + 1u]), bitcast<u32>(fin[p.batch]), bitcast<u32>(fin[p.batch + 1u + r.c]));
    if (in_part) { b = vec4<u32>(bitcast<u32>(part[r.c]), bitcast<u32>(part[r.c + 1u]), bitcast<u32>(part[p.batch]), bitcast<u32>(part[p.batch + 1u + r.c])); }
    r.start = b.x;
    r.len = b.y - b.x;
    r.rows = b.z;
    r.pos = b.w;
    return r;
}

// Stages den and dd of the chunk's rows (invocations below 64) from fin[dd_at + 2·row ..].
fn cb_stage_den(lid: u32, cr: ChunkRow, dd_at: u32) {
    if (lid < 64u) {
        var den = 1.0;
        var dd = 0.0;
        if (lid < cr.len) {
            if (p.normalize == 1u) {
                let row = (cr.start + lid) * p.heads + cr.h;
                den = fin[dd_at + 2u * row];
                dd = fin[dd_at + 2u * row + 1u];
            } else if (p.normalize == 2u) {
                den = f32(p.count0 + cr.pos + lid + 1u);
            }
        }
        cden[lid] = den;
        cdd[lid] = dd;
    }
}

// The normalizer's den_t = eps + q̃_t·z_t, z_t = z_c + Σ_{s≤t} k̃_s (prefix sums of k̃ down each
// slab's columns from z_c in zrun), and dd_t of the chunk's rows: into cdd, and with den into
// part[dd_at + 2·row ..]. zrun is left holding z_c + Σ k̃, the next chunk's z_c.
var<workgroup> zrun: array<f32, 256>;

fn chunk_den_rows(lid: u32, cr: ChunkRow, dd_at: u32) {
    let t = lid / 4u;
    let quarter = lid % 4u;
    var qz = 0.0;
    // Rows of q̃ and k̃ 16 features at a time (row t, features 4·quarter.. in slot lid).
    for (var i0 = 0u; i0 < p.k; i0 += 16u) {
        slab_x[lid] = chunk_ld4(0u, cr.start, cr.len, cr.h, t, i0 + 4u * quarter);
        slab_y[lid] = chunk_ld4(1u, cr.start, cr.len, cr.h, t, i0 + 4u * quarter);
        workgroupBarrier();
        if (lid < 4u) {
            var run = vec4<f32>(0.0);
            for (var c = 0u; c < 4u; c++) {
                let i = i0 + 4u * lid + c;
                if (i < p.k) { run[c] = zrun[i]; }
            }
            for (var r = 0u; r < 64u; r++) {
                run += slab_y[r * 4u + lid];
                slab_y[r * 4u + lid] = run;
            }
            for (var c = 0u; c < 4u; c++) {
                let i = i0 + 4u * lid + c;
                if (i < p.k) { zrun[i] = run[c]; }
            }
        }
        workgroupBarrier();
        qz += dot(slab_x[lid], slab_y[lid]);
        workgroupBarrier();
    }
    var od = 0.0;
    if (t < cr.len) {
        let row = (cr.start + t) * p.heads + cr.h;
        for (var j = quarter; j < p.v; j += 4u) { od += ld_od(1u, row * p.v + j) * ld_od(0u, row * p.v + j); }
    }
    cw[lid] = vec4<f32>(qz, od, 0.0, 0.0);
    workgroupBarrier();
    if (lid < 64u) {
        let den = p.eps + cw[4u * lid].x + cw[4u * lid + 1u].x + cw[4u * lid + 2u].x + cw[4u * lid + 3u].x;
        let dd = -(cw[4u * lid].y + cw[4u * lid + 1u].y + cw[4u * lid + 2u].y + cw[4u * lid + 3u].y) / den;
        cdd[lid] = select(0.0, dd, lid < cr.len);
        if (lid < cr.len) {
            let row = (cr.start + lid) * p.heads + cr.h;
            part[dd_at + 2u * row] = den;
            part[dd_at + 2u * row + 1u] = dd;
        }
    }
    workgroupBarrier();
}

// Normalizer only, one workgroup per chunk·head: den and dd of its rows (z_c from the table in
// part), and the chunk's own Q̃ᵀ·dd into g_c's slot.
@compute @workgroup_size(256)
fn linattn_chunk_den(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let cr = chunk_row(wg, nwg, true);
    if (!cr.ok) { return; }
    if (lid < p.k) { zrun[lid] = part[cb_z_off(cr.rows, 0u) + cr.bh * p.k + lid]; }
    workgroupBarrier();
    chunk_den_rows(lid, cr, cb_dd_off());
    if (lid < p.k) {
        var hz = 0.0;
        for (var r = 0u; r < 64u; r++) { hz += cb_ld(0u, cr, r, lid) * cdd[r]; }
        part[cb_z_off(cr.rows, 1u) + cr.bh * p.k + lid] = hz;
    }
}

// The chunk's own Q̃ᵀ·dN (the workgroup's 64×64 tile) into part.
@compute @workgroup_size(256)
fn linattn_chunk_dstate(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let cr = chunk_row(wg, nwg, false);
    if (!cr.ok) { return; }
    cb_stage_den(lid, cr, cb_dd_off());
    workgroupBarrier();
    let tile = outer_tile(wg.x);
    let o = chunk_outer(lid, 0u, 3u, cr.start, cr.len, cr.h, tile.x, tile.y, false);
    tile_put(cr.bh, lid, tile, o.acc, false);
}

// tile_put's matrices: the K×V matrices of part.
fn mat_put(at: u32, v: f32, add: bool) {
    if (add) { part[at] += v; } else { part[at] = v; }
}

// dv, dq or dk (mode 2, 0, 1), the workgroup's 64 output columns (of V for dv, of K for dq and
// dk); invocation lid owns the chunk's rows tile_row(lid, ·) and columns c0 + tile_col(lid, ·). One pass
// over slabs of 16 of the reduction width (K for dv, V for dq and dk) accumulates the chunk's
// masked scores W once per 64 columns, together with the matrix term X·M:
//   dv: W[t][s] = k̃_t·q̃_s (s ≥ t),      X = K̃,  M = G_c,  then + W·dN
//   dq: W[t][s] = dn_t·v_s + dd_t (s ≤ t), X = dN, M = S_cᵀ, then + dd_t·z_c + W·K̃
//   dk: W[t][s] = v_t·dn_s + dd_s (s ≥ t), X = V,  M = G_cᵀ, then + g_c + W·Q̃
// and dq, dk are multiplied by scale·φ'(q) or φ'(k). M is slot cr.bh of part; den and dd are at
// fin[dd_at ..] (cb_stage_den); zq[b] is z_c (dq) or g_c (dk) at column c0 + tile_col(lid, b).
fn chunk_grad(lid: u32, cr: ChunkRow, c0: u32, mode: u32, dd_at: u32, zq: vec4<f32>) {
    let dv = mode == 2u;
    // cb_ld operands (0 q̃, 1 k̃, 2 v, 3 dn) of X, Y (the scores' columns) and F (after the mask).
    let xw = select(select(3u, 2u, mode == 1u), 1u, dv);
    let yw = select(select(2u, 3u, mode == 1u), 0u, dv);
    let fw = select(select(1u, 0u, mode == 1u), 3u, dv);
    let width = select(p.k, p.v, dv);
    let r1 = select(p.v, p.k, dv);
    cb_stage_den(lid, cr, dd_at);
    let sl = chunk_slabs(lid, xw, yw, cr.start, cr.len, cr.h, cr.bh, r1, c0, width, !dv, false);
    // The scores plus dd_t (dq) or dd_s (dk), masked.
    var w = sl.w;
    for (var a = 0u; a < 4u; a++) {
        let t = tile_row(lid, a);
        for (var b = 0u; b < 4u; b++) {
            if (mode == 0u) { w[a][b] += cdd[t]; }
            if (mode == 1u) { w[a][b] += cdd[tile_col(lid, b)]; }
        }
    }
    put_scores(lid, w, mode == 0u);
    let g = scores_times(lid, sl.acc, fw, cr.start, cr.len, cr.h, c0, mode == 0u).acc;
    for (var a = 0u; a < 4u; a++) {
        let t = tile_row(lid, a);
        if (t >= cr.len) { break; }
        let row = (cr.start + t) * p.heads + cr.h;
        for (var b = 0u; b < 4u; b++) {
            let col = c0 + tile_col(lid, b);
            if (col >= width) { break; }
            // The z term: dd_t·z_c (dq), g_c (dk), none (dv).
            var gv = g[a][b];
            if (!dv) { gv += select(1.0, cdd[t], mode == 0u) * zq[b]; }
            if (dv) {
                put_out(row * p.v + col, gv);
            } else {
                let x = ld(mode, row * p.k + col);
                put_out(row * p.k + col, gv * select(p.scale * phi_grad(x), phi_grad(x), mode == 1u));
            }
        }
    }
}

// One chunk·head's dv, dq or dk (mode 2, 0, 1) from its S_c or G_c in part and the table in fin.
fn chunk_grad_stored(lid: u32, wg: vec3<u32>, nwg: vec3<u32>, mode: u32) {
    let cr = chunk_row(wg, nwg, false);
    if (!cr.ok) { return; }
    let c0 = wg.x * 64u;
    let z_at = cb_z_off(cr.rows, min(mode, 1u)) + cr.bh * p.k;
    var zq = vec4<f32>(0.0);
    for (var b = 0u; b < 4u; b++) {
        let col = c0 + tile_col(lid, b);
        if (mode != 2u && col < p.k) { zq[b] = fin[z_at + col]; }
    }
    chunk_grad(lid, cr, c0, mode, cb_dd_off(), zq);
}

@compute @workgroup_size(256)
fn linattn_chunk_dv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    chunk_grad_stored(lid, wg, nwg, 2u);
}

// dq (aux 0) or dk (aux 1).
@compute @workgroup_size(256)
fn linattn_chunk_dqk(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    chunk_grad_stored(lid, wg, nwg, p.aux);
}

// The chunked backward in one pass per gradient (FFKERN_LINATTN_KERNEL=fused; the twin of
// linattn_chunk_fused_grad in kernels/linattn.cu, which takes normalize none only): one workgroup
// per (sequence·head, 64 output columns) carries its slice of a running matrix M (slot nh of
// part) and of a running vector m (registers) through the sequence's chunks and computes each
// chunk's gradient from them as chunk_grad does from stored ones, then adds the chunk to both:
//   dq (aux 0), chunks in order:     M = S from S_0, rows c0.. of K;    S += K̃ᵀ·V,  m = z += K̃ᵀ·1
//   dk (aux 1), from the last chunk: M = G from dS_T, rows c0.. of K;   G += Q̃ᵀ·dN, m = g += Q̃ᵀ·dd
//   dv (aux 2), from the last chunk: M = G from dS_T, columns c0.. of V; G += Q̃ᵀ·dN
// part holds a copy of S_0 (dq) or dS_T (dk), or dS_T itself (dv, left holding dS0); dk leaves
// g (dz0) after the N·H·K·V matrix. fin holds the table of linattn_chunk_states ([C | bounds
// (C + 1) | positions (C) | each sequence's first chunk (N + 1)], u32 bits), then dz_T, z_0 (N·H·K
// each), then den, dd per packed row (R·H·2, from linattn_chunk_fused_den; Normalizer only). Why
// it is fast: as linattn_chunk_fused, no per-chunk state or gradient is ever stored.
fn fused_tables(nc: u32) -> u32 {
    return 2u * nc + 3u + p.batch;
}

// Sequence·head nh's chunks in that table: (C, its first chunk, its chunk count).
fn fused_chunks(nh: u32) -> vec3<u32> {
    let nc = bitcast<u32>(fin[0]);
    let first = bitcast<u32>(fin[2u * nc + 2u + nh / p.heads]);
    return vec3<u32>(nc, first, bitcast<u32>(fin[2u * nc + 3u + nh / p.heads]) - first);
}

// Chunk c of sequence·head nh, C = nc chunks in the table.
fn fused_chunk(nh: u32, nc: u32, c: u32) -> ChunkRow {
    var cr: ChunkRow;
    cr.ok = true;
    cr.h = nh % p.heads;
    cr.bh = nh;
    cr.start = bitcast<u32>(fin[1u + c]);
    cr.len = bitcast<u32>(fin[2u + c]) - cr.start;
    cr.pos = bitcast<u32>(fin[nc + 2u + c]);
    return cr;
}

var<workgroup> msum: array<f32, 64>;

// One chunk's tile of M's update (rows i0.. of K, columns j0..) added to M; its row sums (X's
// column sums over the chunk, weighted by dd for q̃) into msum when `sums`.
fn fused_add(lid: u32, cr: ChunkRow, xw: u32, yw: u32, i0: u32, j0: u32, sums: bool) {
    let o = chunk_outer(lid, xw, yw, cr.start, cr.len, cr.h, i0, j0, xw == 0u);
    tile_put(cr.bh, lid, vec2<u32>(i0, j0), o.acc, true);
    if (sums && lid % 16u == 0u) {
        for (var a = 0u; a < 4u; a++) { msum[tile_row(lid, a)] = o.xsum[a]; }
    }
}

@compute @workgroup_size(256)
fn linattn_chunk_fused_grad(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let nh = seq_head(wg, nwg);
    if (nh >= p.batch * p.heads) { return; }
    let mode = p.aux;
    let chunks = fused_chunks(nh);
    let nc = chunks.x;
    let c0 = wg.x * 64u;
    let nhk = p.batch * p.heads * p.k;
    // m's slice at this invocation's columns c0 + tile_col(lid, ·): z from z_0 (dq), g from dz_T (dk).
    let m_at = fused_tables(nc) + select(0u, nhk, mode == 0u) + nh * p.k;
    var m = vec4<f32>(0.0);
    for (var b = 0u; b < 4u; b++) {
        let col = c0 + tile_col(lid, b);
        if (mode != 2u && col < p.k) { m[b] = fin[m_at + col]; }
    }
    // The operands of M's update (chunk_ld's 0 q̃, 1 k̃, 2 v, 3 dn).
    let xw = select(0u, 1u, mode == 0u);
    let yw = select(3u, 2u, mode == 0u);
    for (var j = 0u; j < chunks.z; j++) {
        let cr = fused_chunk(nh, nc, select(chunks.y + chunks.z - 1u - j, chunks.y + j, mode == 0u));
        chunk_grad(lid, cr, c0, mode, fused_tables(nc) + 2u * nhk, m);
        // Every read of M is done (chunk_slabs' last barrier); den and dd stay staged.
        if (mode == 2u) {
            for (var i0 = 0u; i0 < p.k; i0 += 64u) { fused_add(lid, cr, xw, yw, i0, c0, false); }
        } else {
            for (var j0 = 0u; j0 < p.v; j0 += 64u) { fused_add(lid, cr, xw, yw, c0, j0, j0 == 0u); }
            workgroupBarrier();
            for (var b = 0u; b < 4u; b++) { m[b] += msum[tile_col(lid, b)]; }
        }
        storageBarrier(); // the next chunk's slabs read the updated slice
    }
    if (mode == 1u) {
        for (var b = 0u; b < 4u; b++) {
            let col = c0 + tile_col(lid, b);
            if (lid < 16u && col < p.k) { part[state_len() + nh * p.k + col] = m[b]; }
        }
    }
}

// Normalizer, before linattn_chunk_fused_grad: one workgroup per sequence·head walks its chunks in
// order with z in zrun (from z_0), and writes den, dd of every row into part[2·row ..]. fin as
// linattn_chunk_fused_grad's.
@compute @workgroup_size(256)
fn linattn_chunk_fused_den(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let nh = seq_head(wg, nwg);
    if (nh >= p.batch * p.heads) { return; }
    let chunks = fused_chunks(nh);
    if (lid < p.k) { zrun[lid] = fin[fused_tables(chunks.x) + p.batch * p.heads * p.k + nh * p.k + lid]; }
    workgroupBarrier();
    for (var c = chunks.y; c < chunks.y + chunks.z; c++) {
        chunk_den_rows(lid, fused_chunk(nh, chunks.x, c), 0u);
    }
}
