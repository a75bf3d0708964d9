//! Linking ffkern into a framework that owns its GPU memory. The framework has its own device,
//! queue (or stream) and buffers, made here with plain wgpu / cudarc calls; ffkern's low-level
//! launchers record onto them with element offsets (no copies, no waits), and the framework reads
//! the results back itself.
//!
//! The layer: a transformer FFN half whose hidden activation lives in a column slice of a wider
//! buffer that the framework also uses for something else (here: 8 columns of its own on the
//! left, which must survive), then the second product reads that slice and adds the residual x:
//!
//! ```text
//! act[:, 8 .. 8 + H] = GELU(x·W1ᵀ + b1)        (C written with ldc = 8 + H at offset 8)
//! y                  = act[:, 8 ..]·W2ᵀ + b2 + x (A read with lda = 8 + H at offset 8)
//! ```
//!
//! Both backends are checked against ffkern's f64 CPU reference within the bf16 budget.
//! `cargo run --release --example framework_buffers` (wgpu; lavapipe works), with
//! `--features cuda` also the CUDA half where a GPU is present.

use ffkern::ops::gemm::{cpu, Gemm};
use ffkern::{Activation, Compare, DType, HostTensor, Result};
use half::bf16;

const T: usize = 37; // tokens
const C: usize = 48; // model width
const H: usize = 96; // hidden width
const LEFT: usize = 8; // the framework's own columns left of the hidden slice
const WIDE: usize = LEFT + H;

/// The two products as descriptors: offsets are given to the launchers with the buffers.
fn products() -> (Gemm, Gemm) {
    let up = Gemm::new(T, H, C).bias(true).act(Activation::GeluErf).ldc(WIDE);
    let down = Gemm::new(T, C, H).lda(WIDE).bias(true).residual(None);
    (up, down)
}

/// The framework's host data, seeded, rounded to bf16: x, W1, b1, W2, b2.
fn host_data() -> Vec<Vec<f32>> {
    [(T * C, 1), (H * C, 2), (H, 3), (C * H, 4), (C, 5)].iter().map(|&(n, seed)| HostTensor::random(DType::BF16, vec![n], seed).data).collect()
}

/// What the framework's buffer holds left of the hidden slice: values it must find unchanged.
fn left_columns() -> Vec<f32> {
    (0..T * LEFT).map(|i| bf16::from_f32(0.25 * (i % 13) as f32 - 1.5).to_f32()).collect()
}

/// `act` with the framework's left columns and NaN where the hidden slice goes (every element of
/// the slice must be written).
fn initial_act() -> Vec<f32> {
    let left = left_columns();
    (0..T * WIDE).map(|i| if i % WIDE < LEFT { left[i / WIDE * LEFT + i % WIDE] } else { f32::NAN }).collect()
}

/// Checks y and the untouched left columns of `act` against the f64 reference.
fn check(backend: &str, act: &[f32], y: &[f32]) -> Result<()> {
    let [x, w1, b1, w2, b2] = &host_data()[..] else { unreachable!("five tensors") };
    let (hidden, _) = cpu::forward(&Gemm::new(T, H, C).bias(true).act(Activation::GeluErf), x, w1, Some(b1), None);
    let hidden: Vec<f32> = hidden.iter().map(|&v| DType::BF16.round(v as f32)).collect();
    let (y_ref, _) = cpu::forward(&Gemm::new(T, C, H).bias(true).residual(None), &hidden, w2, Some(b2), Some(x));
    let left: Vec<f32> = (0..T * WIDE).filter(|i| i % WIDE < LEFT).map(|i| act[i]).collect();
    if left != left_columns() {
        return Err(ffkern::Error::Invalid(format!("{backend}: the framework's own columns were overwritten")));
    }
    let slice: Vec<f32> = (0..T * WIDE).filter(|i| i % WIDE >= LEFT).map(|i| act[i]).collect();
    let cmp = [("hidden", Compare::new(&slice, &hidden.iter().map(|&v| v as f64).collect::<Vec<_>>(), DType::BF16)), ("y", Compare::new(y, &y_ref, DType::BF16))];
    for (name, c) in cmp {
        println!("{backend}: {name} rms_ratio {:.2e}, max_abs {:.2e} (bf16 budget {:.0e})", c.rms_ratio, c.max_abs, DType::BF16.budget());
        if !c.passes(DType::BF16.budget()) {
            return Err(ffkern::Error::Invalid(format!("{backend}: {name} is outside the bf16 budget")));
        }
    }
    Ok(())
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect()
}

fn from_bf16_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
}

