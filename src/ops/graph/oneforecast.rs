//! The OneForecast gated processor layer (SPEC §6): an edge block (the edge MLP with the concat
//! trick, LayerNorm, and a scalar gate per edge) and a node block (per-head softmax attention over
//! incoming edges, an MLP on `[a_j; h_j]`, LayerNorm, residual), forward and backward, composed
//! from the graph primitives and fused GEMMs — no `[E, 3D]` or `[N, 2D]` concatenation is built
//! and no float atomics are used. Every linear map carries a bias (as `nn.Linear` does).
//!
//! ```text
//! u    = SiLU(W_e·e + W_s·h_src + W_d·h_dst + b)          (EdgeMlp, D → D)
//! m    = LN_e(W_b·u + b_b)
//! G    = W_g2·SiLU(W_g1·[e; h_src; h_dst] + b_g1) + b_g2   (EdgeMlp, D → Gh; then Gh → 3H)
//! g    = mean over the 3H logits of σ(G)                   (one scalar per edge)
//! e'   = g·m + e
//! s    = W_a2·SiLU(W_a1·e' + b_a1) + b_a2                   ([E, H])
//! α    = segment_softmax over the edges into each node, per head
//! a_j  = Σ_{e→j} α_e^h·e'_e[h-th slice of D/H]               (heads concatenated: [N, D])
//! h'   = LN_n(W_n2·SiLU(W_n1a·a + W_n1h·h + b_n1) + b_n2) + h
//! ```
//! `W_n1 = [W_n1a | W_n1h]` is kept as its two `[D, D]` halves and `W_g1 = [W_g1_e | W_g1_s |
//! W_g1_d]` as the edge MLP's three blocks.

use super::{
    from_f32, gate_mean, gate_mean_backward, layer_norm, layer_norm_backward, row_dot, scale_add, segment_softmax, segment_softmax_backward,
    segment_sum_weighted, segment_sum_weighted_backward, to_f32, DeviceGraph, EdgeMlp, EdgeMlpForm, EdgeMlpWeights,
};
use crate::ops::gemm::{gemm_backward, gemm_backward_plus, ActGrad, Gemm};
use crate::{Activation, Backend, DType, Error, HostTensor, Result};

const OP: &str = "oneforecast_layer";

/// The sizes of one gated processor layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OneForecastLayer {
    /// Hidden width D of edges and nodes (512 in OneForecast).
    pub dim: usize,
    /// Attention heads H (4); D must be a multiple of H.
    pub heads: usize,
    /// Width of the gate MLP's hidden layer (`W_g1: 3D → 64`).
    pub gate_hidden: usize,
    /// Width of the attention MLP's hidden layer (`W_a1: D → 64`).
    pub attn_hidden: usize,
    /// LayerNorm ε.
    pub eps: f32,
}

impl Default for OneForecastLayer {
    fn default() -> Self {
        OneForecastLayer { dim: 512, heads: 4, gate_hidden: 64, attn_hidden: 64, eps: 1e-5 }
    }
}

/// The names of the layer's parameters, in the order of [`OneForecastParams::tensors`] (the
/// names `ffkern run oneforecast_layer` reads).
pub const PARAM_NAMES: [&str; 23] = [
    "w_e", "w_s", "w_d", "b", "w_b", "b_b", "ln_e", "w_g1_e", "w_g1_s", "w_g1_d", "b_g1", "w_g2", "b_g2", "w_a1", "b_a1", "w_a2", "b_a2", "w_n1_a", "w_n1_h",
    "b_n1", "w_n2", "b_n2", "ln_n",
];

