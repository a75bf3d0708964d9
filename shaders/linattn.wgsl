// Causal linear attention, fused recurrent form (SPEC §5), which is also the decode step (T = 1).
// One workgroup per (batch·head, 16 value columns); each invocation keeps its slice of the state
// S (rows kl, kl + 16, … of 16 columns) in registers for the whole sequence, so the state is
// read and written once per call; q̃, k̃, v of a step are staged in workgroup memory.

// The initial normalizer state, a copy (Normalizer only): every value tile reads it while tile 0
// writes the final one into z_buf.
@group(0) @binding(4) var<storage, read> z_init: array<f32>;
// Sequence n is rows starts[n] .. starts[n + 1] of the [B·T, H, ·] tensors (cu_seqlens).
@group(0) @binding(5) var<storage, read> starts: array<u32>;
@group(0) @binding(6) var<storage, read_write> state: array<f32>;
@group(0) @binding(7) var<storage, read_write> z_buf: array<f32>;

var<workgroup> red: array<f32, 272>; // [16 k-lanes][17]
var<workgroup> zred: array<f32, 16>;
var<workgroup> outv: array<f32, 16>;
var<workgroup> seq_len: u32;

@compute @workgroup_size(256)
fn linattn_recurrent(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let kl = lid / 16u;
    let vl = lid % 16u;
    let bh = seq_head(wg, nwg);
    if (bh >= p.batch * p.heads) { return; }
    let b = bh / p.heads;
    let h = bh % p.heads;
    // Sequence b is rows starts[b] .. starts[b + 1] (cu_seqlens), or b·T .. (b + 1)·T (varlen 0).
    var start = b * p.seq;
    if (p.varlen != 0u) { start = starts[b]; }
    if (lid == 0u) {
        var n = p.seq;
        if (p.varlen != 0u) { n = starts[b + 1u] - start; }
        seq_len = n;
    }
    // The same for the whole workgroup: the barriers of the step loop stay in uniform control flow.
    let len = workgroupUniformLoad(&seq_len);
    let col = wg.x * 16u + vl;
    let nk = (p.k + 15u) / 16u;
    var s: array<f32, 16>;
    for (var i = 0u; i < nk; i = i + 1u) {
        let ki = kl + 16u * i;
        s[i] = 0.0;
        if (ki < p.k && col < p.v) { s[i] = state[(bh * p.k + ki) * p.v + col]; }
    }
    // Tile 0 reads the initial normalizer and writes the final one; the other tiles need it only
    // for the Normalizer, from a copy.
    if (lid < p.k) {
        var z0 = 0.0;
        if (wg.x == 0u) {
            z0 = z_buf[bh * p.k + lid];
        } else if (p.normalize == 1u) {
            z0 = z_init[bh * p.k + lid];
        }
        zs[lid] = z0;
    }
    // A chunk's first position in its sequence (varlen 2), for Count mode.
    var pos0 = 0u;
    if (p.varlen == 2u) { pos0 = starts[p.batch + 1u + b]; }
    for (var t = 0u; t < len; t = t + 1u) {
        let row = (start + t) * p.heads + h;
        stage_step(lid, row, wg.x * 16u, true);
        workgroupBarrier();
        var part = 0.0;
        var zp = 0.0;
        // A constant trip count (the compiler unrolls it; s stays in registers).
        for (var i = 0u; i < 16u; i = i + 1u) {
            let ki = kl + 16u * i;
            if (ki < p.k) {
                s[i] = s[i] + ks[ki] * vs[vl];
                part = part + s[i] * qs[ki];
                zp = zp + qs[ki] * zs[ki];
            }
        }
        if (p.aux == 1u) {
            // State only: the next step's staging waits for this step's reads.
            workgroupBarrier();
            continue;
        }
        red[kl * 17u + vl] = part;
        if (vl == 0u) { zred[kl] = zp; }
        workgroupBarrier();
        if (lid < 16u) {
            var n = 0.0;
            for (var r = 0u; r < 16u; r = r + 1u) { n = n + red[r * 17u + lid]; }
            var den = 1.0;
            if (p.normalize == 1u) {
                den = p.eps;
                for (var r = 0u; r < 16u; r = r + 1u) { den = den + zred[r]; }
            } else if (p.normalize == 2u) {
                den = f32(p.count0 + pos0 + t + 1u);
            }
            outv[lid] = n / den;
        }
        workgroupBarrier();
        if (lid < 16u && wg.x * 16u + lid < p.v) { put_out(row * p.v + wg.x * 16u + lid, outv[lid]); }
    }
    for (var i = 0u; i < nk; i = i + 1u) {
        let ki = kl + 16u * i;
        if (ki < p.k && col < p.v) { state[(bh * p.k + ki) * p.v + col] = s[i]; }
    }
    if (wg.x == 0u && lid < p.k) { z_buf[bh * p.k + lid] = zs[lid]; }
}