/// The framework's own wgpu device, queue and storage buffers.
#[cfg(feature = "wgpu")]
fn on_wgpu() -> Result<()> {
    use ffkern::runtime::wgpu::BufferRef;
    use ffkern::WgpuContext;
    let drv = |what: &'static str| move |e: String| ffkern::Error::driver(format!("example: {what}"), e);
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default())).map_err(|e| drv("no adapter")(e.to_string()))?;
    // The adapter's own limits, as ffkern's own contexts request them: some kernels (the linear-
    // attention backward: 21 KiB) need more workgroup memory than WebGPU's default 16 KiB.
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor { required_limits: adapter.limits(), ..Default::default() }))
        .map_err(|e| drv("requesting the device")(e.to_string()))?;
    let ctx = WgpuContext::from_device(device.clone(), queue.clone(), adapter.get_info());

    // Buffers as the framework makes them: raw bytes, bf16 little-endian, sizes in whole words.
    let storage = |bytes: &[u8]| {
        let size = (bytes.len() as u64).div_ceil(4) * 4;
        let buf = device.create_buffer(&wgpu::BufferDescriptor { label: Some("framework tensor"), size, usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC, mapped_at_creation: false });
        let mut padded = bytes.to_vec();
        padded.resize(size as usize, 0);
        queue.write_buffer(&buf, 0, &padded);
        buf
    };
    let data = host_data();
    let [x, w1, b1, w2, b2] = [0, 1, 2, 3, 4].map(|i| storage(&bf16_bytes(&data[i])));
    let act = storage(&bf16_bytes(&initial_act()));
    let y = storage(&bf16_bytes(&vec![f32::NAN; T * C]));

    let (up, down) = products();
    let at = BufferRef::new;
    ffkern::ops::gemm::wgpu::gemm(&ctx, &up, DType::BF16, at(&x, 0), at(&w1, 0), Some(at(&b1, 0)), None, at(&act, LEFT as u64), None)?;
    ffkern::ops::gemm::wgpu::gemm(&ctx, &down, DType::BF16, at(&act, LEFT as u64), at(&w2, 0), Some(at(&b2, 0)), Some(at(&x, 0)), at(&y, 0), None)?;

    // The framework's own read-back.
    let read = |src: &wgpu::Buffer, elems: usize| -> Result<Vec<f32>> {
        let size = (2 * elems as u64).div_ceil(4) * 4;
        let staging = device.create_buffer(&wgpu::BufferDescriptor { label: Some("framework read-back"), size, usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false });
        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        enc.copy_buffer_to_buffer(src, 0, &staging, 0, size);
        queue.submit([enc.finish()]);
        staging.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| drv("waiting")(e.to_string()))?;
        let bytes = staging.slice(..).get_mapped_range().map_err(|e| drv("mapping")(e.to_string()))?.to_vec();
        Ok(from_bf16_bytes(&bytes[..2 * elems]))
    };
    check(&format!("wgpu ({})", ctx.describe()), &read(&act, T * WIDE)?, &read(&y, T * C)?)
}

/// The framework's own CUDA stream and cudarc slices.
#[cfg(feature = "cuda")]
fn on_cuda() -> Result<()> {
    use cudarc::driver::CudaContext;
    use ffkern::CudaRuntime;
    // SAFETY: only tries to load libcuda and reports whether it could.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        println!("cuda: no driver here, skipped");
        return Ok(());
    }
    let drv = |what: &'static str| move |e: cudarc::driver::DriverError| ffkern::Error::driver(format!("example: {what}"), e);
    let Ok(ctx) = CudaContext::new(0) else {
        println!("cuda: no GPU here, skipped");
        return Ok(());
    };
    let stream = ctx.new_stream().map_err(drv("creating a stream"))?;
    let rt = CudaRuntime::from_stream(stream.clone());
    let up_host = |v: &[f32]| stream.clone_htod(&v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>()).map_err(drv("upload"));
    let data = host_data();
    let (x, w1, b1, w2, b2) = (up_host(&data[0])?, up_host(&data[1])?, up_host(&data[2])?, up_host(&data[3])?, up_host(&data[4])?);
    let mut act = up_host(&initial_act())?;
    let mut y = up_host(&vec![f32::NAN; T * C])?;

    let (up, down) = products();
    ffkern::ops::gemm::cuda::gemm(&rt, &up, &x.as_view(), &w1.as_view(), Some(&b1.as_view()), None, &mut act.slice_mut(LEFT..), None)?;
    ffkern::ops::gemm::cuda::gemm(&rt, &down, &act.slice(LEFT..), &w2.as_view(), Some(&b2.as_view()), Some(&x.as_view()), &mut y.as_view_mut(), None)?;

    let down_host = |s: &cudarc::driver::CudaSlice<bf16>| -> Result<Vec<f32>> { Ok(stream.clone_dtoh(s).map_err(drv("download"))?.iter().map(|v| v.to_f32()).collect()) };
    check(&format!("cuda ({})", rt.describe()), &down_host(&act)?, &down_host(&y)?)
}

/// Each backend on its own: one that fails does not keep the other from running.
fn main() -> std::process::ExitCode {
    let runs: Vec<(&str, Result<()>)> = vec![
        #[cfg(feature = "wgpu")]
        ("wgpu", on_wgpu()),
        #[cfg(feature = "cuda")]
        ("cuda", on_cuda()),
    ];
    let mut failed = false;
    for (name, r) in runs {
        if let Err(e) = r {
            eprintln!("{name}: {e}");
            failed = true;
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
