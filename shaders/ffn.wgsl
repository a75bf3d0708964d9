// BatchNorm over tokens (the RePaViT FFN's norm, SPEC §3): per-channel statistics, the affine
// apply, and the backward. Activations use the dtype snippet; parameters and statistics are f32.
// Why it is fast enough: every pass reads the activations once with consecutive invocations on
// consecutive channels (coalesced rows); the per-channel reductions run in row order (fixed,
// deterministic) and the element-wise passes write whole words.

struct Params {
    rows: u32, channels: u32, train: u32, has_extra: u32,
    eps: f32, momentum: f32, pad0: u32, pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x_buf: array<u32>;
@group(0) @binding(2) var<storage, read> dy_buf: array<u32>;
// [γ | β], one f32 per channel each.
@group(0) @binding(3) var<storage, read> affine: array<f32>;
@group(0) @binding(4) var<storage, read> extra_buf: array<u32>;
@group(0) @binding(5) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> running_var: array<f32>;
// [mean | rstd | scale | shift] from the forward, then [dgamma | dbeta] from the backward.
@group(0) @binding(7) var<storage, read_write> stats: array<f32>;
@group(0) @binding(8) var<storage, read_write> out_buf: array<u32>;

fn ld_x(i: u32) -> f32 { return unpack_elem(x_buf[i >> ELEM_SHIFT], i & ELEM_SHIFT); }
fn ld_dy(i: u32) -> f32 { return unpack_elem(dy_buf[i >> ELEM_SHIFT], i & ELEM_SHIFT); }
fn ld_extra(i: u32) -> f32 { return unpack_elem(extra_buf[i >> ELEM_SHIFT], i & ELEM_SHIFT); }

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// Per channel: batch mean and (biased) variance in two passes, the running-statistics update
// (unbiased variance, momentum), or the running statistics in eval mode; then
// scale = γ·rstd and shift = β − mean·scale.
@compute @workgroup_size(256)
fn bn_prepare(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_id(gid, nwg);
    let n = p.channels;
    if (c >= n) { return; }
    var mean = running_mean[c];
    var var_ = running_var[c];
    if (p.train != 0u) {
        var s = 0.0;
        for (var r = 0u; r < p.rows; r = r + 1u) { s = s + ld_x(r * n + c); }
        mean = s / f32(p.rows);
        var q = 0.0;
        for (var r = 0u; r < p.rows; r = r + 1u) {
            let d = ld_x(r * n + c) - mean;
            q = q + d * d;
        }
        var_ = q / f32(p.rows);
        let unbiased = select(var_, q / f32(p.rows - 1u), p.rows > 1u);
        running_mean[c] = (1.0 - p.momentum) * running_mean[c] + p.momentum * mean;
        running_var[c] = (1.0 - p.momentum) * running_var[c] + p.momentum * unbiased;
    }
    let rstd = 1.0 / sqrt(var_ + p.eps);
    let scale = affine[c] * rstd;
    stats[c] = mean;
    stats[n + c] = rstd;
    stats[2u * n + c] = scale;
    stats[3u * n + c] = affine[n + c] - mean * scale;
}

// Stores `count` (1 or 2) elements from `e0` (even): one invocation owns each output word.
fn store_pair(e0: u32, count: u32, v0: f32, v1: f32) {
    if (ELEM_SHIFT == 0u) {
        out_buf[e0] = pack_elem(v0);
        if (count == 2u) { out_buf[e0 + 1u] = pack_elem(v1); }
    } else if (count == 2u) {
        out_buf[e0 >> 1u] = pack_pair(v0, v1);
    } else {
        out_buf[e0 >> 1u] = pack_elem(v0);
    }
}

// y = x·scale + shift.
@compute @workgroup_size(256)
fn bn_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e0 = flat_id(gid, nwg) * 2u;
    let total = p.rows * p.channels;
    if (e0 >= total) { return; }
    let count = min(2u, total - e0);
    var v = vec2<f32>(0.0, 0.0);
    for (var j = 0u; j < count; j = j + 1u) {
        let c = (e0 + j) % p.channels;
        v[j] = ld_x(e0 + j) * stats[2u * p.channels + c] + stats[3u * p.channels + c];
    }
    store_pair(e0, count, v.x, v.y);
}

// Per channel: dβ = Σ dy, dγ = Σ dy·x̂ (x̂ = (x − mean)·rstd, batch statistics), in row order.
// `stats` holds [mean | rstd | scale | shift | dgamma | dbeta].
@compute @workgroup_size(256)
fn bn_backward_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_id(gid, nwg);
    let n = p.channels;
    if (c >= n) { return; }
    let mean = stats[c];
    let rstd = stats[n + c];
    var db = 0.0;
    var dg = 0.0;
    for (var r = 0u; r < p.rows; r = r + 1u) {
        let g = ld_dy(r * n + c);
        db = db + g;
        dg = dg + g * (ld_x(r * n + c) - mean) * rstd;
    }
    stats[4u * n + c] = dg;
    stats[5u * n + c] = db;
}

// dx = γ·rstd/R · (R·dy − dβ − x̂·dγ) (+ extra, e.g. a shortcut's gradient).
@compute @workgroup_size(256)
fn bn_backward_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e0 = flat_id(gid, nwg) * 2u;
    let n = p.channels;
    let total = p.rows * n;
    if (e0 >= total) { return; }
    let count = min(2u, total - e0);
    let rows = f32(p.rows);
    var v = vec2<f32>(0.0, 0.0);
    for (var j = 0u; j < count; j = j + 1u) {
        let i = e0 + j;
        let c = i % n;
        let rstd = stats[n + c];
        let xhat = (ld_x(i) - stats[c]) * rstd;
        var d = affine[c] * rstd / rows * (rows * ld_dy(i) - stats[5u * n + c] - xhat * stats[4u * n + c]);
        if (p.has_extra != 0u) { d = d + ld_extra(i); }
        v[j] = d;
    }
    store_pair(e0, count, v.x, v.y);
}
