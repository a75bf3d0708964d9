// The graph families' parameters, bindings and index helpers (graph.wgsl, and graph_sg.wgsl where
// the adapter has subgroup operations).
// Index arrays arrive as raw 32-bit words in one buffer: row_ptr [N + 1] | src | perm | src_coo |
// dst_coo | long_rows [L] | long_seg_ptr [L + 1] | seg_long [S].

struct Params {
    num_nodes: u32, num_edges: u32, dim: u32, reduce: u32,
    has_weight: u32, heads: u32, eps: f32, has_y: u32,
    num_long: u32, num_segs: u32, chunk: u32, folded: u32,  // folded: CUDA only
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read> x_buf: array<u32>;
@group(0) @binding(3) var<storage, read> y_buf: array<u32>;
@group(0) @binding(4) var<storage, read> w_buf: array<f32>;
@group(0) @binding(5) var<storage, read> v_buf: array<f32>;
@group(0) @binding(6) var<storage, read_write> out_buf: array<u32>;
@group(0) @binding(7) var<storage, read_write> arg_buf: array<u32>;

fn row_ptr(i: u32) -> u32 {
    return idx[i];
}
fn src(q: u32) -> u32 {
    return idx[p.num_nodes + 1u + q];
}
fn perm(q: u32) -> u32 {
    return idx[p.num_nodes + 1u + p.num_edges + q];
}
fn src_coo(e: u32) -> u32 {
    return idx[p.num_nodes + 1u + 2u * p.num_edges + e];
}
fn dst_coo(e: u32) -> u32 {
    return idx[p.num_nodes + 1u + 3u * p.num_edges + e];
}
fn long_row(li: u32) -> u32 {
    return idx[p.num_nodes + 1u + 4u * p.num_edges + li];
}
fn long_seg_ptr(li: u32) -> u32 {
    return idx[p.num_nodes + 1u + 4u * p.num_edges + p.num_long + li];
}
fn seg_long(k: u32) -> u32 {
    return idx[p.num_nodes + 2u + 4u * p.num_edges + 2u * p.num_long + k];
}

// The index of long row `row` in long_rows (ascending), by binary search.
fn find_long(row: u32) -> u32 {
    var lo = 0u;
    var hi = p.num_long;
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (long_row(mid) <= row) { lo = mid; } else { hi = mid; }
    }
    return lo;
}

// The CSR range of segment k: its row's start plus k's place among the row's segments.
fn seg_range(k: u32) -> vec3<u32> {
    let li = seg_long(k);
    let row = long_row(li);
    let lo = row_ptr(row) + (k - long_seg_ptr(li)) * p.chunk;
    return vec3<u32>(row, lo, min(lo + p.chunk, row_ptr(row + 1u)));
}

fn ld(i: u32) -> f32 {
    return unpack_elem(x_buf[i >> ELEM_SHIFT], i & ELEM_SHIFT);
}
fn ld_y(i: u32) -> f32 {
    return unpack_elem(y_buf[i >> ELEM_SHIFT], i & ELEM_SHIFT);
}
