//! `ffkern`: info, list, check, bench and run (see README.md).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ffkern::bench::{self, BenchRecord};
use ffkern::check::{self, CheckRecord};
use ffkern::ops::gemm::GemmInputs;
use ffkern::{with_backend, ALayout, Activation, BLayout, Backend, DType, Device, Error, Gemm, HostTensor, Result};
use serde_json::json;

#[derive(Parser)]
#[command(name = "ffkern", version, about = "Handwritten GPU kernels for efficient feed-forward architectures: check them against the CPU reference and time them")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Backends, adapters, devices, features and limits.
    Info,
    /// Every op with its backends and dtypes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Every op × backend × dtype × shape against the CPU reference (exit code 1 on any failure).
    Check {
        /// Op families, comma-separated (default: every one; `ffkern list` names them).
        #[arg(long)]
        op: Option<String>,
        /// cpu, wgpu or cuda (default: every backend present).
        #[arg(long)]
        backend: Option<String>,
        #[arg(long)]
        dtype: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Device-timed benchmarks with the run's own ceilings and vendor baselines.
    Bench {
        /// Op families, comma-separated (default: every one; `ffkern list` names them).
        #[arg(long)]
        op: Option<String>,
        /// cpu, wgpu or cuda (default: the best backend present).
        #[arg(long)]
        backend: Option<String>,
        #[arg(long)]
        dtype: Option<String>,
        /// Timed repeats per case (median reported).
        #[arg(long, default_value_t = 20)]
        reps: usize,
        /// Small shapes (the default on CPU adapters such as lavapipe).
        #[arg(long)]
        quick: bool,
        /// Full shapes even on a CPU adapter.
        #[arg(long, conflicts_with = "quick")]
        full: bool,
        /// Sequence lengths of the linear-attention scaling cases, comma-separated (default
        /// 1024,2048 with small shapes, else 4096,8192).
        #[arg(long, value_delimiter = ',')]
        seq: Vec<usize>,
        #[arg(long)]
        json: bool,
        /// Also write the results as an SVG bar chart (fraction of the roofline per case, the
        /// baseline beside it) to this file.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<std::path::PathBuf>,
        /// Skip the structured op's pre-merge crossover measurement (the FFN rows alone).
        #[arg(long)]
        no_crossover: bool,
    },
    /// Runs one op on tensors from a safetensors file and writes the result to another.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(subcommand)]
    op: RunOp,
}

/// Linear-attention options (SPEC §5).
#[derive(clap::Args)]
struct LinAttnOpts {
    /// identity, elu1, relu
    #[arg(long, default_value = "identity")]
    feature_map: String,
    /// Default K^-½.
    #[arg(long)]
    scale: Option<f32>,
    /// none, normalizer, count
    #[arg(long, default_value = "none")]
    normalize: String,
    #[arg(long, default_value_t = 1e-6)]
    eps: f32,
}

/// Input file, output file, backend.
#[derive(clap::Args)]
struct Io {
    #[arg(long)]
    input: std::path::PathBuf,
    #[arg(long)]
    output: std::path::PathBuf,
    #[arg(long)]
    backend: Option<String>,
}

