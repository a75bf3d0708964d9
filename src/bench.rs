//! Device-timed benchmarks shared by `ffkern bench` and the criterion benches: median of repeats
//! after a warm-up, GFLOP/s, GB/s, and the fraction of the floor set by the matmul rate and copy
//! bandwidth measured in the same run.

use crate::ops::gemm::{Gemm, GemmInputs};
use crate::{Backend, DType, Result};

/// One benchmark result.
#[derive(Clone, Debug)]
pub struct BenchRecord {
    pub op: String,
    pub backend: String,
    pub dtype: DType,
    pub shape: String,
    pub median_s: f64,
    pub flops: f64,
    pub bytes: f64,
    pub reps: usize,
    /// Filled in once the run's ceilings are known.
    pub roofline_fraction: Option<f64>,
    pub baseline: Option<String>,
    pub baseline_s: Option<f64>,
}

impl BenchRecord {
    pub fn gflops(&self) -> f64 {
        self.flops / self.median_s / 1e9
    }
    pub fn gbps(&self) -> f64 {
        self.bytes / self.median_s / 1e9
    }
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

/// Device-to-device copy of `bytes` bytes: the bandwidth ceiling (bytes read + bytes written).
/// One record for [`Backend::copy`] and, where the backend has one, one for its copy kernel
/// (shape `… kernel`); the roofline takes the faster.
pub fn bench_copy<Be: Backend>(be: &Be, bytes: usize, reps: usize) -> Result<Vec<BenchRecord>> {
    let n = bytes / 4;
    let src = be.upload(&crate::HostTensor::random(DType::F32, vec![n], 77))?;
    let mut dst = be.alloc(DType::F32, n)?;
    let copy = |shape: String, t: f64| record("copy", be.name(), DType::F32, shape, t, 0.0, 2.0 * (n * 4) as f64, reps);
    let t = timed(be, reps, &mut || be.copy(&src, &mut dst))?;
    let mut out = vec![copy(format!("{} MiB", bytes >> 20), t)];
    if be.copy_kernel(&src, &mut dst)? {
        let t = timed(be, reps, &mut || be.copy_kernel(&src, &mut dst).map(|_| ()))?;
        out.push(copy(format!("{} MiB kernel", bytes >> 20), t));
    }
    Ok(out)
}

/// The fused GEMM on the given inputs (seeded random values; see [`GemmInputs::random`]).
pub fn bench_gemm<Be: Backend>(be: &Be, name: &str, desc: &Gemm, x: &GemmInputs, reps: usize) -> Result<BenchRecord> {
    let dtype = x.a.dtype;
    let (a, b) = (be.upload(&x.a)?, be.upload(&x.b)?);
    let bias = x.bias.as_ref().map(|t| be.upload(t)).transpose()?;
    let r = x.r.as_ref().map(|t| be.upload(t)).transpose()?;
    let mut c = be.alloc(dtype, desc.c().required_len(desc.batch))?;
    let t = timed(be, reps, &mut || be.gemm(desc, &a, &b, bias.as_ref(), r.as_ref(), &mut c, None))?;
    Ok(record("gemm", be.name(), dtype, name.into(), t, desc.flops(), desc.min_bytes(dtype), reps))
}

/// Fills `roofline_fraction` of every record: floor time = max(FLOPs / best matmul rate of that
/// dtype in this run, bytes / copy bandwidth of this run), fraction = floor / median.
pub fn fill_roofline(records: &mut [BenchRecord]) {
    let bw = records.iter().filter(|r| r.op == "copy").map(|r| r.gbps() * 1e9).fold(0.0, f64::max);
    let rate = |dtype: DType, backend: &str, recs: &[BenchRecord]| {
        recs.iter()
            .filter(|r| r.dtype == dtype && r.backend == backend && r.flops > 0.0)
            .flat_map(|r| [Some(r.flops / r.median_s), r.baseline_s.map(|b| r.flops / b)])
            .flatten()
            .fold(0.0, f64::max)
    };
    let rates: Vec<f64> = records.iter().map(|r| rate(r.dtype, &r.backend, records)).collect();
    for (r, peak) in records.iter_mut().zip(rates) {
        let t_flops = if peak > 0.0 { r.flops / peak } else { 0.0 };
        let t_bytes = if bw > 0.0 { r.bytes / bw } else { 0.0 };
        let floor = t_flops.max(t_bytes);
        if floor > 0.0 {
            r.roofline_fraction = Some(floor / r.median_s);
        }
    }
}

/// One fused noisy SGD-with-momentum step over `n` f32 parameters split into `tensors` tensors
/// (f32 gradients; 20 bytes move per parameter: read p, g, m; write p, m).
pub fn bench_noisy_sgd<Be: Backend>(be: &Be, n: usize, tensors: usize, reps: usize) -> Result<BenchRecord> {
    use crate::ops::optim::{NoisyOptimizer, TensorList};
    // Mixed sizes summing to n: tensor k gets a share proportional to (k % 7 + 1).
    let weights: Vec<usize> = (0..tensors).map(|k| k % 7 + 1).collect();
    let total_w: usize = weights.iter().sum();
    let mut lens: Vec<usize> = weights.iter().map(|w| n * w / total_w).collect();
    let assigned: usize = lens.iter().sum();
    if let Some(last) = lens.last_mut() {
        *last += n - assigned;
    }
    let list = TensorList::new(lens);
    let mut opt = NoisyOptimizer::sgd(1e-3, 0.9, 42);
    let mut param = be.upload(&crate::HostTensor::random(DType::F32, vec![n], 1))?;
    let grad = be.upload(&crate::HostTensor::random(DType::F32, vec![n], 2))?;
    let mut state = vec![be.upload(&crate::HostTensor::random(DType::F32, vec![n], 3))?];
    let t = timed(be, reps, &mut || opt.step(be, &list, &mut param, &grad, &mut state))?;
    let shape = format!("sgd momentum, {}M params in {tensors} tensors", n / 1_000_000);
    Ok(record("noisy_optimizer", be.name(), DType::F32, shape, t, 0.0, 20.0 * n as f64, reps))
}

fn timed<Be: Backend>(be: &Be, reps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    Ok(median(&be.time_runs(reps, f)?))
}

/// A record of `op` with no roofline or baseline yet.
#[allow(clippy::too_many_arguments)]
fn record(op: &str, be: &str, dtype: DType, shape: String, median_s: f64, flops: f64, bytes: f64, reps: usize) -> BenchRecord {
    BenchRecord { op: op.into(), backend: be.into(), dtype, shape, median_s, flops, bytes, reps, roofline_fraction: None, baseline: None, baseline_s: None }
}

/// RePaViT merged inference (two fused GEMMs) against the dense FFN it replaces, same backend and
/// dtype (the dense FFN's time is the record's baseline).
pub fn bench_repavit<Be: Backend>(be: &Be, tokens: usize, c: usize, h: usize, theta: f64, dtype: DType, reps: usize) -> Result<BenchRecord> {
    use crate::ops::ffn::{active_channels, DenseFfn, FfnWeights, RepavitMerged};
    let a = active_channels(h, theta)?;
    let r = |n: usize, s: u64| be.upload(&crate::HostTensor::random(dtype, vec![n], s));
    let x = r(tokens * c, 1)?;
    let merged = RepavitMerged {
        dim: c,
        active: a,
        wu: crate::HostTensor::random(dtype, vec![a + c, c], 2),
        bu: crate::HostTensor::random(dtype, vec![a + c], 3),
        wo: crate::HostTensor::random(dtype, vec![c, a], 4),
    };
    let (wu, bu, wo) = (be.upload(&merged.wu)?, be.upload(&merged.bu)?, be.upload(&merged.wo)?);
    let t_merged = timed(be, reps, &mut || merged.forward(be, tokens, &x, (&wu, &bu, &wo)).map(|_| ()))?;
    let dense = DenseFfn { tokens, dim: c, hidden: h, act: crate::Activation::GeluErf, residual: true };
    let w = FfnWeights { w1: r(h * c, 5)?, b1: r(h, 6)?, w2: r(c * h, 7)?, b2: r(c, 8)? };
    let t_dense = timed(be, reps, &mut || dense.forward(be, &x, &w, false).map(|_| ()))?;
    let flops = 2.0 * tokens as f64 * c as f64 * (2 * a + c) as f64;
    let bytes = (tokens * (c + (a + c) + (a + c) + c) + (a + c) * c + c * a) as f64 * dtype.size() as f64;
    let mut rec = record("repavit", be.name(), dtype, format!("merged T{tokens} C{c} H{h} θ={theta}"), t_merged, flops, bytes, reps);
    rec.baseline = Some("ffkern dense FFN".into());
    rec.baseline_s = Some(t_dense);
    Ok(rec)
}

/// A structured FFN block `S2(GELU(S1(x) + b1)) + b2` against the dense FFN of the same sizes.
pub fn bench_structured<Be: Backend>(be: &Be, tokens: usize, s1: crate::ops::structured::Structured, s2: crate::ops::structured::Structured, label: &str, dtype: DType, reps: usize) -> Result<BenchRecord> {
    use crate::ops::ffn::{DenseFfn, FfnWeights};
    use crate::ops::structured::StructuredFfn;
    let r = |n: usize, s: u64| be.upload(&crate::HostTensor::random(dtype, vec![n], s));
    let (c, h) = (s1.inp(), s1.out());
    let x = r(tokens * c, 1)?;
    let ((a1, b1), (a2, b2)) = (s1.factor_lens(), s2.factor_lens());
    let f = [r(a1, 2)?, r(b1, 3)?, r(a2, 4)?, r(b2, 5)?];
    let (bias1, bias2) = (r(h, 6)?, r(c, 7)?);
    let block = StructuredFfn { tokens, s1, s2, act: crate::Activation::GeluErf };
    let t_s = timed(be, reps, &mut || block.infer(be, &x, [&f[0], &f[1], &f[2], &f[3]], &bias1, &bias2).map(|_| ()))?;
    let dense = DenseFfn { tokens, dim: c, hidden: h, act: crate::Activation::GeluErf, residual: false };
    let w = FfnWeights { w1: r(h * c, 8)?, b1: r(h, 9)?, w2: r(c * h, 10)?, b2: r(c, 11)? };
    let t_d = timed(be, reps, &mut || dense.forward(be, &x, &w, false).map(|_| ()))?;
    let flops = 2.0 * tokens as f64 * (s1.params() + s2.params()) as f64;
    let share = (s1.params() + s2.params()) as f64 / (2 * c * h) as f64;
    let mut rec = record("structured", be.name(), dtype, format!("{label} T{tokens} d{c} ({:.0}% params)", 100.0 * share), t_s, flops, 0.0, reps);
    rec.baseline = Some("ffkern dense FFN".into());
    rec.baseline_s = Some(t_d);
    Ok(rec)
}

/// The linear-attention decode step (one token per sequence, state `[B, H, K, V]` f32 read and
/// written once: the bytes that count) and every form's scaling in T over `seqs` (B1 H4 D64).
pub fn bench_linattn<Be: Backend>(be: &Be, small: bool, seqs: &[usize], reps: usize) -> Result<Vec<BenchRecord>> {
    use crate::ops::linattn::{FeatureMap, LinearAttention, Normalize};
    let mut out = Vec::new();
    let (b, h, kd) = crate::registry::linattn_decode_shape(small);
    let d = LinearAttention { batch: b, seq: 1, heads: h, k: kd, v: kd, feature_map: FeatureMap::Identity, scale: None, normalize: Normalize::None };
    let r = |n: usize, dt: DType, s: u64| be.upload(&crate::HostTensor::random(dt, vec![n], s));
    let (q, k, v) = (r(d.qk_len(), DType::BF16, 1)?, r(d.qk_len(), DType::BF16, 2)?, r(d.vo_len(), DType::BF16, 3)?);
    let (mut s, mut z, mut o) = (r(d.state_len(), DType::F32, 4)?, r(d.z_len(), DType::F32, 5)?, be.alloc(DType::BF16, d.vo_len())?);
    let t = timed(be, reps, &mut || d.recurrent(be, &q, &k, &v, &mut s, &mut z, 0, &mut o))?;
    out.push(record("linear_attn", be.name(), DType::BF16, format!("decode step B{b} H{h} K{kd} V{kd}"), t, 0.0, 2.0 * (d.state_len() * 4) as f64, reps));
    for &seq in seqs {
        let d = LinearAttention { batch: 1, seq, heads: 4, k: 64, v: 64, feature_map: FeatureMap::Identity, scale: None, normalize: Normalize::None };
        let (q, k, v) = (r(d.qk_len(), DType::BF16, 1)?, r(d.qk_len(), DType::BF16, 2)?, r(d.vo_len(), DType::BF16, 3)?);
        let (mut s, mut z, mut o) = (be.alloc(DType::F32, d.state_len())?, be.alloc(DType::F32, d.z_len())?, be.alloc(DType::BF16, d.vo_len())?);
        let t = timed(be, reps, &mut || d.recurrent(be, &q, &k, &v, &mut s, &mut z, 0, &mut o))?;
        let flops = 4.0 * (seq * 4 * 64 * 64) as f64;
        out.push(record("linear_attn", be.name(), DType::BF16, format!("recurrent B1 T{seq} H4 D64"), t, flops, 0.0, reps));
        let t = timed(be, reps, &mut || d.chunk(be, &q, &k, &v, &mut s, &mut z, 0, &mut o))?;
        out.push(record("linear_attn", be.name(), DType::BF16, format!("chunk B1 T{seq} H4 D64"), t, flops, 0.0, reps));
        let (s0, z0, d_o) = (be.alloc(DType::F32, d.state_len())?, be.alloc(DType::F32, d.z_len())?, r(d.vo_len(), DType::BF16, 6)?);
        let t = timed(be, reps, &mut || d.backward(be, &q, &k, &v, &o, &d_o, &s0, &z0, [None, None], 0).map(|_| ()))?;
        out.push(record("linear_attn", be.name(), DType::BF16, format!("recurrent backward B1 T{seq} H4 D64"), t, 2.0 * flops, 0.0, reps));
        let t = timed(be, reps, &mut || d.chunk_backward(be, &q, &k, &v, &o, &d_o, &s0, &z0, [None, None], 0).map(|_| ()))?;
        out.push(record("linear_attn", be.name(), DType::BF16, format!("chunk backward B1 T{seq} H4 D64"), t, 2.0 * flops, 0.0, reps));
    }
    if !small {
        // flash-linear-attention's shapes (peers.py times its chunk kernel on the same ones; T =
        // 16384 is the issue's comparison with fla's published chunk kernel). Their per-chunk
        // states run to gigabytes: a backend that cannot hold them skips that shape.
        for seq in [4096, 16384] {
            match bench_linattn_fla(be, seq, reps) {
                Ok(records) => out.extend(records),
                Err(e) => eprintln!("linear_attn B8 T{seq} H32 D128 skipped on {}: {e}", be.name()),
            }
        }
    }
    Ok(out)
}

fn bench_linattn_fla<Be: Backend>(be: &Be, seq: usize, reps: usize) -> Result<Vec<BenchRecord>> {
    use crate::ops::linattn::{FeatureMap, LinearAttention, Normalize};
    let r = |n: usize, dt: DType, s: u64| be.upload(&crate::HostTensor::random(dt, vec![n], s));
    let mut out = Vec::new();
    let reps = reps.min(5);
    let d = LinearAttention { batch: 8, seq, heads: 32, k: 128, v: 128, feature_map: FeatureMap::Identity, scale: None, normalize: Normalize::None };
    let (q, k, v, d_o) = (r(d.qk_len(), DType::BF16, 1)?, r(d.qk_len(), DType::BF16, 2)?, r(d.vo_len(), DType::BF16, 3)?, r(d.vo_len(), DType::BF16, 6)?);
    let (s0, z0) = (be.alloc(DType::F32, d.state_len())?, be.alloc(DType::F32, d.z_len())?);
    let (mut s, mut z, mut o) = (be.alloc(DType::F32, d.state_len())?, be.alloc(DType::F32, d.z_len())?, be.alloc(DType::BF16, d.vo_len())?);
    let flops = 4.0 * (8 * seq * 32 * 128 * 128) as f64;
    let shape = format!("B8 T{seq} H32 D128");
    let t = timed(be, reps, &mut || d.chunk(be, &q, &k, &v, &mut s, &mut z, 0, &mut o))?;
    out.push(record("linear_attn", be.name(), DType::BF16, format!("chunk fwd {shape}"), t, flops, 0.0, reps));
    let t = timed(be, reps, &mut || {
        d.chunk(be, &q, &k, &v, &mut s, &mut z, 0, &mut o)?;
        d.chunk_backward(be, &q, &k, &v, &o, &d_o, &s0, &z0, [None, None], 0).map(|_| ())
    })?;
    out.push(record("linear_attn", be.name(), DType::BF16, format!("chunk fwd+bwd {shape}"), t, 3.0 * flops, 0.0, reps));
    // The recurrent form only at the shorter length (its scan is the slow reference here).
    if seq <= 4096 {
        let t = timed(be, reps, &mut || {
            d.recurrent(be, &q, &k, &v, &mut s, &mut z, 0, &mut o)?;
            d.backward(be, &q, &k, &v, &o, &d_o, &s0, &z0, [None, None], 0).map(|_| ())
        })?;
        out.push(record("linear_attn", be.name(), DType::BF16, format!("recurrent fwd+bwd {shape}"), t, 3.0 * flops, 0.0, reps));
    }
    Ok(out)
}

/// Graph message passing at OneForecast's mesh size (SPEC §6: 12,337 nodes, 98,296 edges,
/// D = 512; uniform random edges as in `peers.py`): spmm, segment-sum and gather, each moving
/// its `[E, D]` operand once (the bytes that count: per-edge rows plus the `[N, D]` side);
/// bandwidth-bound, so no FLOP rate.
pub fn bench_graph<Be: Backend>(be: &Be, small: bool, dtype: DType, reps: usize) -> Result<Vec<BenchRecord>> {
    use crate::ops::graph::{DeviceGraph, EdgeMlp, EdgeMlpForm, EdgeMlpWeights, Graph, OneForecastLayer, OneForecastParams};
    use crate::Activation;
    let (n, e, dim) = crate::registry::graph_bench_shape(small);
    let g = Graph::random_uniform(n, e, 11)?;
    let dg = DeviceGraph::upload(be, &g)?;
    let r = |len: usize, s: u64| be.upload(&crate::HostTensor::random(dtype, vec![len], s));
    let (xs, ms) = (rotating(be, dtype, n * dim, 1)?, rotating(be, dtype, e * dim, 2)?);
    let (x, m) = (&xs[0], &ms[0]);
    let shape = format!("N{n} E{e} D{dim}");
    let mut out = graph_rows(be, dtype, &g, &dg, &xs, &ms, dim, true, reps)?;
    // The issue's skewed graph: a million edges over 200,000 nodes at D 128 (peers.py's shape).
    // An adapter whose buffers cannot hold it skips these rows, with a note.
    if !small {
        let (n, e, dim) = (200_000, 1_000_000, 128);
        let rows = (|| {
            let g = Graph::random_uniform(n, e, 13)?;
            let dg = DeviceGraph::upload(be, &g)?;
            let (xs, ms) = (rotating(be, dtype, n * dim, 9)?, rotating(be, dtype, e * dim, 10)?);
            graph_rows(be, dtype, &g, &dg, &xs, &ms, dim, false, reps)
        })();
        match rows {
            Ok(rows) => out.extend(rows),
            Err(err) => eprintln!("graph bench: the 1M-edge rows skipped on {}: {err}", be.name()),
        }
    }
    // The edge MLP with the concat trick against gathering both endpoints and three [E, D] GEMMs.
    let gt = DeviceGraph::upload(be, &g.transposed())?;
    let mlp = EdgeMlp { edge_dim: dim, node_dim: dim, out_dim: dim, act: Activation::Silu };
    let w = EdgeMlpWeights { w_e: r(dim * dim, 3)?, w_s: r(dim * dim, 4)?, w_d: r(dim * dim, 5)?, b: r(dim, 6)? };
    let t_fused = timed(be, reps, &mut || mlp.forward(be, &dg, m, x, &w).map(|_| ()))?;
    let t_unfused = timed(be, reps, &mut || mlp.forward_as(EdgeMlpForm::Materialized, be, &dg, &gt, m, x, &w).map(|_| ()))?;
    let mut rec = record("graph", be.name(), dtype, format!("edge_mlp_sum {shape}"), t_fused, 2.0 * (e + 2 * n) as f64 * (dim * dim) as f64, 0.0, reps);
    rec.baseline = Some("ffkern gather + [E, 3D]·W GEMMs".into());
    rec.baseline_s = Some(t_unfused);
    out.push(rec);
    // The OneForecast gated layer, forward and backward, on an icosahedral mesh.
    let layer = OneForecastLayer { dim, ..OneForecastLayer::default() };
    let mesh = Graph::icosphere(if small { 3 } else { 5 })?;
    let (mn, me) = (mesh.num_nodes, mesh.num_edges());
    let (dm, dmt) = (DeviceGraph::upload(be, &mesh)?, DeviceGraph::upload(be, &mesh.transposed())?);
    let params = layer.seeded_params(dtype, 20).iter().map(|t| be.upload(t)).collect::<Result<Vec<_>>>()?;
    let p = OneForecastParams::from_tensors(params)?;
    let (ef, hf) = (r(me * dim, 7)?, r(mn * dim, 8)?);
    let fwd_bwd = |form: EdgeMlpForm| {
        timed(be, reps, &mut || {
            let st = layer.forward_as(form, be, &dm, &dmt, &ef, &hf, &p)?;
            layer.backward_as(form, be, &dm, &dmt, &ef, &hf, &p, &st, &ef, &hf).map(|_| ())
        })
    };
    let (t, t_unfused) = (fwd_bwd(EdgeMlpForm::ConcatTrick)?, fwd_bwd(EdgeMlpForm::Materialized)?);
    let mut rec = record("graph", be.name(), dtype, format!("oneforecast_layer fwd+bwd N{mn} E{me} D{dim} H{}", layer.heads), t, 0.0, 0.0, reps);
    rec.baseline = Some("ffkern unfused composition (gathered endpoints, [E, ·] GEMMs)".into());
    rec.baseline_s = Some(t_unfused);
    out.push(rec);
    Ok(out)
}

/// Bytes of input copies that a bench cycles through so that its repeats read from device memory,
/// not from a cache warmed by the repeat before (over twice an H100's or H200's L2).
const ROTATE_BYTES: usize = 128 << 20;

/// Seeded random inputs of `len` elements: one copy, or as many as fit ROTATE_BYTES (at most 8)
/// for a bench to cycle through ([`pick`]).
fn rotating<Be: Backend>(be: &Be, dtype: DType, len: usize, seed: u64) -> Result<Vec<Be::Buf>> {
    let copies = (ROTATE_BYTES / (len * dtype.size()).max(1)).clamp(1, 8);
    (0..copies).map(|i| be.upload(&crate::HostTensor::random(dtype, vec![len], seed + 1000 * i as u64))).collect()
}

/// The next of `bufs` for a repeat (`k` counts the repeats).
fn pick<'a, B>(bufs: &'a [B], k: &mut usize) -> &'a B {
    *k += 1;
    &bufs[*k % bufs.len()]
}

