// Causal linear attention backward, fused recurrent form (SPEC §5): dq, dk, dv and d(initial
// state) from do and d(final state), every feature map and normalize mode, packed sequences.
// One workgroup per (sequence·head, 16 value columns). Invocation i < K owns row i of the
// state's 16-column slice in registers: a forward scan rebuilds S_t and writes this tile's part
// of dq_t = S_t·dn_t (+ z_t·dd_t), then a reverse scan carries G = Σ_{τ≥t} q̃_τ·dn_τᵀ + dS_T in
// the same registers and writes this tile's part of dk_t = G·v_t (+ Σ q̃·dd) and all of dv_t's
// 16 columns = Gᵀ·k̃_t. A second entry sums the tiles' parts of dq and dk (deterministic, no
// atomics) and applies φ'. The state is read once per scan; memory is linear in T.

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
    let c0 = wg.x * 16u;
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
            for (var r = lid; r < p.k; r += 16u) { qz += qs[r] * zs[r]; }
            var dot = 0.0;
            if (p.normalize == 1u) {
                for (var c = lid; c < p.v; c += 16u) { dot += ld_od(1u, row * p.v + c) * ld_od(0u, row * p.v + c); }
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
            if (wg.x == 0u) { acc += zs[lid] * scal[1]; }
            part[dq_off + row * p.k + lid] = acc;
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
            if (wg.x == 0u) { acc += hz; }
            part[dk_off + row * p.k + lid] = acc;
        }
        workgroupBarrier();
        // dv_t[j] = Σ_i G[i, j]·k̃_t[i]: 16 partial sums per column, then one per column.
        let g = lid / 16u;
        let j = lid % 16u;
        var r = 0.0;
        for (var i = g; i < p.k; i += 16u) { r += prod[i * 16u + j]; }
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
        if (wg.x == 0u) { part[dz0_off + bh * p.k + lid] = hz; }
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
