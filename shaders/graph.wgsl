// Graph message passing primitives (SPEC §6): gather_rows, segment_reduce, spmm.
// Why it is deterministic and fast enough: one invocation per output word (one element, or two
// f16/bf16 elements) walks its destination row's edges in the fixed CSR order — no atomics, and
// neighbouring invocations read neighbouring columns of the same source row (coalesced).
// Index arrays arrive as raw 32-bit words.

struct Params {
    num_nodes: u32, num_edges: u32, dim: u32, reduce: u32,
    has_weight: u32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> row_ptr: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<u32>;
@group(0) @binding(3) var<storage, read> perm: array<u32>;
@group(0) @binding(4) var<storage, read> src_coo: array<u32>;
@group(0) @binding(5) var<storage, read> x_buf: array<u32>;
@group(0) @binding(6) var<storage, read> w_buf: array<f32>;
@group(0) @binding(7) var<storage, read_write> out_buf: array<u32>;
@group(0) @binding(8) var<storage, read_write> arg_buf: array<u32>;

fn ld(i: u32) -> f32 {
    return unpack_elem(x_buf[i >> ELEM_SHIFT], i & ELEM_SHIFT);
}

// One output element i of kernel `kind` (0 gather, 1 segment reduce, 2 spmm).
fn element(kind: u32, i: u32) -> f32 {
    let row = i / p.dim;
    let d = i % p.dim;
    if (kind == 0u) {
        // out[e, d] = X[src_coo[e], d]
        return ld(src_coo[row] * p.dim + d);
    }
    let lo = row_ptr[row];
    let hi = row_ptr[row + 1u];
    var acc = 0.0;
    var arg = p.num_edges;
    for (var q = lo; q < hi; q++) {
        if (kind == 2u) {
            // Y[i, d] = Σ_{q ∈ row i} w[perm[q]]·X[src[q], d]
            let xv = ld(src[q] * p.dim + d);
            acc += select(xv, w_buf[perm[q]] * xv, p.has_weight != 0u);
            continue;
        }
        // out[i, d] = reduce over row i of M[perm[q], d]; max/min keep the first (COO) arg.
        let e = perm[q];
        let m = ld(e * p.dim + d);
        if (p.reduce <= 1u) {
            acc += m;
        } else if (q == lo || (p.reduce == 2u && m > acc) || (p.reduce == 3u && m < acc)) {
            acc = m;
            arg = e;
        }
    }
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

// A 2-D grid past 65535 workgroups: flat id = x + y · (x extent).
fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn graph_gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run(0u, flat_id(gid, nwg), p.num_edges);
}

@compute @workgroup_size(256)
fn graph_segment_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run(1u, flat_id(gid, nwg), p.num_nodes);
}

@compute @workgroup_size(256)
fn graph_spmm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run(2u, flat_id(gid, nwg), p.num_nodes);
}