// The decode step (varlen 0, one token per sequence): S += k̃·vᵀ, z += k̃, o = Sᵀ·q̃ / den. Why it
// is fast: the state is all the traffic, so each 32 invocations stream whole rows of 128 columns
// (4 consecutive each) and the partial outputs meet once in workgroup memory. The sums run in
// linattn_recurrent's order (row groups i mod 16, each in row order, then the groups in order),
// so a decode loop equals the scan bit for bit; invocation group w holds the row groups 2w and
// 2w + 1. One workgroup per sequence·head (no z race between tiles).
var<workgroup> dvs: array<f32, 256>;
var<workgroup> dred: array<f32, 2048>; // [16 row groups][128 columns]

fn decode_row(bh: u32, i: u32, c: u32, acc: ptr<function, vec4<f32>>) {
    let base = (bh * p.k + i) * p.v + c;
    for (var e = 0u; e < 4u; e++) {
        if (c + e < p.v) {
            let sv = state[base + e] + ks[i] * dvs[c + e];
            state[base + e] = sv;
            (*acc)[e] += sv * qs[i];
        }
    }
}

@compute @workgroup_size(256)
fn linattn_decode(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = seq_head(wg, nwg);
    if (bh >= p.batch * p.heads) { return; }
    let grp = lid / 32u;
    let lane = lid % 32u;
    for (var i = lid; i < p.k; i += 256u) {
        qs[i] = p.scale * phi(ld(0u, bh * p.k + i));
        let kt = phi(ld(1u, bh * p.k + i));
        ks[i] = kt;
        let zn = z_buf[bh * p.k + i] + kt;
        z_buf[bh * p.k + i] = zn;
        zs[i] = zn;
    }
    var vv = 0.0;
    if (lid < p.v) { vv = ld(2u, bh * p.v + lid); }
    dvs[lid] = vv;
    workgroupBarrier();
    if (lid < 16u) {
        var zp = 0.0;
        for (var i = lid; i < p.k; i += 16u) { zp = zp + qs[i] * zs[i]; }
        zred[lid] = zp;
    }
    for (var c0 = 0u; c0 < p.v; c0 += 128u) {
        let c = c0 + lane * 4u;
        var acc0 = vec4<f32>(0.0);
        var acc1 = vec4<f32>(0.0);
        for (var i = 2u * grp; i < p.k; i += 16u) {
            decode_row(bh, i, c, &acc0);
            if (i + 1u < p.k) { decode_row(bh, i + 1u, c, &acc1); }
        }
        for (var e = 0u; e < 4u; e++) {
            dred[2u * grp * 128u + lane * 4u + e] = acc0[e];
            dred[(2u * grp + 1u) * 128u + lane * 4u + e] = acc1[e];
        }
        workgroupBarrier();
        if (lid < 128u && c0 + lid < p.v) {
            var n = 0.0;
            for (var r = 0u; r < 16u; r++) { n = n + dred[r * 128u + lid]; }
            var den = 1.0;
            if (p.normalize == 1u) {
                den = p.eps;
                for (var r = 0u; r < 16u; r++) { den = den + zred[r]; }
            } else if (p.normalize == 2u) {
                den = f32(p.count0 + 1u);
            }
            put_out(bh * p.v + c0 + lid, n / den);
        }
        workgroupBarrier();
    }
}

