//! GNN layers composed from the graph primitives and fused GEMMs (SPEC §6, the layers ForwardGNN
//! trains): GCN with symmetric normalisation, GraphSAGE with the mean aggregator, and multi-head
//! GAT, forward and backward. Every per-node sum goes through a CSR (of the graph or its
//! transpose), so the layers are deterministic and use no atomics. Weights are `[out, in]` in
//! the features' dtype; per-edge weights and attention coefficients are f32.

use super::{
    bias_act, edge_combine, from_f32, scale_add, segment_reduce, segment_softmax, segment_softmax_backward, spmm, spmm_backward, spmm_heads, to_f32,
    DeviceGraph, Graph, Reduce,
};
use crate::ops::gemm::{gemm_backward, gemm_backward_plus, ActGrad, Gemm, GemmOffsets};
use crate::{Activation, Backend, DType, Error, Result};

/// `t` holds a `dims` tensor of `dtype` (its element count within 32 bits).
fn check<Be: Backend>(be: &Be, op: &str, name: &str, t: &Be::Buf, dims: &[usize], dtype: DType) -> Result<()> {
    let len = crate::error::elems(op, dims)?;
    if be.len_of(t) < len || be.dtype_of(t) != dtype {
        return Err(Error::Shape { op: "gnn", msg: format!("{op}: {name} must be {dtype} with {len} elements, is {} with {}", be.dtype_of(t), be.len_of(t)) });
    }
    Ok(())
}

/// `dy ⊙ act'(z)` (or `dy` itself for the identity).
fn through_act<Be: Backend>(be: &Be, act: Activation, dy: &Be::Buf, z: Option<&Be::Buf>, rows: usize, cols: usize) -> Result<Option<Be::Buf>> {
    match (act, z) {
        (Activation::Identity, _) => Ok(None),
        (_, Some(z)) => {
            let mut out = be.alloc_uninit(be.dtype_of(dy), rows * cols)?;
            be.act_grad(&ActGrad { rows, cols, act, act_cols: cols }, dy, z, &mut out)?;
            Ok(Some(out))
        }
        (_, None) => Err(Error::Invalid("gnn: the saved pre-activation is missing".into())),
    }
}

/// GCN (Kipf & Welling): `H' = act(Â·H·Wᵀ + b)` with `Â = D^-½ (A + I) D^-½`. The layer
/// aggregates first, `act((Â·H)·Wᵀ + b)`, so the bias and activation ride the GEMM's epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcnLayer {
    /// Input width.
    pub in_dim: usize,
    /// Output width.
    pub out_dim: usize,
    /// The activation of the GEMM's epilogue.
    pub act: Activation,
}

/// What the GCN forward keeps: the output, the aggregation and the GEMM's pre-activation.
pub struct GcnState<B> {
    /// `[N, out_dim]`.
    pub out: B,
    agg: B,
    z: Option<B>,
}

/// Gradients of a GCN layer.
pub struct GcnGrads<B> {
    /// `[N, in_dim]`.
    pub dx: B,
    /// dW `[out_dim, in_dim]`.
    pub w: B,
    /// db `[out_dim]`.
    pub b: B,
}

impl GcnLayer {
    /// `A + I` (a self-loop appended for every node, after the COO edges) and `Â`'s f32 edge
    /// weights `1/√(d_src·d_dst)`, degrees counted at the destination with the self-loop (as
    /// PyTorch Geometric's `gcn_norm`). Computed once per graph on the host.
    pub fn normalize(g: &Graph) -> Result<(Graph, Vec<f32>)> {
        let n = g.num_nodes as i64;
        let src: Vec<i64> = g.src_coo.iter().map(|&s| s as i64).chain(0..n).collect();
        let dst: Vec<i64> = g.dst_coo.iter().map(|&d| d as i64).chain(0..n).collect();
        let gl = Graph::from_coo(g.num_nodes, &src, &dst)?;
        let deg: Vec<f64> = (0..g.num_nodes).map(|i| (gl.row_ptr[i + 1] - gl.row_ptr[i]) as f64).collect();
        let w = gl.src_coo.iter().zip(&gl.dst_coo).map(|(&s, &d)| (1.0 / (deg[s as usize] * deg[d as usize]).sqrt()) as f32).collect();
        Ok((gl, w))
    }

    fn gemm(&self, rows: usize) -> Gemm {
        Gemm::new(rows, self.out_dim, self.in_dim).bias(true).act(self.act)
    }

