//! Device-timed benchmarks shared by `ffkern bench` and the criterion benches: median of repeats
//! after a warm-up, GFLOP/s, GB/s, and the fraction of the floor set by the matmul rate and copy
//! bandwidth measured in the same run.

use crate::ops::gemm::{Gemm, GemmInputs};
use crate::{Backend, DType, Result};

/// One benchmark result.
#[derive(Clone, Debug)]
pub struct BenchRecord {
    /// The op family (`ffkern list`'s names, or `copy` for the bandwidth ceiling).
    pub op: String,
    /// The backend that ran it.
    pub backend: String,
    /// The operands' dtype.
    pub dtype: DType,
    /// The case: shape and variant.
    pub shape: String,
    /// The median device time of one call, in seconds.
    pub median_s: f64,
    /// Floating-point operations of one call (0 where bytes set the floor).
    pub flops: f64,
    /// Bytes one call must move (0 where FLOPs set the floor).
    pub bytes: f64,
    /// Timed repeats.
    pub reps: usize,
    /// Filled in once the run's ceilings are known.
    pub roofline_fraction: Option<f64>,
    /// What the baseline is.
    pub baseline: Option<String>,
    /// The baseline's median time, in seconds.
    pub baseline_s: Option<f64>,
    /// Device memory the measured call took at its peak beyond what was held before it (its
    /// outputs and scratch; the inputs were held before), where the backend counts it (see
    /// [`Backend::memory_use`]).
    pub peak_mem_bytes: Option<u64>,
}

impl BenchRecord {
    /// GFLOP/s at the median time.
    pub fn gflops(&self) -> f64 {
        self.flops / self.median_s / 1e9
    }
    /// GB/s at the median time.
    pub fn gbps(&self) -> f64 {
        self.bytes / self.median_s / 1e9
    }
}

/// The median of `v` (NaN when empty).
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
    let copy = |shape: String, t: Timed| record("copy", be.name(), DType::F32, shape, t, 0.0, 2.0 * (n * 4) as f64, reps);
    let t = timed(be, reps, &mut || be.copy(&src, &mut dst))?;
    let mut out = vec![copy(format!("{} MiB", bytes >> 20), t)];
    if be.copy_kernel(&src, &mut dst)? {
        let t = timed(be, reps, &mut || be.copy_kernel(&src, &mut dst).map(|_| ()))?;
        out.push(copy(format!("{} MiB kernel", bytes >> 20), t));
    }
    Ok(out)
}

/// The fused GEMM's operands and output on a device: the set-up of [`bench_gemm`] and of the
/// criterion GEMM bench.
pub struct GemmBench<B> {
    a: B,
    b: B,
    bias: Option<B>,
    r: Option<B>,
    c: B,
}

impl<B> GemmBench<B> {
    /// Uploads the inputs and allocates C.
    pub fn new<Be: Backend<Buf = B>>(be: &Be, desc: &Gemm, x: &GemmInputs) -> Result<Self> {
        Ok(Self {
            a: be.upload(&x.a)?,
            b: be.upload(&x.b)?,
            bias: x.bias.as_ref().map(|t| be.upload(t)).transpose()?,
            r: x.r.as_ref().map(|t| be.upload(t)).transpose()?,
            c: be.alloc(x.a.dtype, desc.c().required_len(desc.batch))?,
        })
    }

    /// One call of the GEMM.
    pub fn run<Be: Backend<Buf = B>>(&mut self, be: &Be, desc: &Gemm) -> Result<()> {
        be.gemm(desc, &self.a, &self.b, self.bias.as_ref(), self.r.as_ref(), &mut self.c, None)
    }
}