// Chunked form, inter-chunk pass: with each chunk's own sum ΔS_c, Δz_c in H, Z (from a
// state-only pass over the chunks), replaces them by the state at the chunk's start,
// S_c = S_0 + Σ_{c' < c} ΔS_c', and writes each sequence's final state after the chunks. One
// invocation per (sequence, head, element of S and z); the chunks of sequence n are
// starts[n] .. starts[n + 1]; count0 is the number of chunks; z_init holds [S_0 | z_0]. With
// aux = 1 the chunks run from the last back (the backward's gradients at each chunk's end).
@compute @workgroup_size(256)
fn linattn_chunk_scan(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * 256u;
    let kv = p.k * p.v;
    let per = kv + p.k;
    if (t >= p.batch * p.heads * per) { return; }
    let nh = t / per;
    let e = t % per;
    let n = nh / p.heads;
    let h = nh % p.heads;
    let tail = p.count0 * p.heads + nh;
    if (e < kv) {
        var acc = z_init[nh * kv + e];
        for (var j = starts[n]; j < starts[n + 1u]; j++) {
            let c = select(j, starts[n + 1u] - 1u - (j - starts[n]), p.aux == 1u);
            let i = (c * p.heads + h) * kv + e;
            let d = state[i];
            state[i] = acc;
            acc += d;
        }
        state[tail * kv + e] = acc;
    } else {
        let ek = e - kv;
        var acc = z_init[p.batch * p.heads * kv + nh * p.k + ek];
        for (var j = starts[n]; j < starts[n + 1u]; j++) {
            let c = select(j, starts[n + 1u] - 1u - (j - starts[n]), p.aux == 1u);
            let i = (c * p.heads + h) * p.k + ek;
            let d = z_buf[i];
            z_buf[i] = acc;
            acc += d;
        }
        z_buf[tail * p.k + ek] = acc;
    }
}

// Chunked form, per chunk (the sequences are chunks of at most 64 rows, varlen 2), as matrix
// products instead of a scan: no barrier per row, every invocation busy.
// The fourth chunk operand and the row weights serve linattn_chunk_grad_states, where v_buf
// holds do: dn = do/den and dd of the chunk's rows (staged in rden, rdd).
var<workgroup> rden: array<f32, 64>;
var<workgroup> rdd: array<f32, 64>;

fn fourth_operand(i: u32, r: u32) -> f32 {
    return ld(2u, i) / rden[r];
}

fn row_weight(r: u32) -> f32 {
    return rdd[r];
}

// linattn_chunk_state (aux 1): the chunk's own sums ΔS = K̃ᵀ·V (the workgroup's 64×64 tile) and
// Δz = Σ k̃ into state and z_buf.
@compute @workgroup_size(256)
fn linattn_chunk_state(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = seq_head(wg, nwg);
    if (bh >= p.batch * p.heads) { return; }
    let c = bh / p.heads;
    let tile = outer_tile(wg.x);
    let o = chunk_outer(lid, 1u, 2u, starts[c], starts[c + 1u] - starts[c], bh % p.heads, tile.x, tile.y, false);
    chunk_put(bh, lid, tile, o.acc, o.xsum);
}

// tile_put's matrices: the states in state.
fn mat_put(at: u32, v: f32, add: bool) {
    if (add) { state[at] += v; } else { state[at] = v; }
}

// Invocation lid's part of a chunk_outer tile into slot `slot` (chunk·head) of state and z_buf.
fn chunk_put(slot: u32, lid: u32, tile: vec2<u32>, acc: array<vec4<f32>, 4>, xsum: vec4<f32>) {
    tile_put(slot, lid, tile, acc, false);
    if (tile.y != 0u || lid % 16u != 0u) { return; }
    for (var a = 0u; a < 4u; a++) {
        let i = tile.x + tile_row(lid, a);
        if (i < p.k) { z_buf[slot * p.k + i] = xsum[a]; }
    }
}

// Chunked form, the start states in one pass (for many sequences·heads): one workgroup per
// (sequence·head, 64×64 tile of S) runs through the sequence's chunks in order, writing the
// running state as each chunk's start state and adding the chunk's K̃ᵀ·V, so the chunk sums never
// round-trip through memory (the two-pass form writes them, then the scan reads and rewrites
// them). starts holds [C | chunk bounds (C + 1) | their positions (C) | each sequence's first chunk
// (N + 1)]; z_init holds [S_0 | z_0]; each sequence's final state goes after the chunks (as
// linattn_chunk_scan leaves it).
var<workgroup> chunk_range: vec2<u32>;

// The state (or gradient) a sweep starts from: invocation lid's part of tile `tile` of sequence·
// head nh in z_init.
fn sweep_init(lid: u32, nh: u32, tile: vec2<u32>) -> Outer {
    var o: Outer;
    for (var a = 0u; a < 4u; a++) {
        let i = tile.x + tile_row(lid, a);
        if (i >= p.k) { break; }
        for (var b = 0u; b < 4u; b++) {
            let col = tile.y + tile_col(lid, b);
            if (col < p.v) { o.acc[a][b] = z_init[(nh * p.k + i) * p.v + col]; }
        }
        o.xsum[a] = z_init[p.batch * p.heads * p.k * p.v + nh * p.k + i];
    }
    return o;
}