    /// `x [N, in]`, `w [out, in]`, `b [out]`; `g` and `edge_w` from [`GcnLayer::normalize`].
    pub fn forward<Be: Backend>(&self, be: &Be, g: &DeviceGraph<Be::Buf>, edge_w: &Be::Buf, x: &Be::Buf, w: &Be::Buf, b: &Be::Buf) -> Result<GcnState<Be::Buf>> {
        let (n, dtype) = (g.num_nodes, be.dtype_of(x));
        check(be, "gcn", "x", x, &[n, self.in_dim], dtype)?;
        check(be, "gcn", "w", w, &[self.out_dim, self.in_dim], dtype)?;
        check(be, "gcn", "b", b, &[self.out_dim], dtype)?;
        let agg = spmm(be, g, x, Some(edge_w), self.in_dim)?;
        let mut out = be.alloc_uninit(dtype, n * self.out_dim)?;
        let mut z = if self.act == Activation::Identity { None } else { Some(be.alloc_uninit(dtype, n * self.out_dim)?) };
        be.gemm(&self.gemm(n), &agg, w, Some(b), None, &mut out, z.as_mut())?;
        Ok(GcnState { out, agg, z })
    }

    /// The backward from `dy [N, out]`; `gt` is the transposed (self-looped) graph.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<Be: Backend>(&self, be: &Be, gt: &DeviceGraph<Be::Buf>, edge_w: &Be::Buf, w: &Be::Buf, st: &GcnState<Be::Buf>, dy: &Be::Buf) -> Result<GcnGrads<Be::Buf>> {
        let n = gt.num_nodes;
        check(be, "gcn", "dy", dy, &[n, self.out_dim], be.dtype_of(&st.out))?;
        let gg = gemm_backward(be, &self.gemm(n), &st.agg, w, st.z.as_ref(), dy)?;
        let dx = spmm(be, gt, &gg.da, Some(edge_w), self.in_dim)?;
        Ok(GcnGrads { dx, w: gg.db, b: gg.dbias.ok_or_else(|| Error::Invalid("gcn: the bias gradient is missing".into()))? })
    }
}

/// GraphSAGE with the mean aggregator (PyTorch Geometric's `SAGEConv` with its root weight):
/// `h'_i = act(W_n·mean_{j→i} h_j + W_s·h_i + b)`; a node without in-edges aggregates 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SageLayer {
    /// Input width.
    pub in_dim: usize,
    /// Output width.
    pub out_dim: usize,
    /// The activation of the GEMM's epilogue.
    pub act: Activation,
}

/// What the GraphSAGE forward keeps: the output, the mean aggregation and the pre-activation.
pub struct SageState<B> {
    /// `[N, out_dim]`.
    pub out: B,
    agg: B,
    pre: Option<B>,
}

/// Gradients of a GraphSAGE layer.
pub struct SageGrads<B> {
    /// `[N, in_dim]`.
    pub dx: B,
    /// dW_n `[out_dim, in_dim]`.
    pub w_neigh: B,
    /// dW_s `[out_dim, in_dim]`.
    pub w_self: B,
    /// db `[out_dim]`.
    pub b: B,
}

impl SageLayer {
    /// The mean's f32 edge weights `1/deg(dst e)`, once per graph.
    pub fn mean_weights(g: &Graph) -> Vec<f32> {
        g.dst_coo.iter().map(|&d| 1.0 / (g.row_ptr[d as usize + 1] - g.row_ptr[d as usize]) as f32).collect()
    }