/// The layer's parameters (or their gradients, which have the same shapes). Weights are
/// `[out, in]` in the features' dtype; the LayerNorm affines `ln_e`, `ln_n` are f32 `[γ | β]`.
pub struct OneForecastParams<B> {
    /// The edge MLP `W_e, W_s, W_d [D, D]`, `b [D]`.
    pub edge: EdgeMlpWeights<B>,
    /// `W_b [D, D]`.
    pub w_b: B,
    /// `b_b [D]`.
    pub b_b: B,
    /// The edge LayerNorm's `[γ | β]`, f32 `[2D]`.
    pub ln_e: B,
    /// The gate MLP's first layer `W_g1_e, W_g1_s, W_g1_d [Gh, D]`, `b_g1 [Gh]`.
    pub gate: EdgeMlpWeights<B>,
    /// `[3H, Gh]`, `[3H]`.
    pub w_g2: B,
    /// `b_g2 [3H]`.
    pub b_g2: B,
    /// `[Ah, D]`, `[Ah]`.
    pub w_a1: B,
    /// `b_a1 [Ah]`.
    pub b_a1: B,
    /// `[H, Ah]`, `[H]`.
    pub w_a2: B,
    /// `b_a2 [H]`.
    pub b_a2: B,
    /// `W_n1a [D, D]`, applied to the aggregation a.
    pub w_n1_a: B,
    /// `W_n1h [D, D]`, applied to h.
    pub w_n1_h: B,
    /// `b_n1 [D]`.
    pub b_n1: B,
    /// `W_n2 [D, D]`.
    pub w_n2: B,
    /// `b_n2 [D]`.
    pub b_n2: B,
    /// The node LayerNorm's `[γ | β]`, f32 `[2D]`.
    pub ln_n: B,
}

impl<B> OneForecastParams<B> {
    /// The 23 tensors in [`PARAM_NAMES`] order.
    pub fn tensors(&self) -> Vec<&B> {
        let (e, g) = (&self.edge, &self.gate);
        vec![
            &e.w_e,
            &e.w_s,
            &e.w_d,
            &e.b,
            &self.w_b,
            &self.b_b,
            &self.ln_e,
            &g.w_e,
            &g.w_s,
            &g.w_d,
            &g.b,
            &self.w_g2,
            &self.b_g2,
            &self.w_a1,
            &self.b_a1,
            &self.w_a2,
            &self.b_a2,
            &self.w_n1_a,
            &self.w_n1_h,
            &self.b_n1,
            &self.w_n2,
            &self.b_n2,
            &self.ln_n,
        ]
    }

    /// The parameters from 23 tensors in [`PARAM_NAMES`] order.
    pub fn from_tensors(t: Vec<B>) -> Result<Self> {
        let n = t.len();
        let mut it = t.into_iter();
        let mut next = || it.next().ok_or_else(|| Error::shape(OP, format!("{n} parameter tensors given, 23 needed")));
        let p = OneForecastParams {
            edge: EdgeMlpWeights { w_e: next()?, w_s: next()?, w_d: next()?, b: next()? },
            w_b: next()?,
            b_b: next()?,
            ln_e: next()?,
            gate: EdgeMlpWeights { w_e: next()?, w_s: next()?, w_d: next()?, b: next()? },
            w_g2: next()?,
            b_g2: next()?,
            w_a1: next()?,
            b_a1: next()?,
            w_a2: next()?,
            b_a2: next()?,
            w_n1_a: next()?,
            w_n1_h: next()?,
            b_n1: next()?,
            w_n2: next()?,
            b_n2: next()?,
            ln_n: next()?,
        };
        if n != 23 {
            return Err(Error::shape(OP, format!("{n} parameter tensors given, 23 needed")));
        }
        Ok(p)
    }
}

/// What the forward keeps for the backward, with the outputs `e_out` (`e'`) and `h_out` (`h'`).
pub struct OneForecastState<B> {
    /// e' `[E, D]`.
    pub e_out: B,
    /// h' `[N, D]`.
    pub h_out: B,
    u: B,
    v: B,
    stats_e: B,
    m: B,
    q: B,
    logits: B,
    gate: B,
    z_attn: B,
    r: B,
    alpha: B,
    agg: B,
    pre1: B,
    t1: B,
    y2: B,
    stats_n: B,
}

/// Gradients of the layer's inputs and parameters.
pub struct OneForecastGrads<B> {
    /// `[E, D]`.
    pub d_edge: B,
    /// `[N, D]`.
    pub d_node: B,
    /// The parameters' gradients, in their shapes.
    pub params: OneForecastParams<B>,
}

/// `rows × inp → rows × out` with a bias.
fn linear(rows: usize, out: usize, inp: usize) -> Gemm {
    Gemm::new(rows, out, inp).bias(true)
}