// Sequence·head nh's chunk range [x, y) from the table (uniform across the workgroup).
fn sweep_range(lid: u32, nh: u32) -> vec2<u32> {
    let nc = starts[0];
    if (lid == 0u) { chunk_range = vec2<u32>(starts[2u * nc + 2u + nh / p.heads], starts[2u * nc + 3u + nh / p.heads]); }
    return workgroupUniformLoad(&chunk_range);
}

@compute @workgroup_size(256)
fn linattn_chunk_states(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let nh = seq_head(wg, nwg);
    if (nh >= p.batch * p.heads) { return; }
    let h = nh % p.heads;
    let range = sweep_range(lid, nh);
    let tile = outer_tile(wg.x);
    var run = sweep_init(lid, nh, tile);
    for (var c = range.x; c < range.y; c++) {
        chunk_put(c * p.heads + h, lid, tile, run.acc, run.xsum);
        let o = chunk_outer(lid, 1u, 2u, starts[1u + c], starts[2u + c] - starts[1u + c], h, tile.x, tile.y, false);
        for (var m = 0u; m < 4u; m++) { run.acc[m] += o.acc[m]; }
        run.xsum += o.xsum;
    }
    chunk_put(starts[0] * p.heads + nh, lid, tile, run.acc, run.xsum);
}

// The chunked backward's reverse pass in one sweep (its twin): from the last chunk back, the
// running gradient (dS_T, dz_T in z_init) is written as each chunk's end gradient G_c, g_c, then
// the chunk's own Q̃ᵀ·dN and Q̃ᵀ·dd are added; the gradient at each sequence's start goes after the
// chunks. v_buf holds do; the table continues with den, dd per packed row (R·H·2, f32 bits, read
// for the Normalizer); count0 is the Count mode's prefix.
@compute @workgroup_size(256)
fn linattn_chunk_grad_states(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let nh = seq_head(wg, nwg);
    if (nh >= p.batch * p.heads) { return; }
    let h = nh % p.heads;
    let nc = starts[0];
    let dd_off = 2u * nc + 3u + p.batch;
    let range = sweep_range(lid, nh);
    let tile = outer_tile(wg.x);
    var run = sweep_init(lid, nh, tile);
    for (var j = range.x; j < range.y; j++) {
        let c = range.y - 1u - (j - range.x);
        chunk_put(c * p.heads + h, lid, tile, run.acc, run.xsum);
        let start = starts[1u + c];
        let len = starts[2u + c] - start;
        if (lid < 64u) {
            var den = 1.0;
            var dd = 0.0;
            if (lid < len) {
                let row = (start + lid) * p.heads + h;
                if (p.normalize == 1u) {
                    den = bitcast<f32>(starts[dd_off + 2u * row]);
                    dd = bitcast<f32>(starts[dd_off + 2u * row + 1u]);
                } else if (p.normalize == 2u) {
                    den = f32(p.count0 + starts[nc + 2u + c] + lid + 1u);
                }
            }
            rden[lid] = den;
            rdd[lid] = dd;
        }
        workgroupBarrier();
        let o = chunk_outer(lid, 0u, 3u, start, len, h, tile.x, tile.y, true);
        for (var m = 0u; m < 4u; m++) { run.acc[m] += o.acc[m]; }
        run.xsum += o.xsum;
    }
    chunk_put(nc * p.heads + nh, lid, tile, run.acc, run.xsum);
}

// linattn_chunk_output (aux 0): o_t = S_cᵀ·q̃_t + Σ_{s≤t} (q̃_t·k̃_s)·v_s from the chunk's start
// state S_c, z_c (state, z_buf). chunk_slabs accumulates the masked scores A = Q̃·K̃ᵀ and the S_c
// term for the workgroup's 64 value columns; then A·V (chunk_output_rows). Invocation lid owns
// the chunk's rows tile_row(lid, ·) and the columns c0 + tile_col(lid, ·).
fn slab_m(bh: u32, row: u32, col: u32) -> f32 {
    return state[(bh * p.k + row) * p.v + col];
}