    /// `x [N, in]`, `w_neigh`, `w_self [out, in]`, `b [out]`, `mean_w` from [`SageLayer::mean_weights`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward<Be: Backend>(&self, be: &Be, g: &DeviceGraph<Be::Buf>, mean_w: &Be::Buf, x: &Be::Buf, w_neigh: &Be::Buf, w_self: &Be::Buf, b: &Be::Buf) -> Result<SageState<Be::Buf>> {
        let (n, dtype, (o, i)) = (g.num_nodes, be.dtype_of(x), (self.out_dim, self.in_dim));
        check(be, "sage", "x", x, &[n, i], dtype)?;
        check(be, "sage", "w_neigh", w_neigh, &[o, i], dtype)?;
        check(be, "sage", "w_self", w_self, &[o, i], dtype)?;
        check(be, "sage", "b", b, &[o], dtype)?;
        let agg = spmm(be, g, x, Some(mean_w), i)?;
        // W_s·h as the residual of the aggregation's GEMM; the activation after both.
        let mut root = be.alloc_uninit(dtype, n * o)?;
        be.gemm(&Gemm::new(n, o, i), x, w_self, None, None, &mut root, None)?;
        let mut pre = be.alloc_uninit(dtype, n * o)?;
        be.gemm(&Gemm::new(n, o, i).bias(true).residual(None), &agg, w_neigh, Some(b), Some(&root), &mut pre, None)?;
        Ok(match self.act {
            Activation::Identity => SageState { out: pre, agg, pre: None },
            act => SageState { out: scale_add(be, &pre, None, None, n, o, act)?, agg, pre: Some(pre) },
        })
    }

    /// The backward from `dy [N, out]`; `gt` is the transposed graph.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<Be: Backend>(&self, be: &Be, gt: &DeviceGraph<Be::Buf>, mean_w: &Be::Buf, x: &Be::Buf, w_neigh: &Be::Buf, w_self: &Be::Buf, st: &SageState<Be::Buf>, dy: &Be::Buf) -> Result<SageGrads<Be::Buf>> {
        let (n, (o, i)) = (gt.num_nodes, (self.out_dim, self.in_dim));
        check(be, "sage", "dy", dy, &[n, o], be.dtype_of(x))?;
        let dpre_owned = through_act(be, self.act, dy, st.pre.as_ref(), n, o)?;
        let dpre = dpre_owned.as_ref().unwrap_or(dy);
        let gn = gemm_backward(be, &Gemm::new(n, o, i).bias(true), &st.agg, w_neigh, None, dpre)?;
        let d_from_neigh = spmm(be, gt, &gn.da, Some(mean_w), i)?;
        let gs = gemm_backward_plus(be, &Gemm::new(n, o, i), x, w_self, None, dpre, Some(&d_from_neigh))?;
        Ok(SageGrads { dx: gs.da, w_neigh: gn.db, w_self: gs.db, b: gn.dbias.ok_or_else(|| Error::Invalid("sage: the bias gradient is missing".into()))? })
    }
}

/// Multi-head GAT (Veličković et al.; PyTorch Geometric's `GATConv` with heads concatenated):
/// `z = W·h` split into H heads of F, `e_ij = LeakyReLU_0.2(⟨a_src, z_j⟩ + ⟨a_dst, z_i⟩)` per head,
/// `α = softmax over the edges j → i`, `h'_i = act(Σ_j α_ij·z_j + b)`. Self-loops are the
/// caller's choice (build them into the graph).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatLayer {
    /// Input width.
    pub in_dim: usize,
    /// H, the attention heads.
    pub heads: usize,
    /// F, each head's width (the output is `[N, H·F]`).
    pub head_dim: usize,
    /// Applied after the aggregation and bias.
    pub act: Activation,
}

/// GAT weights: `w [H·F, in]`, `a_src`, `a_dst` `[H·F]` (head-major), `b [H·F]`.
pub struct GatParams<B> {
    /// `[H·F, in_dim]`.
    pub w: B,
    /// `[H·F]`, head-major.
    pub a_src: B,
    /// `[H·F]`, head-major.
    pub a_dst: B,
    /// `[H·F]`.
    pub b: B,
}

/// What the GAT forward keeps for the backward.
pub struct GatState<B> {
    /// `[N, H·F]`.
    pub out: B,
    /// The attention coefficients, f32 `[E, H]` in COO order.
    pub alpha: B,
    z: B,
    logits_pre: B,
    pre: Option<B>,
}

/// Gradients of a GAT layer.
pub struct GatGrads<B> {
    /// `[N, in_dim]`.
    pub dx: B,
    /// The parameters' gradients, in their shapes.
    pub params: GatParams<B>,
}

impl GatLayer {
    /// H·F (usize::MAX past 2^64, which the forward's checks refuse).
    fn width(&self) -> usize {
        self.heads.saturating_mul(self.head_dim)
    }

    /// Per-node, per-head `⟨z_i,h, a_h⟩` as a GEMM batched over heads (K = F, one output column
    /// per head), written with row stride `ldc` at column `col`.
    fn head_dot(&self, rows: usize, ldc: usize, col: usize) -> Gemm {
        let f = self.head_dim;
        Gemm::new(rows, 1, f).batch(self.heads).lda(self.width()).strides(f, f, 1).ldc(ldc).offsets(GemmOffsets { c: col, ..Default::default() })
    }

