//! Graph message passing (SPEC §6), first part: the CSR graph (built from COO by a stable sort,
//! every index checked) and the deterministic primitives `gather_rows`, `segment_reduce` (sum,
//! mean, max, min with first arg index) and `spmm` — one workgroup per destination row, edges in
//! a fixed order, no atomics. References in [`cpu`]; kernels `kernels/graph.cu`,
//! `shaders/graph.wgsl`. Index arrays travel in f32 device buffers as raw 32-bit words.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod gnn;
mod oneforecast;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use gnn::{GatGrads, GatLayer, GatParams, GatState, GcnGrads, GcnLayer, GcnState, SageGrads, SageLayer, SageState};
pub use oneforecast::{OneForecastGrads, OneForecastLayer, OneForecastParams, OneForecastState, PARAM_NAMES as ONEFORECAST_PARAMS};

use crate::ops::gemm::{gemm_backward, gemm_backward_plus, ActGrad, Gemm, GemmOffsets};
use crate::{Activation, Backend, DType, Error, HostTensor, Result};

const OP: &str = "graph";

/// A directed graph in CSR form by destination. Edge `e` of the caller's COO order is at CSR
/// position `pos[e]`; `perm[p]` is the COO id of CSR position `p` (the stable sort keeps the COO
/// order among edges of one destination).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graph {
    /// N; nodes without edges are legal.
    pub num_nodes: usize,
    /// `[N + 1]`: the CSR positions of node i's incoming edges are `row_ptr[i]..row_ptr[i + 1]`.
    pub row_ptr: Vec<u32>,
    /// Source node of each CSR position.
    pub src: Vec<u32>,
    /// COO edge id of each CSR position.
    pub perm: Vec<u32>,
    /// Source node of each COO edge (for gathers in COO order).
    pub src_coo: Vec<u32>,
    /// Destination node of each COO edge.
    pub dst_coo: Vec<u32>,
}

impl Graph {
    /// Builds the CSR from COO `(src, dst)`; an index outside `[0, num_nodes)` is an error that
    /// names the edge. `num_nodes = 1`, no edges, self-loops and multi-edges are all legal.
    pub fn from_coo(num_nodes: usize, src: &[i64], dst: &[i64]) -> Result<Graph> {
        if src.len() != dst.len() {
            return Err(Error::shape(OP, format!("src has {} edges, dst {}", src.len(), dst.len())));
        }
        if num_nodes > u32::MAX as usize || src.len() > u32::MAX as usize {
            return Err(Error::Limit("graph: more than 2^32 nodes or edges".into()));
        }
        let check = |name: &str, e: usize, v: i64| -> Result<u32> {
            if v < 0 || v as usize >= num_nodes {
                Err(Error::Index(format!("edge {e}: {name} = {v} is outside [0, {num_nodes})")))
            } else {
                Ok(v as u32)
            }
        };
        let s: Vec<u32> = src.iter().enumerate().map(|(e, &v)| check("src", e, v)).collect::<Result<_>>()?;
        let d: Vec<u32> = dst.iter().enumerate().map(|(e, &v)| check("dst", e, v)).collect::<Result<_>>()?;
        let mut order: Vec<u32> = (0..s.len() as u32).collect();
        order.sort_by_key(|&e| d[e as usize]); // stable
        let mut row_ptr = crate::error::filled(num_nodes + 1, 0u32)?;
        for &v in &d {
            row_ptr[v as usize + 1] += 1;
        }
        for i in 0..num_nodes {
            row_ptr[i + 1] += row_ptr[i];
        }
        Ok(Graph { num_nodes, row_ptr, src: order.iter().map(|&e| s[e as usize]).collect(), perm: order, src_coo: s, dst_coo: d })
    }

    /// E.
    pub fn num_edges(&self) -> usize {
        self.src.len()
    }