// chunk_slabs' z: z_c, which the caller stages in zc (K ≤ 256).
var<workgroup> zc: array<f32, 256>;

fn slab_z(bh: u32, i: u32) -> f32 {
    return zc[i];
}

// The second half of a chunk's output, after chunk_slabs (`sl`): o = (sl.acc + A·V) / den for the
// masked scores A and the workgroup's 64 value columns from c0; pos0 is the position of the
// chunk's first row in its sequence (Count).
fn chunk_output_rows(lid: u32, sl: Slabs, start: u32, len: u32, h: u32, pos0: u32, c0: u32) {
    put_scores(lid, sl.w, true);
    let sc = scores_times(lid, sl.acc, 2u, start, len, h, c0, true);
    for (var a = 0u; a < 4u; a++) {
        let t = tile_row(lid, a);
        if (t >= len) { break; }
        var den = 1.0;
        if (p.normalize == 1u) {
            den = p.eps + sl.xz[a] + sc.wsum[a];
        } else if (p.normalize == 2u) {
            den = f32(p.count0 + pos0 + t + 1u);
        }
        let row = (start + t) * p.heads + h;
        for (var b = 0u; b < 4u; b++) {
            let col = c0 + tile_col(lid, b);
            if (col < p.v) { put_out(row * p.v + col, sc.acc[a][b] / den); }
        }
    }
}

@compute @workgroup_size(256)
fn linattn_chunk_output(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = seq_head(wg, nwg);
    if (bh >= p.batch * p.heads) { return; }
    let c = bh / p.heads;
    let h = bh % p.heads;
    let start = starts[c];
    let len = starts[c + 1u] - start;
    if (p.normalize == 1u && lid < p.k) { zc[lid] = z_buf[bh * p.k + lid]; }
    let sl = chunk_slabs(lid, 0u, 1u, start, len, h, bh, p.k, wg.x * 64u, p.v, false, p.normalize == 1u);
    chunk_output_rows(lid, sl, start, len, h, starts[p.batch + 1u + c], wg.x * 64u);
}

// The chunked forward in one pass (FFKERN_LINATTN_KERNEL=fused; the twin of linattn_chunk_fused
// in kernels/linattn.cu): one workgroup per (sequence·head, 64 value columns) carries its slice
// S[:, c0 .. c0 + 63] of the running state through the sequence's chunks (the table of
// linattn_chunk_states), in `state` itself, which holds the initial state and is left holding the
// final one, and its own copy of z in zc (z_init: a copy of the initial z, which the workgroups
// of value columns 0 overwrite with the final one). Each chunk's output comes from them as
// linattn_chunk_output's does from a stored S_c, z_c; then the chunk's K̃ᵀ·V and Σ k̃ are added.
// Why it is fast: the per-chunk states, the two-pass form's largest arrays (C·H·K·V, written by
// one pass and read back by the next), are never stored: the slice a workgroup updates is the one
// it reads next, from cache.
@compute @workgroup_size(256)
fn linattn_chunk_fused(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let nh = seq_head(wg, nwg);
    if (nh >= p.batch * p.heads) { return; }
    let h = nh % p.heads;
    let nc = starts[0];
    let range = sweep_range(lid, nh);
    let c0 = wg.x * 64u;
    if (lid < p.k) { zc[lid] = z_init[nh * p.k + lid]; }
    for (var c = range.x; c < range.y; c++) {
        let start = starts[1u + c];
        let len = starts[2u + c] - start;
        let sl = chunk_slabs(lid, 0u, 1u, start, len, h, nh, p.k, c0, p.v, false, p.normalize == 1u);
        chunk_output_rows(lid, sl, start, len, h, starts[nc + 2u + c], c0);
        // Every read of S_c and z_c is done (chunk_slabs' last barrier): add the chunk.
        for (var i0 = 0u; i0 < p.k; i0 += 64u) {
            let o = chunk_outer(lid, 1u, 2u, start, len, h, i0, c0, false);
            tile_put(nh, lid, vec2<u32>(i0, c0), o.acc, true);
            for (var a = 0u; a < 4u; a++) {
                let i = i0 + tile_row(lid, a);
                if (lid % 16u == 0u && i < p.k) { zc[i] += o.xsum[a]; }
            }
        }
        storageBarrier(); // the next chunk's slabs read the updated slice
    }
    workgroupBarrier();
    if (wg.x == 0u && lid < p.k) { z_buf[nh * p.k + lid] = zc[lid]; }
}