impl OneForecastLayer {
    /// Shapes of the parameters in [`PARAM_NAMES`] order, with whether each is f32 (the
    /// LayerNorm affines) rather than the features' dtype.
    pub fn param_shapes(&self) -> Vec<(&'static str, Vec<usize>, bool)> {
        let (d, h, gh, ah) = (self.dim, self.heads, self.gate_hidden, self.attn_hidden);
        let shapes: [(Vec<usize>, bool); 23] = [
            (vec![d, d], false),
            (vec![d, d], false),
            (vec![d, d], false),
            (vec![d], false),
            (vec![d, d], false),
            (vec![d], false),
            (vec![d.saturating_mul(2)], true),
            (vec![gh, d], false),
            (vec![gh, d], false),
            (vec![gh, d], false),
            (vec![gh], false),
            (vec![h.saturating_mul(3), gh], false),
            (vec![h.saturating_mul(3)], false),
            (vec![ah, d], false),
            (vec![ah], false),
            (vec![h, ah], false),
            (vec![h], false),
            (vec![d, d], false),
            (vec![d, d], false),
            (vec![d], false),
            (vec![d, d], false),
            (vec![d], false),
            (vec![d.saturating_mul(2)], true),
        ];
        PARAM_NAMES.iter().zip(shapes).map(|(n, (s, f))| (*n, s, f)).collect()
    }

    /// Seeded host parameters in [`PARAM_NAMES`] order for checks and benchmarks: weights
    /// uniform in ±1.5/√fan_in (rounded to `dtype`), LayerNorm γ in 1 ± 0.3 and β in ±0.3 (f32).
    pub fn seeded_params(&self, dtype: DType, seed: u64) -> Vec<HostTensor> {
        self.param_shapes()
            .into_iter()
            .enumerate()
            .map(|(k, (name, shape, is_f32))| {
                let r = HostTensor::random(DType::F32, shape.clone(), seed + k as u64);
                let data: Vec<f32> = if name.starts_with("ln_") {
                    let c = r.data.len() / 2;
                    r.data.iter().enumerate().map(|(i, v)| if i < c { 1.0 + 0.3 * v } else { 0.3 * v }).collect()
                } else {
                    let fan_in = if shape.len() == 2 { shape[1] } else { 4 };
                    r.data.iter().map(|v| v * 1.5 / (fan_in as f32).sqrt()).collect()
                };
                let dt = if is_f32 { DType::F32 } else { dtype };
                HostTensor { dtype: dt, shape, data: data.iter().map(|&v| dt.round(v)).collect() }
            })
            .collect()
    }

    fn edge_mlp(&self) -> EdgeMlp {
        EdgeMlp { edge_dim: self.dim, node_dim: self.dim, out_dim: self.dim, act: Activation::Silu }
    }
    fn gate_mlp(&self) -> EdgeMlp {
        EdgeMlp { edge_dim: self.dim, node_dim: self.dim, out_dim: self.gate_hidden, act: Activation::Silu }
    }

    fn validate<Be: Backend>(&self, be: &Be, g: &DeviceGraph<Be::Buf>, e_feat: &Be::Buf, h: &Be::Buf, p: &OneForecastParams<Be::Buf>) -> Result<DType> {
        let (d, heads) = (self.dim, self.heads);
        if d == 0 || heads == 0 || d % heads != 0 || self.gate_hidden == 0 || self.attn_hidden == 0 || self.eps.is_nan() || self.eps <= 0.0 {
            return Err(Error::Invalid(format!("{OP}: needs D a positive multiple of heads, positive hidden sizes and eps > 0 ({self:?})")));
        }
        let dtype = be.dtype_of(e_feat);
        let need = |name: &str, len: usize, have: &Be::Buf, want: DType| -> Result<()> {
            if be.len_of(have) < len {
                return Err(Error::shape(OP, format!("{name} holds {} elements, needs {len}", be.len_of(have))));
            }
            if be.dtype_of(have) != want {
                return Err(Error::dtype(OP, format!("{name} is {}, expected {want}", be.dtype_of(have))));
            }
            Ok(())
        };
        need("edge features", crate::error::elems(OP, &[g.num_edges, d])?, e_feat, dtype)?;
        need("node features", crate::error::elems(OP, &[g.num_nodes, d])?, h, dtype)?;
        for ((name, shape, f32_param), t) in self.param_shapes().into_iter().zip(p.tensors()) {
            need(name, crate::error::elems(OP, &shape)?, t, if f32_param { DType::F32 } else { dtype })?;
        }
        Ok(dtype)
    }