    /// The load-balancing split (see [`SEGMENT_EDGES`]): the rows longer than a segment, the
    /// first segment of each (with the total at the end), and each segment's index in the first.
    pub fn segments(&self) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
        let mut long_rows = Vec::new();
        let mut seg_ptr = vec![0u32];
        let mut seg_long = Vec::new();
        for i in 0..self.num_nodes {
            let deg = (self.row_ptr[i + 1] - self.row_ptr[i]) as usize;
            if deg > SEGMENT_EDGES {
                let segs = deg.div_ceil(SEGMENT_EDGES);
                seg_long.extend(std::iter::repeat_n(long_rows.len() as u32, segs));
                long_rows.push(i as u32);
                seg_ptr.push(seg_long.len() as u32);
            }
        }
        (long_rows, seg_ptr, seg_long)
    }

    /// The graph back from the index words of a [`DeviceGraph`] (which only a checked
    /// [`Graph`] can make).
    pub(crate) fn from_words(num_nodes: usize, words: &[f32]) -> Graph {
        let w = |at: usize, n: usize| words[at..at + n].iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        let row_ptr = w(0, num_nodes + 1);
        let (n1, e) = (num_nodes + 1, row_ptr[num_nodes] as usize);
        Graph { num_nodes, src: w(n1, e), perm: w(n1 + e, e), src_coo: w(n1 + 2 * e, e), dst_coo: w(n1 + 3 * e, e), row_ptr }
    }

    /// A seeded random graph where every node receives `min_deg ..= max_deg` edges from uniform
    /// sources (OneForecast's mesh has in-degree 4..36), edges in destination-interleaved COO
    /// order. For checks and benchmarks.
    pub fn random(num_nodes: usize, min_deg: usize, max_deg: usize, seed: u64) -> Result<Graph> {
        if num_nodes == 0 || min_deg > max_deg {
            return Err(Error::Invalid(format!("graph: random({num_nodes}, {min_deg}..={max_deg}) needs nodes and min ≤ max")));
        }
        let mut next = splitmix(seed);
        let (mut src, mut dst) = (Vec::new(), Vec::new());
        let degs: Vec<usize> = (0..num_nodes).map(|_| min_deg + next(max_deg - min_deg + 1)).collect();
        for round in 0..max_deg {
            for (i, &d) in degs.iter().enumerate() {
                if round < d {
                    src.push(next(num_nodes) as i64);
                    dst.push(i as i64);
                }
            }
        }
        Graph::from_coo(num_nodes, &src, &dst)
    }

    /// A seeded random graph of `num_edges` edges with uniform sources and destinations (the
    /// shape `peers.py` times PyTorch on).
    pub fn random_uniform(num_nodes: usize, num_edges: usize, seed: u64) -> Result<Graph> {
        if num_nodes == 0 {
            return Err(Error::Invalid("graph: random_uniform needs nodes".into()));
        }
        let mut next = splitmix(seed);
        let src: Vec<i64> = (0..num_edges).map(|_| next(num_nodes) as i64).collect();
        let dst: Vec<i64> = (0..num_edges).map(|_| next(num_nodes) as i64).collect();
        Graph::from_coo(num_nodes, &src, &dst)
    }

    /// The icosahedral mesh refined `level` times (`10·4^level + 2` nodes), every mesh edge in
    /// both directions (in-degree 5 or 6): the shape of the meshes GraphCast and OneForecast
    /// pass messages on.
    pub fn icosphere(level: usize) -> Result<Graph> {
        if level > 8 {
            return Err(Error::Limit(format!("graph: icosphere level {level} (at most 8)")));
        }
        let mut faces: Vec<[u32; 3]> = vec![
            [0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
            [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1],
        ];
        let mut nodes = 12u32;
        for _ in 0..level {
            let mut mid = std::collections::HashMap::new();
            let mut midpoint = |a: u32, b: u32| -> u32 {
                *mid.entry((a.min(b), a.max(b))).or_insert_with(|| {
                    nodes += 1;
                    nodes - 1
                })
            };
            faces = faces
                .iter()
                .flat_map(|&[a, b, c]| {
                    let (ab, bc, ca) = (midpoint(a, b), midpoint(b, c), midpoint(c, a));
                    [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
                })
                .collect();
        }
        let edges: std::collections::BTreeSet<(u32, u32)> = faces.iter().flat_map(|&[a, b, c]| [(a, b), (b, c), (c, a)]).map(|(a, b)| (a.min(b), a.max(b))).collect();
        let (src, dst): (Vec<i64>, Vec<i64>) = edges.iter().flat_map(|&(a, b)| [(a as i64, b as i64), (b as i64, a as i64)]).unzip();
        Graph::from_coo(nodes as usize, &src, &dst)
    }

    /// A seeded graph of `num_edges` edges with uniform sources and power-law in-degrees: node
    /// `i` receives an edge with probability ∝ 1/(i + 1), so node 0 is a hub with about
    /// `E / ln N` in-edges (83,000 of 1M edges over 100,000 nodes), the skew load balancing is for.
    pub fn power_law(num_nodes: usize, num_edges: usize, seed: u64) -> Result<Graph> {
        if num_nodes == 0 {
            return Err(Error::Invalid("graph: power_law needs nodes".into()));
        }
        let mut cdf = Vec::with_capacity(num_nodes);
        let mut total = 0.0f64;
        for i in 0..num_nodes {
            total += 1.0 / (i + 1) as f64;
            cdf.push(total);
        }
        let mut next = splitmix(seed);
        let mut src = Vec::with_capacity(num_edges);
        let mut dst = Vec::with_capacity(num_edges);
        for _ in 0..num_edges {
            src.push(next(num_nodes) as i64);
            let u = next(1 << 53) as f64 / (1u64 << 53) as f64 * total;
            dst.push(cdf.partition_point(|&c| c <= u).min(num_nodes - 1) as i64);
        }
        Graph::from_coo(num_nodes, &src, &dst)
    }

    /// The graph with every edge reversed (CSR by source), for backward passes.
    pub fn transposed(&self) -> Graph {
        let dst_coo: Vec<i64> = self.dst_coo.iter().map(|&d| d as i64).collect();
        let src: Vec<i64> = self.src_coo.iter().map(|&s| s as i64).collect();
        // Indices were checked when this graph was built.
        Graph::from_coo(self.num_nodes, &dst_coo, &src).unwrap_or_else(|_| unreachable!("a transposed valid graph is valid"))
    }
}

/// A seeded stream of integers in `[0, m)` (splitmix64).
fn splitmix(seed: u64) -> impl FnMut(usize) -> usize {
    let mut state = seed;
    move |m: usize| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % m as u64) as usize
    }
}

/// The reduction of [`segment_reduce`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    /// The sum (empty rows give 0).
    Sum = 0,
    /// The sum over the row's edge count (empty rows give 0).
    Mean = 1,
    /// The maximum, with the first edge that attains it (empty rows give 0).
    Max = 2,
    /// The minimum, with the first edge that attains it (empty rows give 0).
    Min = 3,
}

impl std::str::FromStr for Reduce {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sum" => Ok(Reduce::Sum),
            "mean" => Ok(Reduce::Mean),
            "max" => Ok(Reduce::Max),
            "min" => Ok(Reduce::Min),
            _ => Err(Error::Invalid(format!("unknown reduce '{s}' (sum, mean, max, min)"))),
        }
    }
}

/// Rows with more incoming edges than this are split into segments of this many edges, each
/// reduced in parallel and then combined in order (deterministic): a hub with 100,000 edges
/// costs ~3,100 parallel segments instead of one thread walking 100,000 edges, and the
/// power-law graph's many medium rows (tens to hundreds of edges) no longer leave a few threads
/// walking long rows after the rest are done. Uniform graphs (degrees well under 32) take no
/// segments. On lavapipe (bench N 2,000, E 16,000 power law), 32 instead of 128 took spmm from
/// 1.37–1.42× to 1.32–1.35× the uniform time and segment_sum from 1.42–1.44× to 1.31–1.34×.
pub const SEGMENT_EDGES: usize = 32;

/// A graph's index arrays on one backend, as raw 32-bit words in one f32 buffer:
/// `row_ptr [N + 1] | src [E] | perm [E] | src_coo [E] | dst_coo [E] | long_rows [L] |
/// long_seg_ptr [L + 1] | seg_long [S]`: the L rows with more than [`SEGMENT_EDGES`] edges
/// (ascending), the first of their S segments, and each segment's long row. Only
/// [`DeviceGraph::upload`] of a checked [`Graph`] makes one, so the kernels may trust every index.
pub struct DeviceGraph<B> {
    pub(crate) num_nodes: usize,
    pub(crate) num_edges: usize,
    pub(crate) num_long: usize,
    pub(crate) num_segs: usize,
    /// The most segments one row has (0 without long rows): the longest loop of the kernels
    /// that combine a long row's segments.
    pub(crate) max_row_segs: usize,
    pub(crate) words: B,
}

impl<B> DeviceGraph<B> {
    /// N.
    pub fn num_nodes(&self) -> usize {
        self.num_nodes
    }
    /// E.
    pub fn num_edges(&self) -> usize {
        self.num_edges
    }

    /// Uploads a checked graph's index arrays and its long-row segments.
    pub fn upload<Be: Backend<Buf = B>>(be: &Be, g: &Graph) -> Result<Self> {
        let (long_rows, long_seg_ptr, seg_long) = g.segments();
        let data: Vec<f32> =
            [&g.row_ptr, &g.src, &g.perm, &g.src_coo, &g.dst_coo, &long_rows, &long_seg_ptr, &seg_long].into_iter().flatten().map(|&x| f32::from_bits(x)).collect();
        let words = be.upload(&HostTensor { dtype: DType::F32, shape: vec![data.len()], data })?;
        let max_row_segs = long_seg_ptr.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0);
        Ok(DeviceGraph { num_nodes: g.num_nodes, num_edges: g.num_edges(), num_long: long_rows.len(), num_segs: seg_long.len(), max_row_segs, words })
    }
}