#[derive(Subcommand)]
enum RunOp {
    /// C = act(α·A·Bᵀ + bias) + β·R (SPEC §1). Tensors: `a` [M,K] (or [batch,M,K]), `b` [N,K]
    /// (or [K,N] with --b-layout kn; a leading batch dim is allowed), optional `bias` [N] and `r`
    /// [M,N]; all of one dtype (F32, F16 or BF16). Writes `c` (and `z`, the pre-activation, with
    /// --save-z).
    Gemm {
        #[arg(long)]
        input: std::path::PathBuf,
        #[arg(long)]
        output: std::path::PathBuf,
        #[arg(long)]
        backend: Option<String>,
        /// identity, relu, silu, gelu_erf, gelu_tanh, leaky_relu (slope 0.2)
        #[arg(long, default_value = "identity")]
        act: String,
        /// Apply the activation to the first N columns only (default: all).
        #[arg(long)]
        act_cols: Option<usize>,
        #[arg(long, default_value_t = 1.0)]
        alpha: f32,
        #[arg(long, default_value_t = 1.0)]
        beta: f32,
        /// nk (the PyTorch weight layout) or kn
        #[arg(long, default_value = "nk")]
        b_layout: String,
        #[arg(long)]
        save_z: bool,
    },
    /// One noisy SGD step (SPEC §7): tensors `param` (f32), `grad` (f32, f16 or bf16) and, with
    /// --momentum > 0, optionally `momentum` (f32; zeros when absent). Writes `param` and
    /// `momentum`. The noise is N(0, η/(1+t)^γ) from Philox with --seed at --step.
    #[command(name = "noisy_sgd")]
    NoisySgd {
        #[arg(long)]
        input: std::path::PathBuf,
        #[arg(long)]
        output: std::path::PathBuf,
        #[arg(long)]
        backend: Option<String>,
        #[arg(long)]
        lr: f32,
        #[arg(long, default_value_t = 0.01)]
        eta: f64,
        #[arg(long, default_value_t = 0.55)]
        gamma: f64,
        /// The optimizer step t (0 on the first step).
        #[arg(long, default_value_t = 0)]
        step: u64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 0.0)]
        momentum: f32,
        #[arg(long)]
        nesterov: bool,
        /// Decoupled weight decay (p -= lr·wd·p).
        #[arg(long, default_value_t = 0.0)]
        weight_decay: f32,
    },
    /// Dense FFN (SPEC §2): tensors `x` [T, C], `w1` [H, C], `b1` [H], `w2` [C, H], `b2` [C], one
    /// dtype. Writes `y` = W2·act(W1·x + b1) + b2 (+ x with --residual).
    #[command(name = "ffn")]
    Ffn {
        #[command(flatten)]
        io: Io,
        /// identity, relu, silu, gelu_erf, gelu_tanh, leaky_relu (slope 0.2)
        #[arg(long, default_value = "gelu_erf")]
        act: String,
        #[arg(long)]
        residual: bool,
    },
    /// RePaViT reparameterization (SPEC §3): tensors `w1` [H, C], `b1`, `w2` [C, H], `b2`, and
    /// `bn1_gamma`, `bn1_beta`, `bn1_mean`, `bn1_var` (C) and `bn2_*` (H), all f32. Writes the
    /// merged weights `wu` [a + C, C], `bu` [a + C], `wo` [C, a] in --dtype.
    #[command(name = "repavit_reparam")]
    RepavitReparam {
        #[command(flatten)]
        io: Io,
        /// Idle ratio θ: the first a = ceil(H·(1 − θ)) hidden channels are active.
        #[arg(long, default_value_t = 0.75)]
        theta: f64,
        #[arg(long, default_value_t = 1e-5)]
        eps: f32,
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// RePaViT merged inference (SPEC §3): tensors `x` [T, C] and the merged `wu`, `bu`, `wo`
    /// (from repavit_reparam), one dtype. Writes `y`.
    #[command(name = "repavit_ffn")]
    RepavitFfn {
        #[command(flatten)]
        io: Io,
    },
    /// LowRank layer (SPEC §4): tensors `x` [T, in], `v` [r, in], `u` [out, r]. Writes `y` = x·(U·V)ᵀ.
    #[command(name = "lowrank")]
    Lowrank {
        #[command(flatten)]
        io: Io,
        /// Self-guided mixing (SPEC §4): with a tensor `wg` [out, in], writes
        /// y = α·x·wgᵀ + (1 − α)·S(x); α = 0 skips the dense branch.
        #[arg(long)]
        alpha: Option<f32>,
    },
    /// BlockDense layer (SPEC §4): tensors `x` [T, in], `d` [nb, r/nb, in/nb], `l` [out, r]. Writes `y`.
    #[command(name = "blockdense")]
    Blockdense {
        #[command(flatten)]
        io: Io,
        /// Self-guided mixing (SPEC §4): with a tensor `wg` [out, in], writes
        /// y = α·x·wgᵀ + (1 − α)·S(x); α = 0 skips the dense branch.
        #[arg(long)]
        alpha: Option<f32>,
    },
    /// BlockShuffle layer (SPEC §4): tensors `x` [T, in], `d1` [k, q, in/k], `d2` [k, out/k, q]. Writes `y`.
    #[command(name = "blockshuffle")]
    Blockshuffle {
        #[command(flatten)]
        io: Io,
        /// Self-guided mixing (SPEC §4): with a tensor `wg` [out, in], writes
        /// y = α·x·wgᵀ + (1 − α)·S(x); α = 0 skips the dense branch.
        #[arg(long)]
        alpha: Option<f32>,
    },
    /// Causal linear attention (SPEC §5): tensors `q`, `k` [B, T, H, K], `v` [B, T, H, V] (one
    /// dtype), optional `initial_state` [B, H, K, V] (f32) and `initial_z` [B, H, K] (f32, for
    /// --normalize normalizer). Writes `o` [B, T, H, V], `final_state` and `final_z`.
    #[command(name = "linear_attn")]
    LinearAttn {
        #[command(flatten)]
        io: Io,
        #[command(flatten)]
        opts: LinAttnOpts,
        /// recurrent (one fused scan per sequence and head) or chunk (chunks of 64 rows as masked
        /// matrix products from passed-along start states); the same result
        #[arg(long, default_value = "recurrent")]
        mode: String,
    },
    /// One decode step (SPEC §5): tensors `q`, `k` [B, H, K], `v` [B, H, V], `state` [B, H, K, V]
    /// (f32), optional `z` [B, H, K] (f32). Writes `o` [B, H, V] and the updated `state` and `z`.
    #[command(name = "linear_attn_decode")]
    LinearAttnDecode {
        #[command(flatten)]
        io: Io,
        #[command(flatten)]
        opts: LinAttnOpts,
        /// Positions already attended (for --normalize count).
        #[arg(long, default_value_t = 0)]
        position: u32,
    },
    /// One graph primitive (SPEC §6). Tensors: `src`, `dst` (I64 or I32 [E], COO edges) and, by
    /// --kind: gather, spmm: `x` [N, D] (spmm: optional f32 `w` [E] or [E, H]); segment_sum,
    /// segment_mean, segment_max, segment_min: `m` [E, D]; sddmm: `a`, `b` [N, D];
    /// segment_softmax: f32 `s` [E, H]. N is --num-nodes. Writes `y` (and, for max/min, `arg`: the
    /// first arg's COO edge id as f32, exact for up to 2^24 edges).
    #[command(name = "graph")]
    Graph {
        #[command(flatten)]
        io: Io,
        #[arg(long)]
        kind: String,
        #[arg(long)]
        num_nodes: usize,
        #[arg(long, default_value_t = 1)]
        heads: usize,
    },
    /// `out[i] = reduce over the edges into i of m[e]` (SPEC §6). Tensors: `src`, `dst` (I64 or
    /// I32 [E]), `m` [E, D]. Writes `out` [N, D] and, for max/min, `arg` (the first arg's COO
    /// edge id as f32). Empty rows give 0.
    #[command(name = "segment_reduce")]
    SegmentReduce {
        #[command(flatten)]
        io: Io,
        #[arg(long)]
        num_nodes: usize,
        /// sum, mean, max or min
        #[arg(long, default_value = "sum")]
        reduce: String,
    },
    /// `y[i] = Σ_{e → i} w[e]·x[src e]` (SPEC §6). Tensors: `src`, `dst`, `x` [N, D], optional
    /// f32 `w` [E] or [E, H] (with --heads H). Writes `y` [N, D].
    #[command(name = "spmm")]
    Spmm {
        #[command(flatten)]
        io: Io,
        #[arg(long)]
        num_nodes: usize,
        #[arg(long, default_value_t = 1)]
        heads: usize,
    },
    /// Softmax of f32 scores `s` [E, H] over the edges into each node, per head (SPEC §6).
    /// Tensors: `src`, `dst`, `s`. Writes `alpha` [E, H].
    #[command(name = "segment_softmax")]
    SegmentSoftmax {
        #[command(flatten)]
        io: Io,
        #[arg(long)]
        num_nodes: usize,
        #[arg(long, default_value_t = 1)]
        heads: usize,
    },
    /// The edge MLP with the concat trick (SPEC §6): `m[e] = act(W_e·e_e + W_s·h_src + W_d·h_dst
    /// + b)`. Tensors: `src`, `dst`, `e` [E, De], `h` [N, Dn], `w_e` [Do, De], `w_s`, `w_d`
    /// [Do, Dn], `b` [Do], one dtype. Writes `m` [E, Do].
    #[command(name = "edge_mlp_sum")]
    EdgeMlpSum {
        #[command(flatten)]
        io: Io,
        #[arg(long)]
        num_nodes: usize,
        /// identity, relu, silu, gelu_erf, gelu_tanh, leaky_relu (slope 0.2)
        #[arg(long, default_value = "silu")]
        act: String,
    },
    /// The OneForecast gated processor layer (SPEC §6). Tensors: `src`, `dst`, `e` [E, D],
    /// `h` [N, D] and the weights, one dtype except the f32 LayerNorm affines [γ | β]:
    /// `w_e`, `w_s`, `w_d` [D, D], `b` [D] (edge MLP); `w_b` [D, D], `b_b` [D]; `ln_e` [2D];
    /// `w_g1_e`, `w_g1_s`, `w_g1_d` [G, D], `b_g1` [G], `w_g2` [3H, G], `b_g2` [3H] (gate);
    /// `w_a1` [A, D], `b_a1` [A], `w_a2` [H, A], `b_a2` [H] (attention); `w_n1_a`, `w_n1_h`
    /// [D, D] (W_n1's halves for [a; h]), `b_n1` [D], `w_n2` [D, D], `b_n2` [D], `ln_n` [2D].
    /// Writes `e_out` [E, D] and `h_out` [N, D].
    #[command(name = "oneforecast_layer")]
    OneforecastLayer {
        #[command(flatten)]
        io: Io,
        #[arg(long)]
        num_nodes: usize,
        #[arg(long, default_value_t = 4)]
        heads: usize,
        #[arg(long, default_value_t = 1e-5)]
        eps: f32,
    },
    /// N standard normals of step --step from --seed (SPEC §7), written as `z` (f32).
    #[command(name = "philox_normal")]
    PhiloxNormal {
        #[arg(long)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 0)]
        step: u32,
        #[arg(long)]
        output: std::path::PathBuf,
        #[arg(long)]
        backend: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Info => info(),
        Cmd::List { json } => list(json),
        Cmd::Check { op, backend, dtype, json } => run_check(op, backend, dtype, json),
        Cmd::Bench { op, backend, dtype, reps, quick, full, seq, json, plot, no_crossover } => run_bench(op, backend, dtype, reps, quick, full, &seq, json, plot, !no_crossover),
        Cmd::Run(args) => run_op(args.op),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ffkern: {e}");
            ExitCode::from(2)
        }
    }
}

fn parse_dtypes(d: Option<String>) -> Result<Vec<DType>> {
    match d {
        Some(s) => s.split(',').map(|x| x.trim().parse()).collect(),
        None => Ok(DType::ALL.to_vec()),
    }
}

fn ops_from(op: Option<String>) -> Result<Vec<&'static str>> {
    match op {
        None => Ok(check::OPS.to_vec()),
        // One op or several, comma-separated, each named as `ffkern list` names it.
        Some(o) => o
            .split(',')
            .map(|name| {
                let name = name.trim();
                check::OPS.iter().copied().find(|x| *x == name).ok_or_else(|| Error::Invalid(format!("unknown op '{name}' (ffkern list shows them)")))
            })
            .collect(),
    }
}

fn progress(len: usize, msg: &str) -> indicatif::ProgressBar {
    if std::io::stderr().is_terminal() {
        let pb = indicatif::ProgressBar::new(len as u64);
        pb.set_message(msg.to_string());
        pb
    } else {
        indicatif::ProgressBar::hidden()
    }
}

