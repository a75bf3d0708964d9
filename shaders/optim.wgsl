// Noisy optimizers (SPEC §7): Philox4x32-10 noise, the fused SGD/Adam update, the deterministic
// global-norm reduction for clipping, and the raw Philox words/normals.
// Why it is fast: one pass reads each gradient, parameter and state element once and writes the
// parameter and state once; the noise is generated in registers (one Philox block per invocation
// covers four consecutive elements) instead of being read from a noise buffer.
// The gradient uses the dtype snippet (`ld_grad`); parameters and state are always f32.

struct Params {
    n: u32, rule: u32, has_momentum: u32, nesterov: u32,
    lr: f32, wd: f32, decoupled: u32, mu: f32,
    sigma: f32, seed_lo: u32, seed_hi: u32, step: u32,
    beta1: f32, beta2: f32, eps: f32, bc1: f32,
    bc2: f32, clip: u32, max_norm: f32, base: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad_buf: array<u32>;
@group(0) @binding(2) var<storage, read_write> param_buf: array<f32>;
@group(0) @binding(3) var<storage, read_write> m_buf: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_buf: array<f32>;
// Clip partial sums then the scale (slot `partial_count()`), or the output of philox_normal /
// philox_words, as raw 32-bit words.
@group(0) @binding(5) var<storage, read_write> scratch: array<u32>;

fn ld_grad(i: u32) -> f32 { return unpack_elem(grad_buf[i >> ELEM_SHIFT], i & ELEM_SHIFT); }

// u32 × u32 → (high word, low word), from 16-bit halves (WGSL has no 64-bit integers).
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    return vec2<u32>(p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u), a * b);
}

fn philox(ctr_in: vec4<u32>, key_in: vec2<u32>) -> vec4<u32> {
    var c = ctr_in;
    var k = key_in;
    for (var r = 0u; r < 10u; r = r + 1u) {
        if (r > 0u) {
            k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
        }
        let h0 = mulhilo(0xD2511F53u, c.x);
        let h1 = mulhilo(0xCD9E8D57u, c.z);
        c = vec4<u32>(h1.x ^ c.y ^ k.x, h1.y, h0.x ^ c.w ^ k.y, h0.y);
    }
    return c;
}

// Block j of step `t` (counter (j, 0, t, 0): lists stay under 2^32 elements).
fn noise_words(j: u32) -> vec4<u32> {
    return philox(vec4<u32>(j, 0u, p.step, 0u), vec2<u32>(p.seed_lo, p.seed_hi));
}

// ln(x) for x in [2^-24, 1]: exponent split, then the atanh series on [√½, √2). The builtin log
// is only specified to a few ULP, and every backend must agree with the reference to 1e-6.
fn ln_unit(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    var e = i32((bits >> 23u) & 0xffu) - 127;
    var m = bitcast<f32>((bits & 0x7fffffu) | 0x3f800000u);
    if (m > 1.41421356) {
        m = m * 0.5;
        e = e + 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = s2 * (0.33333333 + s2 * (0.2 + s2 * (0.14285714 + s2 * (0.11111111 + s2 * 0.09090909))));
    let fe = f32(e);
    return fe * 0.693145751953125 + (fe * 1.4286068203094172e-06 + (2.0 * s + 2.0 * s * series));
}

// (cos, sin) of 2π·b/2^24 for a 24-bit integer b: exact quadrant reduction, then Taylor
// polynomials on [0, π/2) (truncation below 1e-9).
fn sincos_turn(b: u32) -> vec2<f32> {
    let quadrant = b >> 22u;
    let x = f32(b & 0x3fffffu) * (1.5707963267948966 / 4194304.0);
    let x2 = x * x;
    let s = x * (1.0 + x2 * (-0.16666667 + x2 * (0.008333334 + x2 * (-1.984127e-4 + x2 * (2.7557319e-6 + x2 * (-2.5052108e-8 + x2 * 1.6059044e-10))))));
    let c = 1.0 + x2 * (-0.5 + x2 * (0.041666668 + x2 * (-0.0013888889 + x2 * (2.4801587e-5 + x2 * (-2.7557319e-7 + x2 * (2.0876757e-9 + x2 * -1.1470746e-11))))));
    switch quadrant {
        case 0u: { return vec2<f32>(c, s); }
        case 1u: { return vec2<f32>(-s, c); }
        case 2u: { return vec2<f32>(-c, -s); }
        default: { return vec2<f32>(s, -c); }
    }
}

fn box_muller(a: u32, b: u32) -> vec2<f32> {
    let u1 = f32((a >> 8u) + 1u) * (1.0 / 16777216.0);
    let r = sqrt(-2.0 * ln_unit(u1));
    return r * sincos_turn(b >> 8u);
}

fn normals(j: u32) -> vec4<f32> {
    let w = noise_words(j);
    return vec4<f32>(box_muller(w.x, w.y), box_muller(w.z, w.w));
}

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn philox_words(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = flat_id(gid, nwg);
    if (j >= p.n) { return; }
    let w = noise_words(j);
    scratch[4u * j] = w.x;
    scratch[4u * j + 1u] = w.y;
    scratch[4u * j + 2u] = w.z;
    scratch[4u * j + 3u] = w.w;
}

@compute @workgroup_size(256)
fn philox_normal(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = flat_id(gid, nwg);
    if (4u * j >= p.n) { return; }
    let z = normals(j);
    for (var e = 0u; e < 4u; e = e + 1u) {
        if (4u * j + e < p.n) { scratch[4u * j + e] = bitcast<u32>(z[e]); }
    }
}

// The gradient of element i as the update sees it before clipping: g, or g + σz for noise-then-clip.
const CHUNK: u32 = 2048u; // elements per workgroup in the norm reduction

fn partial_count() -> u32 {
    return (p.n + CHUNK - 1u) / CHUNK;
}

var<workgroup> red: array<f32, 256>;

fn reduce_workgroup(lid: u32, x: f32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
        workgroupBarrier();
    }
    return red[0];
}

