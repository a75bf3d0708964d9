//! Random descriptors through every op family on every backend: seeded sizes drawn from a palette
//! that mixes small legal values with ones whose products overflow 32 and 64 bits, random layouts,
//! strides and epilogues, and buffers either of the length the descriptor needs or of an
//! unrelated small length. Each call must return a typed error or run; a panic or a driver error
//! (a check missing before a launch) fails the test and names the case. On a device backend every
//! case also runs on the CPU reference, and the two must agree: the same outputs within the
//! dtype's budget (every element of each output buffer, so also the gaps a strided output leaves
//! alone), and the same inputs refused; and it runs twice, with the same bits. `FUZZ_TRACE=1`
//! prints every error case and each panic where it happens.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::devices_and_cpu;
use ffkern::ops::ffn::{BatchNorm, BatchNormDesc, BatchNormState, DenseFfn, FfnWeights, RepavitFfn, RepavitTrain};
use ffkern::ops::gemm::{ActGrad, GemmOffsets};
use ffkern::ops::graph::{self, DeviceGraph, Graph, Reduce};
use ffkern::ops::linattn::{FeatureMap, LinearAttention, Normalize};
use ffkern::ops::optim::{Clip, ClipOrder, NoisyOptimizer, TensorList};
use ffkern::ops::structured::{SelfGuided, Structured, StructuredFfn};
use ffkern::{with_backend, ALayout, Activation, BLayout, Backend, Compare, Cpu, DType, Error, Gemm, HostTensor, Result, SplitMix64};

/// The largest buffer a case allocates at the length it needs, unless it asks for more.
const SMALL: usize = 1 << 14;

/// Sizes: mostly small, sometimes past 2^31, 2^32 and 2^64 once multiplied.
const HUGE: [usize; 7] = [1 << 31, 1 << 32, (1 << 32) + 1, 1 << 40, 1 << 62, usize::MAX / 2, usize::MAX];

/// The case generator: seeded draws, and the largest buffer it allocates at a needed length.
struct Gen(SplitMix64, usize);

impl Gen {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    /// A size: 0–9 or 16–70 most of the time, one of [`HUGE`] one time in twelve.
    fn size(&mut self) -> usize {
        match self.below(12) {
            0 => HUGE[self.below(HUGE.len())],
            1..=3 => 16 + self.below(55),
            _ => self.below(10),
        }
    }
    fn opt_size(&mut self) -> Option<usize> {
        self.chance(4).then(|| self.size())
    }
    fn dtype(&mut self) -> DType {
        [DType::F32, DType::F16, DType::BF16][self.below(3)]
    }
    /// A buffer length: what the op needs (when that is at most `self.1` elements), else a
    /// small unrelated length.
    fn len(&mut self, need: Option<usize>) -> usize {
        match need {
            Some(n) if n <= self.1 && !self.chance(6) => n,
            _ => [0, 1, 7, 64, 300][self.below(5)],
        }
    }
}

/// BatchNorm parameters of `c` channels: seeded γ in 1 ± 0.3, β and running mean in ±0.3, running
/// variance in [0.5, 1.5] (never zeros).
fn batchnorm(c: usize, g: &mut Gen) -> BatchNorm {
    let mut v = |scale: f32, shift: f32| HostTensor::random(DType::F32, vec![c], g.0.next_u64()).data.iter().map(|x| shift + scale * x).collect::<Vec<f32>>();
    BatchNorm { gamma: v(0.3, 1.0), beta: v(0.3, 0.0), mean: v(0.3, 0.0), var: v(0.5, 1.0), eps: 1e-5 }
}

/// The checked product, None past 64 bits.
fn prod(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

fn buf<Be: Backend>(be: &Be, g: &mut Gen, dtype: DType, need: Option<usize>) -> Result<Be::Buf> {
    let n = g.len(need);
    be.upload(&HostTensor::random(dtype, vec![n], g.0.next_u64()))
}

/// Runs one case: its description and outcome, or the panic's message.
fn call(f: impl FnOnce() -> (String, Result<Vec<HostTensor>>)) -> std::result::Result<(String, Result<Vec<HostTensor>>), String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|e| e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default())
}

