// Graph message passing primitives (SPEC §6): gather_rows, segment_reduce, spmm (multi-head),
// sddmm, segment softmax and its backward.
// Why it is deterministic and fast enough: one invocation per output word (one element, or two
// f16/bf16 elements) walks its destination row's edges in the fixed CSR order — no atomics, and
// neighbouring invocations read neighbouring columns of the same source row (coalesced). Rows
// longer than p.chunk edges (hubs) are split into segments reduced in parallel by a first pass
// into f32 partials, which the row's invocation then combines in segment order, so a hub costs
// no more than its share of the edges and the result is still deterministic. The softmax takes
// per-(node, head) statistics the same way, then writes every edge in parallel.

// A running reduction and its first arg (max/min).
struct Acc { v: f32, arg: u32 }

// `a` then `b` in CSR order: sums add; max/min keep the earlier arg on ties.
fn combine(kind: u32, a: Acc, b: Acc, first: bool) -> Acc {
    if (kind == 2u || p.reduce <= 1u) {
        return Acc(a.v + b.v, a.arg);
    }
    if (first || (p.reduce == 2u && b.v > a.v) || (p.reduce == 3u && b.v < a.v)) {
        return b;
    }
    return a;
}

// Kernel `kind` (1 segment reduce, 2 spmm) over the CSR positions [lo, hi) of column d.
fn reduce_range(kind: u32, lo: u32, hi: u32, d: u32, head: u32) -> Acc {
    var r = Acc(0.0, p.num_edges);
    for (var q = lo; q < hi; q++) {
        if (kind == 2u) {
            // Y[i, h, :] = Σ_{q ∈ row i} w[perm[q], h]·X[src[q], h, :]
            let xv = ld(src(q) * p.dim + d);
            r.v += select(xv, w_buf[perm(q) * p.heads + head] * xv, p.has_weight != 0u);
            continue;
        }
        // out[i, d] = reduce over row i of M[perm[q], d] (sum: weighted by w[e, h] if given);
        // max/min keep the first (COO) arg.
        let e = perm(q);
        let mv = ld(e * p.dim + d);
        r = combine(1u, r, Acc(select(mv, w_buf[e * p.heads + head] * mv, p.has_weight != 0u), e), q == lo);
    }
    return r;
}

// The partials of long-row segments (kind 1 or 2): one invocation per (segment, four columns)
// writes the f32 values and args into out_buf = [values S·dim | args S·dim].
fn seg_partial(kind: u32, t: u32) {
    let groups = (p.dim + 3u) / 4u;
    if (t >= p.num_segs * groups) { return; }
    let k = t / groups;
    let d0 = (t % groups) * 4u;
    let s = seg_range(k);
    let n = min(4u, p.dim - d0);
    let r = reduce4(kind, s.y, s.z, d0, n);
    for (var c = 0u; c < n; c++) {
        out_buf[k * p.dim + d0 + c] = bitcast<u32>(r.v[c]);
        out_buf[(p.num_segs + k) * p.dim + d0 + c] = r.arg[c];
    }
}