@compute @workgroup_size(256)
fn clip_partial(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = wg.x + wg.y * nwg.x;
    var acc = 0.0;
    // Two Philox blocks (8 elements) per invocation, in a fixed order.
    for (var b = 0u; b < 2u; b = b + 1u) {
        let j = (w * CHUNK) / 4u + lid * 2u + b;
        if (4u * j < p.n) {
            var z = vec4<f32>(0.0);
            if (p.clip == 2u && p.sigma > 0.0) { z = p.sigma * normals(j); }
            for (var e = 0u; e < 4u; e = e + 1u) {
                let i = 4u * j + e;
                if (i < p.n) {
                    let g = ld_grad(i) + z[e];
                    acc = acc + g * g;
                }
            }
        }
    }
    let total = reduce_workgroup(lid, acc);
    if (lid == 0u && w < partial_count()) { scratch[w] = bitcast<u32>(total); }
}

@compute @workgroup_size(256)
fn clip_final(@builtin(local_invocation_index) lid: u32) {
    let count = partial_count();
    var acc = 0.0;
    for (var k = lid; k < count; k = k + 256u) {
        acc = acc + bitcast<f32>(scratch[k]);
    }
    let total = reduce_workgroup(lid, acc);
    if (lid == 0u) {
        scratch[count] = bitcast<u32>(min(1.0, p.max_norm / (sqrt(total) + 1e-6)));
    }
}

// One invocation per Philox block of the list (4 consecutive list elements); this launch updates
// list elements base..base + n, stored at 0..n of its buffers.
@compute @workgroup_size(256)
fn update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = flat_id(gid, nwg) + p.base / 4u;
    if (4u * j >= p.base + p.n) { return; }
    var z = vec4<f32>(0.0);
    if (p.sigma > 0.0) { z = p.sigma * normals(j); }
    var scale = 1.0;
    if (p.clip != 0u) { scale = bitcast<f32>(scratch[partial_count()]); }
    for (var e = 0u; e < 4u; e = e + 1u) {
        let li = 4u * j + e;
        if (li < p.base) { continue; }
        let i = li - p.base;
        if (i >= p.n) { break; }
        var g = ld_grad(i);
        if (p.clip == 1u) {
            g = g * scale + z[e];
        } else if (p.clip == 2u) {
            g = (g + z[e]) * scale;
        } else {
            g = g + z[e];
        }
        let w0 = param_buf[i];
        var w = w0;
        if (p.wd > 0.0) {
            if (p.decoupled != 0u) {
                w = w - p.lr * p.wd * w0;
            } else {
                g = g + p.wd * w0;
            }
        }
        if (p.rule == 0u) {
            var d = g;
            if (p.has_momentum != 0u) {
                let m = p.mu * m_buf[i] + g;
                m_buf[i] = m;
                d = m;
                if (p.nesterov != 0u) { d = g + p.mu * m; }
            }
            w = w - p.lr * d;
        } else {
            let m = p.beta1 * m_buf[i] + (1.0 - p.beta1) * g;
            let v = p.beta2 * v_buf[i] + (1.0 - p.beta2) * g * g;
            m_buf[i] = m;
            v_buf[i] = v;
            w = w - p.lr * (m * p.bc1) / (sqrt(v * p.bc2) + p.eps);
        }
        param_buf[i] = w;
    }
}