fn gemm_case<Be: Backend>(be: &Be, g: &mut Gen) -> (String, Result<Vec<HostTensor>>) {
    let mut d = Gemm::new(g.size(), g.size(), g.size()).batch(if g.chance(3) { g.size() } else { 1 });
    if g.chance(2) {
        d = d.a_layout(ALayout::KM);
    }
    if g.chance(2) {
        d = d.b_layout(BLayout::KN);
    }
    // Leading dimensions: the compact one plus a little (legal) or any size.
    let (a_row, b_row) = (if d.a_layout == ALayout::MK { d.k } else { d.m }, if d.b_layout == BLayout::NK { d.k } else { d.n });
    if let Some(ld) = g.opt_size() {
        d = d.lda(if g.chance(2) { a_row.saturating_add(ld % 4) } else { ld });
    }
    if let Some(ld) = g.opt_size() {
        d = d.ldb(if g.chance(2) { b_row.saturating_add(ld % 4) } else { ld });
    }
    if let Some(ld) = g.opt_size() {
        let ld = if g.chance(2) { d.n.saturating_add(ld % 4) } else { ld };
        d = d.ldc(ld);
    }
    if g.chance(4) {
        d = d.strides(g.size(), g.size(), g.size());
    }
    if g.chance(6) {
        d = d.inner_strides(g.size(), g.size(), g.size());
    }
    if g.chance(2) {
        d = d.bias(true);
    }
    if g.chance(3) {
        d = d.residual(g.opt_size());
    }
    if g.chance(4) {
        let cols = if g.chance(3) { g.size() } else { g.below(d.n.saturating_add(1)) };
        d = d.act(Activation::GeluErf).act_cols(cols);
    }
    // Operands at element offsets inside their buffers, one case in three.
    if g.chance(3) {
        d = d.offsets(GemmOffsets { a: g.below(5), b: g.below(5), bias: g.below(5), r: g.below(5), c: g.below(5) });
    }
    let what = format!("{d:?}");
    let dtype = g.dtype();
    let o = d.offsets;
    let r = (|| {
        let a = buf(be, g, dtype, Some(d.a().required_len(d.batch).saturating_add(o.a)))?;
        let b = buf(be, g, dtype, Some(d.b().required_len(d.batch).saturating_add(o.b)))?;
        let bias = buf(be, g, dtype, Some(d.bias_len().saturating_add(o.bias)))?;
        let r = buf(be, g, dtype, Some(d.r().required_len(d.batch).saturating_add(o.r)))?;
        let mut c = buf(be, g, dtype, Some(d.c().required_len(d.batch).saturating_add(o.c)))?;
        // With an activation the pre-activation Z is saved for the backward.
        let mut z = if d.act == Activation::Identity { None } else { Some(buf(be, g, dtype, Some(d.c().required_len(d.batch).saturating_add(o.c)))?) };
        be.gemm(&d, &a, &b, d.bias.then_some(&bias), d.residual.then_some(&r), &mut c, z.as_mut())?;
        let mut out = [Some(&c), z.as_ref()].into_iter().flatten().map(|t| be.download(t)).collect::<Result<Vec<_>>>()?;
        if g.chance(2) {
            // The backward (dC = C) where its layouts allow (else Unsupported, the forward kept).
            match ffkern::ops::gemm::gemm_backward(be, &d, &a, &b, z.as_ref(), &c) {
                Ok(gr) => out.extend([gr.da, gr.db].iter().chain(&gr.dbias).map(|t| be.download(t)).collect::<Result<Vec<_>>>()?),
                Err(Error::Unsupported(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    })();
    (what, r)
}

fn ffn_case<Be: Backend>(be: &Be, g: &mut Gen) -> (String, Result<Vec<HostTensor>>) {
    let f = DenseFfn { tokens: g.size(), dim: g.size(), hidden: g.size(), act: Activation::Relu, residual: g.chance(2) };
    let dtype = g.dtype();
    let r = (|| {
        let x = buf(be, g, dtype, prod(&[f.tokens, f.dim]))?;
        let w = FfnWeights {
            w1: buf(be, g, dtype, prod(&[f.hidden, f.dim]))?,
            b1: buf(be, g, dtype, Some(f.hidden))?,
            w2: buf(be, g, dtype, prod(&[f.hidden, f.dim]))?,
            b2: buf(be, g, dtype, Some(f.dim))?,
        };
        let (y, saved) = f.forward(be, &x, &w, g.chance(2))?;
        let gr = f.backward(be, &x, &w, saved.as_ref(), &y)?;
        [&y, &gr.dx, &gr.dw1, &gr.db1, &gr.dw2, &gr.db2].into_iter().map(|t| be.download(t)).collect()
    })();
    (format!("{f:?}"), r)
}

fn structured_case<Be: Backend>(be: &Be, g: &mut Gen) -> (String, Result<Vec<HostTensor>>) {
    // Widths that the block count divides, most of the time.
    let blocks = g.size();
    let width = |g: &mut Gen| if g.chance(3) { g.size() } else { blocks.saturating_mul(1 + g.below(4)) };
    let s = match g.below(3) {
        0 => Structured::LowRank { inp: g.size(), out: g.size(), rank: g.size() },
        1 => Structured::BlockDense { inp: width(g), out: g.size(), rank: width(g), blocks },
        _ => Structured::BlockShuffle { inp: width(g), out: width(g), blocks, inner: g.size() },
    };
    let tokens = g.size();
    let dtype = g.dtype();
    let r = (|| {
        let x = buf(be, g, dtype, prod(&[tokens, s.inp()]))?;
        let (n1, n2) = (s.factor_lens().0, s.factor_lens().1);
        let f1 = buf(be, g, dtype, Some(n1))?;
        let f2 = buf(be, g, dtype, Some(n2))?;
        match g.below(3) {
            0 => {
                let (y, h) = s.forward(be, tokens, &x, &f1, &f2, 1.0)?;
                let (dx, d1, d2) = s.backward(be, tokens, &x, &f1, &f2, &h, &y, 1.0, None)?;
                [&y, &dx, &d1, &d2].into_iter().map(|t| be.download(t)).collect()
            }
            1 => {
                // Self-guided mixing with the dense branch (α in (0, 1)).
                let sg = SelfGuided { tokens, layer: s };
                let wg = buf(be, g, dtype, prod(&[s.out(), s.inp()]))?;
                let alpha = 0.25 + 0.5 * g.0.uniform();
                let (o, h) = sg.forward(be, &x, &wg, &f1, &f2, alpha)?;
                let dy = buf(be, g, dtype, prod(&[tokens, s.out()]))?;
                let (dx, dwg, d1, d2) = sg.backward(be, &x, &wg, &f1, &f2, &h, &dy, alpha)?;
                [Some(&o), Some(&dx), dwg.as_ref(), Some(&d1), Some(&d2)].into_iter().flatten().map(|t| be.download(t)).collect()
            }
            _ => Ok(vec![be.download(&s.dense_on(be, &f1, &f2)?)?]), // the pre-merged dense weight
        }
    })();
    (format!("{s:?} tokens {tokens}"), r)
}

fn linattn_case<Be: Backend>(be: &Be, g: &mut Gen) -> (String, Result<Vec<HostTensor>>) {
    // Mostly small legal shapes (batch and heads 1–4, K and V 1–70), sometimes any size.
    let small = |g: &mut Gen, max: usize| if g.chance(5) { g.size() } else { 1 + g.below(max) };
    let mut la = LinearAttention {
        batch: small(g, 4),
        seq: if g.chance(6) { 1 } else { small(g, 70) }, // one token: the decode step
        heads: small(g, 4),
        k: small(g, 70),
        v: small(g, 70),
        feature_map: [FeatureMap::Identity, FeatureMap::Elu1, FeatureMap::Relu][g.below(3)],
        scale: None,
        normalize: [Normalize::None, Normalize::Normalizer { eps: 1e-6 }, Normalize::Count][g.below(3)],
    };
    if matches!(la.normalize, Normalize::Normalizer { .. }) {
        la.feature_map = FeatureMap::Elu1; // positive features: a denominator far from 0
    }
    let mut dtype = g.dtype();
    // One case in six has many sequences·heads (the chunked forms' one-sweep paths, and on CUDA
    // the one-pass kernels where the 16-bit ones fit: bf16, K and V multiples of 8).
    let many = g.chance(6);
    if many {
        (la.batch, la.heads, la.seq) = (64 + g.below(8), 4, 1 + g.below(40));
        (la.k, la.v) = (8 * (1 + g.below(8)), 8 * (1 + g.below(8)));
        dtype = if g.chance(3) { dtype } else { DType::BF16 };
        g.1 = 1 << 21;
    }
    let varlen = !many && g.chance(3);
    if varlen && !g.chance(4) {
        la.batch = 1; // packed sequences
    }
    // Sequence bounds: increasing to T, or broken (decreasing, or not ending at T).
    let mut cu: Vec<u32> = vec![0];
    for _ in 0..g.below(3) {
        let last = *cu.last().unwrap_or(&0);
        cu.push(last + g.below(la.seq.min(70) + 1) as u32);
    }
    cu.push(la.seq.min(u32::MAX as usize) as u32);
    match g.below(6) {
        0 => cu.reverse(),
        1 => cu.push(1),
        _ => cu.sort(),
    }
    let r = (|| {
        let qk = prod(&[la.batch, la.seq, la.heads, la.k]);
        let vo = prod(&[la.batch, la.seq, la.heads, la.v]);
        let q = buf(be, g, dtype, qk)?;
        let k = buf(be, g, dtype, qk)?;
        let v = buf(be, g, dtype, vo)?;
        let mut o = buf(be, g, dtype, vo)?;
        let mut s = buf(be, g, DType::F32, prod(&[la.batch, la.heads, la.k, la.v]))?;
        // The normalizer's initial sums as a run would leave them (positive, as φ = elu + 1 is),
        // so that the denominators stay far from 0.
        let mut z = match la.normalize {
            Normalize::Normalizer { .. } => {
                let n = g.len(prod(&[la.batch, la.heads, la.k]));
                be.upload(&HostTensor::new(DType::F32, vec![n], (0..n).map(|i| 1.0 + (i % 7) as f32).collect())?)?
            }
            _ => buf(be, g, DType::F32, prod(&[la.batch, la.heads, la.k]))?,
        };
        match (varlen, g.below(3)) {
            (true, 0) => la.recurrent_varlen(be, &q, &k, &v, &cu, &mut s, &mut z, &mut o)?,
            (true, _) => la.chunk_varlen(be, &q, &k, &v, &cu, &mut s, &mut z, &mut o)?,
            (false, 0) => la.recurrent(be, &q, &k, &v, &mut s, &mut z, 0, &mut o)?,
            (false, 1) => la.chunk(be, &q, &k, &v, &mut s, &mut z, 0, &mut o)?,
            (false, _) => {
                // The backward reads the forward's output: run it from copies of the start state.
                let (mut s1, mut z1) = (be.alloc(DType::F32, be.len_of(&s))?, be.alloc(DType::F32, be.len_of(&z))?);
                be.copy(&s, &mut s1)?;
                be.copy(&z, &mut z1)?;
                la.chunk(be, &q, &k, &v, &mut s1, &mut z1, 0, &mut o)?;
                let d_o = buf(be, g, dtype, vo)?;
                let gr = la.chunk_backward(be, &q, &k, &v, &o, &d_o, &s, &z, [None, None], 0)?;
                return [&gr.dq, &gr.dk, &gr.dv].into_iter().map(|t| be.download(t)).collect();
            }
        }
        [&o, &s, &z].into_iter().map(|t| be.download(t)).collect()
    })();
    (format!("{la:?} varlen {varlen} cu {cu:?}"), r)
}

fn graph_case<Be: Backend>(be: &Be, g: &mut Gen) -> (String, Result<Vec<HostTensor>>) {
    // Past 2^32 nodes is a limit error (2^31 nodes are legal, and need gigabytes).
    let n = if g.chance(8) { HUGE[2 + g.below(HUGE.len() - 2)] } else { g.below(40) };
    let e = g.below(60);
    let mut src: Vec<i64> = (0..e).map(|_| g.below(n.max(1)) as i64).collect();
    let mut dst: Vec<i64> = (0..e).map(|_| g.below(n.max(1)) as i64).collect();
    // One graph in four has a bad index or an extra dst.
    match g.below(16) {
        0 if e > 0 => src[g.below(e)] = -1,
        1 if e > 0 => dst[g.below(e)] = n as i64,
        2 if e > 0 => src[g.below(e)] = i64::MAX,
        3 => dst.push(0),
        _ => {}
    }
    let (dim, heads) = (g.size(), if g.chance(2) { 1 } else { g.size() });
    let dtype = g.dtype();
    let what = format!("graph n {n} e {e} dim {dim} heads {heads}");
    let r = (|| {
        let graph = Graph::from_coo(n, &src, &dst)?;
        let dg = DeviceGraph::upload(be, &graph)?;
        let gt = DeviceGraph::upload(be, &graph.transposed())?;
        let (ne, nn) = (graph.num_edges(), graph.num_nodes);
        let outs = match g.below(8) {
            0 => vec![graph::gather_rows(be, &dg, &buf(be, g, dtype, prod(&[nn, dim]))?, dim)?],
            1 => {
                let reduce = [Reduce::Sum, Reduce::Mean, Reduce::Max, Reduce::Min][g.below(4)];
                let (out, arg) = graph::segment_reduce(be, &dg, &buf(be, g, dtype, prod(&[ne, dim]))?, dim, reduce)?;
                [Some(out), arg].into_iter().flatten().collect()
            }
            2 => vec![graph::spmm(be, &dg, &buf(be, g, dtype, prod(&[nn, dim]))?, Some(&buf(be, g, DType::F32, Some(ne))?), dim)?],
            3 => vec![graph::sddmm(be, &dg, &buf(be, g, dtype, prod(&[nn, heads, dim]))?, &buf(be, g, dtype, prod(&[nn, heads, dim]))?, heads, dim)?],
            4 => vec![graph::segment_softmax(be, &dg, &buf(be, g, DType::F32, prod(&[ne, heads]))?, heads)?],
            5 => {
                let x = buf(be, g, dtype, prod(&[nn, heads, dim]))?;
                let dy = buf(be, g, dtype, prod(&[nn, heads, dim]))?;
                let (dx, dw) = graph::spmm_backward(be, &dg, &gt, &x, None, &dy, heads, dim)?;
                [Some(dx), dw].into_iter().flatten().collect()
            }
            6 => {
                let (rows, c) = (g.size(), g.size());
                let x = buf(be, g, dtype, prod(&[rows, c]))?;
                let affine = buf(be, g, DType::F32, prod(&[2, c]))?;
                let (y, stats) = graph::layer_norm(be, &x, &affine, rows, c, 1e-5)?;
                vec![y, stats]
            }
            _ => {
                let (rows, d) = (g.size(), g.size());
                let x = buf(be, g, dtype, prod(&[rows, d]))?;
                vec![graph::scale_add(be, &x, None, Some(&x), rows, d, Activation::Silu)?]
            }
        };
        outs.iter().map(|t| be.download(t)).collect()
    })();
    (what, r)
}

/// The other graph primitives and backward passes: softmax, sddmm, weighted segment sums, gather
/// and segment-sum backward, LayerNorm backward, the gate, row dots, bias + activation and the edge
/// MLP (concat trick), on a random graph (hubs past one segment of 32 edges, one case in four).
fn graph2_case<Be: Backend>(be: &Be, g: &mut Gen) -> (String, Result<Vec<HostTensor>>) {
    use ffkern::ops::graph::{EdgeMlp, EdgeMlpWeights};
    let n = 1 + g.below(40);
    let e = if g.chance(4) { 40 + g.below(120) } else { g.below(60) };
    let hub = g.chance(2);
    let src: Vec<i64> = (0..e).map(|_| g.below(n) as i64).collect();
    let dst: Vec<i64> = (0..e).map(|_| if hub && g.chance(2) { 0 } else { g.below(n) as i64 }).collect();
    let heads = 1 + g.below(4);
    let dim = heads.saturating_mul(if g.chance(8) { g.size() } else { 1 + g.below(24) });
    let (dtype, kind) = (g.dtype(), g.below(9));
    let what = format!("graph2 {kind}: n {n} e {e} hub {hub} dim {dim} heads {heads} {dtype}");
    let r = (|| {
        let graph = Graph::from_coo(n, &src, &dst)?;
        let (dg, dgt) = (DeviceGraph::upload(be, &graph)?, DeviceGraph::upload(be, &graph.transposed())?);
        let f32s = |g: &mut Gen, dims: &[usize]| buf(be, g, DType::F32, prod(dims));
        let outs: Vec<Be::Buf> = match kind {
            0 => {
                let alpha = graph::segment_softmax(be, &dg, &f32s(g, &[e, heads])?, heads)?;
                let d_alpha = f32s(g, &[e, heads])?;
                vec![graph::segment_softmax_backward(be, &dg, &alpha, &d_alpha, heads)?]
            }
            1 => {
                let (a, b, ds) = (buf(be, g, dtype, prod(&[n, dim]))?, buf(be, g, dtype, prod(&[n, dim]))?, f32s(g, &[e, heads])?);
                let (da, db) = graph::sddmm_backward(be, &dg, &dgt, &a, &b, &ds, heads, dim)?;
                vec![da, db]
            }
            2 => {
                let (m, w) = (buf(be, g, dtype, prod(&[e, dim]))?, f32s(g, &[e, heads])?);
                let out = graph::segment_sum_weighted(be, &dg, &m, &w, heads, dim)?;
                let d_out = buf(be, g, dtype, prod(&[n, dim]))?;
                let (dm, dw) = graph::segment_sum_weighted_backward(be, &dgt, &m, &w, &d_out, heads, dim)?;
                vec![out, dm, dw]
            }
            3 => vec![graph::gather_rows_backward(be, &dgt, &buf(be, g, dtype, prod(&[e, dim]))?, dim)?],
            4 => vec![graph::segment_sum_backward(be, &dgt, &buf(be, g, dtype, prod(&[n, dim]))?, dim)?],
            5 => {
                let rows = g.size();
                let (x, dy, affine) = (buf(be, g, dtype, prod(&[rows, dim]))?, buf(be, g, dtype, prod(&[rows, dim]))?, f32s(g, &[2, dim])?);
                let (y, stats) = graph::layer_norm(be, &x, &affine, rows, dim, 1e-5)?;
                let (dx, dparams) = graph::layer_norm_backward(be, &x, &dy, &affine, &stats, rows, dim, 1e-5)?;
                vec![y, dx, dparams]
            }
            6 => {
                let rows = g.size();
                let x = buf(be, g, dtype, prod(&[rows, heads]))?;
                let gate = graph::gate_mean(be, &x, rows, heads)?;
                let dx = graph::gate_mean_backward(be, &x, &f32s(g, &[rows])?, rows, heads)?;
                let (u, v) = (buf(be, g, dtype, prod(&[rows, dim]))?, buf(be, g, dtype, prod(&[rows, dim]))?);
                vec![gate, dx, graph::row_dot(be, &u, &v, rows, dim, heads)?]
            }
            7 => {
                let rows = g.size();
                let (x, bias) = (buf(be, g, dtype, prod(&[rows, dim]))?, buf(be, g, dtype, Some(dim))?);
                vec![graph::bias_act(be, &x, &bias, rows, dim, [Activation::Relu, Activation::Silu, Activation::GeluErf][g.below(3)])?]
            }
            _ => {
                let mlp = EdgeMlp { edge_dim: 1 + g.below(20), node_dim: 1 + g.below(20), out_dim: dim, act: Activation::Silu };
                let (ef, h) = (buf(be, g, dtype, prod(&[e, mlp.edge_dim]))?, buf(be, g, dtype, prod(&[n, mlp.node_dim]))?);
                let w = EdgeMlpWeights {
                    w_e: buf(be, g, dtype, prod(&[dim, mlp.edge_dim]))?,
                    w_s: buf(be, g, dtype, prod(&[dim, mlp.node_dim]))?,
                    w_d: buf(be, g, dtype, prod(&[dim, mlp.node_dim]))?,
                    b: buf(be, g, dtype, Some(dim))?,
                };
                let m = mlp.forward(be, &dg, &ef, &h, &w)?;
                let gr = mlp.backward(be, &dg, &dgt, &ef, &h, &w, &buf(be, g, dtype, prod(&[e, dim]))?)?;
                vec![m, gr.d_edge, gr.d_node, gr.w_e, gr.w_s, gr.w_d, gr.b]
            }
        };
        outs.iter().map(|t| be.download(t)).collect()
    })();
    (what, r)
}

/// The layers built from the primitives: GCN, GraphSAGE-mean, GAT and the OneForecast layer on a
/// random graph, the RePaViT training form and the structured FFN block, forward and backward.
fn layers_case<Be: Backend>(be: &Be, g: &mut Gen) -> (String, Result<Vec<HostTensor>>) {
    use ffkern::ops::graph::{GatLayer, GatParams, GcnLayer, OneForecastLayer, OneForecastParams, SageLayer};
    let n = 1 + g.below(30);
    let e = g.below(80);
    let src: Vec<i64> = (0..e).map(|_| g.below(n) as i64).collect();
    let dst: Vec<i64> = (0..e).map(|_| g.below(n) as i64).collect();
    let (din, dout, dtype) = (g.size(), g.size(), g.dtype());
    let act = [Activation::Identity, Activation::Relu, Activation::GeluErf][g.below(3)];
    let kind = g.below(6);
    let what = format!("layer {kind}: n {n} e {e} in {din} out {dout} {act:?} {dtype}");
    let r = (|| {
        let graph = Graph::from_coo(n, &src, &dst)?;
        let down = |t: &[&Be::Buf]| t.iter().map(|t| be.download(t)).collect::<Result<Vec<_>>>();
        match kind {
            0 => {
                let layer = GcnLayer { in_dim: din, out_dim: dout, act };
                let (norm, w_e) = GcnLayer::normalize(&graph)?;
                let (dg, dgt) = (DeviceGraph::upload(be, &norm)?, DeviceGraph::upload(be, &norm.transposed())?);
                let w_e = be.upload(&HostTensor::new(DType::F32, vec![w_e.len()], w_e)?)?;
                let (x, w, b) = (buf(be, g, dtype, prod(&[n, din]))?, buf(be, g, dtype, prod(&[dout, din]))?, buf(be, g, dtype, Some(dout))?);
                let st = layer.forward(be, &dg, &w_e, &x, &w, &b)?;
                let gr = layer.backward(be, &dgt, &w_e, &w, &st, &buf(be, g, dtype, prod(&[n, dout]))?)?;
                down(&[&st.out, &gr.dx, &gr.w, &gr.b])
            }
            1 => {
                let layer = SageLayer { in_dim: din, out_dim: dout, act };
                let mw = SageLayer::mean_weights(&graph);
                let mw = be.upload(&HostTensor::new(DType::F32, vec![mw.len()], mw)?)?;
                let (dg, dgt) = (DeviceGraph::upload(be, &graph)?, DeviceGraph::upload(be, &graph.transposed())?);
                let x = buf(be, g, dtype, prod(&[n, din]))?;
                let (wn, ws, b) = (buf(be, g, dtype, prod(&[dout, din]))?, buf(be, g, dtype, prod(&[dout, din]))?, buf(be, g, dtype, Some(dout))?);
                let st = layer.forward(be, &dg, &mw, &x, &wn, &ws, &b)?;
                let gr = layer.backward(be, &dgt, &mw, &x, &wn, &ws, &st, &buf(be, g, dtype, prod(&[n, dout]))?)?;
                down(&[&st.out, &gr.dx, &gr.w_neigh, &gr.w_self, &gr.b])
            }
            2 => {
                let heads = 1 + g.below(3);
                let layer = GatLayer { in_dim: din, heads, head_dim: dout, act };
                let (dg, dgt) = (DeviceGraph::upload(be, &graph)?, DeviceGraph::upload(be, &graph.transposed())?);
                let hf = prod(&[heads, dout]);
                let x = buf(be, g, dtype, prod(&[n, din]))?;
                let p = GatParams { w: buf(be, g, dtype, hf.and_then(|w| prod(&[w, din])))?, a_src: buf(be, g, dtype, hf)?, a_dst: buf(be, g, dtype, hf)?, b: buf(be, g, dtype, hf)? };
                let st = layer.forward(be, &dg, &x, &p)?;
                let gr = layer.backward(be, &dg, &dgt, &x, &p, &st, &buf(be, g, dtype, hf.and_then(|w| prod(&[n, w])))?)?;
                // Not a_dst's gradient: per node, its edges' score gradients sum to 0 but for the
                // LeakyReLU slopes, so it is what is left of a cancellation (tests/gnn.rs checks it
                // at fixed shapes).
                down(&[&st.out, &st.alpha, &gr.dx, &gr.params.w, &gr.params.a_src, &gr.params.b])
            }
            3 => {
                let heads = 1 + g.below(3);
                // Rows of at least 8 features: a LayerNorm over 2 or 3 is nearly constant, its
                // gradients rounding noise. In 16 bits, hidden widths of at least 4: the bias
                // gradient of a width-1 MLP is one sum over the edges, which can cancel to a few
                // ulps of its terms (and then any other order of the same sums misses a relative
                // budget: the GEMMs' tensor-core order against the reference's).
                let narrow = if dtype == DType::F32 { 1 } else { 4 };
                let layer = OneForecastLayer { dim: heads * (8 + g.below(6)), heads, gate_hidden: narrow + g.below(10 - narrow), attn_hidden: narrow + g.below(10 - narrow), eps: 1e-5 };
                let (dg, dgt) = (DeviceGraph::upload(be, &graph)?, DeviceGraph::upload(be, &graph.transposed())?);
                let d = layer.dim;
                let (ef, h) = (buf(be, g, dtype, prod(&[e, d]))?, buf(be, g, dtype, prod(&[n, d]))?);
                let p = OneForecastParams::from_tensors(layer.seeded_params(dtype, g.0.next_u64()).iter().map(|t| be.upload(t)).collect::<Result<_>>()?)?;
                let st = layer.forward(be, &dg, &ef, &h, &p)?;
                let (de, dh) = (buf(be, g, dtype, prod(&[e, d]))?, buf(be, g, dtype, prod(&[n, d]))?);
                let gr = layer.backward(be, &dg, &dgt, &ef, &h, &p, &st, &de, &dh)?;
                let mut out = down(&[&st.e_out, &st.h_out, &gr.d_edge, &gr.d_node])?;
                // Every parameter gradient but b_a2's: a per-head shift of the attention scores
                // leaves their softmax unchanged, so it is rounding noise on every backend.
                let params = gr.params.tensors();
                out.extend(down(&params.iter().enumerate().filter(|(i, _)| ffkern::ops::graph::ONEFORECAST_PARAMS[*i] != "b_a2").map(|(_, t)| *t).collect::<Vec<_>>())?);
                Ok(out)
            }
            4 => {
                // At least 8 tokens: BatchNorm statistics over 2 or 3 leave gradients that cancel.
                let (tokens, hidden) = (if g.chance(6) { HUGE[g.below(HUGE.len())] } else { 8 + g.below(60) }, g.size());
                let f = RepavitFfn { tokens, dim: din, hidden, active: g.below(hidden.saturating_add(1)), eps: 1e-5, momentum: 0.1 };
                let mut w = RepavitTrain {
                    w1: buf(be, g, dtype, prod(&[hidden, din]))?,
                    b1: buf(be, g, dtype, Some(hidden))?,
                    w2: buf(be, g, dtype, prod(&[din, hidden]))?,
                    b2: buf(be, g, dtype, Some(din))?,
                    bn1: BatchNormState::upload(be, &batchnorm(din.min(1 << 14), g))?,
                    bn2: BatchNormState::upload(be, &batchnorm(hidden.min(1 << 14), g))?,
                };
                let x = buf(be, g, dtype, prod(&[tokens, din]))?;
                let (y, saved) = f.forward(be, &x, &mut w, true)?;
                let gr = f.backward(be, &x, &mut w, &saved, &buf(be, g, dtype, prod(&[tokens, din]))?)?;
                down(&[&y, &gr.dx, &gr.dw1, &gr.db1, &gr.dw2, &gr.db2])
            }
            _ => {
                let tokens = g.size();
                let s1 = Structured::LowRank { inp: din, out: dout, rank: 1 + g.below(8) };
                let blocks = 1 + g.below(3);
                let s2 = Structured::BlockShuffle { inp: dout, out: din, blocks, inner: 1 + g.below(8) };
                let ffn = StructuredFfn { tokens, s1, s2, act };
                let (l1, l2) = (s1.factor_lens(), s2.factor_lens());
                let f = [buf(be, g, dtype, Some(l1.0))?, buf(be, g, dtype, Some(l1.1))?, buf(be, g, dtype, Some(l2.0))?, buf(be, g, dtype, Some(l2.1))?];
                let (b1, b2) = (buf(be, g, dtype, Some(dout))?, buf(be, g, dtype, Some(din))?);
                let x = buf(be, g, dtype, prod(&[tokens, din]))?;
                let fr = [&f[0], &f[1], &f[2], &f[3]];
                let (y, saved) = ffn.forward(be, &x, fr, &b1, &b2)?;
                let grads = ffn.backward(be, &x, fr, &saved, &buf(be, g, dtype, prod(&[tokens, din]))?)?;
                let mut out = down(&[&y])?;
                out.extend(down(&grads.iter().collect::<Vec<_>>())?);
                Ok(out)
            }
        }
    })();
    (what, r)
}

fn misc_case<Be: Backend>(be: &Be, g: &mut Gen) -> (String, Result<Vec<HostTensor>>) {
    match g.below(7) {
        5 => {
            // The GEMM backward's element-wise pass, on its own.
            let (rows, cols, dtype) = (g.size(), g.size(), g.dtype());
            let d = ActGrad { rows, cols, act: [Activation::Relu, Activation::GeluErf, Activation::Silu][g.below(3)], act_cols: g.below(cols.saturating_add(1)) };
            let r = (|| {
                let (dc, z) = (buf(be, g, dtype, prod(&[rows, cols]))?, buf(be, g, dtype, prod(&[rows, cols]))?);
                let mut out = buf(be, g, dtype, prod(&[rows, cols]))?;
                be.act_grad(&d, &dc, &z, &mut out)?;
                Ok(vec![be.download(&out)?])
            })();
            (format!("{d:?}"), r)
        }
        6 => {
            // The bias gradient's column sums, on their own.
            let (rows, cols, dtype) = (g.size(), g.size(), g.dtype());
            let r = (|| {
                let x = buf(be, g, dtype, prod(&[rows, cols]))?;
                let mut out = buf(be, g, dtype, Some(cols))?;
                be.col_sum(rows, cols, &x, &mut out)?;
                Ok(vec![be.download(&out)?])
            })();
            (format!("col_sum {rows}×{cols}"), r)
        }
        0 => {
            let lens: Vec<usize> = (0..g.below(4)).map(|_| g.size()).collect();
            // SGD with momentum or Adam, at a later step, with clipping by global norm or not.
            let mut opt = if g.chance(2) { NoisyOptimizer::sgd(0.01, 0.9, 7) } else { NoisyOptimizer::adam(0.01, 7) };
            opt.step = g.below(100) as u64;
            if g.chance(2) {
                opt.clip = Some(Clip { max_norm: 0.5, order: if g.chance(2) { ClipOrder::ClipThenNoise } else { ClipOrder::NoiseThenClip } });
            }
            let grad_dtype = g.dtype();
            let what = format!("optimizer list {lens:?} {:?} clip {:?} grads {grad_dtype}", opt.rule, opt.clip);
            let r = (|| {
                let total = lens.iter().try_fold(0usize, |a, &l| a.checked_add(l));
                let list = TensorList::new(lens);
                let mut p = buf(be, g, DType::F32, total)?;
                let gr = buf(be, g, grad_dtype, total)?;
                let mut state = (0..opt.state_count()).map(|_| buf(be, g, DType::F32, total)).collect::<Result<Vec<_>>>()?;
                if let [_, v] = &mut state[..] {
                    // Adam's second moments are never negative.
                    let mut host = be.download(v)?;
                    host.data.iter_mut().for_each(|x| *x = x.abs());
                    *v = be.upload(&host)?;
                }
                opt.step(be, &list, &mut p, &gr, &mut state)?;
                [&p].into_iter().chain(&state).map(|t| be.download(t)).collect()
            })();
            (what, r)
        }
        1 => {
            let n = g.size();
            let r = buf(be, g, DType::F32, Some(n)).and_then(|mut out| {
                be.philox_normal(n, 3, 1, &mut out)?;
                Ok(vec![be.download(&out)?])
            });
            (format!("philox_normal n {n}"), r)
        }
        2 => {
            // No rows, too many, or at least 8: statistics over 2 or 3 leave gradients that cancel.
            let rows = match g.below(8) {
                0 => 0,
                1 => HUGE[g.below(HUGE.len())],
                _ => 8 + g.below(60),
            };
            let channels = g.size();
            let d = BatchNormDesc { rows, channels, eps: 1e-5, momentum: 0.1 };
            let r = (|| {
                let c = channels.min(1 << 14);
                let mut st = BatchNormState::upload(be, &batchnorm(c, g))?;
                let x = buf(be, g, DType::F32, prod(&[rows, channels]))?;
                let y = st.forward(be, &d, &x, true)?;
                // dy unrelated to y (dy = y would make dx vanish analytically, leaving rounding noise).
                let dy = buf(be, g, DType::F32, prod(&[rows, channels]))?;
                let dx = st.backward(be, &d, &x, &dy, None)?;
                Ok(vec![be.download(&y)?, be.download(&dx)?])
            })();
            (format!("{d:?}"), r)
        }
        3 => {
            let shape = vec![g.size(), g.size()];
            let r = HostTensor::new(DType::F32, shape.clone(), vec![0.5; 6]).map(|t| vec![t]);
            (format!("HostTensor shape {shape:?}"), r)
        }
        _ => {
            // Lengths no host or device holds (2^62 elements and up, whose bytes may pass 2^64):
            // an error, not the allocator's abort.
            let (dtype, len) = (g.dtype(), HUGE[4 + g.below(3)]);
            let r = be.alloc(dtype, len).map(|_| panic!("an alloc of {len} elements succeeded"));
            (format!("alloc {dtype} × {len}"), r)
        }
    }
}

/// Whether a device output agrees with the reference's: within `budget`, or, where the
/// reference vanishes (its rms below the budget: a gradient that is zero by construction, e.g. of
/// a bias before a BatchNorm), small itself (every element below 10× the budget). None when it
/// agrees, else why not.
fn agree(out: &HostTensor, reference: &HostTensor, budget: f64) -> Option<String> {
    if out.len() != reference.len() {
        return Some(format!("{} elements against {}", out.len(), reference.len()));
    }
    let r: Vec<f64> = reference.data.iter().map(|&v| v as f64).collect();
    let rms = (r.iter().map(|v| v * v).sum::<f64>() / r.len().max(1) as f64).sqrt();
    if rms < budget {
        // `all` with `<` also refuses NaN.
        let small = out.data.iter().all(|v| (v.abs() as f64) < 10.0 * budget);
        let worst = out.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        return (!small).then(|| format!("should vanish as the reference does (rms {rms:.1e}), has {worst:.2e}"));
    }
    let c = Compare::new(&out.data, &r, out.dtype);
    (!c.passes(budget)).then(|| format!("rms_ratio {:.2e} (budget {budget:.0e})", c.rms_ratio))
}

/// One case of a family: its description and outcome (the outputs, downloaded).
type Case<Be> = fn(&Be, &mut Gen) -> (String, Result<Vec<HostTensor>>);

/// `cases` seeded cases of one family: (ran, typed errors, failures). A failure is a panic, a
/// driver error (a check missing before a launch) or, on a device backend, a second run that
/// gives other bits, or a disagreement with the CPU reference run from the same generator state:
/// an output outside its budget, an input one refuses and the other runs (a device may refuse
/// more only with a limit or an unsupported feature).
fn fuzz<Be: Backend>(be: &Be, cases: usize, seed: u64, case: Case<Be>, reference: Option<Case<Cpu>>) -> (usize, usize, Vec<String>) {
    let trace = std::env::var_os("FUZZ_TRACE").is_some();
    let mut g = Gen(SplitMix64::new(seed), SMALL);
    let (mut ok, mut typed, mut failed) = (0, 0, Vec::new());
    for i in 0..cases {
        let start = g.0.clone();
        g.1 = SMALL; // a case may raise it for itself
        let got = call(|| case(be, &mut g));
        let want = reference.map(|r| call(|| r(&Cpu, &mut Gen(start.clone(), SMALL))));
        // On a device backend a second run of a case that ran gives the same bits.
        if let (Some(_), Ok((what, Ok(first)))) = (reference, &got) {
            match call(|| case(be, &mut Gen(start, SMALL))) {
                Ok((_, Ok(again))) if again.len() == first.len() && again.iter().zip(first).all(|(a, b)| a.data.iter().map(|v| v.to_bits()).eq(b.data.iter().map(|v| v.to_bits()))) => {}
                _ => failed.push(format!("case {i} ({what}): a second run gives other bits")),
            }
        }
        match got {
            Err(msg) => failed.push(format!("case {i}: panicked: {msg}")),
            Ok((what, Err(e @ Error::Driver { .. }))) => failed.push(format!("case {i} ({what}): {e}")),
            Ok((what, Err(e))) => {
                if trace {
                    eprintln!("case {i} {what}: {e}");
                }
                typed += 1;
                if matches!(want, Some(Ok((_, Ok(_))))) && !matches!(e, Error::Unsupported(_) | Error::Limit(_)) {
                    failed.push(format!("case {i} ({what}): the reference runs it, this backend refuses it: {e}"));
                }
            }
            Ok((what, Ok(outs))) => {
                ok += 1;
                match want {
                    Some(Ok((_, Ok(refs)))) => {
                        // f32 outputs of a 16-bit case (statistics, parameter gradients) derive
                        // from rounded values: the case's loosest budget applies to all.
                        let budget = outs.iter().map(|o| o.dtype.budget()).fold(0.0, f64::max);
                        for (k, (o, r)) in outs.iter().zip(&refs).enumerate() {
                            if let Some(why) = agree(o, r, budget) {
                                failed.push(format!("case {i} ({what}): output {k} ({} of {}) against the reference: {why}", o.dtype, o.len()));
                            }
                        }
                    }
                    Some(Ok((_, Err(e)))) => failed.push(format!("case {i} ({what}): the reference refuses it ({e}), this backend runs it")),
                    Some(Err(msg)) => failed.push(format!("case {i} ({what}): the reference panicked: {msg}")),
                    None => {}
                }
            }
        }
    }
    (ok, typed, failed)
}

#[test]
fn random_descriptors_give_typed_errors_or_agree_with_the_reference() {
    let hook = std::panic::take_hook();
    if std::env::var_os("FUZZ_TRACE").is_none() {
        std::panic::set_hook(Box::new(|_| {})); // the panics are collected and reported below
    }
    let mut failures = Vec::new();
    for dev in devices_and_cpu() {
        with_backend!(dev, be => {
            // The CPU reference runs many cases quickly; device backends fewer, each checked
            // against the reference.
            let on_cpu = be.name() == "cpu";
            let n = if on_cpu { 600 } else { 300 };
            for (family, case, reference, seed) in [
                ("gemm", gemm_case as Case<_>, gemm_case as Case<Cpu>, 1),
                ("ffn", ffn_case, ffn_case, 2),
                ("structured", structured_case, structured_case, 3),
                ("linear_attn", linattn_case, linattn_case, 4),
                ("graph", graph_case, graph_case, 5),
                ("graph2", graph2_case, graph2_case, 8),
                ("layers", layers_case, layers_case, 7),
                ("misc", misc_case, misc_case, 6),
            ] {
                let (ok, typed, failed) = fuzz(be, n, seed, case, (!on_cpu).then_some(reference));
                eprintln!("{} {family}: {ok} ran, {typed} typed errors, {} failures", be.name(), failed.len());
                failures.extend(failed.into_iter().map(|f| format!("{} {family} {f}", be.name())));
                // Both outcomes must occur, or the palette is not reaching one side of the checks.
                if ok == 0 || typed == 0 {
                    failures.push(format!("{} {family}: {ok} ran, {typed} typed errors", be.name()));
                }
            }
        });
    }
    std::panic::set_hook(hook);
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// A framework shares one context, its buffers and its graphs across threads: every backend's
/// public handle types stay `Send + Sync` (this fails to compile the day one stops being so).
#[test]
fn backends_and_buffers_are_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Cpu>();
    shareable::<<Cpu as Backend>::Buf>();
    shareable::<ffkern::Device>();
    shareable::<Error>();
    shareable::<Graph>();
    shareable::<DeviceGraph<<Cpu as Backend>::Buf>>();
    #[cfg(feature = "wgpu")]
    {
        shareable::<ffkern::WgpuContext>();
        shareable::<<ffkern::WgpuContext as Backend>::Buf>();
    }
    #[cfg(feature = "cuda")]
    {
        shareable::<ffkern::CudaRuntime>();
        shareable::<<ffkern::CudaRuntime as Backend>::Buf>();
    }
}

/// A runtime that opens its own context runs everything on its one stream, so cudarc's
/// cross-stream event tracking (a wait and a record per buffer of every launch) is off there; a
/// runtime on a caller's stream leaves the caller's context as it was.
#[cfg(feature = "cuda")]
#[test]
fn cuda_own_context_skips_event_tracking() {
    let Some(ffkern::Device::Cuda(rt)) = common::device_backends().into_iter().find(|d| d.name() == "cuda") else { return };
    assert!(!rt.ctx.is_event_tracking(), "the runtime's own context tracks events");
    let ctx = cudarc::driver::CudaContext::new(0).expect("context");
    let caller = ffkern::CudaRuntime::from_stream(ctx.new_stream().expect("stream"));
    assert!(caller.ctx.is_event_tracking(), "a caller's context lost its event tracking");
}

/// The low-level CUDA launchers check the caller's views: one shorter than the launch reaches is
/// a shape error naming it, never a write past its end.
#[cfg(feature = "cuda")]
#[test]
fn cuda_launchers_refuse_short_views() {
    use ffkern::ops::{ffn, optim};
    let Some(ffkern::Device::Cuda(rt)) = common::device_backends().into_iter().find(|d| d.name() == "cuda") else { return };
    let zeros = |n: usize| rt.stream.alloc_zeros::<f32>(n).expect("alloc");
    let short = |r: Result<()>, name: &str| match r {
        Err(Error::Shape { msg, .. }) => assert!(msg.starts_with(name), "{msg}"),
        other => panic!("{name} one element short: {other:?}"),
    };
    let (rows, c) = (300, 16);
    let p = BatchNormDesc { rows, channels: c, eps: 1e-5, momentum: 0.1 }.params(true, false).expect("params");
    let (x, affine) = (zeros(rows * c), zeros(2 * c));
    let (mut rm, mut rv, mut stats, mut part) = (zeros(c), zeros(c), zeros(ffkern::ops::ffn::BN_STATS * c), zeros(p.partials_len()));
    let mut y = zeros(rows * c - 1);
    let r = ffn::cuda::batchnorm::<f32>(rt, &p, &x.as_view(), &affine.as_view(), &mut rm.as_view_mut(), &mut rv.as_view_mut(), &mut stats.as_view_mut(), &mut part.as_view_mut(), &mut y.as_view_mut());
    short(r, "y");
    let mut small = zeros(p.partials_len() - 1);
    let mut y = zeros(rows * c);
    let r = ffn::cuda::batchnorm::<f32>(rt, &p, &x.as_view(), &affine.as_view(), &mut rm.as_view_mut(), &mut rv.as_view_mut(), &mut stats.as_view_mut(), &mut small.as_view_mut(), &mut y.as_view_mut());
    short(r, "part");
    let mut out = zeros(4 * 10 - 1);
    short(optim::cuda::philox(rt, 10, 1, 0, true, &mut out.as_view_mut()), "out");
}

/// The low-level wgpu launchers check the caller's buffers: one shorter than the launch reaches
/// (whose accesses past the end the shader would clamp or drop) is a shape error naming it.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_launchers_refuse_short_buffers() {
    use ffkern::ops::{ffn, optim};
    let Some(ctx) = common::wgpu() else { return };
    let buf = |n: usize| ctx.create_buffer(DType::F32, n).expect("buffer");
    let short = |r: Result<()>, name: &str| match r {
        Err(Error::Shape { msg, .. }) => assert!(msg.starts_with(name), "{msg}"),
        other => panic!("{name} short: {other:?}"),
    };
    let (rows, c) = (300, 16);
    let p = BatchNormDesc { rows, channels: c, eps: 1e-5, momentum: 0.1 }.params(true, false).expect("params");
    let (x, affine, rm, rv, stats) = (buf(rows * c), buf(2 * c), buf(c), buf(c), buf(6 * c));
    short(ffn::wgpu::batchnorm(&ctx, &p, DType::F32, &x, &affine, &rm, &rv, &stats, &buf(rows * c - 1)), "y");
    short(ffn::wgpu::batchnorm(&ctx, &p, DType::F32, &x, &affine, &rm, &buf(c - 1), &stats, &buf(rows * c)), "running_var");
    // A hand-made block whose chunks do not cover the rows.
    let skewed = ffn::BnParams { chunks: p.chunks - 1, ..p };
    assert!(matches!(ffn::wgpu::batchnorm(&ctx, &skewed, DType::F32, &x, &affine, &rm, &rv, &stats, &buf(rows * c)), Err(Error::Invalid(_))), "chunks short of the rows");
    let pe = BatchNormDesc { rows, channels: c, eps: 1e-5, momentum: 0.1 }.params(true, true).expect("params");
    short(ffn::wgpu::batchnorm_backward(&ctx, &pe, DType::F32, &x, &x, &affine, &stats, None, &buf(rows * c)), "extra");
    short(optim::wgpu::philox(&ctx, 10, 1, 0, true, &buf(4 * 10 - 1)), "out");
    let sgd = optim::OptimParams { n: 100, has_momentum: 1, ..Default::default() };
    short(optim::wgpu::step(&ctx, &sgd, DType::F32, &buf(100), &buf(100), None, None), "m");
    short(optim::wgpu::step(&ctx, &sgd, DType::F32, &buf(99), &buf(100), Some(&buf(100)), None), "grad");
}
