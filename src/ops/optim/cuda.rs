//! CUDA launchers of the optimizer family (`kernels/optim.cu`) on the caller's views and stream.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::OptimParams;
use crate::runtime::cuda::{check_lens, device_addr, CudaElem, CudaRuntime, Ptx};
use crate::{DType, Error, Result};

const FAMILY: &str = "optim";
/// Elements per block of the norm reduction (`CHUNK` in the kernel).
const CHUNK: usize = 2048;

/// Every kernel this file launches (build.rs checks each is an entry of the PTX).
pub const KERNELS: &[&str] = &[
    "optim_update_f32",
    "optim_update_f16",
    "optim_update_bf16",
    "clip_partial_f32",
    "clip_partial_f16",
    "clip_partial_bf16",
    "clip_final",
    "philox_normal",
    "philox_words",
];

fn names(dtype: DType) -> (&'static str, &'static str) {
    match dtype {
        DType::F32 => ("optim_update_f32", "clip_partial_f32"),
        DType::F16 => ("optim_update_f16", "clip_partial_f16"),
        DType::BF16 => ("optim_update_bf16", "clip_partial_bf16"),
    }
}

fn grid(rt: &CudaRuntime, threads: usize) -> LaunchConfig {
    // Grid-stride kernels: enough blocks to fill the GPU several times over, no more.
    crate::runtime::cuda::stride_grid(threads, rt.sm_count() as usize * 16)
}

/// One fused step on the runtime's stream: reads `grad`, updates `param`, `m`, `v` (the state
/// the rule keeps; `None` for the others). Arenas must start 16-byte aligned (cudarc allocations
/// do; views at offsets that are multiples of 4 elements do).
pub fn step<G: CudaElem>(
    rt: &CudaRuntime,
    p: &OptimParams,
    grad: &CudaView<G>,
    param: &mut CudaViewMut<f32>,
    m: Option<&mut CudaViewMut<f32>>,
    v: Option<&mut CudaViewMut<f32>>,
) -> Result<()> {
    let n = p.n as usize;
    if n == 0 {
        return Ok(());
    }
    // The state the kernel touches: m with momentum (and Adam's first moment), v with Adam.
    let state = |x: &Option<&mut CudaViewMut<f32>>, used: bool| if used { x.as_ref().map_or(0, |x| x.len()) } else { n };
    check_lens("noisy_optimizer", &[("grad", grad.len(), n), ("param", param.len(), n), ("m", state(&m, p.has_momentum != 0), n), ("v", state(&v, p.rule == 1), n)])?;
    let aligned = |ptr: u64| ptr % 16 == 0;
    if !aligned(device_addr(rt, &*param)) || m.as_ref().is_some_and(|x| !aligned(device_addr(rt, &**x))) || v.as_ref().is_some_and(|x| !aligned(device_addr(rt, &**x))) {
        return Err(Error::Unsupported("optimizer arenas must start 16-byte aligned on CUDA".into()));
    }
    let (update, partial) = names(G::DTYPE);
    let partials = n.div_ceil(CHUNK);
    let mut scratch = rt.stream.alloc_zeros::<f32>(if p.clip != 0 { partials + 1 } else { 1 }).map_err(|e| Error::driver("cuda: alloc", e))?;
    if p.clip != 0 {
        let f = rt.function(FAMILY, Ptx::Base, partial, 0)?;
        let cfg = LaunchConfig { grid_dim: (partials as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: clip_partial_<dtype>(grad, partial, p) reads grad[0..n] and writes partial[0..partials].
        rt.launch(&f, cfg, |a| {
            a.arg(grad).arg(&mut scratch).arg(p);
        })?;
        let f = rt.function(FAMILY, Ptx::Base, "clip_final", 0)?;
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: clip_final(partial, p) reads partial[0..partials] and writes partial[partials].
        rt.launch(&f, cfg, |a| {
            a.arg(&mut scratch).arg(p);
        })?;
    }
    let f = rt.function(FAMILY, Ptx::Base, update, 0)?;
    let null = 0u64;
    let (m, v) = (m, v);
    // SAFETY: optim_update_<dtype>(grad, param, m, v, scratch, p) touches elements 0..n of grad,
    // param and of m / v only when the rule keeps them (has_momentum, rule); those lengths are
    // checked above. Absent state is null and never read.
    rt.launch(&f, grid(rt, n.div_ceil(4)), |a| {
        a.arg(grad).arg(param);
        match m {
            Some(x) => a.arg(x),
            None => a.arg(&null),
        };
        match v {
            Some(x) => a.arg(x),
            None => a.arg(&null),
        };
        a.arg(&scratch).arg(p);
    })
}

/// Standard normals 0..n of step `t` (`words` false), or the Philox words of blocks 0..n (true,
/// 4 per block), into `out` as raw 32-bit words.
pub fn philox(rt: &CudaRuntime, n: usize, seed: u64, t: u32, words: bool, out: &mut CudaViewMut<f32>) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    check_lens("philox", &[("out", out.len(), if words { 4 * n } else { n })])?;
    if device_addr(rt, &*out) % 16 != 0 {
        return Err(Error::Unsupported("philox output must start 16-byte aligned on CUDA".into()));
    }
    let n32 = u32::try_from(n).map_err(|_| Error::Limit(format!("philox: {n} values, at most 2^32 - 1")))?;
    let p = OptimParams { n: n32, seed_lo: seed as u32, seed_hi: (seed >> 32) as u32, step: t, ..Default::default() };
    let name = if words { "philox_words" } else { "philox_normal" };
    let f = rt.function(FAMILY, Ptx::Base, name, 0)?;
    // SAFETY: philox_words(out, p) writes out[0..4n]; philox_normal(out, p) writes out[0..n]; the
    // length and the uint4 stores' 16-byte alignment are checked above.
    rt.launch(&f, grid(rt, if words { n } else { n.div_ceil(4) }), |a| {
        a.arg(out).arg(&p);
    })
}
