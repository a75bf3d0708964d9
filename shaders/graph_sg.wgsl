// Kernels of graph.wgsl on subgroup operations, for adapters that have them
// (FFKERN_WGPU_SUBGROUPS=auto): the per-edge dot products (sddmm, edge_dot) and LayerNorm's row
// statistics. Why it is faster: one subgroup per (edge, head) or row reads it with its lanes side
// by side (coalesced, where one invocation per (edge, head) walks both rows alone and neighbouring
// invocations read unrelated rows; for LayerNorm, no workgroup barriers), then subgroupAdd sums
// the lanes' partials. The dispatch counts subgroups of the adapter's smallest size; larger
// subgroups take the remaining tasks in a grid-stride loop. The sum's order is fixed by the
// subgroup size, so a run repeats bit for bit on one adapter.

// Where a subgroup stands: its lane and size, and its tasks first, first + stride, … (the
// subgroups of all workgroups, numbered in order).
struct SgAt {
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) size: u32,
    @builtin(subgroup_id) sid: u32,
    @builtin(num_subgroups) ns: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
}
fn first_task(at: SgAt) -> u32 {
    return (at.wg.x + at.wg.y * at.nwg.x) * at.ns + at.sid;
}
fn task_stride(at: SgAt) -> u32 {
    return at.nwg.x * at.nwg.y * at.ns;
}

// Task t = (e, h) of kind 0 (sddmm: A[dst e] · B[src e]) or 1 (edge_dot: x[e] · y[e]), f32 out.
fn dot_tasks(kind: u32, at: SgAt) {
    let dh = p.dim / p.heads;
    for (var t = first_task(at); t < p.num_edges * p.heads; t += task_stride(at)) {
        let e = t / p.heads;
        let h = (t % p.heads) * dh;
        var a0 = e * p.dim + h;
        var b0 = a0;
        if (kind == 0u) {
            a0 = dst_coo(e) * p.dim + h;
            b0 = src_coo(e) * p.dim + h;
        }
        var acc = 0.0;
        for (var k = at.lane; k < dh; k += at.size) {
            acc += ld(a0 + k) * ld_y(b0 + k);
        }
        let s = subgroupAdd(acc);
        if (at.lane == 0u) { out_buf[t] = bitcast<u32>(s); }
    }
}

@compute @workgroup_size(256)
fn graph_sddmm_sg(at: SgAt) {
    dot_tasks(0u, at);
}

@compute @workgroup_size(256)
fn graph_edge_dot_sg(at: SgAt) {
    dot_tasks(1u, at);
}

// LayerNorm's row statistics (graph_ln_stats, graph_ln_bwd_stats), one subgroup per row: kind 0
// μ and rstd (two passes: the variance of x − μ), kind 1 mean(dy·γ) and mean(dy·γ·x̂).
fn ln_rows(kind: u32, at: SgAt) {
    let lane = at.lane;
    let sgs = at.size;
    for (var r = first_task(at); r < p.num_nodes; r += task_stride(at)) {
        let base = r * p.dim;
        var a = 0.0;
        var b = 0.0;
        if (kind == 0u) {
            for (var k = lane; k < p.dim; k += sgs) { a += ld(base + k); }
            let mu = subgroupAdd(a) / f32(p.dim);
            for (var k = lane; k < p.dim; k += sgs) {
                let c = ld(base + k) - mu;
                b += c * c;
            }
            a = mu;
            b = 1.0 / sqrt(subgroupAdd(b) / f32(p.dim) + p.eps);
        } else {
            let mu = v_buf[r];
            let rs = v_buf[p.num_nodes + r];
            for (var k = lane; k < p.dim; k += sgs) {
                let g = ld_y(base + k) * w_buf[k];
                a += g;
                b += g * (ld(base + k) - mu) * rs;
            }
            a = subgroupAdd(a) / f32(p.dim);
            b = subgroupAdd(b) / f32(p.dim);
        }
        if (lane == 0u) {
            arg_buf[r] = bitcast<u32>(a);
            arg_buf[p.num_nodes + r] = bitcast<u32>(b);
        }
    }
}

@compute @workgroup_size(256)
fn graph_ln_stats_sg(at: SgAt) {
    ln_rows(0u, at);
}

@compute @workgroup_size(256)
fn graph_ln_bwd_stats_sg(at: SgAt) {
    ln_rows(1u, at);
}
