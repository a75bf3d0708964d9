// Causal linear attention, fused recurrent form (SPEC §5), which is also the decode step (T = 1).
// One workgroup per (batch·head, 16 value columns); each invocation keeps its slice of the state
// S (rows kl, kl + 16, … of 16 columns) in registers for the whole sequence, so the state is
// read and written once per call; q̃, k̃, v of a step are staged in workgroup memory.

// The initial normalizer state, a copy: every value tile reads it while tile 0 writes the final
// one into z_buf.
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
fn linattn_recurrent(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let kl = lid / 16u;
    let vl = lid % 16u;
    let bh = wg.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let start = starts[b];
    if (lid == 0u) { seq_len = starts[b + 1u] - start; }
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
    if (lid < p.k) { zs[lid] = z_init[bh * p.k + lid]; }
    // A chunk's first position in its sequence (varlen 2), for Count mode.
    var pos0 = 0u;
    if (p.varlen == 2u) { pos0 = starts[p.batch + 1u + b]; }
    for (var t = 0u; t < len; t = t + 1u) {
        let row = (start + t) * p.heads + h;
        stage_step(lid, row, wg.x * 16u, true);
        workgroupBarrier();
        var part = 0.0;
        var zp = 0.0;
        for (var i = 0u; i < nk; i = i + 1u) {
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