/// The graph kernels' parameter block (`kernels/graph.cu`, `shaders/graph.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GraphParams {
    /// N.
    pub num_nodes: u32,
    /// E.
    pub num_edges: u32,
    /// Feature width `heads·Dh`.
    pub dim: u32,
    /// The [`Reduce`] discriminant.
    pub reduce: u32,
    /// 1 when the `w` operand (edge weights) is read.
    pub has_weight: u32,
    /// Heads (per-head kernels; 1 elsewhere).
    pub heads: u32,
    /// LayerNorm's ε.
    pub eps: f32,
    /// Whether the `y` operand is given (row-wise kernels): 1 as `[rows, dim]`, 2 as a bias
    /// `[dim]` broadcast over the rows.
    pub has_y: u32,
    /// The graph's long rows and their segments (see [`DeviceGraph`]), and [`SEGMENT_EDGES`].
    pub num_long: u32,
    /// S, the long rows' segments (LayerNormParams: its partial-sum chunks).
    pub num_segs: u32,
    /// [`SEGMENT_EDGES`] (LayerNormParams: rows per chunk).
    pub chunk: u32,
    /// CUDA: the long rows' partials were folded into each row's first segment before the row
    /// pass (`graph_seg_fold`); the backends' callers leave it 0.
    pub folded: u32,
}

// SAFETY: GraphParams is repr(C) plain old data (u32 fields), laid out like the CUDA struct.
#[cfg(feature = "cuda")]
unsafe impl cudarc::driver::DeviceRepr for GraphParams {}

/// Which graph kernel a [`Backend::graph_op`] call runs. Features (`x`, `y`) are `[rows, dim]`
/// in the call's dtype; edge scalars (`w`, `v`, and the outputs of the last three) are f32
/// `[E, heads]` in COO order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphKernel {
    /// `out[e, h] = w[e, h]·x[src e, h]` (w optional), `[E, D]` in COO order.
    Gather,
    /// `out[i] = reduce_{e ∈ row i} x[e]` (for sum, weighted by `w[e, h]` if given); `arg` gets
    /// the first arg (COO edge id, E for an empty row) for max/min.
    SegmentReduce,
    /// `out[e, h] = ⟨x[e, h], y[e, h]⟩` over edge features (f32 out); the graph is not read.
    EdgeDot,
    /// `out[i, h] = Σ_{e ∈ row i} w[e, h]·x[src e, h]` (w optional).
    Spmm,
    /// `out[e, h] = ⟨x[dst e, h], y[src e, h]⟩`.
    Sddmm,
    /// `out[e, h] = softmax over the edges into dst e of w[·, h]`.
    Softmax,
    /// `out[e, h] = w[e, h]·(v[e, h] − Σ_{e' → dst e} w[e', h]·v[e', h])` (w = α, v = dα).
    SoftmaxBackward,
    /// LayerNorm of the `num_nodes` rows of `x [rows, dim]` with `w = [γ | β]`; `arg` gets
    /// `[mean | rstd]` (f32, `2·rows`). The graph is not read.
    LayerNorm,
    /// LayerNorm backward, dx: `x`, `y` = dy, `w = [γ | β]`, the forward's `[mean | rstd]` = v.
    LayerNormBackward,
    /// `out[e, d] = act(x[e, d] + y[src e, d] + y[dst e, dim + d])` (act code in `reduce`): the
    /// edge MLP's combine, `x = E·W_eᵀ + b` `[E, dim]`, `y = [H·W_sᵀ | H·W_dᵀ]` `[N, 2·dim]`.
    EdgeCombine,
    /// LayerNorm backward, `[dγ | dβ]` (f32 `2·dim`): partial sums over `num_segs` chunks of
    /// `chunk` rows, then the chunks summed in order.
    LayerNormParams,
    /// Row-wise over the `num_nodes` rows of `dim`: `out[r, d] = act(s_r·x[r, d] + y[r, d])`
    /// with `s_r = w[r]` if `has_weight` (else 1), `y` if `has_y` (2: a bias `y[d]`), the act
    /// code in `reduce`.
    ScaleAdd,
    /// `out[r] = (1/dim)·Σ_k σ(x[r, k])` (f32 `[rows]`): OneForecast's edge gate.
    GateMean,
    /// `out[r, k] = w[r]/dim·σ(x[r, k])·(1 − σ(x[r, k]))`: the gate's backward from `w = dg`.
    GateMeanBackward,
    /// `out = x` as f32 (`rows·dim` elements).
    ToF32,
    /// `out = v` (f32) in the output's dtype.
    FromF32,
}

/// The operands of one [`Backend::graph_op`] call (see [`GraphKernel`] for which each uses).
pub struct GraphArgs<'a, B> {
    /// The first feature operand (see [`GraphKernel`]).
    pub x: Option<&'a B>,
    /// The second feature operand.
    pub y: Option<&'a B>,
    /// An f32 operand: edge weights or per-row factors.
    pub w: Option<&'a B>,
    /// A second f32 operand: statistics or an f32 input.
    pub v: Option<&'a B>,
}

fn check_len<Be: Backend>(be: &Be, name: &str, x: &Be::Buf, rows: usize, dim: usize) -> Result<DType> {
    if be.len_of(x) < crate::error::elems(OP, &[rows, dim])? {
        return Err(Error::shape(OP, format!("{name} holds {} elements, needs {rows}·{dim}", be.len_of(x))));
    }
    Ok(be.dtype_of(x))
}

/// An f32 edge-scalar operand `[E, heads]`.
fn check_edge_scalars<Be: Backend>(be: &Be, name: &str, w: &Be::Buf, edges: usize, heads: usize) -> Result<()> {
    if check_len(be, name, w, edges, heads)? != DType::F32 {
        return Err(Error::dtype(OP, format!("{name} (edge scalars) must be f32")));
    }
    Ok(())
}

fn params<B>(g: &DeviceGraph<B>, dim: usize, heads: usize) -> Result<GraphParams> {
    if heads == 0 || dim % heads != 0 {
        return Err(Error::shape(OP, format!("dim {dim} is not a multiple of heads {heads}")));
    }
    // Node and edge feature tensors, and edge scalars [E, heads], within 32-bit indexing.
    crate::error::elems(OP, &[g.num_nodes.max(g.num_edges), dim])?;
    crate::error::elems(OP, &[g.num_edges, heads])?;
    Ok(GraphParams {
        num_nodes: g.num_nodes as u32,
        num_edges: g.num_edges as u32,
        dim: dim as u32,
        heads: heads as u32,
        num_long: g.num_long as u32,
        num_segs: g.num_segs as u32,
        chunk: SEGMENT_EDGES as u32,
        ..Default::default()
    })
}

