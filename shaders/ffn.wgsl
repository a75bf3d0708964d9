// BatchNorm over tokens (the RePaViT FFN's norm, SPEC §3): per-channel statistics, the affine
// apply, and the backward. Activations use the dtype snippet; parameters and statistics are f32.
// Why it is fast: the per-channel reductions run in two levels (BN_TILE_CHANNELS in
// src/ops/ffn/mod.rs), so a batch of many rows fills the GPU with (channel tile × row chunk)
// workgroups whose rows of invocations each read 32 consecutive channels, instead of one
// invocation per channel walking every row (which llvmpipe's loop limit would also cut short).
// Both levels add in a fixed order: deterministic, no atomics. The element-wise passes write
// whole words.

struct Params {
    rows: u32, channels: u32, train: u32, has_extra: u32,
    eps: f32, momentum: f32, chunk_rows: u32, chunks: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x_buf: array<u32>;
@group(0) @binding(2) var<storage, read> dy_buf: array<u32>;
// [γ | β], one f32 per channel each.
@group(0) @binding(3) var<storage, read> affine: array<f32>;
@group(0) @binding(4) var<storage, read> extra_buf: array<u32>;
@group(0) @binding(5) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> running_var: array<f32>;
// [mean | rstd | scale | shift] from the forward, then [dgamma | dbeta] from the backward, then
// mean_lo from the forward (see bn_prepare).
@group(0) @binding(7) var<storage, read_write> stats: array<f32>;
@group(0) @binding(8) var<storage, read_write> out_buf: array<u32>;
// Per chunk and channel partials: [mean | M2 | mean_lo] (forward) or [dgamma | dbeta]
// (backward), chunks·C f32 each.
@group(0) @binding(9) var<storage, read_write> part: array<f32>;

const BN_TILE: u32 = 32u;
const BN_LANES: u32 = 8u;
var<workgroup> red: array<array<f32, 32>, 8>;

// The sum of a column's BN_LANES row-lane values in lane order, returned to every lane.
fn lane_sum(v: f32, lid: vec3<u32>) -> f32 {
    red[lid.y][lid.x] = v;
    workgroupBarrier();
    var s = 0.0;
    for (var l = 0u; l < BN_LANES; l = l + 1u) { s = s + red[l][lid.x]; }
    workgroupBarrier();
    return s;
}

// Workgroup (BN_TILE, BN_LANES) on (tile of channels, chunk of rows): this invocation's
// channel, whether it is one, and the chunk's rows [r0, r1).
struct Chunk { c: u32, live: bool, r0: u32, r1: u32 }

fn bn_chunk(wid: vec3<u32>, lid: vec3<u32>) -> Chunk {
    let c = wid.x * BN_TILE + lid.x;
    let r0 = wid.y * p.chunk_rows;
    return Chunk(c, c < p.channels, r0, min(p.rows, r0 + p.chunk_rows));
}

// BN_STEP of this invocation's rows of its chunk from r (every BN_LANES-th row), loaded together
// so that an invocation keeps BN_STEP in flight; rows past the chunk read as `pad`.
// `of_dy` reads dy instead of x.
const BN_STEP: u32 = 4u;
fn row_step(b: Chunk, r: u32, pad: f32, of_dy: bool) -> vec4<f32> {
    var v = vec4<f32>(pad);
    for (var u = 0u; u < BN_STEP; u++) {
        let row = r + u * BN_LANES;
        let i = row * p.channels + b.c;
        if (row < b.r1) {
            if (of_dy) { v[u] = ld_dy(i); } else { v[u] = ld_x(i); }
        }
    }
    return v;
}

// The chunk's partials for its channel (array i at part[i·chunks·C ..]; the third only where
// `count` is 3), from row lane 0.
fn put_partials(b: Chunk, wid: vec3<u32>, lid: vec3<u32>, v: vec3<f32>, count: u32) {
    if (b.live && lid.y == 0u) {
        part[wid.y * p.channels + b.c] = v.x;
        part[(p.chunks + wid.y) * p.channels + b.c] = v.y;
        if (count == 3u) { part[(2u * p.chunks + wid.y) * p.channels + b.c] = v.z; }
    }
}

fn ld_x(i: u32) -> f32 { return unpack_elem(x_buf[i >> ELEM_SHIFT], i & ELEM_SHIFT); }
fn ld_dy(i: u32) -> f32 { return unpack_elem(dy_buf[i >> ELEM_SHIFT], i & ELEM_SHIFT); }
fn ld_extra(i: u32) -> f32 { return unpack_elem(extra_buf[i >> ELEM_SHIFT], i & ELEM_SHIFT); }

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// Per chunk and channel: the chunk's mean and centred sum of squares M2 into part, by the
// corrected two-pass algorithm: the second sweep also sums the deviations e = Σ(x − mean), which
// are the first sweep's rounding error, so that mean + e/n is the mean to far below an ulp however
// large it is against the spread; both go to part unadded, as the chunk's mean and mean_lo (and
// M2 − e²/n is the matching M2).
@compute @workgroup_size(32, 8)
fn bn_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = bn_chunk(wid, lid);
    var s = 0.0;
    if (b.live) {
        for (var r = b.r0 + lid.y; r < b.r1; r = r + BN_STEP * BN_LANES) {
            let v = row_step(b, r, 0.0, false);
            s = s + v.x + v.y + v.z + v.w;
        }
    }
    let rows = f32(b.r1 - b.r0);
    let mean = lane_sum(s, lid) / rows;
    var e = 0.0;
    var q = 0.0;
    if (b.live) {
        for (var r = b.r0 + lid.y; r < b.r1; r = r + BN_STEP * BN_LANES) {
            let d = row_step(b, r, mean, false) - vec4<f32>(mean);
            e = e + d.x + d.y + d.z + d.w;
            q = q + d.x * d.x + d.y * d.y + d.z * d.z + d.w * d.w;
        }
    }
    let es = lane_sum(e, lid);
    put_partials(b, wid, lid, vec3<f32>(mean, lane_sum(q, lid) - es * es / rows, es / rows), 3u);
}