// One output element i of kernel `kind` (0 gather, 1 segment reduce, 2 spmm, 3 LayerNorm,
// 4 LayerNorm dx, 5 edge combine, 6 scale-add, 7 from f32, 8 gate backward).
fn element(kind: u32, i: u32) -> f32 {
    let row = i / p.dim;
    let d = i % p.dim;
    let head = d / (p.dim / p.heads);
    if (kind == 6u) {
        // out = act(s·x + y), s = w[row] (optional), y optional: [rows, dim], or a bias [dim].
        var z = ld(i);
        if (p.has_weight != 0u) { z *= w_buf[row]; }
        if (p.has_y == 1u) { z += ld_y(i); }
        if (p.has_y == 2u) { z += ld_y(d); }
        return activate(p.reduce, z);
    }
    if (kind == 7u) {
        return v_buf[i];
    }
    if (kind == 8u) {
        // d logit = dg / dim · σ'(logit)
        let s = sigmoid_f32(ld(i));
        return w_buf[row] / f32(p.dim) * s * (1.0 - s);
    }
    if (kind == 0u) {
        // out[e, h, :] = w[e, h]·X[src_coo[e], h, :] (w optional)
        let xv = ld(src_coo(row) * p.dim + d);
        return select(xv, w_buf[row * p.heads + head] * xv, p.has_weight != 0u);
    }
    if (kind == 5u) {
        // m[e, d] = act(Ee[e, d] + P[src e, d] + P[dst e, D + d]), P = [H·W_sᵀ | H·W_dᵀ].
        let z = ld(i) + ld_y(src_coo(row) * 2u * p.dim + d) + ld_y(dst_coo(row) * 2u * p.dim + p.dim + d);
        return activate(p.reduce, z);
    }
    if (kind == 3u) {
        // y = (x − μ)·rstd·γ + β (w = [γ | β]), the row's μ and rstd from the stats pass (in arg_buf).
        let mu = bitcast<f32>(arg_buf[row]);
        let rs = bitcast<f32>(arg_buf[p.num_nodes + row]);
        return (ld(i) - mu) * rs * w_buf[d] + w_buf[p.dim + d];
    }
    if (kind == 4u) {
        // dx = rstd·(dy·γ − mean(dy·γ) − x̂·mean(dy·γ·x̂)), the means from the row pass.
        let rs = v_buf[p.num_nodes + row];
        let xhat = (ld(i) - v_buf[row]) * rs;
        let mg = bitcast<f32>(arg_buf[row]);
        let mgx = bitcast<f32>(arg_buf[p.num_nodes + row]);
        return rs * (ld_y(i) * w_buf[d] - mg - xhat * mgx);
    }
    let lo = row_ptr(row);
    let hi = row_ptr(row + 1u);
    var r = Acc(0.0, p.num_edges);
    if (hi - lo <= p.chunk) {
        r = reduce_range(kind, lo, hi, d, head);
    } else {
        // A long row: combine its segments' partials (y_buf: values | args) in order.
        let li = find_long(row);
        let first = long_seg_ptr(li);
        let part_args = p.num_segs * p.dim;
        for (var k = first; k < long_seg_ptr(li + 1u); k++) {
            r = combine(kind, r, Acc(bitcast<f32>(y_buf[k * p.dim + d]), y_buf[part_args + k * p.dim + d]), k == first);
        }
    }
    var acc = r.v;
    let arg = r.arg;
    if (kind == 1u) {
        if (p.reduce == 1u && hi > lo) {
            acc = acc / f32(hi - lo);
        }
        if (p.reduce >= 2u) {
            arg_buf[i] = arg;
        }
    }
    return acc;
}


// One output word: one element, or two for f16/bf16.
fn run(kind: u32, word: u32, rows: u32) {
    let total = rows * p.dim;
    if (word >= ((total + ELEM_SHIFT) >> ELEM_SHIFT)) { return; }
    var v = array<f32, 2>(0.0, 0.0);
    for (var h = 0u; h <= ELEM_SHIFT; h++) {
        let i = (word << ELEM_SHIFT) + h;
        if (i < total) {
            v[h] = element(kind, i);
        }
    }
    if (ELEM_SHIFT == 0u) {
        out_buf[word] = pack_elem(v[0]);
    } else {
        out_buf[word] = pack_pair(v[0], v[1]);
    }
}

// Columns d0 .. d0 + n − 1 (n ≤ 4, within one row) of kind 1 or 2 over CSR positions [lo, hi):
// each edge's indices and weight are read once for the four.
struct Acc4 { v: vec4<f32>, arg: vec4<u32> }