/// `out[e] = X[src[e]]` for every edge, in COO order (`X [N, D]` → `[E, D]`).
pub fn gather_rows<Be: Backend>(be: &Be, g: &DeviceGraph<Be::Buf>, x: &Be::Buf, dim: usize) -> Result<Be::Buf> {
    let dtype = check_len(be, "X", x, g.num_nodes, dim)?;
    let mut out = be.alloc_uninit(dtype, g.num_edges * dim)?;
    let a = GraphArgs { x: Some(x), y: None, w: None, v: None };
    be.graph_op(GraphKernel::Gather, &params(g, dim, 1)?, Some(g), &a, &mut out, None)?;
    Ok(out)
}

/// `out[i] = reduce_{e ∈ row i} M[e]` (`M [E, D]` in COO order → `[N, D]`); empty rows give 0.
/// For max/min also the first arg (COO edge id; E for empty rows) as raw words.
pub fn segment_reduce<Be: Backend>(be: &Be, g: &DeviceGraph<Be::Buf>, m: &Be::Buf, dim: usize, reduce: Reduce) -> Result<(Be::Buf, Option<Be::Buf>)> {
    let dtype = check_len(be, "M", m, g.num_edges, dim)?;
    let mut out = be.alloc_uninit(dtype, g.num_nodes * dim)?;
    let mut arg = if matches!(reduce, Reduce::Max | Reduce::Min) { Some(be.alloc_uninit(DType::F32, g.num_nodes * dim)?) } else { None };
    let p = GraphParams { reduce: reduce as u32, ..params(g, dim, 1)? };
    let a = GraphArgs { x: Some(m), y: None, w: None, v: None };
    be.graph_op(GraphKernel::SegmentReduce, &p, Some(g), &a, &mut out, arg.as_mut())?;
    Ok((out, arg))
}

/// `Y[i] = Σ_{e ∈ row i} w[e]·X[src[e]]` (`X [N, D]`, optional f32 `w [E]` in COO order).
pub fn spmm<Be: Backend>(be: &Be, g: &DeviceGraph<Be::Buf>, x: &Be::Buf, w: Option<&Be::Buf>, dim: usize) -> Result<Be::Buf> {
    spmm_heads(be, g, x, w, 1, dim)
}

/// Multi-head [`spmm`]: `Y[i, h, :] = Σ_{e ∈ row i} w[e, h]·X[src e, h, :]` (`dim = heads·Dh`,
/// `w [E, heads]` f32) — the attention-weighted aggregation of GAT and OneForecast.
pub fn spmm_heads<Be: Backend>(be: &Be, g: &DeviceGraph<Be::Buf>, x: &Be::Buf, w: Option<&Be::Buf>, heads: usize, dim: usize) -> Result<Be::Buf> {
    let dtype = check_len(be, "X", x, g.num_nodes, dim)?;
    let p = GraphParams { has_weight: w.is_some() as u32, ..params(g, dim, heads)? };
    if let Some(w) = w {
        check_edge_scalars(be, "w", w, g.num_edges, heads)?;
    }
    let mut out = be.alloc_uninit(dtype, g.num_nodes * dim)?;
    be.graph_op(GraphKernel::Spmm, &p, Some(g), &GraphArgs { x: Some(x), y: None, w, v: None }, &mut out, None)?;
    Ok(out)
}

/// `s[e, h] = ⟨A[dst e, h, :], B[src e, h, :]⟩` (`A, B [N, heads·Dh]`) → f32 `[E, heads]`.
pub fn sddmm<Be: Backend>(be: &Be, g: &DeviceGraph<Be::Buf>, a: &Be::Buf, b: &Be::Buf, heads: usize, dim: usize) -> Result<Be::Buf> {
    let p = params(g, dim, heads)?;
    crate::device::same_dtype("graph sddmm", &[("A", check_len(be, "A", a, g.num_nodes, dim)?), ("B", check_len(be, "B", b, g.num_nodes, dim)?)])?;
    let mut out = be.alloc_uninit(DType::F32, g.num_edges * heads)?;
    be.graph_op(GraphKernel::Sddmm, &p, Some(g), &GraphArgs { x: Some(a), y: Some(b), w: None, v: None }, &mut out, None)?;
    Ok(out)
}

/// Max-subtracted softmax of f32 scores `s [E, heads]` over the edges into each node.
pub fn segment_softmax<Be: Backend>(be: &Be, g: &DeviceGraph<Be::Buf>, s: &Be::Buf, heads: usize) -> Result<Be::Buf> {
    let p = params(g, heads, heads)?;
    check_edge_scalars(be, "s", s, g.num_edges, heads)?;
    let mut out = be.alloc_uninit(DType::F32, g.num_edges * heads)?;
    be.graph_op(GraphKernel::Softmax, &p, Some(g), &GraphArgs { x: None, y: None, w: Some(s), v: None }, &mut out, None)?;
    Ok(out)
}

/// Backward of [`segment_softmax`] from its output `alpha` and `d_alpha` (both f32 `[E, heads]`).
pub fn segment_softmax_backward<Be: Backend>(be: &Be, g: &DeviceGraph<Be::Buf>, alpha: &Be::Buf, d_alpha: &Be::Buf, heads: usize) -> Result<Be::Buf> {
    let p = params(g, heads, heads)?;
    check_edge_scalars(be, "alpha", alpha, g.num_edges, heads)?;
    check_edge_scalars(be, "d_alpha", d_alpha, g.num_edges, heads)?;
    let mut out = be.alloc_uninit(DType::F32, g.num_edges * heads)?;
    be.graph_op(GraphKernel::SoftmaxBackward, &p, Some(g), &GraphArgs { x: None, y: None, w: Some(alpha), v: Some(d_alpha) }, &mut out, None)?;
    Ok(out)
}

/// Backward of [`spmm_heads`] with the transposed graph `gt`: `dX = spmm_heads(gt, dY, w)` and,
/// with weights, `dw = sddmm(dY, X)`.
#[allow(clippy::too_many_arguments)]
pub fn spmm_backward<Be: Backend>(be: &Be, g: &DeviceGraph<Be::Buf>, gt: &DeviceGraph<Be::Buf>, x: &Be::Buf, w: Option<&Be::Buf>, d_y: &Be::Buf, heads: usize, dim: usize) -> Result<(Be::Buf, Option<Be::Buf>)> {
    let dx = spmm_heads(be, gt, d_y, w, heads, dim)?;
    let dw = match w {
        Some(_) => Some(sddmm(be, g, d_y, x, heads, dim)?),
        None => None,
    };
    Ok((dx, dw))
}