fn info() -> Result<ExitCode> {
    println!("ffkern {}", env!("CARGO_PKG_VERSION"));
    println!("compiled backends: {}", ffkern::compiled_backends().join(", "));
    for name in ffkern::compiled_backends() {
        match Device::open(name) {
            Ok(d) => println!("  {name}: {}", d.describe()),
            Err(e) => println!("  {name}: unavailable ({e})"),
        }
    }
    #[cfg(feature = "wgpu")]
    {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        println!("wgpu adapters (pick one with FFKERN_WGPU_ADAPTER=<name substring>):");
        for a in adapters {
            let i = a.get_info();
            let l = a.limits();
            println!(
                "  {} [{:?}, {:?}] shader_f16={} timestamps={} subgroups={} max_storage_binding={} MiB max_workgroup_invocations={}",
                i.name,
                i.backend,
                i.device_type,
                a.features().contains(wgpu::Features::SHADER_F16),
                a.features().contains(wgpu::Features::TIMESTAMP_QUERY),
                a.features().contains(wgpu::Features::SUBGROUP),
                l.max_storage_buffer_binding_size >> 20,
                l.max_compute_invocations_per_workgroup
            );
            let coop: Vec<String> = a
                .cooperative_matrix_properties()
                .iter()
                .map(|p| format!("{}x{}x{} {:?}->{:?}", p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type))
                .collect();
            if !coop.is_empty() {
                println!("    cooperative matrices: {}", coop.join(", "));
            }
        }
    }
    println!("kernel choices (environment variable=value in effect; the first listed is the default):");
    for c in ffkern::runtime::KERNEL_CHOICES {
        let now = c.current().unwrap_or("invalid");
        println!("  {}={now:8} [{}] {}", c.var, c.values.join("|"), c.what);
    }
    let limit = match ffkern::runtime::grid_limit() {
        Ok(Some(n)) => n.to_string(),
        Ok(None) => "unset".into(),
        Err(_) => "invalid".into(),
    };
    println!("  FFKERN_GRID_LIMIT={limit:8} [blocks] tests: the most blocks of a grid dimension that the launchers fold or the kernels walk by grid stride");
    Ok(ExitCode::SUCCESS)
}