fn reduce4(kind: u32, lo: u32, hi: u32, d0: u32, n: u32) -> Acc4 {
    let dh = p.dim / p.heads;
    // Columns past n repeat the last one (read, never stored).
    let cols = vec4<u32>(d0, d0 + min(1u, n - 1u), d0 + min(2u, n - 1u), d0 + min(3u, n - 1u));
    let hw = cols / dh;
    var r = Acc4(vec4<f32>(0.0), vec4<u32>(p.num_edges));
    for (var q = lo; q < hi; q++) {
        let e = perm(q);
        let base = select(e, src(q), kind == 2u) * p.dim;
        var x = vec4<f32>(ld(base + cols.x), ld(base + cols.y), ld(base + cols.z), ld(base + cols.w));
        if (p.has_weight != 0u) {
            let wb = e * p.heads;
            x *= vec4<f32>(w_buf[wb + hw.x], w_buf[wb + hw.y], w_buf[wb + hw.z], w_buf[wb + hw.w]);
        }
        if (kind == 2u || p.reduce <= 1u) {
            r.v += x;
            continue;
        }
        for (var c = 0u; c < 4u; c++) {
            if (q == lo || (p.reduce == 2u && x[c] > r.v[c]) || (p.reduce == 3u && x[c] < r.v[c])) {
                r.v[c] = x[c];
                r.arg[c] = e;
            }
        }
    }
    return r;
}

// Four consecutive outputs of a gather (kind 0: one source index per four) or a row reduction
// (kind 1 or 2) per invocation; a long row combines its segments' partials (y_buf) for the four
// columns in order. Groups that straddle a row take the one-element path, which the entries for
// widths that are a multiple of 4 (`whole`, a constant in each entry) leave out: its presence
// alone made lavapipe's gather 1.7× slower.
fn run4(kind: u32, group: u32, rows: u32, whole: bool) {
    let total = rows * p.dim;
    let i0 = group * 4u;
    if (i0 >= total) { return; }
    let row = i0 / p.dim;
    let d0 = i0 % p.dim;
    var lo = 0u;
    var hi = 0u;
    if (kind != 0u) {
        lo = row_ptr(row);
        hi = row_ptr(row + 1u);
    }
    var v = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    if (kind == 0u && d0 + 4u <= p.dim) {
        // out[e, h, :] = w[e, h]·X[src_coo[e], h, :] (w optional)
        let base = src_coo(row) * p.dim + d0;
        let dh = p.dim / p.heads;
        for (var c = 0u; c < 4u; c++) {
            let xv = ld(base + c);
            v[c] = select(xv, w_buf[row * p.heads + (d0 + c) / dh] * xv, p.has_weight != 0u);
        }
    } else if (kind != 0u && d0 + 4u <= p.dim) {
        var r = Acc4(vec4<f32>(0.0), vec4<u32>(p.num_edges));
        if (hi - lo <= p.chunk) {
            r = reduce4(kind, lo, hi, d0, 4u);
        } else {
            let li = find_long(row);
            let first = long_seg_ptr(li);
            let part_args = p.num_segs * p.dim;
            for (var k = first; k < long_seg_ptr(li + 1u); k++) {
                for (var c = 0u; c < 4u; c++) {
                    let t = k * p.dim + d0 + c;
                    let b = combine(kind, Acc(r.v[c], r.arg[c]), Acc(bitcast<f32>(y_buf[t]), y_buf[part_args + t]), k == first);
                    r.v[c] = b.v;
                    r.arg[c] = b.arg;
                }
            }
        }
        if (kind == 1u && p.reduce == 1u && hi > lo) { r.v /= f32(hi - lo); }
        for (var c = 0u; c < 4u; c++) {
            v[c] = r.v[c];
            if (kind == 1u && p.reduce >= 2u) { arg_buf[i0 + c] = r.arg[c]; }
        }
    } else if (!whole) {
        for (var c = 0u; c < 4u; c++) {
            if (i0 + c < total) { v[c] = element(kind, i0 + c); }
        }
    }
    if (ELEM_SHIFT == 0u) {
        for (var c = 0u; c < 4u; c++) {
            if (i0 + c < total) { out_buf[i0 + c] = pack_elem(v[c]); }
        }
    } else {
        out_buf[i0 >> 1u] = pack_pair(v[0], v[1]);
        if (i0 + 2u < total) { out_buf[(i0 >> 1u) + 1u] = pack_pair(v[2], v[3]); }
    }
}