/// Backward of [`sddmm`] with the transposed graph `gt`: `dA = spmm_heads(g, B, ds)`,
/// `dB = spmm_heads(gt, A, ds)`.
#[allow(clippy::too_many_arguments)]
pub fn sddmm_backward<Be: Backend>(be: &Be, g: &DeviceGraph<Be::Buf>, gt: &DeviceGraph<Be::Buf>, a: &Be::Buf, b: &Be::Buf, d_s: &Be::Buf, heads: usize, dim: usize) -> Result<(Be::Buf, Be::Buf)> {
    Ok((spmm_heads(be, g, b, Some(d_s), heads, dim)?, spmm_heads(be, gt, a, Some(d_s), heads, dim)?))
}

/// Attention-weighted aggregation of edge features (OneForecast's `a_j`, GAT over messages):
/// `out[i, h, :] = Σ_{e → i} w[e, h]·M[e, h, :]` (`M [E, heads·Dh]`, f32 `w [E, heads]`).
pub fn segment_sum_weighted<Be: Backend>(be: &Be, g: &DeviceGraph<Be::Buf>, m: &Be::Buf, w: &Be::Buf, heads: usize, dim: usize) -> Result<Be::Buf> {
    let dtype = check_len(be, "M", m, g.num_edges, dim)?;
    let p = GraphParams { has_weight: 1, ..params(g, dim, heads)? };
    check_edge_scalars(be, "w", w, g.num_edges, heads)?;
    let mut out = be.alloc_uninit(dtype, g.num_nodes * dim)?;
    be.graph_op(GraphKernel::SegmentReduce, &p, Some(g), &GraphArgs { x: Some(m), y: None, w: Some(w), v: None }, &mut out, None)?;
    Ok(out)
}

/// Backward of [`segment_sum_weighted`] with the transposed graph `gt`:
/// `dM[e] = w[e]·dOut[dst e]` (a weighted gather over `gt`) and `dw[e, h] = ⟨dOut[dst e, h], M[e, h]⟩`.
#[allow(clippy::too_many_arguments)]
pub fn segment_sum_weighted_backward<Be: Backend>(be: &Be, gt: &DeviceGraph<Be::Buf>, m: &Be::Buf, w: &Be::Buf, d_out: &Be::Buf, heads: usize, dim: usize) -> Result<(Be::Buf, Be::Buf)> {
    let dtype = check_len(be, "dOut", d_out, gt.num_nodes, dim)?;
    crate::device::same_dtype("graph", &[("dOut", dtype), ("M", check_len(be, "M", m, gt.num_edges, dim)?)])?;
    check_edge_scalars(be, "w", w, gt.num_edges, heads)?;
    let p = params(gt, dim, heads)?;
    let mut g_out = be.alloc_uninit(dtype, gt.num_edges * dim)?;
    be.graph_op(GraphKernel::Gather, &p, Some(gt), &GraphArgs { x: Some(d_out), y: None, w: None, v: None }, &mut g_out, None)?;
    let mut dw = be.alloc_uninit(DType::F32, gt.num_edges * heads)?;
    be.graph_op(GraphKernel::EdgeDot, &p, Some(gt), &GraphArgs { x: Some(&g_out), y: Some(m), w: None, v: None }, &mut dw, None)?;
    let mut dm = be.alloc_uninit(dtype, gt.num_edges * dim)?;
    be.graph_op(GraphKernel::Gather, &GraphParams { has_weight: 1, ..p }, Some(gt), &GraphArgs { x: Some(d_out), y: None, w: Some(w), v: None }, &mut dm, None)?;
    Ok((dm, dw))
}

/// Backward of [`gather_rows`]: `dX[j] = Σ_{e: src e = j} dOut[e]`, a segment sum over the
/// transposed graph `gt` (`Graph::transposed`, uploaded), in a fixed order — no atomics.
pub fn gather_rows_backward<Be: Backend>(be: &Be, gt: &DeviceGraph<Be::Buf>, d_out: &Be::Buf, dim: usize) -> Result<Be::Buf> {
    Ok(segment_reduce(be, gt, d_out, dim, Reduce::Sum)?.0)
}

/// Backward of a segment sum: `dM[e] = dOut[dst e]`, a gather over the transposed graph `gt`.
pub fn segment_sum_backward<Be: Backend>(be: &Be, gt: &DeviceGraph<Be::Buf>, d_out: &Be::Buf, dim: usize) -> Result<Be::Buf> {
    gather_rows(be, gt, d_out, dim)
}

/// LayerNorm over rows (SPEC §6): `y = (x − μ)·rstd·γ + β` for `x [rows, c]` in any dtype, the
/// affine parameters f32 `[γ | β]` (`2·c`, the layout of the gradient the backward returns).
/// Returns `y` and the f32 `[mean | rstd]` the backward needs.
pub fn layer_norm<Be: Backend>(be: &Be, x: &Be::Buf, affine: &Be::Buf, rows: usize, c: usize, eps: f32) -> Result<(Be::Buf, Be::Buf)> {
    let (p, dtype) = layer_norm_setup(be, x, affine, rows, c, eps)?;
    let mut y = be.alloc_uninit(dtype, rows * c)?;
    let mut stats = be.alloc(DType::F32, 2 * rows.max(1))?;
    be.graph_op(GraphKernel::LayerNorm, &p, None, &GraphArgs { x: Some(x), y: None, w: Some(affine), v: None }, &mut y, Some(&mut stats))?;
    Ok((y, stats))
}

/// Rows per chunk of the LayerNorm parameter gradients' first pass.
const LN_PARAM_ROWS: usize = 256;

/// LayerNorm backward from the forward's `stats`: `(dx, [dγ | dβ])`, the parameter gradients f32
/// and summed over rows in a fixed order (no atomics).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward<Be: Backend>(be: &Be, x: &Be::Buf, dy: &Be::Buf, affine: &Be::Buf, stats: &Be::Buf, rows: usize, c: usize, eps: f32) -> Result<(Be::Buf, Be::Buf)> {
    let (p, dtype) = layer_norm_setup(be, x, affine, rows, c, eps)?;
    crate::device::same_dtype("layer_norm", &[("x", dtype), ("dy", check_len(be, "dy", dy, rows, c)?)])?;
    check_edge_scalars(be, "stats", stats, rows, 2)?;
    let a = GraphArgs { x: Some(x), y: Some(dy), w: Some(affine), v: Some(stats) };
    let mut dx = be.alloc_uninit(dtype, rows * c)?;
    be.graph_op(GraphKernel::LayerNormBackward, &p, None, &a, &mut dx, None)?;
    let mut dparams = be.alloc(DType::F32, 2 * c)?;
    let chunks = rows.div_ceil(LN_PARAM_ROWS).max(1);
    let p = GraphParams { chunk: LN_PARAM_ROWS as u32, num_segs: chunks as u32, ..p };
    be.graph_op(GraphKernel::LayerNormParams, &p, None, &a, &mut dparams, None)?;
    Ok((dx, dparams))
}

