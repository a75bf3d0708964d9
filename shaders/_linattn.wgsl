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