    /// The forward: `e_feat [E, D]` (COO edge order), `h [N, D]` → `e'`, `h'` in the returned state.
    pub fn forward<Be: Backend>(
        &self,
        be: &Be,
        g: &DeviceGraph<Be::Buf>,
        e_feat: &Be::Buf,
        h: &Be::Buf,
        p: &OneForecastParams<Be::Buf>,
    ) -> Result<OneForecastState<Be::Buf>> {
        self.forward_impl(EdgeMlpForm::ConcatTrick, be, g, None, e_feat, h, p)
    }

    /// [`Self::forward`] with both edge MLPs in the given form (see [`EdgeMlpForm`]; `gt` is the
    /// transposed graph): the unfused composition the fused layer is measured against.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_as<Be: Backend>(
        &self,
        form: EdgeMlpForm,
        be: &Be,
        g: &DeviceGraph<Be::Buf>,
        gt: &DeviceGraph<Be::Buf>,
        e_feat: &Be::Buf,
        h: &Be::Buf,
        p: &OneForecastParams<Be::Buf>,
    ) -> Result<OneForecastState<Be::Buf>> {
        self.forward_impl(form, be, g, Some(gt), e_feat, h, p)
    }

    /// An edge MLP's messages in `form` (the unfused one needs `gt`).
    #[allow(clippy::too_many_arguments)]
    fn edge_messages<Be: Backend>(mlp: EdgeMlp, form: EdgeMlpForm, be: &Be, g: &DeviceGraph<Be::Buf>, gt: Option<&DeviceGraph<Be::Buf>>, e_feat: &Be::Buf, h: &Be::Buf, w: &EdgeMlpWeights<Be::Buf>) -> Result<Be::Buf> {
        match gt {
            Some(gt) => mlp.forward_as(form, be, g, gt, e_feat, h, w),
            None => mlp.forward(be, g, e_feat, h, w),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_impl<Be: Backend>(
        &self,
        form: EdgeMlpForm,
        be: &Be,
        g: &DeviceGraph<Be::Buf>,
        gt: Option<&DeviceGraph<Be::Buf>>,
        e_feat: &Be::Buf,
        h: &Be::Buf,
        p: &OneForecastParams<Be::Buf>,
    ) -> Result<OneForecastState<Be::Buf>> {
        let dtype = self.validate(be, g, e_feat, h, p)?;
        let (e, n, d, heads) = (g.num_edges, g.num_nodes, self.dim, self.heads);
        let (gh, ah) = (self.gate_hidden, self.attn_hidden);
        // Edge block: message, gate, gated residual.
        let u = Self::edge_messages(self.edge_mlp(), form, be, g, gt, e_feat, h, &p.edge)?;
        let mut v = be.alloc_uninit(dtype, e * d)?;
        be.gemm(&linear(e, d, d), &u, &p.w_b, Some(&p.b_b), None, &mut v, None)?;
        let (m, stats_e) = layer_norm(be, &v, &p.ln_e, e, d, self.eps)?;
        let q = Self::edge_messages(self.gate_mlp(), form, be, g, gt, e_feat, h, &p.gate)?;
        let mut logits = be.alloc_uninit(dtype, e * 3 * heads)?;
        be.gemm(&linear(e, 3 * heads, gh), &q, &p.w_g2, Some(&p.b_g2), None, &mut logits, None)?;
        let gate = gate_mean(be, &logits, e, 3 * heads)?;
        let e_out = scale_add(be, &m, Some(&gate), Some(e_feat), e, d, Activation::Identity)?;
        // Node block: attention scores per edge and head, softmax over each node's edges.
        let (mut r, mut z_attn) = (be.alloc_uninit(dtype, e * ah)?, be.alloc_uninit(dtype, e * ah)?);
        be.gemm(&linear(e, ah, d).act(Activation::Silu), &e_out, &p.w_a1, Some(&p.b_a1), None, &mut r, Some(&mut z_attn))?;
        let mut s = be.alloc_uninit(dtype, e * heads)?;
        be.gemm(&linear(e, heads, ah), &r, &p.w_a2, Some(&p.b_a2), None, &mut s, None)?;
        let alpha = segment_softmax(be, g, &to_f32(be, &s, e * heads)?, heads)?;
        let agg = segment_sum_weighted(be, g, &e_out, &alpha, heads, d)?;
        // W_n1·[a; h] as W_n1h·h, then W_n1a·a + b_n1 with it as the GEMM's residual.
        let mut ph = be.alloc_uninit(dtype, n * d)?;
        be.gemm(&Gemm::new(n, d, d), h, &p.w_n1_h, None, None, &mut ph, None)?;
        let mut pre1 = be.alloc_uninit(dtype, n * d)?;
        be.gemm(&linear(n, d, d).residual(None), &agg, &p.w_n1_a, Some(&p.b_n1), Some(&ph), &mut pre1, None)?;
        let t1 = scale_add(be, &pre1, None, None, n, d, Activation::Silu)?;
        let mut y2 = be.alloc_uninit(dtype, n * d)?;
        be.gemm(&linear(n, d, d), &t1, &p.w_n2, Some(&p.b_n2), None, &mut y2, None)?;
        let (ln, stats_n) = layer_norm(be, &y2, &p.ln_n, n, d, self.eps)?;
        let h_out = scale_add(be, &ln, None, Some(h), n, d, Activation::Identity)?;
        Ok(OneForecastState { e_out, h_out, u, v, stats_e, m, q, logits, gate, z_attn, r, alpha, agg, pre1, t1, y2, stats_n })
    }

    /// The backward from `d_e_out [E, D]` and `d_h_out [N, D]`; `gt` is the transposed graph.
    /// Per-node sums over edges go through the CSR of `g` or `gt` (no atomics), so the result is
    /// deterministic.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<Be: Backend>(
        &self,
        be: &Be,
        g: &DeviceGraph<Be::Buf>,
        gt: &DeviceGraph<Be::Buf>,
        e_feat: &Be::Buf,
        h: &Be::Buf,
        p: &OneForecastParams<Be::Buf>,
        st: &OneForecastState<Be::Buf>,
        d_e_out: &Be::Buf,
        d_h_out: &Be::Buf,
    ) -> Result<OneForecastGrads<Be::Buf>> {
        self.backward_as(EdgeMlpForm::ConcatTrick, be, g, gt, e_feat, h, p, st, d_e_out, d_h_out)
    }

    /// [`Self::backward`] with both edge MLPs in the given form (see [`Self::forward_as`]).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_as<Be: Backend>(
        &self,
        form: EdgeMlpForm,
        be: &Be,
        g: &DeviceGraph<Be::Buf>,
        gt: &DeviceGraph<Be::Buf>,
        e_feat: &Be::Buf,
        h: &Be::Buf,
        p: &OneForecastParams<Be::Buf>,
        st: &OneForecastState<Be::Buf>,
        d_e_out: &Be::Buf,
        d_h_out: &Be::Buf,
    ) -> Result<OneForecastGrads<Be::Buf>> {
        let dtype = self.validate(be, g, e_feat, h, p)?;
        let (e, n, d, heads) = (g.num_edges, g.num_nodes, self.dim, self.heads);
        let (gh, ah) = (self.gate_hidden, self.attn_hidden);
        if gt.num_edges != e || gt.num_nodes != n {
            return Err(Error::shape(OP, "gt is not the transposed graph of g"));
        }
        for (name, t, rows) in [("d_e_out", d_e_out, e), ("d_h_out", d_h_out, n)] {
            if be.len_of(t) < rows * d || be.dtype_of(t) != dtype {
                return Err(Error::shape(OP, format!("{name} must be {dtype} [{rows}, {d}]")));
            }
        }
        let missing = || Error::Invalid(format!("{OP}: a bias gradient is missing"));
        // Node block, from h' = LN(y2) + h.
        let (dy2, ln_n) = layer_norm_backward(be, &st.y2, d_h_out, &p.ln_n, &st.stats_n, n, d, self.eps)?;
        let g2 = gemm_backward(be, &linear(n, d, d), &st.t1, &p.w_n2, None, &dy2)?;
        let mut dpre1 = be.alloc_uninit(dtype, n * d)?;
        be.act_grad(&ActGrad { rows: n, cols: d, act: Activation::Silu, act_cols: d }, &g2.da, &st.pre1, &mut dpre1)?;
        let g1a = gemm_backward(be, &linear(n, d, d), &st.agg, &p.w_n1_a, None, &dpre1)?;
        let g1h = gemm_backward_plus(be, &Gemm::new(n, d, d), h, &p.w_n1_h, None, &dpre1, Some(d_h_out))?;
        let (de_agg, d_alpha) = segment_sum_weighted_backward(be, gt, &st.e_out, &st.alpha, &g1a.da, heads, d)?;
        let ds = from_f32(be, &segment_softmax_backward(be, g, &st.alpha, &d_alpha, heads)?, dtype, e * heads)?;
        let ga2 = gemm_backward(be, &linear(e, heads, ah), &st.r, &p.w_a2, None, &ds)?;
        let ga1 = gemm_backward_plus(be, &linear(e, ah, d).act(Activation::Silu), &st.e_out, &p.w_a1, Some(&st.z_attn), &ga2.da, Some(&de_agg))?;
        let de_new = scale_add(be, &ga1.da, None, Some(d_e_out), e, d, Activation::Identity)?;
        // Edge block, from e' = g·m + e.
        let dm = scale_add(be, &de_new, Some(&st.gate), None, e, d, Activation::Identity)?;
        let d_gate = row_dot(be, &de_new, &st.m, e, d, 1)?;
        let d_logits = gate_mean_backward(be, &st.logits, &d_gate, e, 3 * heads)?;
        let gg2 = gemm_backward(be, &linear(e, 3 * heads, gh), &st.q, &p.w_g2, None, &d_logits)?;
        let gate = self.gate_mlp().backward_as(form, be, g, gt, e_feat, h, &p.gate, &gg2.da)?;
        let (dv, ln_e) = layer_norm_backward(be, &st.v, &dm, &p.ln_e, &st.stats_e, e, d, self.eps)?;
        let gb = gemm_backward(be, &linear(e, d, d), &st.u, &p.w_b, None, &dv)?;
        let edge = self.edge_mlp().backward_as(form, be, g, gt, e_feat, h, &p.edge, &gb.da)?;
        let sum3 = |a: &Be::Buf, b: &Be::Buf, c: &Be::Buf, rows: usize| -> Result<Be::Buf> {
            let ab = scale_add(be, a, None, Some(b), rows, d, Activation::Identity)?;
            scale_add(be, &ab, None, Some(c), rows, d, Activation::Identity)
        };
        let d_edge = sum3(&de_new, &gate.d_edge, &edge.d_edge, e)?;
        let d_node = sum3(&g1h.da, &gate.d_node, &edge.d_node, n)?;
        let params = OneForecastParams {
            edge: EdgeMlpWeights { w_e: edge.w_e, w_s: edge.w_s, w_d: edge.w_d, b: edge.b },
            w_b: gb.db,
            b_b: gb.dbias.ok_or_else(missing)?,
            ln_e,
            gate: EdgeMlpWeights { w_e: gate.w_e, w_s: gate.w_s, w_d: gate.w_d, b: gate.b },
            w_g2: gg2.db,
            b_g2: gg2.dbias.ok_or_else(missing)?,
            w_a1: ga1.db,
            b_a1: ga1.dbias.ok_or_else(missing)?,
            w_a2: ga2.db,
            b_a2: ga2.dbias.ok_or_else(missing)?,
            w_n1_a: g1a.db,
            w_n1_h: g1h.db,
            b_n1: g1a.dbias.ok_or_else(missing)?,
            w_n2: g2.db,
            b_n2: g2.dbias.ok_or_else(missing)?,
            ln_n,
        };
        Ok(OneForecastGrads { d_edge, d_node, params })
    }
}