fn layer_norm_setup<Be: Backend>(be: &Be, x: &Be::Buf, affine: &Be::Buf, rows: usize, c: usize, eps: f32) -> Result<(GraphParams, DType)> {
    if c == 0 || eps.is_nan() || eps <= 0.0 {
        return Err(Error::Invalid(format!("layer_norm: needs c > 0 and eps > 0 (c = {c}, eps = {eps})")));
    }
    crate::error::elems("layer_norm", &[rows, c])?;
    let dtype = check_len(be, "x", x, rows, c)?;
    check_edge_scalars(be, "affine [γ | β]", affine, c, 2)?;
    let p = GraphParams { num_nodes: rows as u32, dim: c as u32, heads: 1, eps, ..Default::default() };
    Ok((p, dtype))
}

/// The parameter block of a row-wise kernel over `rows` rows of `dim` (no graph).
fn row_params(op: &str, rows: usize, dim: usize) -> Result<GraphParams> {
    crate::error::elems(op, &[rows, dim])?;
    Ok(GraphParams { num_nodes: rows as u32, dim: dim as u32, heads: 1, ..Default::default() })
}

/// Row-wise `out[r, d] = act(s_r·x[r, d] + y[r, d])` over `x [rows, dim]`, with optional f32
/// per-row scales `s [rows]` and an optional addend `y` in x's dtype: residual sums, an
/// activation outside a GEMM, and OneForecast's gated edge update `e' = g·m + e`.
#[allow(clippy::too_many_arguments)]
pub fn scale_add<Be: Backend>(be: &Be, x: &Be::Buf, scale: Option<&Be::Buf>, y: Option<&Be::Buf>, rows: usize, dim: usize, act: Activation) -> Result<Be::Buf> {
    let dtype = check_len(be, "x", x, rows, dim)?;
    if let Some(y) = y {
        crate::device::same_dtype("scale_add", &[("x", dtype), ("y", check_len(be, "y", y, rows, dim)?)])?;
    }
    if let Some(s) = scale {
        check_edge_scalars(be, "scale", s, rows, 1)?;
    }
    let p = GraphParams { has_weight: scale.is_some() as u32, has_y: y.is_some() as u32, reduce: act as u32, ..row_params("scale_add", rows, dim)? };
    let mut out = be.alloc_uninit(dtype, rows * dim)?;
    be.graph_op(GraphKernel::ScaleAdd, &p, None, &GraphArgs { x: Some(x), y, w: scale, v: None }, &mut out, None)?;
    Ok(out)
}

/// `out[r, d] = act(x[r, d] + bias[d])` over `x [rows, dim]`, the bias in x's dtype: a bias and
/// activation after an aggregation (GCN, GAT).
pub fn bias_act<Be: Backend>(be: &Be, x: &Be::Buf, bias: &Be::Buf, rows: usize, dim: usize, act: Activation) -> Result<Be::Buf> {
    let dtype = check_len(be, "x", x, rows, dim)?;
    crate::device::same_dtype("bias_act", &[("x", dtype), ("bias", check_len(be, "bias", bias, 1, dim)?)])?;
    let p = GraphParams { has_y: 2, reduce: act as u32, ..row_params("bias_act", rows, dim)? };
    let mut out = be.alloc_uninit(dtype, rows * dim)?;
    be.graph_op(GraphKernel::ScaleAdd, &p, None, &GraphArgs { x: Some(x), y: Some(bias), w: None, v: None }, &mut out, None)?;
    Ok(out)
}

/// `g[r] = (1/k)·Σ_j σ(x[r, j])` over logits `x [rows, k]` (f32 `[rows]`): OneForecast's edge
/// gate, the mean over heads and gates of the sigmoid gates.
pub fn gate_mean<Be: Backend>(be: &Be, x: &Be::Buf, rows: usize, k: usize) -> Result<Be::Buf> {
    check_len(be, "logits", x, rows, k)?;
    let mut out = be.alloc(DType::F32, rows.max(1))?;
    be.graph_op(GraphKernel::GateMean, &row_params("gate_mean", rows, k)?, None, &GraphArgs { x: Some(x), y: None, w: None, v: None }, &mut out, None)?;
    Ok(out)
}

/// Backward of [`gate_mean`]: `dx[r, j] = dg[r]/k·σ(x[r, j])·(1 − σ(x[r, j]))` in x's dtype.
pub fn gate_mean_backward<Be: Backend>(be: &Be, x: &Be::Buf, dg: &Be::Buf, rows: usize, k: usize) -> Result<Be::Buf> {
    let dtype = check_len(be, "logits", x, rows, k)?;
    check_edge_scalars(be, "dg", dg, rows, 1)?;
    let mut out = be.alloc_uninit(dtype, rows * k)?;
    be.graph_op(GraphKernel::GateMeanBackward, &row_params("gate_mean", rows, k)?, None, &GraphArgs { x: Some(x), y: None, w: Some(dg), v: None }, &mut out, None)?;
    Ok(out)
}

/// `out[r, h] = ⟨x[r, h, :], y[r, h, :]⟩` over rows of `dim = heads·Dh` (f32 `[rows, heads]`).
pub fn row_dot<Be: Backend>(be: &Be, x: &Be::Buf, y: &Be::Buf, rows: usize, dim: usize, heads: usize) -> Result<Be::Buf> {
    let dtype = check_len(be, "x", x, rows, dim)?;
    crate::device::same_dtype("row_dot", &[("x", dtype), ("y", check_len(be, "y", y, rows, dim)?)])?;
    if heads == 0 || dim % heads != 0 {
        return Err(Error::shape(OP, format!("dim {dim} is not a multiple of heads {heads}")));
    }
    let p = GraphParams { num_edges: rows as u32, heads: heads as u32, ..row_params("row_dot", rows, dim)? };
    let mut out = be.alloc(DType::F32, (rows * heads).max(1))?;
    be.graph_op(GraphKernel::EdgeDot, &p, None, &GraphArgs { x: Some(x), y: Some(y), w: None, v: None }, &mut out, None)?;
    Ok(out)
}

/// `len` elements of `x` as f32 (scores from a GEMM into [`segment_softmax`]).
pub fn to_f32<Be: Backend>(be: &Be, x: &Be::Buf, len: usize) -> Result<Be::Buf> {
    check_len(be, "x", x, len, 1)?;
    let mut out = be.alloc(DType::F32, len.max(1))?;
    be.graph_op(GraphKernel::ToF32, &row_params("to_f32", len, 1)?, None, &GraphArgs { x: Some(x), y: None, w: None, v: None }, &mut out, None)?;
    Ok(out)
}