// A 2-D grid past 65535 workgroups: flat id = x + y · (x extent).
fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn graph_gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run4(0u, flat_id(gid, nwg), p.num_edges, false);
}

@compute @workgroup_size(256)
fn graph_segment_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run4(1u, flat_id(gid, nwg), p.num_nodes, false);
}

@compute @workgroup_size(256)
fn graph_spmm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run4(2u, flat_id(gid, nwg), p.num_nodes, false);
}

// The same three for widths that are a multiple of 4.
@compute @workgroup_size(256)
fn graph_gather_w4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run4(0u, flat_id(gid, nwg), p.num_edges, true);
}

@compute @workgroup_size(256)
fn graph_segment_reduce_w4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run4(1u, flat_id(gid, nwg), p.num_nodes, true);
}

@compute @workgroup_size(256)
fn graph_spmm_w4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run4(2u, flat_id(gid, nwg), p.num_nodes, true);
}

@compute @workgroup_size(256)
fn graph_seg_partial_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    seg_partial(1u, flat_id(gid, nwg));
}

@compute @workgroup_size(256)
fn graph_seg_partial_spmm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    seg_partial(2u, flat_id(gid, nwg));
}

// The (node, head) of a per-edge kernel's invocation t and the node's CSR range.
struct NodeHead { i: u32, h: u32, lo: u32, hi: u32 }

fn node_head(t: u32) -> NodeHead {
    let i = t / p.heads;
    if (i >= p.num_nodes) { return NodeHead(i, 0u, 0u, 0u); }
    return NodeHead(i, t % p.heads, row_ptr(i), row_ptr(i + 1u));
}

@compute @workgroup_size(256)
fn graph_edge_combine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run(5u, flat_id(gid, nwg), p.num_edges);
}

// s[e, h] = ⟨A[dst e, h, :], B[src e, h, :]⟩, one invocation per (edge, head), so a hub's
// edges spread over the grid like any others; out is f32 in COO order.
@compute @workgroup_size(256)
fn graph_sddmm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= p.num_edges * p.heads) { return; }
    let e = t / p.heads;
    let dh = p.dim / p.heads;
    let a0 = dst_coo(e) * p.dim + (t % p.heads) * dh;
    let b0 = src_coo(e) * p.dim + (t % p.heads) * dh;
    var acc = 0.0;
    for (var k = 0u; k < dh; k++) {
        acc += ld(a0 + k) * ld_y(b0 + k);
    }
    out_buf[t] = bitcast<u32>(acc);
}

// out[e, h] = ⟨x[e, h, :], y[e, h, :]⟩ over edge features (f32), one invocation per (e, h).
@compute @workgroup_size(256)
fn graph_edge_dot(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= p.num_edges * p.heads) { return; }
    let dh = p.dim / p.heads;
    let base = (t / p.heads) * p.dim + (t % p.heads) * dh;
    var acc = 0.0;
    for (var k = 0u; k < dh; k++) {
        acc += ld(base + k) * ld_y(base + k);
    }
    out_buf[t] = bitcast<u32>(acc);
}

// Segment softmax (p.reduce = 0) and its backward (p.reduce = 1), per (node, head), in three
// steps: partial statistics of long rows' segments, the statistics of every row (short rows
// directly, long rows by combining their partials in order), then every edge in parallel.
// Forward statistics are (max, Σ exp(s − max)) of the scores w; backward, Σ α·dα (w = α, v = dα).
struct Stats { m: f32, l: f32 }