/// The fused GEMM on the given inputs (seeded random values; see [`GemmInputs::random`]).
pub fn bench_gemm<Be: Backend>(be: &Be, name: &str, desc: &Gemm, x: &GemmInputs, reps: usize) -> Result<BenchRecord> {
    let mut g = GemmBench::new(be, desc, x)?;
    let t = timed(be, reps, &mut || g.run(be, desc))?;
    Ok(record("gemm", be.name(), x.a.dtype, name.into(), t, desc.flops(), desc.min_bytes(x.a.dtype), reps))
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

/// A fused noisy SGD-with-momentum step over `n` seeded f32 parameters split into `tensors`
/// tensors of mixed sizes (f32 gradients): the set-up of [`bench_noisy_sgd`] and of the
/// criterion optimizer bench.
pub struct SgdBench<B> {
    list: crate::ops::optim::TensorList,
    opt: crate::ops::optim::NoisyOptimizer,
    param: B,
    grad: B,
    state: Vec<B>,
}

impl<B> SgdBench<B> {
    /// `n` seeded parameters, gradients and momenta in `tensors` tensors of mixed sizes.
    pub fn new<Be: Backend<Buf = B>>(be: &Be, n: usize, tensors: usize) -> Result<Self> {
        use crate::ops::optim::{NoisyOptimizer, TensorList};
        // Mixed sizes summing to n: tensor k gets a share proportional to (k % 7 + 1).
        let weights: Vec<usize> = (0..tensors).map(|k| k % 7 + 1).collect();
        let total_w: usize = weights.iter().sum();
        let mut lens: Vec<usize> = weights.iter().map(|w| n * w / total_w).collect();
        let assigned: usize = lens.iter().sum();
        if let Some(last) = lens.last_mut() {
            *last += n - assigned;
        }
        let r = |s: u64| be.upload(&crate::HostTensor::random(DType::F32, vec![n], s));
        Ok(Self { list: TensorList::new(lens), opt: NoisyOptimizer::sgd(1e-3, 0.9, 42), param: r(1)?, grad: r(2)?, state: vec![r(3)?] })
    }

    /// One fused optimizer step over the list.
    pub fn step<Be: Backend<Buf = B>>(&mut self, be: &Be) -> Result<()> {
        self.opt.step(be, &self.list, &mut self.param, &self.grad, &mut self.state)
    }
}

/// One fused noisy SGD-with-momentum step over `n` f32 parameters split into `tensors` tensors
/// (20 bytes move per parameter: read p, g, m; write p, m).
pub fn bench_noisy_sgd<Be: Backend>(be: &Be, n: usize, tensors: usize, reps: usize) -> Result<BenchRecord> {
    let mut sgd = SgdBench::new(be, n, tensors)?;
    let t = timed(be, reps, &mut || sgd.step(be))?;
    let shape = format!("sgd momentum, {}M params in {tensors} tensors", n / 1_000_000);
    Ok(record("noisy_optimizer", be.name(), DType::F32, shape, t, 0.0, 20.0 * n as f64, reps))
}

/// The median device time of a call and the device memory it took at its peak.
#[derive(Clone, Copy, Debug)]
struct Timed {
    median_s: f64,
    peak_mem_bytes: Option<u64>,
}

fn timed<Be: Backend>(be: &Be, reps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<Timed> {
    // Earlier work's frees settle first (CUDA's are stream-ordered).
    be.synchronize()?;
    let before = be.memory_use();
    be.reset_peak_memory();
    let median_s = median(&be.time_runs(reps, f)?);
    let peak_mem_bytes = before.zip(be.memory_use()).map(|(b, a)| a.peak.saturating_sub(b.current));
    Ok(Timed { median_s, peak_mem_bytes })
}

/// A record of `op` with no roofline or baseline yet.
#[allow(clippy::too_many_arguments)]
fn record(op: &str, be: &str, dtype: DType, shape: String, t: Timed, flops: f64, bytes: f64, reps: usize) -> BenchRecord {
    let Timed { median_s, peak_mem_bytes } = t;
    BenchRecord { op: op.into(), backend: be.into(), dtype, shape, median_s, flops, bytes, reps, roofline_fraction: None, baseline: None, baseline_s: None, peak_mem_bytes }
}

/// RePaViT's merged inference (two fused GEMMs) and the dense FFN it replaces on the same seeded
/// input: the set-up of [`bench_repavit`] and of the criterion FFN bench.
pub struct RepavitBench<B> {
    /// The merged inference.
    pub merged: crate::ops::ffn::RepavitMerged,
    /// The dense FFN of the same sizes.
    pub dense: crate::ops::ffn::DenseFfn,
    x: B,
    merged_w: [B; 3],
    dense_w: crate::ops::ffn::FfnWeights<B>,
}

impl<B> RepavitBench<B> {
    /// Seeded weights and input; `theta` the idle ratio.
    pub fn new<Be: Backend<Buf = B>>(be: &Be, tokens: usize, c: usize, h: usize, theta: f64, dtype: DType) -> Result<Self> {
        use crate::ops::ffn::{active_channels, DenseFfn, FfnWeights, RepavitMerged};
        let a = active_channels(h, theta)?;
        let r = |n: usize, s: u64| be.upload(&crate::HostTensor::random(dtype, vec![n], s));
        let merged = RepavitMerged {
            dim: c,
            active: a,
            wu: crate::HostTensor::random(dtype, vec![a + c, c], 2),
            bu: crate::HostTensor::random(dtype, vec![a + c], 3),
            wo: crate::HostTensor::random(dtype, vec![c, a], 4),
        };
        let merged_w = [be.upload(&merged.wu)?, be.upload(&merged.bu)?, be.upload(&merged.wo)?];
        let dense = DenseFfn { tokens, dim: c, hidden: h, act: crate::Activation::GeluErf, residual: true };
        let dense_w = FfnWeights { w1: r(h * c, 5)?, b1: r(h, 6)?, w2: r(c * h, 7)?, b2: r(c, 8)? };
        Ok(Self { merged, dense, x: r(tokens * c, 1)?, merged_w, dense_w })
    }

    /// One merged inference call.
    pub fn run_merged<Be: Backend<Buf = B>>(&self, be: &Be) -> Result<()> {
        let [wu, bu, wo] = &self.merged_w;
        self.merged.forward(be, self.dense.tokens, &self.x, (wu, bu, wo)).map(|_| ())
    }

    /// One dense FFN call.
    pub fn run_dense<Be: Backend<Buf = B>>(&self, be: &Be) -> Result<()> {
        self.dense.forward(be, &self.x, &self.dense_w, false).map(|_| ())
    }

    /// 2·T·C·(2a + C): the merged form's two products.
    pub fn merged_flops(&self) -> f64 {
        let (t, c, a) = (self.dense.tokens as f64, self.merged.dim as f64, self.merged.active as f64);
        2.0 * t * c * (2.0 * a + c)
    }

    /// 4·T·C·H: the dense FFN's two products.
    pub fn dense_flops(&self) -> f64 {
        4.0 * (self.dense.tokens * self.dense.dim * self.dense.hidden) as f64
    }
}

/// RePaViT merged inference against the dense FFN it replaces, same backend and dtype (the dense
/// FFN's time is the record's baseline).
pub fn bench_repavit<Be: Backend>(be: &Be, tokens: usize, c: usize, h: usize, theta: f64, dtype: DType, reps: usize) -> Result<BenchRecord> {
    let f = RepavitBench::new(be, tokens, c, h, theta, dtype)?;
    let t_merged = timed(be, reps, &mut || f.run_merged(be))?;
    let t_dense = timed(be, reps, &mut || f.run_dense(be))?;
    let a = f.merged.active;
    let bytes = (tokens * (c + (a + c) + (a + c) + c) + (a + c) * c + c * a) as f64 * dtype.size() as f64;
    let mut rec = record("repavit", be.name(), dtype, format!("merged T{tokens} C{c} H{h} θ={theta}"), t_merged, f.merged_flops(), bytes, reps);
    rec.baseline = Some("ffkern dense FFN".into());
    rec.baseline_s = Some(t_dense.median_s);
    Ok(rec)
}

/// BatchNorm over tokens in training, the RePaViT training form's norm: the forward with batch
/// statistics and the running update, then the backward (dx, dγ, dβ), on seeded inputs: the
/// set-up of [`bench_batchnorm`] and of the criterion FFN bench.
pub struct BatchNormBench<B> {
    /// Rows and channels.
    pub desc: crate::ops::ffn::BatchNormDesc,
    state: crate::ops::ffn::BatchNormState<B>,
    x: B,
    dy: B,
}

impl<B> BatchNormBench<B> {
    /// Seeded γ, β, running statistics, input and output gradient.
    pub fn new<Be: Backend<Buf = B>>(be: &Be, rows: usize, channels: usize, dtype: DType) -> Result<Self> {
        let r = |s: u64| crate::HostTensor::random(DType::F32, vec![channels], s).data;
        let bn = crate::ops::ffn::BatchNorm { gamma: r(11), beta: r(12), mean: r(13), var: vec![1.0; channels], eps: 1e-5 };
        let desc = crate::ops::ffn::BatchNormDesc { rows, channels, eps: bn.eps, momentum: 0.1 };
        let t = |s: u64| be.upload(&crate::HostTensor::random(dtype, vec![rows * channels], s));
        Ok(Self { desc, state: crate::ops::ffn::BatchNormState::upload(be, &bn)?, x: t(14)?, dy: t(15)? })
    }

    /// One training forward and its backward.
    pub fn step<Be: Backend<Buf = B>>(&mut self, be: &Be) -> Result<()> {
        self.state.forward(be, &self.desc, &self.x, true)?;
        self.state.backward(be, &self.desc, &self.x, &self.dy, None).map(|_| ())
    }

    /// The bytes a step must move at least: x read and y written by the forward, x and dy read
    /// and dx written by the backward.
    pub fn bytes(&self, dtype: DType) -> f64 {
        5.0 * (self.desc.rows * self.desc.channels * dtype.size()) as f64
    }
}

/// BatchNorm's training forward and backward (see [`BatchNormBench`]); the roofline is the copy
/// bandwidth.
pub fn bench_batchnorm<Be: Backend>(be: &Be, rows: usize, channels: usize, dtype: DType, reps: usize) -> Result<BenchRecord> {
    let mut f = BatchNormBench::new(be, rows, channels, dtype)?;
    let t = timed(be, reps, &mut || f.step(be))?;
    Ok(record("batchnorm", be.name(), dtype, format!("train fwd+bwd R{rows} C{channels}"), t, 0.0, f.bytes(dtype), reps))
}

/// A structured FFN block `S2(GELU(S1(x) + b1)) + b2` (inference: no pre-activation saved) and the
/// dense FFN of the same sizes on the same seeded input: the set-up of [`bench_structured`] and
/// of the criterion structured bench.
pub struct StructuredBench<B> {
    /// The structured FFN block.
    pub block: crate::ops::structured::StructuredFfn,
    /// The dense FFN of the same sizes.
    pub dense: crate::ops::ffn::DenseFfn,
    x: B,
    factors: [B; 4],
    biases: [B; 2],
    dense_w: crate::ops::ffn::FfnWeights<B>,
}

impl<B> StructuredBench<B> {
    /// Seeded factors, biases and input, and the dense weights of the same sizes.
    pub fn new<Be: Backend<Buf = B>>(be: &Be, tokens: usize, s1: crate::ops::structured::Structured, s2: crate::ops::structured::Structured, dtype: DType) -> Result<Self> {
        use crate::ops::ffn::{DenseFfn, FfnWeights};
        use crate::ops::structured::StructuredFfn;
        let r = |n: usize, s: u64| be.upload(&crate::HostTensor::random(dtype, vec![n], s));
        let (c, h) = (s1.inp(), s1.out());
        let ((a1, b1), (a2, b2)) = (s1.factor_lens(), s2.factor_lens());
        Ok(Self {
            block: StructuredFfn { tokens, s1, s2, act: crate::Activation::GeluErf },
            dense: DenseFfn { tokens, dim: c, hidden: h, act: crate::Activation::GeluErf, residual: false },
            x: r(tokens * c, 1)?,
            factors: [r(a1, 2)?, r(b1, 3)?, r(a2, 4)?, r(b2, 5)?],
            biases: [r(h, 6)?, r(c, 7)?],
            dense_w: FfnWeights { w1: r(h * c, 8)?, b1: r(h, 9)?, w2: r(c * h, 10)?, b2: r(c, 11)? },
        })
    }

    /// One structured FFN call.
    pub fn run_structured<Be: Backend<Buf = B>>(&self, be: &Be) -> Result<()> {
        let [f0, f1, f2, f3] = &self.factors;
        self.block.infer(be, &self.x, [f0, f1, f2, f3], &self.biases[0], &self.biases[1]).map(|_| ())
    }

    /// One dense FFN call.
    pub fn run_dense<Be: Backend<Buf = B>>(&self, be: &Be) -> Result<()> {
        self.dense.forward(be, &self.x, &self.dense_w, false).map(|_| ())
    }

    /// 2·T·(parameters of S1 and S2).
    pub fn flops(&self) -> f64 {
        2.0 * self.block.tokens as f64 * (self.block.s1.params() + self.block.s2.params()) as f64
    }
}

/// A structured FFN block against the dense FFN of the same sizes.
pub fn bench_structured<Be: Backend>(be: &Be, tokens: usize, s1: crate::ops::structured::Structured, s2: crate::ops::structured::Structured, label: &str, dtype: DType, reps: usize) -> Result<BenchRecord> {
    let f = StructuredBench::new(be, tokens, s1, s2, dtype)?;
    let t_s = timed(be, reps, &mut || f.run_structured(be))?;
    let t_d = timed(be, reps, &mut || f.run_dense(be))?;
    let (c, h) = (s1.inp(), s1.out());
    let share = (s1.params() + s2.params()) as f64 / (2 * c * h) as f64;
    let mut rec = record("structured", be.name(), dtype, format!("{label} T{tokens} d{c} ({:.0}% params)", 100.0 * share), t_s, f.flops(), 0.0, reps);
    rec.baseline = Some("ffkern dense FFN".into());
    rec.baseline_s = Some(t_d.median_s);
    Ok(rec)
}

/// Seeded bf16 q, k, v and do, an f32 state (and z), and the output of one linear-attention
/// descriptor on a device: the set-up of [`bench_linattn`] and of the criterion bench. The state
/// is the forward's initial and final state in place; the backward starts from zero states.
pub struct LinattnBench<B> {
    /// The shape.
    pub desc: crate::ops::linattn::LinearAttention,
    q: B,
    k: B,
    v: B,
    d_o: B,
    state: B,
    z: B,
    o: B,
    s0: B,
    z0: B,
}

impl<B> LinattnBench<B> {
    /// Seeded inputs for `desc`.
    pub fn new<Be: Backend<Buf = B>>(be: &Be, desc: crate::ops::linattn::LinearAttention) -> Result<Self> {
        let d = &desc;
        let r = |n: usize, dt: DType, s: u64| be.upload(&crate::HostTensor::random(dt, vec![n], s));
        Ok(Self {
            q: r(d.qk_len(), DType::BF16, 1)?,
            k: r(d.qk_len(), DType::BF16, 2)?,
            v: r(d.vo_len(), DType::BF16, 3)?,
            d_o: r(d.vo_len(), DType::BF16, 6)?,
            state: r(d.state_len(), DType::F32, 4)?,
            z: r(d.z_len(), DType::F32, 5)?,
            o: be.alloc(DType::BF16, d.vo_len())?,
            s0: be.alloc(DType::F32, d.state_len())?,
            z0: be.alloc(DType::F32, d.z_len())?,
            desc,
        })
    }

    /// The fused recurrent forward (with seq 1: the decode step).
    pub fn recurrent<Be: Backend<Buf = B>>(&mut self, be: &Be) -> Result<()> {
        self.desc.recurrent(be, &self.q, &self.k, &self.v, &mut self.state, &mut self.z, 0, &mut self.o)
    }

    /// The chunked forward.
    pub fn chunk<Be: Backend<Buf = B>>(&mut self, be: &Be) -> Result<()> {
        self.desc.chunk(be, &self.q, &self.k, &self.v, &mut self.state, &mut self.z, 0, &mut self.o)
    }

    /// The fused recurrent backward from zero initial states.
    pub fn backward<Be: Backend<Buf = B>>(&self, be: &Be) -> Result<()> {
        self.desc.backward(be, &self.q, &self.k, &self.v, &self.o, &self.d_o, &self.s0, &self.z0, [None, None], 0).map(|_| ())
    }

    /// The chunked backward from zero initial states.
    pub fn chunk_backward<Be: Backend<Buf = B>>(&self, be: &Be) -> Result<()> {
        self.desc.chunk_backward(be, &self.q, &self.k, &self.v, &self.o, &self.d_o, &self.s0, &self.z0, [None, None], 0).map(|_| ())
    }
}

/// The decode step of `linattn_decode_shape` (one token per sequence, identity map, no
/// normalizer).
pub fn linattn_decode_desc(small: bool) -> crate::ops::linattn::LinearAttention {
    let (b, h, kd) = crate::registry::linattn_decode_shape(small);
    linattn_desc(b, 1, h, kd)
}

/// B × T × H heads of K = V = `d`, identity map, default scale, no normalizer: the bench shapes.
pub fn linattn_desc(batch: usize, seq: usize, heads: usize, d: usize) -> crate::ops::linattn::LinearAttention {
    use crate::ops::linattn::{FeatureMap, LinearAttention, Normalize};
    LinearAttention { batch, seq, heads, k: d, v: d, feature_map: FeatureMap::Identity, scale: None, normalize: Normalize::None }
}

/// The linear-attention decode step (one token per sequence, state `[B, H, K, V]` f32 read and
/// written once: the bytes that count) and every form's scaling in T over `seqs` (B1 H4 D64).
pub fn bench_linattn<Be: Backend>(be: &Be, small: bool, seqs: &[usize], reps: usize) -> Result<Vec<BenchRecord>> {
    let mut out = Vec::new();
    let mut dec = LinattnBench::new(be, linattn_decode_desc(small))?;
    let t = timed(be, reps, &mut || dec.recurrent(be))?;
    let d = &dec.desc;
    out.push(record("linear_attn", be.name(), DType::BF16, format!("decode step B{} H{} K{} V{}", d.batch, d.heads, d.k, d.v), t, 0.0, 2.0 * (d.state_len() * 4) as f64, reps));
    let forms = ["recurrent", "chunk", "recurrent backward", "chunk backward"];
    let mut scaling: Vec<[Timed; 4]> = Vec::new();
    for &seq in seqs {
        let mut l = LinattnBench::new(be, linattn_desc(1, seq, 4, 64))?;
        let flops = 4.0 * (seq * 4 * 64 * 64) as f64;
        let t = [
            timed(be, reps, &mut || l.recurrent(be))?,
            timed(be, reps, &mut || l.chunk(be))?,
            timed(be, reps, &mut || l.backward(be))?,
            timed(be, reps, &mut || l.chunk_backward(be))?,
        ];
        for (i, (form, t)) in forms.iter().zip(t).enumerate() {
            let flops = if i < 2 { flops } else { 2.0 * flops };
            out.push(record("linear_attn", be.name(), DType::BF16, format!("{form} B1 T{seq} H4 D64"), t, flops, 0.0, reps));
        }
        scaling.push(t);
    }
    // The issue's scaling criteria: time and peak device memory linear in T (ratios ≤ 2.3 when T
    // doubles).
    for (w, s) in scaling.windows(2).zip(seqs.windows(2)) {
        for (i, form) in forms.iter().enumerate() {
            let mem = match (w[0][i].peak_mem_bytes, w[1][i].peak_mem_bytes) {
                (Some(a), Some(b)) if a > 0 => format!(", peak memory {:.2}x", b as f64 / a as f64),
                _ => String::new(),
            };
            eprintln!("linear_attn {form} on {}, T {} -> {}: time {:.2}x{mem}", be.name(), s[0], s[1], w[1][i].median_s / w[0][i].median_s);
        }
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
    let mut l = LinattnBench::new(be, linattn_desc(8, seq, 32, 128))?;
    let reps = reps.min(5);
    let flops = 4.0 * (8 * seq * 32 * 128 * 128) as f64;
    let row = |form: &str, t: Timed, flops: f64| record("linear_attn", be.name(), DType::BF16, format!("{form} B8 T{seq} H32 D128"), t, flops, 0.0, reps);
    let mut out = vec![row("chunk fwd", timed(be, reps, &mut || l.chunk(be))?, flops)];
    let t = timed(be, reps, &mut || {
        l.chunk(be)?;
        l.chunk_backward(be)
    })?;
    out.push(row("chunk fwd+bwd", t, 3.0 * flops));
    // The recurrent form only at the shorter length (its scan is the slow reference here).
    if seq <= 4096 {
        let t = timed(be, reps, &mut || {
            l.recurrent(be)?;
            l.backward(be)
        })?;
        out.push(row("recurrent fwd+bwd", t, 3.0 * flops));
    }
    Ok(out)
}

/// Seeded node features `[N, D]` and edge messages `[E, D]` for the graph primitives, each in as
/// many copies as fit 128 MiB (at most 8), so that a bench's repeats read from device memory, not
/// from a cache warmed by the repeat before: the set-up of [`bench_graph`] and of the criterion
/// graph bench. Each call takes the next copy.
pub struct GraphBench<B> {
    /// D, the feature width.
    pub dim: usize,
    xs: Vec<B>,
    ms: Vec<B>,
    next: usize,
}

/// Bytes of input copies that a bench cycles through (over twice an H100's or H200's L2).
const ROTATE_BYTES: usize = 128 << 20;

impl<B> GraphBench<B> {
    /// Inputs for `n` nodes and `e` edges; seeds `seed` (features) and `seed + 1` (messages).
    pub fn new<Be: Backend<Buf = B>>(be: &Be, n: usize, e: usize, dim: usize, dtype: DType, seed: u64) -> Result<Self> {
        let rotating = |len: usize, seed: u64| -> Result<Vec<B>> {
            let copies = (ROTATE_BYTES / (len * dtype.size()).max(1)).clamp(1, 8);
            (0..copies).map(|i| be.upload(&crate::HostTensor::random(dtype, vec![len], seed + 1000 * i as u64))).collect()
        };
        Ok(Self { dim, xs: rotating(n * dim, seed)?, ms: rotating(e * dim, seed + 1)?, next: 0 })
    }

    /// The first copy of the node features and of the edge messages.
    pub fn first(&self) -> (&B, &B) {
        (&self.xs[0], &self.ms[0])
    }

    /// spmm on the next copy of the node features.
    pub fn spmm<Be: Backend<Buf = B>>(&mut self, be: &Be, g: &crate::ops::graph::DeviceGraph<B>) -> Result<()> {
        self.next += 1;
        crate::ops::graph::spmm(be, g, &self.xs[self.next % self.xs.len()], None, self.dim).map(|_| ())
    }

    /// segment_sum on the next copy of the edge messages.
    pub fn segment_sum<Be: Backend<Buf = B>>(&mut self, be: &Be, g: &crate::ops::graph::DeviceGraph<B>) -> Result<()> {
        self.next += 1;
        crate::ops::graph::segment_reduce(be, g, &self.ms[self.next % self.ms.len()], self.dim, crate::ops::graph::Reduce::Sum).map(|_| ())
    }

    /// gather_rows on the next copy of the node features.
    pub fn gather<Be: Backend<Buf = B>>(&mut self, be: &Be, g: &crate::ops::graph::DeviceGraph<B>) -> Result<()> {
        self.next += 1;
        crate::ops::graph::gather_rows(be, g, &self.xs[self.next % self.xs.len()], self.dim).map(|_| ())
    }
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
    let mut inputs = GraphBench::new(be, n, e, dim, dtype, 1)?;
    let shape = format!("N{n} E{e} D{dim}");
    let mut out = graph_rows(be, dtype, &g, &dg, &mut inputs, true, reps)?;
    // The issue's skewed graph: a million edges over 200,000 nodes at D 128 (peers.py's shape).
    // An adapter whose buffers cannot hold it skips these rows, with a note.
    if !small {
        let (n, e, dim) = (200_000, 1_000_000, 128);
        let rows = (|| {
            let g = Graph::random_uniform(n, e, 13)?;
            let dg = DeviceGraph::upload(be, &g)?;
            let mut inputs = GraphBench::new(be, n, e, dim, dtype, 9)?;
            graph_rows(be, dtype, &g, &dg, &mut inputs, false, reps)
        })();
        match rows {
            Ok(rows) => out.extend(rows),
            Err(err) => eprintln!("graph bench: the 1M-edge rows skipped on {}: {err}", be.name()),
        }
    }
    // The edge MLP with the concat trick against gathering both endpoints and three [E, D] GEMMs.
    let (x, m) = inputs.first();
    let gt = DeviceGraph::upload(be, &g.transposed())?;
    let mlp = EdgeMlp { edge_dim: dim, node_dim: dim, out_dim: dim, act: Activation::Silu };
    let w = EdgeMlpWeights { w_e: r(dim * dim, 3)?, w_s: r(dim * dim, 4)?, w_d: r(dim * dim, 5)?, b: r(dim, 6)? };
    let t_fused = timed(be, reps, &mut || mlp.forward(be, &dg, m, x, &w).map(|_| ()))?;
    let t_unfused = timed(be, reps, &mut || mlp.forward_as(EdgeMlpForm::Materialized, be, &dg, &gt, m, x, &w).map(|_| ()))?;
    let mut rec = record("graph", be.name(), dtype, format!("edge_mlp_sum {shape}"), t_fused, 2.0 * (e + 2 * n) as f64 * (dim * dim) as f64, 0.0, reps);
    rec.baseline = Some("ffkern gather + [E, 3D]·W GEMMs".into());
    rec.baseline_s = Some(t_unfused.median_s);
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
    rec.baseline_s = Some(t_unfused.median_s);
    out.push(rec);
    Ok(out)
}

/// spmm, segment_sum (and gather) over the uniform graph `g`, then spmm and segment_sum over a
/// power-law graph with the same N and E against them, each repeat on the next copy of its input.
/// GB/s counts every gathered row as read, as peers.py does.
fn graph_rows<Be: Backend>(be: &Be, dtype: DType, g: &crate::ops::graph::Graph, dg: &crate::ops::graph::DeviceGraph<Be::Buf>, inputs: &mut GraphBench<Be::Buf>, gather: bool, reps: usize) -> Result<Vec<BenchRecord>> {
    use crate::ops::graph::{DeviceGraph, Graph};
    let (n, e, dim) = (g.num_nodes, g.num_edges(), inputs.dim);
    let bytes = ((e + n) * dim) as f64 * dtype.size() as f64;
    let shape = format!("N{n} E{e} D{dim}");
    let mut out = Vec::new();
    let t_spmm = timed(be, reps, &mut || inputs.spmm(be, dg))?;
    out.push(record("graph", be.name(), dtype, format!("spmm {shape}"), t_spmm, 0.0, bytes, reps));
    let t_sum = timed(be, reps, &mut || inputs.segment_sum(be, dg))?;
    out.push(record("graph", be.name(), dtype, format!("segment_sum {shape}"), t_sum, 0.0, bytes, reps));
    if gather {
        // E rows gathered, E rows written.
        let t = timed(be, reps, &mut || inputs.gather(be, dg))?;
        out.push(record("graph", be.name(), dtype, format!("gather {shape}"), t, 0.0, (2 * e * dim) as f64 * dtype.size() as f64, reps));
    }
    // The same N and E with power-law in-degrees (a hub of ~E/ln N edges), against the uniform graph.
    let gp = Graph::power_law(n, e, 12)?;
    let hub = (0..n).map(|i| gp.row_ptr[i + 1] - gp.row_ptr[i]).max().unwrap_or(0);
    let dgp = DeviceGraph::upload(be, &gp)?;
    for (kind, t_uniform) in [("spmm", t_spmm), ("segment_sum", t_sum)] {
        let t = timed(be, reps, &mut || if kind == "spmm" { inputs.spmm(be, &dgp) } else { inputs.segment_sum(be, &dgp) })?;
        let mut rec = record("graph", be.name(), dtype, format!("{kind} {shape} power law (hub {hub})"), t, 0.0, bytes, reps);
        rec.baseline = Some("ffkern, uniform in-degree".into());
        rec.baseline_s = Some(t_uniform.median_s);
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
            peak_mem_bytes: None,
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