/// `len` f32 elements of `v` in `dtype` (gradients of f32 scores back into a GEMM).
pub fn from_f32<Be: Backend>(be: &Be, v: &Be::Buf, dtype: DType, len: usize) -> Result<Be::Buf> {
    check_edge_scalars(be, "v", v, len, 1)?;
    let mut out = be.alloc(dtype, len.max(1))?;
    be.graph_op(GraphKernel::FromF32, &row_params("from_f32", len, 1)?, None, &GraphArgs { x: None, y: None, w: None, v: Some(v) }, &mut out, None)?;
    Ok(out)
}

/// `out[e, d] = act(x[e, d] + y[src e, d] + y[dst e, dim + d])` for `x [E, dim]` and the node
/// pair table `y [N, 2·dim]`: the per-edge combine of per-node projections (edge MLP, GAT).
pub(crate) fn edge_combine<Be: Backend>(be: &Be, g: &DeviceGraph<Be::Buf>, x: &Be::Buf, y: &Be::Buf, dim: usize, act: Activation) -> Result<Be::Buf> {
    let dtype = check_len(be, "x", x, g.num_edges, dim)?;
    crate::device::same_dtype(OP, &[("x", dtype), ("y", check_len(be, "y", y, g.num_nodes, 2 * dim)?)])?;
    let p = GraphParams { reduce: act as u32, ..params(g, dim, 1)? };
    let mut out = be.alloc_uninit(dtype, g.num_edges * dim)?;
    be.graph_op(GraphKernel::EdgeCombine, &p, Some(g), &GraphArgs { x: Some(x), y: Some(y), w: None, v: None }, &mut out, None)?;
    Ok(out)
}

/// The GraphCast / OneForecast edge MLP (SPEC §6, `edge_mlp_sum`):
/// `m[e] = act(W_e·e_e + W_s·h_src + W_d·h_dst + b)`, computed as `E·W_eᵀ + b` over edges and
/// `P = [H·W_sᵀ | H·W_dᵀ]` over nodes (GEMMs), then one fused gather-add-activate pass — the
/// `[E, 3D]` concatenation is never materialised. Weights are `[out, in]` in the features' dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeMlp {
    /// Width of the edge features.
    pub edge_dim: usize,
    /// Width of the node features.
    pub node_dim: usize,
    /// Width of the messages m.
    pub out_dim: usize,
    /// The activation of the fused edge pass.
    pub act: Activation,
}

/// How an [`EdgeMlp`] is computed: the concat trick (the default) or the unfused composition it
/// replaces — both endpoints gathered into `[E, node_dim]` blocks, three `[E, ·]` GEMMs chained
/// through their residual and a separate activation pass — kept to measure the fusion against and
/// as a second derivation of the same numbers. The unfused form needs the transposed graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EdgeMlpForm {
    /// Per-node projections, then one fused gather-add-bias-activation pass over the edges.
    #[default]
    ConcatTrick,
    /// Both endpoints gathered and three `[E, ·]` GEMMs (the composition the concat trick replaces).
    Materialized,
}

/// The edge MLP's weights: `w_e [out, edge_dim]`, `w_s`, `w_d [out, node_dim]`, `b [out]`.
pub struct EdgeMlpWeights<B> {
    /// `[out, edge_dim]`.
    pub w_e: B,
    /// `[out, node_dim]`, applied to the source node.
    pub w_s: B,
    /// `[out, node_dim]`, applied to the destination node.
    pub w_d: B,
    /// `[out]`.
    pub b: B,
}

/// The edge MLP's gradients.
pub struct EdgeMlpGrads<B> {
    /// `[E, edge_dim]`.
    pub d_edge: B,
    /// `[N, node_dim]` (from both endpoints).
    pub d_node: B,
    /// dW_e.
    pub w_e: B,
    /// dW_s.
    pub w_s: B,
    /// dW_d.
    pub w_d: B,
    /// db.
    pub b: B,
}

impl EdgeMlp {
    fn edge_gemm(&self, edges: usize) -> Gemm {
        Gemm::new(edges, self.out_dim, self.edge_dim).bias(true)
    }
    /// `H·W_sᵀ` (or `H·W_dᵀ` at column offset `out`) into `P [N, 2·out]`.
    fn node_gemm(&self, nodes: usize, half: usize) -> Gemm {
        Gemm::new(nodes, self.out_dim, self.node_dim).ldc(2 * self.out_dim).offsets(GemmOffsets { c: half * self.out_dim, ..Default::default() })
    }

    fn check<Be: Backend>(&self, be: &Be, g: &DeviceGraph<Be::Buf>, e_feat: &Be::Buf, h: &Be::Buf) -> Result<DType> {
        if self.edge_dim == 0 || self.node_dim == 0 || self.out_dim == 0 {
            return Err(Error::shape("edge_mlp", format!("dimensions must be positive: {self:?}")));
        }
        let dtype = check_len(be, "edge features", e_feat, g.num_edges, self.edge_dim)?;
        crate::device::same_dtype("edge_mlp", &[("edge features", dtype), ("node features", check_len(be, "node features", h, g.num_nodes, self.node_dim)?)])
    }

    fn pre<Be: Backend>(&self, be: &Be, g: &DeviceGraph<Be::Buf>, e_feat: &Be::Buf, h: &Be::Buf, w: &EdgeMlpWeights<Be::Buf>, act: Activation) -> Result<Be::Buf> {
        let dtype = self.check(be, g, e_feat, h)?;
        let mut ee = be.alloc_uninit(dtype, g.num_edges * self.out_dim)?;
        if g.num_edges > 0 {
            be.gemm(&self.edge_gemm(g.num_edges), e_feat, &w.w_e, Some(&w.b), None, &mut ee, None)?;
        }
        let mut pn = be.alloc_uninit(dtype, g.num_nodes * 2 * self.out_dim)?;
        be.gemm(&self.node_gemm(g.num_nodes, 0), h, &w.w_s, None, None, &mut pn, None)?;
        be.gemm(&self.node_gemm(g.num_nodes, 1), h, &w.w_d, None, None, &mut pn, None)?;
        edge_combine(be, g, &ee, &pn, self.out_dim, act)
    }

    /// The messages `m [E, out]` in COO edge order from `e_feat [E, edge_dim]`, `h [N, node_dim]`.
    pub fn forward<Be: Backend>(&self, be: &Be, g: &DeviceGraph<Be::Buf>, e_feat: &Be::Buf, h: &Be::Buf, w: &EdgeMlpWeights<Be::Buf>) -> Result<Be::Buf> {
        self.pre(be, g, e_feat, h, w, self.act)
    }