fn stats_range(h: u32, lo: u32, hi: u32) -> Stats {
    if (p.reduce == 1u) {
        var dot = 0.0;
        for (var q = lo; q < hi; q++) {
            let e = perm(q) * p.heads + h;
            dot += w_buf[e] * v_buf[e];
        }
        return Stats(0.0, dot);
    }
    var mx = -3.4028235e38;
    for (var q = lo; q < hi; q++) {
        mx = max(mx, w_buf[perm(q) * p.heads + h]);
    }
    var sum = 0.0;
    for (var q = lo; q < hi; q++) {
        sum += exp(w_buf[perm(q) * p.heads + h] - mx);
    }
    return Stats(mx, sum);
}

// One invocation per (long-row segment, head) writes its statistics into out_buf [S, H, 2].
@compute @workgroup_size(256)
fn graph_softmax_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= p.num_segs * p.heads) { return; }
    let s = seg_range(t / p.heads);
    let st = stats_range(t % p.heads, s.y, s.z);
    out_buf[2u * t] = bitcast<u32>(st.m);
    out_buf[2u * t + 1u] = bitcast<u32>(st.l);
}

// One invocation per (node, head) writes the row's statistics into arg_buf [N, H, 2]; a long
// row combines its segments' partials (y_buf) in order: M = max m_k, L = Σ l_k·exp(m_k − M).
@compute @workgroup_size(256)
fn graph_softmax_stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = node_head(flat_id(gid, nwg));
    if (r.i >= p.num_nodes) { return; }
    var st = Stats(0.0, 0.0);
    if (r.hi - r.lo <= p.chunk) {
        st = stats_range(r.h, r.lo, r.hi);
    } else {
        let li = find_long(r.i);
        let k0 = long_seg_ptr(li);
        let k1 = long_seg_ptr(li + 1u);
        st.m = -3.4028235e38;
        for (var k = k0; k < k1; k++) {
            st.m = max(st.m, bitcast<f32>(y_buf[2u * (k * p.heads + r.h)]));
        }
        for (var k = k0; k < k1; k++) {
            let part = k * p.heads + r.h;
            let l = bitcast<f32>(y_buf[2u * part + 1u]);
            st.l += select(l * exp(bitcast<f32>(y_buf[2u * part]) - st.m), l, p.reduce == 1u);
        }
    }
    let t = r.i * p.heads + r.h;
    arg_buf[2u * t] = bitcast<u32>(st.m);
    arg_buf[2u * t + 1u] = bitcast<u32>(st.l);
}

// One invocation per (edge, head): α = exp(s − M)/L, or ds = α·(dα − Σ α·dα).
@compute @workgroup_size(256)
fn graph_softmax_write(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= p.num_edges * p.heads) { return; }
    let row = dst_coo(t / p.heads) * p.heads + t % p.heads;
    let m = bitcast<f32>(arg_buf[2u * row]);
    let l = bitcast<f32>(arg_buf[2u * row + 1u]);
    if (p.reduce == 1u) {
        out_buf[t] = bitcast<u32>(w_buf[t] * (v_buf[t] - l));
    } else {
        out_buf[t] = bitcast<u32>(exp(w_buf[t] - m) / l);
    }
}

// LayerNorm (SPEC §6). Row passes: one workgroup per row reduces in workgroup memory and writes
// two f32 per row into arg_buf; the element passes (`run` kinds 3, 4) then write whole words.
var<workgroup> red: array<f32, 256>;

fn wg_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// μ and rstd of row r (two passes over the row: the variance of x − μ, not E[x²] − μ²).
@compute @workgroup_size(256)
fn graph_ln_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= p.num_nodes) { return; }
    let base = r * p.dim;
    var acc = 0.0;
    for (var k = l.x; k < p.dim; k += 256u) {
        acc += ld(base + k);
    }
    let mu = wg_sum(l.x, acc) / f32(p.dim);
    acc = 0.0;
    for (var k = l.x; k < p.dim; k += 256u) {
        let c = ld(base + k) - mu;
        acc += c * c;
    }
    let vr = wg_sum(l.x, acc) / f32(p.dim);
    if (l.x == 0u) {
        arg_buf[r] = bitcast<u32>(mu);
        arg_buf[p.num_nodes + r] = bitcast<u32>(1.0 / sqrt(vr + p.eps));
    }
}

