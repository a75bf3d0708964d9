//! `ffkern`: info, list, check, bench and run (see README.md).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ffkern::bench::{self, BenchRecord};
use ffkern::check::{self, CheckRecord};
use ffkern::ops::gemm::GemmInputs;
use ffkern::{with_backend, ALayout, Activation, BLayout, DType, Device, Error, Gemm, HostTensor, Result};
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
        #[arg(long)]
        json: bool,
    },
    /// Runs one op on tensors from a safetensors file and writes the result to another.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(subcommand)]
    op: RunOp,
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
        /// identity, relu, silu, gelu_erf, gelu_tanh
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Info => info(),
        Cmd::List { json } => list(json),
        Cmd::Check { op, backend, dtype, json } => run_check(op, backend, dtype, json),
        Cmd::Bench { op, backend, dtype, reps, quick, full, json } => run_bench(op, backend, dtype, reps, quick, full, json),
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
        Some(o) => check::OPS
            .iter()
            .find(|x| **x == o)
            .map(|x| vec![*x])
            .ok_or_else(|| Error::Invalid(format!("unknown op '{o}' (ffkern list shows them)"))),
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
        }
    }
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
        None if all => Ok(ffkern::compiled_backends().into_iter().filter_map(|n| Device::open(n).ok()).collect()),
        None => Ok(vec![Device::best()]),
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
           "baseline": r.baseline, "baseline_s": r.baseline_s,
           "vs_baseline": r.baseline_s.map(|b| b / r.median_s)})
}

#[allow(clippy::too_many_arguments)]
fn run_bench(op: Option<String>, backend: Option<String>, dtype: Option<String>, reps: usize, quick: bool, full: bool, as_json: bool) -> Result<ExitCode> {
    let ops = ops_from(op)?;
    let dev = devices(backend, false)?.into_iter().next().unwrap_or(Device::Cpu(ffkern::Cpu));
    let cpu_like = match &dev {
        Device::Cpu(_) => true,
        #[cfg(feature = "wgpu")]
        Device::Wgpu(w) => w.info.device_type == wgpu::DeviceType::Cpu,
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => false,
    };
    let small = quick || (cpu_like && !full);
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
    records.push(with_backend!(&dev, be => bench::bench_copy(be, copy_bytes, reps))?);
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
    bench::fill_roofline(&mut records);
    if as_json {
        let v: Vec<_> = records.iter().map(bench_json).collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "{:6} {:6} {:5} {:34} {:>11} {:>10} {:>9} {:>9}  baseline",
            "op", "backend", "dtype", "shape", "median_ms", "GFLOP/s", "GB/s", "roofline"
        );
        for r in &records {
            let base = match (&r.baseline, r.baseline_s) {
                (Some(n), Some(b)) => format!("{n}: {:.3} ms ({:.2}x of ours)", b * 1e3, b / r.median_s),
                _ => String::new(),
            };
            println!(
                "{:6} {:6} {:5} {:34} {:>11.4} {:>10.1} {:>9.1} {:>9}  {}",
                r.op,
                r.backend,
                r.dtype.name(),
                r.shape,
                r.median_s * 1e3,
                r.gflops(),
                r.gbps(),
                r.roofline_fraction.map(|f| format!("{:.1}%", f * 100.0)).unwrap_or_default(),
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

fn run_op(op: RunOp) -> Result<ExitCode> {
    let RunOp::Gemm { input, output, backend, act, act_cols, alpha, beta, b_layout, save_z } = op;
    let bytes = std::fs::read(&input).map_err(|e| Error::Io { context: format!("reading {}", input.display()), source: e })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Invalid(format!("{}: not a safetensors file: {e}", input.display())))?;
    let get = |name: &str, required: bool| -> Result<Option<(Vec<usize>, HostTensor)>> {
        match st.tensor(name) {
            Ok(v) => {
                let dt = st_dtype(v.dtype())?;
                let shape = v.shape().to_vec();
                let data = dt.decode(v.data());
                Ok(Some((shape.clone(), HostTensor::new(dt, shape, data)?)))
            }
            Err(_) if !required => Ok(None),
            Err(_) => Err(Error::Invalid(format!("{}: missing tensor '{name}' (found: {})", input.display(), st.names().join(", ")))),
        }
    };
    let (ashape, a) = get("a", true)?.ok_or_else(|| Error::Invalid("missing a".into()))?;
    let (bshape, b) = get("b", true)?.ok_or_else(|| Error::Invalid("missing b".into()))?;
    let bias = get("bias", false)?;
    let r = get("r", false)?;
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
    if let Some((s, _)) = &bias {
        if s[..] != [n] {
            return Err(shape_err(format!("bias must be [{n}], got {s:?}")));
        }
        desc = desc.bias(true);
    }
    if let Some((s, _)) = &r {
        let want = if batch > 1 { vec![batch, m, n] } else { vec![m, n] };
        if *s != want {
            return Err(shape_err(format!("r must be {want:?}, got {s:?}")));
        }
        desc = desc.residual(None);
    }
    let x = GemmInputs { a, b, bias: bias.map(|t| t.1), r: r.map(|t| t.1) };
    let dev = devices(backend, false)?.into_iter().next().unwrap_or(Device::Cpu(ffkern::Cpu));
    let out = with_backend!(&dev, be => ffkern::ops::gemm::run_host(be, &desc, &x, save_z))?;
    let dtype = x.a.dtype;
    let oshape = if batch > 1 { vec![batch, m, n] } else { vec![m, n] };
    let mut tensors = vec![("c".to_string(), dtype.encode(&out.c))];
    if let Some(z) = &out.z {
        tensors.push(("z".to_string(), dtype.encode(z)));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, data)| {
            safetensors::tensor::TensorView::new(to_st_dtype(dtype), oshape.clone(), data).map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Invalid(format!("building the output: {e}")))?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::Invalid(format!("serialising the output: {e}")))?;
    std::fs::write(&output, bytes).map_err(|e| Error::Io { context: format!("writing {}", output.display()), source: e })?;
    eprintln!("gemm on {}: wrote c{} {:?} to {}", dev.name(), if save_z { " and z" } else { "" }, oshape, output.display());
    Ok(ExitCode::SUCCESS)
}