    /// The layer on `x [N, in_dim]` over the graph `g` (CSR by destination).
    pub fn forward<Be: Backend>(&self, be: &Be, g: &DeviceGraph<Be::Buf>, x: &Be::Buf, p: &GatParams<Be::Buf>) -> Result<GatState<Be::Buf>> {
        let (n, e, h, hf, dtype) = (g.num_nodes, g.num_edges, self.heads, self.width(), be.dtype_of(x));
        if hf == 0 || self.in_dim == 0 {
            return Err(Error::Invalid(format!("gat: dimensions must be positive: {self:?}")));
        }
        check(be, "gat", "x", x, &[n, self.in_dim], dtype)?;
        check(be, "gat", "w", &p.w, &[hf, self.in_dim], dtype)?;
        for (name, t) in [("a_src", &p.a_src), ("a_dst", &p.a_dst), ("b", &p.b)] {
            check(be, "gat", name, t, &[hf], dtype)?;
        }
        let mut z = be.alloc_uninit(dtype, n * hf)?;
        be.gemm(&Gemm::new(n, hf, self.in_dim), x, &p.w, None, None, &mut z, None)?;
        // [s_src | s_dst] per node, then e = LeakyReLU(s_src[src] + s_dst[dst]) per edge.
        let mut sd = be.alloc_uninit(dtype, n * 2 * h)?;
        be.gemm(&self.head_dot(n, 2 * h, 0), &z, &p.a_src, None, None, &mut sd, None)?;
        be.gemm(&self.head_dot(n, 2 * h, h), &z, &p.a_dst, None, None, &mut sd, None)?;
        let logits_pre = edge_combine(be, g, &be.alloc(dtype, e * h)?, &sd, h, Activation::Identity)?;
        let logits = scale_add(be, &logits_pre, None, None, e, h, Activation::LeakyRelu)?;
        let alpha = segment_softmax(be, g, &to_f32(be, &logits, e * h)?, h)?;
        let agg = spmm_heads(be, g, &z, Some(&alpha), h, hf)?;
        Ok(match self.act {
            Activation::Identity => GatState { out: bias_act(be, &agg, &p.b, n, hf, Activation::Identity)?, alpha, z, logits_pre, pre: None },
            act => {
                let pre = bias_act(be, &agg, &p.b, n, hf, Activation::Identity)?;
                GatState { out: scale_add(be, &pre, None, None, n, hf, act)?, alpha, z, logits_pre, pre: Some(pre) }
            }
        })
    }

    /// The backward from `dy [N, H·F]`; `gt` is the transposed graph.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<Be: Backend>(&self, be: &Be, g: &DeviceGraph<Be::Buf>, gt: &DeviceGraph<Be::Buf>, x: &Be::Buf, p: &GatParams<Be::Buf>, st: &GatState<Be::Buf>, dy: &Be::Buf) -> Result<GatGrads<Be::Buf>> {
        let (n, e, h, hf, dtype) = (g.num_nodes, g.num_edges, self.heads, self.width(), be.dtype_of(x));
        check(be, "gat", "dy", dy, &[n, hf], dtype)?;
        let dpre_owned = through_act(be, self.act, dy, st.pre.as_ref(), n, hf)?;
        let dpre = dpre_owned.as_ref().unwrap_or(dy);
        let mut db = be.alloc_uninit(dtype, hf)?;
        be.col_sum(n, hf, dpre, &mut db)?;
        // Through the aggregation: dz over the transposed graph, dα = ⟨dY_i, z_j⟩ per head.
        let (dz_agg, d_alpha) = spmm_backward(be, g, gt, &st.z, Some(&st.alpha), dpre, h, hf)?;
        let d_alpha = d_alpha.ok_or_else(|| Error::Invalid("gat: the attention gradient is missing".into()))?;
        let ds = from_f32(be, &segment_softmax_backward(be, g, &st.alpha, &d_alpha, h)?, dtype, e * h)?;
        let mut d_logits = be.alloc_uninit(dtype, e * h)?;
        be.act_grad(&ActGrad { rows: e, cols: h, act: Activation::LeakyRelu, act_cols: h }, &ds, &st.logits_pre, &mut d_logits)?;
        // s_src gathers at the source, s_dst at the destination: sums over gt and g.
        let d_src = segment_reduce(be, gt, &d_logits, h, Reduce::Sum)?.0;
        let d_dst = segment_reduce(be, g, &d_logits, h, Reduce::Sum)?.0;
        let gs = gemm_backward(be, &self.head_dot(n, h, 0), &st.z, &p.a_src, None, &d_src)?;
        let gd = gemm_backward(be, &self.head_dot(n, h, 0), &st.z, &p.a_dst, None, &d_dst)?;
        let dz = scale_add(be, &dz_agg, None, Some(&gs.da), n, hf, Activation::Identity)?;
        let dz = scale_add(be, &dz, None, Some(&gd.da), n, hf, Activation::Identity)?;
        let gw = gemm_backward(be, &Gemm::new(n, hf, self.in_dim), x, &p.w, None, &dz)?;
        Ok(GatGrads { dx: gw.da, params: GatParams { w: gw.db, a_src: gs.db, a_dst: gd.db, b: db } })
    }
}