@compute @workgroup_size(256)
fn graph_ln_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run(3u, flat_id(gid, nwg), p.num_nodes);
}

// mean(dy·γ) and mean(dy·γ·x̂) of row r; μ, rstd from the forward (v_buf).
@compute @workgroup_size(256)
fn graph_ln_bwd_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= p.num_nodes) { return; }
    let base = r * p.dim;
    let mu = v_buf[r];
    let rs = v_buf[p.num_nodes + r];
    var a = 0.0;
    var b = 0.0;
    for (var k = l.x; k < p.dim; k += 256u) {
        let g = ld_y(base + k) * w_buf[k];
        a += g;
        b += g * (ld(base + k) - mu) * rs;
    }
    let mg = wg_sum(l.x, a) / f32(p.dim);
    let mgx = wg_sum(l.x, b) / f32(p.dim);
    if (l.x == 0u) {
        arg_buf[r] = bitcast<u32>(mg);
        arg_buf[p.num_nodes + r] = bitcast<u32>(mgx);
    }
}

@compute @workgroup_size(256)
fn graph_ln_bwd_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run(4u, flat_id(gid, nwg), p.num_nodes);
}

// [dγ | dβ] in two fixed-order passes: partial sums over chunks of `chunk` rows, one invocation
// per (chunk, column), then the chunk sum (f32 out) — a column's rows spread over many workgroups.
@compute @workgroup_size(256)
fn graph_ln_params(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= p.num_segs * p.dim) { return; }
    let c = t / p.dim;
    let k = t % p.dim;
    var dg = 0.0;
    var db = 0.0;
    for (var r = c * p.chunk; r < min(p.num_nodes, (c + 1u) * p.chunk); r++) {
        let dy = ld_y(r * p.dim + k);
        dg += dy * (ld(r * p.dim + k) - v_buf[r]) * v_buf[p.num_nodes + r];
        db += dy;
    }
    out_buf[c * 2u * p.dim + k] = bitcast<u32>(dg);
    out_buf[c * 2u * p.dim + p.dim + k] = bitcast<u32>(db);
}

@compute @workgroup_size(256)
fn graph_ln_params_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = flat_id(gid, nwg);
    if (j >= 2u * p.dim) { return; }
    var acc = 0.0;
    for (var c = 0u; c < p.num_segs; c++) {
        acc += v_buf[c * 2u * p.dim + j];
    }
    out_buf[j] = bitcast<u32>(acc);
}

// Row-wise helpers (the OneForecast layer's gate, residuals and casts); `num_nodes` rows.
@compute @workgroup_size(256)
fn graph_scale_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run(6u, flat_id(gid, nwg), p.num_nodes);
}

@compute @workgroup_size(256)
fn graph_from_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run(7u, flat_id(gid, nwg), p.num_nodes);
}

@compute @workgroup_size(256)
fn graph_gate_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run(8u, flat_id(gid, nwg), p.num_nodes);
}

@compute @workgroup_size(256)
fn graph_to_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_id(gid, nwg);
    if (t >= p.num_nodes * p.dim) { return; }
    out_buf[t] = bitcast<u32>(ld(t));
}

// g[r] = mean_k σ(x[r, k]), one invocation per row (f32 out).
@compute @workgroup_size(256)
fn graph_gate_mean(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = flat_id(gid, nwg);
    if (r >= p.num_nodes) { return; }
    var acc = 0.0;
    for (var k = 0u; k < p.dim; k++) {
        acc += sigmoid_f32(ld(r * p.dim + k));
    }
    out_buf[r] = bitcast<u32>(acc / f32(p.dim));
}