// Per channel: in train mode the chunks' (mean, M2, mean_lo) combined in chunk order (Chan et
// al.'s pairwise update for M2), the biased variance for the batch and the unbiased one for the
// running update; in eval mode the running statistics (mean_lo 0). Then scale = γ·rstd and
// shift = β − mean·scale. The batch mean is kept as mean + mean_lo, its f32 rounding and the
// remainder: x − mean is exact where x is near the mean, so (x − mean) − mean_lo centres x as well
// as f32 holds the deviation, where an f32 mean alone would leave its rounding, up to half an ulp
// of the mean, in every deviation (a mean large against a small spread).
@compute @workgroup_size(256)
fn bn_prepare(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_id(gid, nwg);
    let n = p.channels;
    if (c >= n) { return; }
    var mean = running_mean[c];
    var var_ = running_var[c];
    var mean_lo = 0.0;
    if (p.train != 0u) {
        var m = 0.0;
        var q = 0.0;
        var count = 0.0;
        // The mean itself as the first chunk's plus the row-weighted sum of the others' small
        // differences from it: no bigger error than the chunks' own, however many there are.
        let pivot = part[c];
        var shift = 0.0;
        for (var j = 0u; j < p.chunks; j = j + 1u) {
            let nb = f32(min(p.chunk_rows, p.rows - j * p.chunk_rows));
            let total = count + nb;
            let hi = part[j * n + c];
            let lo = part[(2u * p.chunks + j) * n + c];
            let delta = (hi + lo) - m;
            m = m + delta * (nb / total);
            q = q + part[(p.chunks + j) * n + c] + delta * delta * (count * nb / total);
            shift = shift + nb * ((hi - pivot) + lo);
            count = total;
        }
        // mean_lo: what the rounding of pivot + t left out (exact where |t| ≤ |pivot|, the case
        // that needs it). Written out: a TwoSum helper's remainder came out 0 on llvmpipe, whose
        // optimiser simplifies such sums.
        let t = shift / f32(p.rows);
        mean = pivot + t;
        mean_lo = (pivot - mean) + t;
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
    stats[6u * n + c] = mean_lo;
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

// y = ((x − mean) − mean_lo)·scale + β: centred first, so a mean large against the spread does
// not cancel.
@compute @workgroup_size(256)
fn bn_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e0 = flat_id(gid, nwg) * 2u;
    let total = p.rows * p.channels;
    if (e0 >= total) { return; }
    let count = min(2u, total - e0);
    var v = vec2<f32>(0.0, 0.0);
    for (var j = 0u; j < count; j = j + 1u) {
        let c = (e0 + j) % p.channels;
        v[j] = ((ld_x(e0 + j) - stats[c]) - stats[6u * p.channels + c]) * stats[2u * p.channels + c] + affine[p.channels + c];
    }
    store_pair(e0, count, v.x, v.y);
}

// Per chunk and channel: Σ dy·x̂ and Σ dy (x̂ = ((x − mean) − mean_lo)·rstd, batch statistics)
// into part. `stats` holds [mean | rstd | scale | shift | dgamma | dbeta | mean_lo].
@compute @workgroup_size(32, 8)
fn bn_backward_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = p.channels;
    let b = bn_chunk(wid, lid);
    var db = 0.0;
    var dg = 0.0;
    var rstd = 0.0;
    if (b.live) {
        let mean = stats[b.c];
        let lo = stats[6u * n + b.c];
        rstd = stats[n + b.c];
        for (var r = b.r0 + lid.y; r < b.r1; r = r + BN_STEP * BN_LANES) {
            let g = row_step(b, r, 0.0, true);
            let d = g * ((row_step(b, r, mean, false) - vec4<f32>(mean)) - vec4<f32>(lo));
            db = db + g.x + g.y + g.z + g.w;
            dg = dg + d.x + d.y + d.z + d.w;
        }
    }
    dg = lane_sum(dg, lid) * rstd;
    put_partials(b, wid, lid, vec3<f32>(dg, lane_sum(db, lid), 0.0), 2u);
}

// Per channel: the chunks' dγ and dβ summed in chunk order into stats[4C..6C].
@compute @workgroup_size(256)
fn bn_backward_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_id(gid, nwg);
    let n = p.channels;
    if (c >= n) { return; }
    var dg = 0.0;
    var db = 0.0;
    for (var j = 0u; j < p.chunks; j = j + 1u) {
        dg = dg + part[j * n + c];
        db = db + part[(p.chunks + j) * n + c];
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
        let xhat = ((ld_x(i) - stats[c]) - stats[6u * n + c]) * rstd;
        var d = affine[c] * rstd / rows * (rows * ld_dy(i) - stats[5u * n + c] - xhat * stats[4u * n + c]);
        if (p.has_extra != 0u) { d = d + ld_extra(i); }
        v[j] = d;
    }
    store_pair(e0, count, v.x, v.y);
}