fn list(as_json: bool) -> Result<ExitCode> {
    let backends = ffkern::compiled_backends();
    let dtypes: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
    if as_json {
        let v: Vec<_> = check::OPS.iter().map(|op| json!({"op": op, "backends": backends, "dtypes": dtypes})).collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for op in check::OPS {
            println!("{op:16} backends: {:20} dtypes: {}", backends.join(","), dtypes.join(","));
        }
        println!("{:16} activations: {}", "", Activation::ALL.map(|a| a.name()).join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn devices(backend: Option<String>, all: bool) -> Result<Vec<Device>> {
    match backend {
        Some(b) => Ok(vec![Device::open(&b)?]),
        None if all => ffkern::compiled_backends().into_iter().filter_map(|n| Device::open_if_present(n).transpose()).collect(),
        None => Ok(vec![Device::best()?]),
    }
}

fn check_json(r: &CheckRecord) -> serde_json::Value {
    let num = |x: f64| if x.is_finite() { json!(x) } else { json!(null) };
    json!({"op": r.op, "backend": r.backend, "dtype": r.dtype.name(), "shape": r.shape, "rms_ratio": num(r.rms_ratio),
           "max_abs": num(r.max_abs), "budget": r.budget, "pass": r.pass, "error": r.error})
}

fn run_check(op: Option<String>, backend: Option<String>, dtype: Option<String>, as_json: bool) -> Result<ExitCode> {
    let ops = ops_from(op)?;
    let dtypes = parse_dtypes(dtype)?;
    let devs = devices(backend, true)?;
    let total: usize = devs.len() * dtypes.len() * ops.iter().map(|o| check::case_count(o)).sum::<usize>();
    let pb = progress(total, "checking");
    let mut records = Vec::new();
    for dev in &devs {
        for &dt in &dtypes {
            for op in &ops {
                let r = with_backend!(dev, be => check::check_op(be, op, dt, &mut || pb.inc(1)));
                records.extend(r);
            }
        }
    }
    pb.finish_and_clear();
    let failures = records.iter().filter(|r| !r.pass).count();
    if as_json {
        let v: Vec<_> = records.iter().map(check_json).collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for dev in &devs {
            println!("# {}: {}", dev.name(), dev.describe());
        }
        println!("{:14} {:6} {:5} {:44} {:>10} {:>10} {:>8}  result", "op", "backend", "dtype", "shape", "rms_ratio", "max_abs", "budget");
        for r in &records {
            println!(
                "{:14} {:6} {:5} {:44} {:>10.2e} {:>10.2e} {:>8.0e}  {}",
                r.op,
                r.backend,
                r.dtype.name(),
                r.shape,
                r.rms_ratio,
                r.max_abs,
                r.budget,
                match (&r.error, r.pass) {
                    (Some(e), _) => format!("ERROR {e}"),
                    (None, true) => "ok".into(),
                    (None, false) => "FAIL".into(),
                }
            );
        }
        println!("{} passed, {} failed", records.len() - failures, failures);
    }
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn bench_json(r: &BenchRecord) -> serde_json::Value {
    json!({"op": r.op, "backend": r.backend, "dtype": r.dtype.name(), "shape": r.shape, "median_s": r.median_s,
           "gflops": r.gflops(), "gbps": r.gbps(), "roofline_fraction": r.roofline_fraction, "reps": r.reps,
           "baseline": r.baseline, "baseline_s": r.baseline_s, "peak_mem_bytes": r.peak_mem_bytes,
           "vs_baseline": r.baseline_s.map(|b| b / r.median_s)})
}

#[allow(clippy::too_many_arguments)]
fn run_bench(op: Option<String>, backend: Option<String>, dtype: Option<String>, reps: usize, quick: bool, full: bool, seqs: &[usize], as_json: bool, plot: Option<std::path::PathBuf>, crossover: bool) -> Result<ExitCode> {
    let ops = ops_from(op)?;
    let dev = devices(backend, false)?.into_iter().next().unwrap_or(Device::Cpu(ffkern::Cpu));
    let small = quick || (dev.is_cpu_like() && !full);
    let cases = if small { ffkern::registry::gemm_bench_cases_small() } else { ffkern::registry::gemm_bench_cases() };
    let dtypes = match dtype {
        Some(d) => parse_dtypes(Some(d))?,
        None if matches!(dev, Device::Cpu(_)) => vec![DType::F32],
        None => DType::ALL.to_vec(),
    };
    let reps = reps.max(1);
    eprintln!("# bench on {}: {}", dev.name(), dev.describe());
    let mut records = Vec::new();
    let copy_bytes = if small { 64 << 20 } else { 1 << 30 };
    records.extend(with_backend!(&dev, be => bench::bench_copy(be, copy_bytes, reps))?);
    if ops.contains(&"gemm") {
        let pb = progress(cases.len() * dtypes.len(), "gemm");
        for case in &cases {
            for &dt in &dtypes {
                let x = GemmInputs::random(&case.desc, dt, 42);
                #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
                let mut rec = with_backend!(&dev, be => bench::bench_gemm(be, &case.name, &case.desc, &x, reps))?;
                #[cfg(feature = "cuda")]
                if let Device::Cuda(rt) = &dev {
                    match ffkern::ops::gemm::cuda::time_vendor_baseline(rt, &case.desc, &x, reps) {
                        Ok(Some((name, t))) => {
                            rec.baseline = Some(name.into());
                            rec.baseline_s = Some(bench::median(&t));
                        }
                        Ok(None) => {}
                        Err(e) => eprintln!("baseline for {} {dt}: {e}", case.name),
                    }
                }
                records.push(rec);
                pb.inc(1);
            }
        }
        pb.finish_and_clear();
    }
    let ffn_dtypes: Vec<DType> = dtypes.iter().copied().filter(|d| *d != DType::F16).collect();
    if ops.contains(&"repavit") {
        let (t, c, h, theta) = ffkern::registry::repavit_bench_shape(small);
        for &dt in &ffn_dtypes {
            records.push(with_backend!(&dev, be => bench::bench_repavit(be, t, c, h, theta, dt, reps))?);
        }
        // The training form's two BatchNorms: BN1 over C, BN2 over H.
        for ch in [c, h] {
            for &dt in &ffn_dtypes {
                records.push(with_backend!(&dev, be => bench::bench_batchnorm(be, t, ch, dt, reps))?);
            }
        }
    }
    if ops.contains(&"structured") {
        let (t, layers) = ffkern::registry::structured_bench_layers(small);
        for &(s1, s2, label) in &layers {
            for &dt in &ffn_dtypes {
                let rec = with_backend!(&dev, be => bench::bench_structured(be, t, s1, s2, label, dt, reps))?;
                // Each row as it is measured, so that a run cut short still reports the rows it had,
                // with the share of its FLOP reduction the time realises (time saved over FLOPs
                // saved against the dense FFN, whose FLOPs the parameter share scales).
                let (flop_share, t_dense) = ((s1.params() + s2.params()) as f64 / (2 * s1.inp() * s1.out()) as f64, rec.baseline_s.unwrap_or(0.0));
                let realised = (1.0 - rec.median_s / t_dense) / (1.0 - flop_share);
                eprintln!(
                    "{} {}: {:.4} ms, {} {:.4} ms: realises {:.0} % of its {:.2}x FLOP reduction",
                    rec.shape,
                    rec.dtype,
                    1e3 * rec.median_s,
                    rec.baseline.as_deref().unwrap_or(""),
                    1e3 * t_dense,
                    100.0 * realised,
                    1.0 / flop_share
                );
                records.push(rec);
            }
        }
        // The pre-merge crossover of each first layer on this backend (DEFAULT_CROSSOVER's source).
        for &(s1, _, label) in layers.iter().filter(|_| crossover) {
            for &dt in &ffn_dtypes {
                let c = with_backend!(&dev, be => ffkern::ops::structured::measure_crossover(be, &s1, dt, 4096, reps))?;
                eprintln!("pre-merge crossover {label} {}→{} {dt} on {}: the structured form wins from {c} tokens", s1.inp(), s1.out(), dev.name());
            }
        }
    }
    if ops.contains(&"linear_attn") {
        let seqs = if seqs.is_empty() { ffkern::registry::linattn_bench_seqs(small) } else { seqs };
        records.extend(with_backend!(&dev, be => bench::bench_linattn(be, small, seqs, reps))?);
    }
    if ops.contains(&"graph") {
        for &dt in &ffn_dtypes {
            records.extend(with_backend!(&dev, be => bench::bench_graph(be, small, dt, reps))?);
        }
    }
    if ops.contains(&"noisy_optimizer") {
        let n = ffkern::registry::optim_bench_params(small);
        for tensors in [1, 1000] {
            records.push(with_backend!(&dev, be => bench::bench_noisy_sgd(be, n, tensors, reps))?);
        }
    }
    bench::fill_roofline(&mut records);
    if let Some(path) = &plot {
        let title = format!("ffkern bench on {}", dev.name());
        std::fs::write(path, bench::svg_chart(&records, &title)).map_err(|e| Error::Io { context: format!("writing {}", path.display()), source: e })?;
        eprintln!("chart written to {}", path.display());
    }
    if as_json {
        let v: Vec<_> = records.iter().map(bench_json).collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        // Columns as wide as their longest entry.
        let w_op = records.iter().map(|r| r.op.len()).max().unwrap_or(0).max(2);
        let w_shape = records.iter().map(|r| r.shape.chars().count()).max().unwrap_or(0).max(5);
        println!(
            "{:w_op$} {:7} {:5} {:w_shape$} {:>11} {:>10} {:>9} {:>9} {:>9}  baseline",
            "op", "backend", "dtype", "shape", "median_ms", "GFLOP/s", "GB/s", "roofline", "peak_MiB"
        );
        for r in &records {
            let base = match (&r.baseline, r.baseline_s) {
                (Some(n), Some(b)) => format!("{n}: {:.3} ms ({:.2}x of ours)", b * 1e3, b / r.median_s),
                _ => String::new(),
            };
            println!(
                "{:w_op$} {:7} {:5} {:w_shape$} {:>11.4} {:>10.1} {:>9.1} {:>9} {:>9}  {}",
                r.op,
                r.backend,
                r.dtype.name(),
                r.shape,
                r.median_s * 1e3,
                r.gflops(),
                r.gbps(),
                r.roofline_fraction.map(|f| format!("{:.1}%", f * 100.0)).unwrap_or_default(),
                r.peak_mem_bytes.map(|b| format!("{:.1}", b as f64 / (1u64 << 20) as f64)).unwrap_or_default(),
                base
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn st_dtype(d: safetensors::Dtype) -> Result<DType> {
    match d {
        safetensors::Dtype::F32 => Ok(DType::F32),
        safetensors::Dtype::F16 => Ok(DType::F16),
        safetensors::Dtype::BF16 => Ok(DType::BF16),
        other => Err(Error::Invalid(format!("tensor dtype {other:?} is not supported (F32, F16, BF16)"))),
    }
}

fn to_st_dtype(d: DType) -> safetensors::Dtype {
    match d {
        DType::F32 => safetensors::Dtype::F32,
        DType::F16 => safetensors::Dtype::F16,
        DType::BF16 => safetensors::Dtype::BF16,
    }
}

type Tensors = std::collections::HashMap<String, HostTensor>;

/// Every F32/F16/BF16 tensor of a safetensors file, with its shape.
fn read_tensors(path: &std::path::Path) -> Result<Tensors> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io { context: format!("reading {}", path.display()), source: e })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Invalid(format!("{}: not a safetensors file: {e}", path.display())))?;
    let mut out = Tensors::new();
    for (name, v) in st.tensors() {
        if matches!(v.dtype(), safetensors::Dtype::I64 | safetensors::Dtype::I32) {
            continue; // index tensors: read_indices
        }
        let dt = st_dtype(v.dtype()).map_err(|e| Error::Invalid(format!("{}: tensor '{name}': {e}", path.display())))?;
        let shape = v.shape().to_vec();
        // Every op's dimensions fit 32 bits; larger ones (possible only beside a zero) would
        // overflow the shape arithmetic below.
        if shape.iter().any(|&d| d > u32::MAX as usize) {
            return Err(Error::Limit(format!("{}: tensor '{name}' has a dimension over 2^32 − 1: {shape:?}", path.display())));
        }
        let data = dt.decode(v.data());
        out.insert(name, HostTensor::new(dt, shape, data)?);
    }
    Ok(out)
}

/// An I64 or I32 1-D tensor of a safetensors file (edge indices).
fn read_indices(path: &std::path::Path, name: &str) -> Result<Vec<i64>> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io { context: format!("reading {}", path.display()), source: e })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Invalid(format!("{}: not a safetensors file: {e}", path.display())))?;
    let v = st.tensor(name).map_err(|_| Error::Invalid(format!("{}: missing index tensor '{name}'", path.display())))?;
    if v.shape().len() != 1 {
        return Err(Error::Invalid(format!("{}: '{name}' must be 1-D, is {:?}", path.display(), v.shape())));
    }
    match v.dtype() {
        safetensors::Dtype::I64 => Ok(v.data().chunks_exact(8).map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect()),
        safetensors::Dtype::I32 => Ok(v.data().chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect()),
        other => Err(Error::Invalid(format!("{}: '{name}' must be I64 or I32, is {other:?}", path.display()))),
    }
}

fn take(t: &mut Tensors, name: &str, path: &std::path::Path) -> Result<HostTensor> {
    let mut left: Vec<&str> = t.keys().map(|s| s.as_str()).collect();
    left.sort();
    let left = if left.is_empty() { "no other tensors".to_string() } else { format!("other tensors: {}", left.join(", ")) };
    t.remove(name).ok_or_else(|| Error::Invalid(format!("{}: missing tensor '{name}' ({left})", path.display())))
}

fn write_tensors(path: &std::path::Path, tensors: &[(&str, &HostTensor)]) -> Result<()> {
    let encoded: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> =
        tensors.iter().map(|(n, t)| (n.to_string(), t.shape.clone(), to_st_dtype(t.dtype), t.to_bytes())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = encoded
        .iter()
        .map(|(n, shape, dt, data)| safetensors::tensor::TensorView::new(*dt, shape.clone(), data).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Invalid(format!("building the output: {e}")))?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::Invalid(format!("serialising the output: {e}")))?;
    std::fs::write(path, bytes).map_err(|e| Error::Io { context: format!("writing {}", path.display()), source: e })
}

fn run_op(op: RunOp) -> Result<ExitCode> {
    match op {
        RunOp::Gemm { input, output, backend, act, act_cols, alpha, beta, b_layout, save_z } => {
            run_gemm(input, output, backend, act, act_cols, alpha, beta, b_layout, save_z)
        }
        RunOp::NoisySgd { input, output, backend, lr, eta, gamma, step, seed, momentum, nesterov, weight_decay } => {
            let mut t = read_tensors(&input)?;
            let param = take(&mut t, "param", &input)?;
            let grad = take(&mut t, "grad", &input)?;
            if param.dtype != DType::F32 {
                return Err(Error::Dtype { op: "noisy_sgd", msg: "param must be f32 (master weights)".into() });
            }
            if grad.shape != param.shape {
                return Err(Error::Shape { op: "noisy_sgd", msg: format!("grad {:?} and param {:?} differ", grad.shape, param.shape) });
            }
            let n = param.len();
            let mut opt = ffkern::ops::optim::NoisyOptimizer::sgd(lr, momentum, seed);
            opt.rule = ffkern::ops::optim::Rule::Sgd { momentum, nesterov };
            opt.noise = ffkern::ops::optim::NoiseSchedule { eta, gamma };
            opt.weight_decay = weight_decay;
            opt.step = step;
            let mom = if opt.state_count() == 1 {
                let m = t.remove("momentum").unwrap_or(HostTensor { dtype: DType::F32, shape: param.shape.clone(), data: vec![0.0; n] });
                if m.shape != param.shape || m.dtype != DType::F32 {
                    return Err(Error::Shape { op: "noisy_sgd", msg: "momentum must be f32 with param's shape".into() });
                }
                Some(m)
            } else {
                None
            };
            let dev = devices(backend, false)?.into_iter().next().unwrap_or(Device::Cpu(ffkern::Cpu));
            let list = ffkern::ops::optim::TensorList::new(vec![n]);
            let (p_out, m_out) = with_backend!(&dev, be => {
                let mut p = be.upload(&param)?;
                let g = be.upload(&grad)?;
                let mut st: Vec<_> = mom.iter().map(|m| be.upload(m)).collect::<Result<_>>()?;
                opt.step(be, &list, &mut p, &g, &mut st)?;
                let m_out = match st.first() {
                    Some(m) => Some(be.download(m)?),
                    None => None,
                };
                (be.download(&p)?, m_out)
            });
            let reshape = |mut x: HostTensor| {
                x.shape = param.shape.clone();
                x
            };
            let p_out = reshape(p_out);
            let m_out = m_out.map(reshape);
            let mut outs = vec![("param", &p_out)];
            if let Some(m) = &m_out {
                outs.push(("momentum", m));
            }
            write_tensors(&output, &outs)?;
            eprintln!("noisy_sgd step {step} on {}: wrote {} to {}", dev.name(), if m_out.is_some() { "param and momentum" } else { "param" }, output.display());
            Ok(ExitCode::SUCCESS)
        }
        RunOp::Ffn { io, act, residual } => run_ffn(&io, act.parse()?, residual),
        RunOp::RepavitReparam { io, theta, eps, dtype } => run_repavit_reparam(&io, theta, eps, dtype.parse()?),
        RunOp::RepavitFfn { io } => run_repavit_ffn(&io),
        RunOp::Lowrank { io, alpha } => run_structured(&io, "lowrank", alpha),
        RunOp::Blockdense { io, alpha } => run_structured(&io, "blockdense", alpha),
        RunOp::Blockshuffle { io, alpha } => run_structured(&io, "blockshuffle", alpha),
        RunOp::LinearAttn { io, opts, mode } => run_linattn(&io, &opts, &mode),
        RunOp::LinearAttnDecode { io, opts, position } => run_linattn_decode(&io, &opts, position),
        RunOp::Graph { io, kind, num_nodes, heads } => run_graph(&io, &kind, num_nodes, heads, "y"),
        RunOp::SegmentReduce { io, num_nodes, reduce } => run_graph(&io, &format!("segment_{reduce}"), num_nodes, 1, "out"),
        RunOp::Spmm { io, num_nodes, heads } => run_graph(&io, "spmm", num_nodes, heads, "y"),
        RunOp::SegmentSoftmax { io, num_nodes, heads } => run_graph(&io, "segment_softmax", num_nodes, heads, "alpha"),
        RunOp::EdgeMlpSum { io, num_nodes, act } => run_edge_mlp(&io, num_nodes, act.parse()?),
        RunOp::OneforecastLayer { io, num_nodes, heads, eps } => run_oneforecast(&io, num_nodes, heads, eps),
        RunOp::PhiloxNormal { n, seed, step, output, backend } => {
            let dev = devices(backend, false)?.into_iter().next().unwrap_or(Device::Cpu(ffkern::Cpu));
            let mut z = with_backend!(&dev, be => ffkern::ops::optim::philox_normal_host(be, n, seed, step))?;
            z.shape = vec![n];
            write_tensors(&output, &[("z", &z)])?;
            eprintln!("philox_normal on {}: wrote z [{n}] to {}", dev.name(), output.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_gemm(
    input: std::path::PathBuf,
    output: std::path::PathBuf,
    backend: Option<String>,
    act: String,
    act_cols: Option<usize>,
    alpha: f32,
    beta: f32,
    b_layout: String,
    save_z: bool,
) -> Result<ExitCode> {
    let mut t = read_tensors(&input)?;
    let a = take(&mut t, "a", &input)?;
    let b = take(&mut t, "b", &input)?;
    let bias = t.remove("bias");
    let r = t.remove("r");
    let (ashape, bshape) = (a.shape.clone(), b.shape.clone());
    let b_layout: BLayout = b_layout.parse()?;
    let shape_err = |m: String| Error::Shape { op: "gemm", msg: m };
    let (batch, m, k) = match ashape[..] {
        [m, k] => (1, m, k),
        [bt, m, k] => (bt, m, k),
        _ => return Err(shape_err(format!("a must be [M,K] or [batch,M,K], got {ashape:?}"))),
    };
    let (b_batch, rows, cols) = match bshape[..] {
        [r, c] => (1, r, c),
        [bt, r, c] => (bt, r, c),
        _ => return Err(shape_err(format!("b must be 2-D or 3-D, got {bshape:?}"))),
    };
    let (n, kb) = if b_layout == BLayout::NK { (rows, cols) } else { (cols, rows) };
    if kb != k {
        return Err(shape_err(format!("a has K = {k} but b ({bshape:?}, layout {b_layout:?}) has K = {kb}")));
    }
    if b_batch != batch && b_batch != 1 {
        return Err(shape_err(format!("b has batch {b_batch}, a has {batch}")));
    }
    let mut desc = Gemm::new(m, n, k).batch(batch).b_layout(b_layout).act(act.parse::<Activation>()?).alpha(alpha).beta(beta).a_layout(ALayout::MK);
    if b_batch == 1 && batch > 1 {
        desc.stride_b = Some(0);
    }
    if let Some(c) = act_cols {
        desc = desc.act_cols(c);
    }
    if let Some(bt) = &bias {
        if bt.shape[..] != [n] {
            return Err(shape_err(format!("bias must be [{n}], got {:?}", bt.shape)));
        }
        desc = desc.bias(true);
    }
    if let Some(rt) = &r {
        let want = if batch > 1 { vec![batch, m, n] } else { vec![m, n] };
        if rt.shape != want {
            return Err(shape_err(format!("r must be {want:?}, got {:?}", rt.shape)));
        }
        desc = desc.residual(None);
    }
    let x = GemmInputs { a, b, bias, r };
    let dev = devices(backend, false)?.into_iter().next().unwrap_or(Device::Cpu(ffkern::Cpu));
    let out = with_backend!(&dev, be => ffkern::ops::gemm::run_host(be, &desc, &x, save_z))?;
    let dtype = x.a.dtype;
    let oshape = if batch > 1 { vec![batch, m, n] } else { vec![m, n] };
    let c = HostTensor { dtype, shape: oshape.clone(), data: out.c };
    let z = out.z.map(|z| HostTensor { dtype, shape: oshape.clone(), data: z });
    let mut outs = vec![("c", &c)];
    if let Some(z) = &z {
        outs.push(("z", z));
    }
    write_tensors(&output, &outs)?;
    eprintln!("gemm on {}: wrote c{} {:?} to {}", dev.name(), if save_z { " and z" } else { "" }, oshape, output.display());
    Ok(ExitCode::SUCCESS)
}

fn shape_err(op: &'static str, msg: String) -> Error {
    Error::Shape { op, msg }
}

/// `[rows, cols]` of a 2-D tensor.
fn dims2(op: &'static str, name: &str, t: &HostTensor) -> Result<(usize, usize)> {
    match t.shape[..] {
        [r, c] => Ok((r, c)),
        _ => Err(shape_err(op, format!("{name} must be 2-D, got {:?}", t.shape))),
    }
}

fn same_dtypes(op: &'static str, ts: &[(&str, &HostTensor)]) -> Result<DType> {
    let d = ts[0].1.dtype;
    for (n, t) in ts {
        if t.dtype != d {
            return Err(Error::Dtype { op, msg: format!("{n} is {}, {} is {d}", t.dtype, ts[0].0) });
        }
    }
    Ok(d)
}

fn open_device(backend: &Option<String>) -> Result<Device> {
    Ok(devices(backend.clone(), false)?.into_iter().next().unwrap_or(Device::Cpu(ffkern::Cpu)))
}

fn finish(op: &str, dev: &Device, out: &std::path::Path, tensors: &[(&str, &HostTensor)]) -> Result<ExitCode> {
    write_tensors(out, tensors)?;
    let names: Vec<&str> = tensors.iter().map(|t| t.0).collect();
    eprintln!("{op} on {}: wrote {} to {}", dev.name(), names.join(", "), out.display());
    Ok(ExitCode::SUCCESS)
}

fn run_ffn(io: &Io, act: Activation, residual: bool) -> Result<ExitCode> {
    const OP: &str = "ffn";
    let mut t = read_tensors(&io.input)?;
    let (x, w1, b1, w2, b2) = (take(&mut t, "x", &io.input)?, take(&mut t, "w1", &io.input)?, take(&mut t, "b1", &io.input)?, take(&mut t, "w2", &io.input)?, take(&mut t, "b2", &io.input)?);
    same_dtypes(OP, &[("x", &x), ("w1", &w1), ("b1", &b1), ("w2", &w2), ("b2", &b2)])?;
    let (tokens, c) = dims2(OP, "x", &x)?;
    let (h, c1) = dims2(OP, "w1", &w1)?;
    if c1 != c || w2.shape != [c, h] || b1.shape != [h] || b2.shape != [c] {
        return Err(shape_err(OP, format!("with x [{tokens}, {c}] and w1 [{h}, {c1}]: w2 must be [{c}, {h}], b1 [{h}], b2 [{c}]")));
    }
    let f = ffkern::ops::ffn::DenseFfn { tokens, dim: c, hidden: h, act, residual };
    let dev = open_device(&io.backend)?;
    let mut y = with_backend!(&dev, be => {
        let w = ffkern::ops::ffn::FfnWeights { w1: be.upload(&w1)?, b1: be.upload(&b1)?, w2: be.upload(&w2)?, b2: be.upload(&b2)? };
        let (y, _) = f.forward(be, &be.upload(&x)?, &w, false)?;
        be.download(&y)?
    });
    y.shape = vec![tokens, c];
    finish(OP, &dev, &io.output, &[("y", &y)])
}

fn run_repavit_reparam(io: &Io, theta: f64, eps: f32, dtype: DType) -> Result<ExitCode> {
    let mut t = read_tensors(&io.input)?;
    let bn = |p: &str, t: &mut Tensors| -> Result<ffkern::ops::ffn::BatchNorm> {
        let mut get = |n: &str| take(t, &format!("{p}_{n}"), &io.input).map(|x| x.data);
        Ok(ffkern::ops::ffn::BatchNorm { gamma: get("gamma")?, beta: get("beta")?, mean: get("mean")?, var: get("var")?, eps })
    };
    let (bn1, bn2) = (bn("bn1", &mut t)?, bn("bn2", &mut t)?);
    let w = ffkern::ops::ffn::RepavitWeights {
        w1: take(&mut t, "w1", &io.input)?,
        b1: take(&mut t, "b1", &io.input)?,
        w2: take(&mut t, "w2", &io.input)?,
        b2: take(&mut t, "b2", &io.input)?,
        bn1,
        bn2,
    };
    let m = ffkern::ops::ffn::reparameterize(&w, theta, dtype)?;
    write_tensors(&io.output, &[("wu", &m.wu), ("bu", &m.bu), ("wo", &m.wo)])?;
    eprintln!("repavit_reparam: a = {} active of {} hidden channels; wrote wu, bu, wo ({dtype}) to {}", m.active, w.b1.len(), io.output.display());
    Ok(ExitCode::SUCCESS)
}

fn run_repavit_ffn(io: &Io) -> Result<ExitCode> {
    const OP: &str = "repavit_ffn";
    let mut t = read_tensors(&io.input)?;
    let (x, wu, bu, wo) = (take(&mut t, "x", &io.input)?, take(&mut t, "wu", &io.input)?, take(&mut t, "bu", &io.input)?, take(&mut t, "wo", &io.input)?);
    same_dtypes(OP, &[("x", &x), ("wu", &wu), ("bu", &bu), ("wo", &wo)])?;
    let (tokens, c) = dims2(OP, "x", &x)?;
    let (rows, c1) = dims2(OP, "wu", &wu)?;
    let (c2, a) = dims2(OP, "wo", &wo)?;
    if c1 != c || c2 != c || rows != a + c || bu.shape != [a + c] {
        return Err(shape_err(OP, format!("with x [{tokens}, {c}]: wu must be [a + {c}, {c}], bu [a + {c}], wo [{c}, a] (got wu {:?}, bu {:?}, wo {:?})", wu.shape, bu.shape, wo.shape)));
    }
    let m = ffkern::ops::ffn::RepavitMerged { dim: c, active: a, wu, bu, wo };
    let dev = open_device(&io.backend)?;
    let mut y = with_backend!(&dev, be => {
        let y = m.forward(be, tokens, &be.upload(&x)?, (&be.upload(&m.wu)?, &be.upload(&m.bu)?, &be.upload(&m.wo)?))?;
        be.download(&y)?
    });
    y.shape = vec![tokens, c];
    finish(OP, &dev, &io.output, &[("y", &y)])
}

fn run_structured(io: &Io, kind: &'static str, alpha: Option<f32>) -> Result<ExitCode> {
    use ffkern::ops::structured::Structured;
    let mut t = read_tensors(&io.input)?;
    let x = take(&mut t, "x", &io.input)?;
    let (tokens, inp) = dims2(kind, "x", &x)?;
    let (layer, f1, f2) = match kind {
        "lowrank" => {
            let (v, u) = (take(&mut t, "v", &io.input)?, take(&mut t, "u", &io.input)?);
            let ((rank, i), (out, r2)) = (dims2(kind, "v", &v)?, dims2(kind, "u", &u)?);
            if i != inp || r2 != rank {
                return Err(shape_err(kind, format!("v must be [r, {inp}] and u [out, r]; got {:?} and {:?}", v.shape, u.shape)));
            }
            (Structured::LowRank { inp, out, rank }, v, u)
        }
        "blockdense" => {
            let (d, l) = (take(&mut t, "d", &io.input)?, take(&mut t, "l", &io.input)?);
            let (out, rank) = dims2(kind, "l", &l)?;
            match d.shape[..] {
                [nb, rb, p] if nb * p == inp && nb * rb == rank => (Structured::BlockDense { inp, out, rank, blocks: nb }, d, l),
                _ => return Err(shape_err(kind, format!("d must be [nb, r/nb, {inp}/nb] with l [out, r]; got d {:?}, l {:?}", d.shape, l.shape))),
            }
        }
        _ => {
            let (d1, d2) = (take(&mut t, "d1", &io.input)?, take(&mut t, "d2", &io.input)?);
            match (&d1.shape[..], &d2.shape[..]) {
                (&[k, q, p], &[k2, s, q2]) if k * p == inp && k2 == k && q2 == q => (Structured::BlockShuffle { inp, out: k * s, blocks: k, inner: q }, d1, d2),
                _ => return Err(shape_err(kind, format!("d1 must be [k, q, {inp}/k] and d2 [k, out/k, q]; got {:?} and {:?}", d1.shape, d2.shape))),
            }
        }
    };
    same_dtypes(kind, &[("x", &x), ("factor 1", &f1), ("factor 2", &f2)])?;
    let wg = match alpha {
        Some(_) => {
            let wg = take(&mut t, "wg", &io.input)?;
            if wg.shape != [layer.out(), inp] || wg.dtype != x.dtype {
                return Err(shape_err(kind, format!("wg must be [{}, {inp}] in x's dtype, got {:?} {}", layer.out(), wg.shape, wg.dtype)));
            }
            Some(wg)
        }
        None => None,
    };
    let dev = open_device(&io.backend)?;
    let mut y = with_backend!(&dev, be => {
        let (xb, f1b, f2b) = (be.upload(&x)?, be.upload(&f1)?, be.upload(&f2)?);
        let y = match (alpha, &wg) {
            (Some(a), Some(wg)) => ffkern::ops::structured::SelfGuided { tokens, layer }.forward(be, &xb, &be.upload(wg)?, &f1b, &f2b, a)?.0,
            _ => layer.forward(be, tokens, &xb, &f1b, &f2b, 1.0)?.0,
        };
        be.download(&y)?
    });
    y.shape = vec![tokens, layer.out()];
    finish(kind, &dev, &io.output, &[("y", &y)])
}

fn linattn_desc(opts: &LinAttnOpts, shape: [usize; 5]) -> Result<ffkern::ops::linattn::LinearAttention> {
    use ffkern::ops::linattn::{LinearAttention, Normalize};
    let normalize = match opts.normalize.as_str() {
        "none" => Normalize::None,
        "normalizer" => Normalize::Normalizer { eps: opts.eps },
        "count" => Normalize::Count,
        other => return Err(Error::Invalid(format!("unknown --normalize '{other}' (none, normalizer, count)"))),
    };
    let [batch, seq, heads, k, v] = shape;
    Ok(LinearAttention { batch, seq, heads, k, v, feature_map: opts.feature_map.parse()?, scale: opts.scale, normalize })
}

fn f32_or_zeros(t: &mut Tensors, name: &str, shape: Vec<usize>) -> Result<HostTensor> {
    match t.remove(name) {
        Some(x) if x.shape == shape && x.dtype == DType::F32 => Ok(x),
        Some(x) => Err(shape_err("linear_attn", format!("{name} must be f32 {shape:?}, got {} {:?}", x.dtype, x.shape))),
        None => {
            let n = shape.iter().product();
            Ok(HostTensor { dtype: DType::F32, shape, data: vec![0.0; n] })
        }
    }
}

fn run_linattn(io: &Io, opts: &LinAttnOpts, mode: &str) -> Result<ExitCode> {
    const OP: &str = "linear_attn";
    if mode != "recurrent" && mode != "chunk" {
        return Err(Error::Invalid(format!("linear_attn --mode {mode}: chunk or recurrent")));
    }
    let mut t = read_tensors(&io.input)?;
    let (q, k, v) = (take(&mut t, "q", &io.input)?, take(&mut t, "k", &io.input)?, take(&mut t, "v", &io.input)?);
    same_dtypes(OP, &[("q", &q), ("k", &k), ("v", &v)])?;
    let (b, tt, h, kd, vd) = match (&q.shape[..], &v.shape[..]) {
        (&[b, tt, h, kd], &[b2, t2, h2, vd]) if (b2, t2, h2) == (b, tt, h) && k.shape == q.shape => (b, tt, h, kd, vd),
        _ => return Err(shape_err(OP, format!("q, k must be [B, T, H, K] and v [B, T, H, V]; got {:?}, {:?}, {:?}", q.shape, k.shape, v.shape))),
    };
    let d = linattn_desc(opts, [b, tt, h, kd, vd])?;
    let s0 = f32_or_zeros(&mut t, "initial_state", vec![b, h, kd, vd])?;
    let z0 = f32_or_zeros(&mut t, "initial_z", vec![b, h, kd])?;
    let dev = open_device(&io.backend)?;
    let (mut o, mut s, mut z) = with_backend!(&dev, be => {
        let (mut s, mut z, mut o) = (be.upload(&s0)?, be.upload(&z0)?, be.alloc(q.dtype, d.vo_len())?);
        let (qb, kb, vb) = (be.upload(&q)?, be.upload(&k)?, be.upload(&v)?);
        if mode == "chunk" {
            d.chunk(be, &qb, &kb, &vb, &mut s, &mut z, 0, &mut o)?;
        } else {
            d.recurrent(be, &qb, &kb, &vb, &mut s, &mut z, 0, &mut o)?;
        }
        (be.download(&o)?, be.download(&s)?, be.download(&z)?)
    });
    o.shape = vec![b, tt, h, vd];
    s.shape = s0.shape.clone();
    z.shape = z0.shape.clone();
    finish(OP, &dev, &io.output, &[("o", &o), ("final_state", &s), ("final_z", &z)])
}

fn run_graph(io: &Io, kind: &str, num_nodes: usize, heads: usize, out_name: &str) -> Result<ExitCode> {
    use ffkern::ops::graph::{self, DeviceGraph, Reduce};
    const OP: &str = "graph";
    let g = read_graph(io, num_nodes)?;
    let (n, e) = (g.num_nodes, g.num_edges());
    let mut t = read_tensors(&io.input)?;
    let dim_of = |x: &HostTensor, rows: usize, name: &str| -> Result<usize> {
        match x.shape[..] {
            [r, d] if r == rows => Ok(d),
            _ => Err(shape_err(OP, format!("{name} must be [{rows}, D], got {:?}", x.shape))),
        }
    };
    let dev = open_device(&io.backend)?;
    let (mut y, arg, shape) = match kind {
        "gather" | "spmm" => {
            let x = take(&mut t, "x", &io.input)?;
            let d = dim_of(&x, n, "x")?;
            let w = t.remove("w");
            with_backend!(&dev, be => {
                let dg = DeviceGraph::upload(be, &g)?;
                let xb = be.upload(&x)?;
                let y = if kind == "gather" {
                    graph::gather_rows(be, &dg, &xb, d)?
                } else {
                    let wb = w.as_ref().map(|w| be.upload(w)).transpose()?;
                    graph::spmm_heads(be, &dg, &xb, wb.as_ref(), heads, d)?
                };
                (be.download(&y)?, None, vec![if kind == "gather" { e } else { n }, d])
            })
        }
        "segment_sum" | "segment_mean" | "segment_max" | "segment_min" => {
            let m = take(&mut t, "m", &io.input)?;
            let d = dim_of(&m, e, "m")?;
            let reduce: Reduce = kind.trim_start_matches("segment_").parse()?;
            if matches!(reduce, Reduce::Max | Reduce::Min) && e > 1 << 24 {
                return Err(Error::Limit(format!("graph --kind {kind}: {e} edges; arg ids are written as f32, exact up to 2^24")));
            }
            with_backend!(&dev, be => {
                let (y, arg) = graph::segment_reduce(be, &DeviceGraph::upload(be, &g)?, &be.upload(&m)?, d, reduce)?;
                let arg = match arg {
                    Some(a) => {
                        let mut a = be.download(&a)?;
                        a.data = a.data.iter().map(|w| w.to_bits() as f32).collect();
                        a.shape = vec![n, d];
                        Some(a)
                    }
                    None => None,
                };
                (be.download(&y)?, arg, vec![n, d])
            })
        }
        "sddmm" => {
            let (a, b) = (take(&mut t, "a", &io.input)?, take(&mut t, "b", &io.input)?);
            let d = dim_of(&a, n, "a")?;
            dim_of(&b, n, "b")?;
            with_backend!(&dev, be => {
                let y = graph::sddmm(be, &DeviceGraph::upload(be, &g)?, &be.upload(&a)?, &be.upload(&b)?, heads, d)?;
                (be.download(&y)?, None, vec![e, heads])
            })
        }
        "segment_softmax" => {
            let sc = take(&mut t, "s", &io.input)?;
            with_backend!(&dev, be => {
                let y = graph::segment_softmax(be, &DeviceGraph::upload(be, &g)?, &be.upload(&sc)?, heads)?;
                (be.download(&y)?, None, vec![e, heads])
            })
        }
        other => return Err(Error::Invalid(format!("unknown --kind '{other}' (gather, spmm, segment_sum, segment_mean, segment_max, segment_min, sddmm, segment_softmax)"))),
    };
    y.shape = shape;
    match &arg {
        Some(a) => finish(OP, &dev, &io.output, &[(out_name, &y), ("arg", a)]),
        None => finish(OP, &dev, &io.output, &[(out_name, &y)]),
    }
}

/// The graph of a graph op's input file (`src`, `dst`, I64 or I32) with `num_nodes` nodes.
fn read_graph(io: &Io, num_nodes: usize) -> Result<ffkern::ops::graph::Graph> {
    ffkern::ops::graph::Graph::from_coo(num_nodes, &read_indices(&io.input, "src")?, &read_indices(&io.input, "dst")?)
}

fn run_edge_mlp(io: &Io, num_nodes: usize, act: Activation) -> Result<ExitCode> {
    use ffkern::ops::graph::{DeviceGraph, EdgeMlp, EdgeMlpWeights};
    const OP: &str = "edge_mlp_sum";
    let g = read_graph(io, num_nodes)?;
    let mut t = read_tensors(&io.input)?;
    let mut get = |n: &str| take(&mut t, n, &io.input);
    let (e, h, w_e, w_s, w_d, b) = (get("e")?, get("h")?, get("w_e")?, get("w_s")?, get("w_d")?, get("b")?);
    same_dtypes(OP, &[("e", &e), ("h", &h), ("w_e", &w_e), ("w_s", &w_s), ("w_d", &w_d), ("b", &b)])?;
    let ((re, de), (rn, dn), (dout, de2)) = (dims2(OP, "e", &e)?, dims2(OP, "h", &h)?, dims2(OP, "w_e", &w_e)?);
    if re != g.num_edges() || rn != num_nodes || de2 != de || w_s.shape != [dout, dn] || w_d.shape != [dout, dn] || b.shape != [dout] {
        return Err(shape_err(
            OP,
            format!("with {} edges and {num_nodes} nodes: e must be [{}, De], h [{num_nodes}, Dn], w_e [Do, De], w_s and w_d [Do, Dn], b [Do]", g.num_edges(), g.num_edges()),
        ));
    }
    let mlp = EdgeMlp { edge_dim: de, node_dim: dn, out_dim: dout, act };
    let dev = open_device(&io.backend)?;
    let mut m = with_backend!(&dev, be => {
        let w = EdgeMlpWeights { w_e: be.upload(&w_e)?, w_s: be.upload(&w_s)?, w_d: be.upload(&w_d)?, b: be.upload(&b)? };
        be.download(&mlp.forward(be, &DeviceGraph::upload(be, &g)?, &be.upload(&e)?, &be.upload(&h)?, &w)?)?
    });
    m.shape = vec![g.num_edges(), dout];
    finish(OP, &dev, &io.output, &[("m", &m)])
}

fn run_oneforecast(io: &Io, num_nodes: usize, heads: usize, eps: f32) -> Result<ExitCode> {
    use ffkern::ops::graph::{DeviceGraph, OneForecastLayer, OneForecastParams, ONEFORECAST_PARAMS};
    const OP: &str = "oneforecast_layer";
    let g = read_graph(io, num_nodes)?;
    let mut t = read_tensors(&io.input)?;
    let (e, h) = (take(&mut t, "e", &io.input)?, take(&mut t, "h", &io.input)?);
    same_dtypes(OP, &[("e", &e), ("h", &h)])?;
    let (rn, dim) = dims2(OP, "h", &h)?;
    if rn != num_nodes || e.shape != [g.num_edges(), dim] {
        return Err(shape_err(OP, format!("h must be [{num_nodes}, D] and e [{}, D]; got {:?}, {:?}", g.num_edges(), h.shape, e.shape)));
    }
    let params: Vec<HostTensor> = ONEFORECAST_PARAMS.iter().map(|n| take(&mut t, n, &io.input)).collect::<Result<_>>()?;
    // The hidden widths are the lengths of the gate's and the attention MLP's first biases.
    let layer = OneForecastLayer { dim, heads, gate_hidden: params[10].len(), attn_hidden: params[14].len(), eps };
    for ((name, shape, _), p) in layer.param_shapes().iter().zip(&params) {
        if &p.shape != shape {
            return Err(shape_err(OP, format!("{name} must be {shape:?} (D {dim}, {heads} heads), got {:?}", p.shape)));
        }
    }
    let dev = open_device(&io.backend)?;
    let (mut e_out, mut h_out) = with_backend!(&dev, be => {
        let p = OneForecastParams::from_tensors(params.iter().map(|t| be.upload(t)).collect::<Result<_>>()?)?;
        let st = layer.forward(be, &DeviceGraph::upload(be, &g)?, &be.upload(&e)?, &be.upload(&h)?, &p)?;
        (be.download(&st.e_out)?, be.download(&st.h_out)?)
    });
    e_out.shape = e.shape.clone();
    h_out.shape = h.shape.clone();
    finish(OP, &dev, &io.output, &[("e_out", &e_out), ("h_out", &h_out)])
}

fn run_linattn_decode(io: &Io, opts: &LinAttnOpts, position: u32) -> Result<ExitCode> {
    const OP: &str = "linear_attn_decode";
    let mut t = read_tensors(&io.input)?;
    let (q, k, v) = (take(&mut t, "q", &io.input)?, take(&mut t, "k", &io.input)?, take(&mut t, "v", &io.input)?);
    same_dtypes(OP, &[("q", &q), ("k", &k), ("v", &v)])?;
    let (b, h, kd, vd) = match (&q.shape[..], &v.shape[..]) {
        (&[b, h, kd], &[b2, h2, vd]) if (b2, h2) == (b, h) && k.shape == q.shape => (b, h, kd, vd),
        _ => return Err(shape_err(OP, format!("q, k must be [B, H, K] and v [B, H, V]; got {:?}, {:?}, {:?}", q.shape, k.shape, v.shape))),
    };
    let d = linattn_desc(opts, [b, 1, h, kd, vd])?;
    let s0 = take(&mut t, "state", &io.input)?;
    if s0.shape != [b, h, kd, vd] || s0.dtype != DType::F32 {
        return Err(shape_err(OP, format!("state must be f32 [{b}, {h}, {kd}, {vd}], got {} {:?}", s0.dtype, s0.shape)));
    }
    let z0 = f32_or_zeros(&mut t, "z", vec![b, h, kd])?;
    let dev = open_device(&io.backend)?;
    let (mut o, mut s, mut z) = with_backend!(&dev, be => {
        let (mut s, mut z, mut o) = (be.upload(&s0)?, be.upload(&z0)?, be.alloc(q.dtype, d.vo_len())?);
        d.recurrent(be, &be.upload(&q)?, &be.upload(&k)?, &be.upload(&v)?, &mut s, &mut z, position, &mut o)?;
        (be.download(&o)?, be.download(&s)?, be.download(&z)?)
    });
    o.shape = vec![b, h, vd];
    s.shape = s0.shape.clone();
    z.shape = z0.shape.clone();
    finish(OP, &dev, &io.output, &[("o", &o), ("state", &s), ("z", &z)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_lists_name_every_op_or_a_comma_separated_few_and_reject_unknown_ones() {
        assert_eq!(ops_from(None).ok(), Some(check::OPS.to_vec()));
        assert_eq!(ops_from(Some("gemm, linear_attn".into())).ok(), Some(vec!["gemm", "linear_attn"]));
        let e = ops_from(Some("gemm,bogus".into())).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("unknown op 'bogus'"), "{e}");
    }
}