    /// The backward from `d_m`; `gt` is the transposed graph. The pre-activation is recomputed
    /// (one GEMM pair and one pass), the per-node gradients are segment sums over `g` and `gt`
    /// (no atomics), and `dH` gets both halves through one GEMM epilogue.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<Be: Backend>(&self, be: &Be, g: &DeviceGraph<Be::Buf>, gt: &DeviceGraph<Be::Buf>, e_feat: &Be::Buf, h: &Be::Buf, w: &EdgeMlpWeights<Be::Buf>, d_m: &Be::Buf) -> Result<EdgeMlpGrads<Be::Buf>> {
        let (e, n, d) = (g.num_edges, g.num_nodes, self.out_dim);
        if gt.num_edges != e || gt.num_nodes != n {
            return Err(Error::shape("edge_mlp", "gt is not the transposed graph of g"));
        }
        check_len(be, "d_m", d_m, e, d)?;
        let z = self.pre(be, g, e_feat, h, w, Activation::Identity)?;
        let mut dz = be.alloc_uninit(be.dtype_of(&z), e * d)?;
        be.act_grad(&ActGrad { rows: e, cols: d, act: self.act, act_cols: d }, d_m, &z, &mut dz)?;
        let ge = gemm_backward(be, &self.edge_gemm(e), e_feat, &w.w_e, None, &dz)?;
        let dps = segment_reduce(be, gt, &dz, d, Reduce::Sum)?.0;
        let dpd = segment_reduce(be, g, &dz, d, Reduce::Sum)?.0;
        let node = Gemm::new(n, d, self.node_dim);
        let gs = gemm_backward(be, &node, h, &w.w_s, None, &dps)?;
        let gd = gemm_backward_plus(be, &node, h, &w.w_d, None, &dpd, Some(&gs.da))?;
        let db = ge.dbias.ok_or_else(|| Error::Invalid("edge_mlp: the bias gradient is missing".into()))?;
        Ok(EdgeMlpGrads { d_edge: ge.da, d_node: gd.da, w_e: ge.db, w_s: gs.db, w_d: gd.db, b: db })
    }

    /// The unfused composition ([`EdgeMlpForm::Materialized`]): `act(z)` with `z` from the edge
    /// GEMM plus the gathered endpoints' GEMMs; returns `(act(z), H_src, H_dst)`.
    #[allow(clippy::too_many_arguments)]
    fn pre_materialized<Be: Backend>(&self, be: &Be, g: &DeviceGraph<Be::Buf>, gt: &DeviceGraph<Be::Buf>, e_feat: &Be::Buf, h: &Be::Buf, w: &EdgeMlpWeights<Be::Buf>, act: Activation) -> Result<(Be::Buf, Be::Buf, Be::Buf)> {
        let dtype = self.check(be, g, e_feat, h)?;
        let (e, d) = (g.num_edges, self.out_dim);
        if gt.num_edges != e || gt.num_nodes != g.num_nodes {
            return Err(Error::shape("edge_mlp", "gt is not the transposed graph of g"));
        }
        let (hs, hd) = (gather_rows(be, g, h, self.node_dim)?, gather_rows(be, gt, h, self.node_dim)?);
        let (mut z1, mut z2, mut z3) = (be.alloc_uninit(dtype, e * d)?, be.alloc_uninit(dtype, e * d)?, be.alloc_uninit(dtype, e * d)?);
        if e > 0 {
            let node = Gemm::new(e, d, self.node_dim).residual(None);
            be.gemm(&self.edge_gemm(e), e_feat, &w.w_e, Some(&w.b), None, &mut z1, None)?;
            be.gemm(&node, &hs, &w.w_s, None, Some(&z1), &mut z2, None)?;
            be.gemm(&node, &hd, &w.w_d, None, Some(&z2), &mut z3, None)?;
        }
        Ok((scale_add(be, &z3, None, None, e, d, act)?, hs, hd))
    }

    /// [`Self::forward`] in the given form (`gt`, the transposed graph, for the unfused one).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_as<Be: Backend>(&self, form: EdgeMlpForm, be: &Be, g: &DeviceGraph<Be::Buf>, gt: &DeviceGraph<Be::Buf>, e_feat: &Be::Buf, h: &Be::Buf, w: &EdgeMlpWeights<Be::Buf>) -> Result<Be::Buf> {
        match form {
            EdgeMlpForm::ConcatTrick => self.forward(be, g, e_feat, h, w),
            EdgeMlpForm::Materialized => Ok(self.pre_materialized(be, g, gt, e_feat, h, w, self.act)?.0),
        }
    }

    /// [`Self::backward`] in the given form: the unfused one multiplies the `[E, ·]` blocks of
    /// the gathered endpoints and segment-sums their gradients back onto the nodes.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_as<Be: Backend>(&self, form: EdgeMlpForm, be: &Be, g: &DeviceGraph<Be::Buf>, gt: &DeviceGraph<Be::Buf>, e_feat: &Be::Buf, h: &Be::Buf, w: &EdgeMlpWeights<Be::Buf>, d_m: &Be::Buf) -> Result<EdgeMlpGrads<Be::Buf>> {
        if form == EdgeMlpForm::ConcatTrick {
            return self.backward(be, g, gt, e_feat, h, w, d_m);
        }
        let (e, n, d) = (g.num_edges, g.num_nodes, self.out_dim);
        check_len(be, "d_m", d_m, e, d)?;
        let (z, hs, hd) = self.pre_materialized(be, g, gt, e_feat, h, w, Activation::Identity)?;
        let mut dz = be.alloc_uninit(be.dtype_of(&z), e * d)?;
        be.act_grad(&ActGrad { rows: e, cols: d, act: self.act, act_cols: d }, d_m, &z, &mut dz)?;
        let ge = gemm_backward(be, &self.edge_gemm(e), e_feat, &w.w_e, None, &dz)?;
        let node = Gemm::new(e, d, self.node_dim);
        let (gs, gd) = (gemm_backward(be, &node, &hs, &w.w_s, None, &dz)?, gemm_backward(be, &node, &hd, &w.w_d, None, &dz)?);
        let d_src = segment_reduce(be, gt, &gs.da, self.node_dim, Reduce::Sum)?.0;
        let d_dst = segment_reduce(be, g, &gd.da, self.node_dim, Reduce::Sum)?.0;
        let d_node = scale_add(be, &d_src, None, Some(&d_dst), n, self.node_dim, Activation::Identity)?;
        let db = ge.dbias.ok_or_else(|| Error::Invalid("edge_mlp: the bias gradient is missing".into()))?;
        Ok(EdgeMlpGrads { d_edge: ge.da, d_node, w_e: ge.db, w_s: gs.db, w_d: gd.db, b: db })
    }
}