/// spmm, segment_sum (and gather) over the uniform graph `g`, then spmm and segment_sum over a
/// power-law graph with the same N and E against them, each repeat on the next copy of its input
/// ([`rotating`]). GB/s counts every gathered row as read, as peers.py does.
#[allow(clippy::too_many_arguments)]
fn graph_rows<Be: Backend>(be: &Be, dtype: DType, g: &crate::ops::graph::Graph, dg: &crate::ops::graph::DeviceGraph<Be::Buf>, xs: &[Be::Buf], ms: &[Be::Buf], dim: usize, gather: bool, reps: usize) -> Result<Vec<BenchRecord>> {
    use crate::ops::graph::{self, DeviceGraph, Graph, Reduce};
    let (n, e) = (g.num_nodes, g.num_edges());
    let bytes = ((e + n) * dim) as f64 * dtype.size() as f64;
    let shape = format!("N{n} E{e} D{dim}");
    let mut out = Vec::new();
    let mut k = 0;
    let t_spmm = timed(be, reps, &mut || graph::spmm(be, dg, pick(xs, &mut k), None, dim).map(|_| ()))?;
    out.push(record("graph", be.name(), dtype, format!("spmm {shape}"), t_spmm, 0.0, bytes, reps));
    let t_sum = timed(be, reps, &mut || graph::segment_reduce(be, dg, pick(ms, &mut k), dim, Reduce::Sum).map(|_| ()))?;
    out.push(record("graph", be.name(), dtype, format!("segment_sum {shape}"), t_sum, 0.0, bytes, reps));
    if gather {
        let t = timed(be, reps, &mut || graph::gather_rows(be, dg, pick(xs, &mut k), dim).map(|_| ()))?;
        out.push(record("graph", be.name(), dtype, format!("gather {shape}"), t, 0.0, bytes, reps));
    }
    // The same N and E with power-law in-degrees (a hub of ~E/ln N edges), against the uniform graph.
    let gp = Graph::power_law(n, e, 12)?;
    let hub = (0..n).map(|i| gp.row_ptr[i + 1] - gp.row_ptr[i]).max().unwrap_or(0);
    let dgp = DeviceGraph::upload(be, &gp)?;
    for (kind, t_uniform) in [("spmm", t_spmm), ("segment_sum", t_sum)] {
        let t = timed(be, reps, &mut || match kind {
            "spmm" => graph::spmm(be, &dgp, pick(xs, &mut k), None, dim).map(|_| ()),
            _ => graph::segment_reduce(be, &dgp, pick(ms, &mut k), dim, Reduce::Sum).map(|_| ()),
        })?;
        let mut rec = record("graph", be.name(), dtype, format!("{kind} {shape} power law (hub {hub})"), t, 0.0, bytes, reps);
        rec.baseline = Some("ffkern, uniform in-degree".into());
        rec.baseline_s = Some(t_uniform);
        out.push(rec);
    }
    Ok(out)
}

/// The records as an SVG bar chart (`ffkern bench --plot`): one row per record, the bar its
/// fraction of the roofline, a tick where the baseline (cuBLAS, PyTorch, our own unfused form)
/// would sit on the same scale, and the time and speed-up beside it. Plain SVG, no fonts needed.
pub fn svg_chart(records: &[BenchRecord], title: &str) -> String {
    use std::fmt::Write;
    fn esc(s: &str) -> String {
        s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
    }
    let label = |r: &BenchRecord| format!("{} {} {} {}", r.op, r.backend, r.dtype.name(), r.shape);
    // Monospace at 12 px is about 7.3 px a character.
    let label_w = records.iter().map(|r| label(r).chars().count()).max().unwrap_or(0) as f64 * 7.3 + 20.0;
    let label_w = label_w.max(200.0);
    const BAR_W: f64 = 360.0;
    const ROW_H: f64 = 22.0;
    const TOP: f64 = 48.0;
    let width = label_w + BAR_W + 330.0;
    let height = TOP + ROW_H * records.len() as f64 + 28.0;
    let mut s = String::new();
    let _ = writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="12">"#);
    let _ = writeln!(s, r#"<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="10" y="20" font-size="14">{}</text>"#, esc(title));
    // Grid lines at 0, 25, 50, 75 and 100 % of the roofline.
    for q in 0..=4 {
        let x = label_w + BAR_W * q as f64 / 4.0;
        let _ = writeln!(s, r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#ccc"/>"##, TOP - 6.0, height - 22.0);
        let _ = writeln!(s, r##"<text x="{x}" y="{}" text-anchor="middle" fill="#666">{}%</text>"##, TOP - 10.0, q * 25);
    }
    for (i, r) in records.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, label_w - 8.0, y + 15.0, esc(&label(r)));
        let frac = r.roofline_fraction.unwrap_or(0.0);
        let w = BAR_W * frac.clamp(0.0, 1.0);
        let _ = writeln!(s, r##"<rect x="{label_w}" y="{}" width="{w:.1}" height="{}" fill="#4a78b5"/>"##, y + 4.0, ROW_H - 8.0);
        let mut note = format!("{:.3} ms", r.median_s * 1e3);
        if r.roofline_fraction.is_some() {
            let _ = write!(note, ", {:.0}%", frac * 100.0);
        }
        if let (Some(name), Some(b)) = (&r.baseline, r.baseline_s) {
            // The baseline's fraction on the same roofline: it did the same work in b seconds.
            let bx = label_w + BAR_W * (frac * r.median_s / b).clamp(0.0, 1.0);
            let _ = writeln!(s, r##"<line x1="{bx:.1}" y1="{}" x2="{bx:.1}" y2="{}" stroke="#d0312d" stroke-width="3"/>"##, y + 2.0, y + ROW_H - 2.0);
            let _ = write!(note, "; {name} {:.3} ms", b * 1e3);
        }
        let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, label_w + BAR_W + 8.0, y + 15.0, esc(&note));
    }
    let _ = writeln!(
        s,
        r##"<text x="10" y="{}" fill="#666">bar: fraction of the roofline (measured matmul rate, copy bandwidth); red tick: the baseline on the same scale</text>"##,
        height - 8.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(op: &str, median_s: f64, frac: Option<f64>, baseline_s: Option<f64>) -> BenchRecord {
        BenchRecord {
            op: op.into(),
            backend: "cuda".into(),
            dtype: DType::BF16,
            shape: "4096<x>&4096".into(),
            median_s,
            flops: 1e12,
            bytes: 0.0,
            reps: 3,
            roofline_fraction: frac,
            baseline: baseline_s.map(|_| "cuBLAS".into()),
            baseline_s,
        }
    }

    #[test]
    fn svg_chart_draws_one_bar_per_record_and_the_baseline_ticks() {
        let recs = [rec("gemm", 2e-3, Some(0.5), Some(1e-3)), rec("spmm", 4e-3, None, None)];
        let svg = svg_chart(&recs, "bench & more");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // Background plus one bar per record; the second record has no roofline: a zero bar.
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains(r#"width="180.0""#), "half the bar width for a 50 % fraction");
        assert!(svg.contains(r#"width="0.0""#));
        // The baseline took half the time: its tick sits at 100 %, the label column (27
        // characters: 27 · 7.3 + 20) plus the bar width.
        assert!(svg.contains(r#"x1="577.1""#));
        assert!(svg.contains("2.000 ms, 50%; cuBLAS 1.000 ms"));
        assert!(svg.contains("bench &amp; more") && svg.contains("4096&lt;x&gt;&amp;4096"));
        assert!(!svg.contains("4096<x>"));
    }
}
