//! CUDA launchers of the FFN family's BatchNorm (`kernels/ffn.cu`) on the caller's views.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::BnParams;
use crate::runtime::cuda::{CudaElem, CudaRuntime, Ptx};
use crate::{DType, Result};

const FAMILY: &str = "ffn";

/// Every kernel this file launches (build.rs checks each is an entry of the PTX).
pub const KERNELS: &[&str] = &[
    "bn_prepare_f32",
    "bn_prepare_f16",
    "bn_prepare_bf16",
    "bn_apply_f32",
    "bn_apply_f16",
    "bn_apply_bf16",
    "bn_backward_reduce_f32",
    "bn_backward_reduce_f16",
    "bn_backward_reduce_bf16",
    "bn_backward_apply_f32",
    "bn_backward_apply_f16",
    "bn_backward_apply_bf16",
];

fn name(kind: usize, dtype: DType) -> &'static str {
    let d = match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
    };
    KERNELS[kind * 3 + d]
}

fn per_channel(p: &BnParams) -> LaunchConfig {
    LaunchConfig { grid_dim: ((p.channels as usize).div_ceil(256).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn per_element(rt: &CudaRuntime, p: &BnParams) -> LaunchConfig {
    let n = p.rows as usize * p.channels as usize;
    LaunchConfig { grid_dim: (n.div_ceil(256).clamp(1, rt.sm_count() as usize * 16) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// BatchNorm forward (statistics, running update in train mode, apply).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm<T: CudaElem>(
    rt: &CudaRuntime,
    p: &BnParams,
    x: &CudaView<T>,
    affine: &CudaView<f32>,
    running_mean: &mut CudaViewMut<f32>,
    running_var: &mut CudaViewMut<f32>,
    stats: &mut CudaViewMut<f32>,
    y: &mut CudaViewMut<T>,
) -> Result<()> {
    let f = rt.function(FAMILY, Ptx::Base, name(0, T::DTYPE), 0)?;
    // SAFETY: bn_prepare_<dtype>(x, affine, rm, rv, stats, p) reads x[0..rows·C], affine[0..2C],
    // and reads/writes rm, rv [0..C] and stats[0..4C]; BatchNormState checked every length.
    rt.launch(&f, per_channel(p), |a| {
        a.arg(x).arg(affine).arg(running_mean).arg(running_var).arg(&mut *stats).arg(p);
    })?;
    let f = rt.function(FAMILY, Ptx::Base, name(1, T::DTYPE), 0)?;
    // SAFETY: bn_apply_<dtype>(x, stats, y, p) reads x and stats[2C..4C], writes y[0..rows·C].
    rt.launch(&f, per_element(rt, p), |a| {
        a.arg(x).arg(&mut *stats).arg(y).arg(p);
    })
}

/// BatchNorm backward: dγ, dβ into `stats[4C..6C]`, then dx (+ extra).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward<T: CudaElem>(
    rt: &CudaRuntime,
    p: &BnParams,
    x: &CudaView<T>,
    dy: &CudaView<T>,
    affine: &CudaView<f32>,
    stats: &mut CudaViewMut<f32>,
    extra: Option<&CudaView<T>>,
    dx: &mut CudaViewMut<T>,
) -> Result<()> {
    let f = rt.function(FAMILY, Ptx::Base, name(2, T::DTYPE), 0)?;
    // SAFETY: bn_backward_reduce_<dtype>(x, dy, stats, p) reads x, dy [0..rows·C] and
    // stats[0..2C], writes stats[4C..6C].
    rt.launch(&f, per_channel(p), |a| {
        a.arg(x).arg(dy).arg(&mut *stats).arg(p);
    })?;
    let f = rt.function(FAMILY, Ptx::Base, name(3, T::DTYPE), 0)?;
    let null = 0u64;
    // SAFETY: bn_backward_apply_<dtype>(x, dy, affine, stats, extra, dx, p) reads x, dy, extra
    // (only when has_extra; null otherwise) [0..rows·C], affine[0..C], stats; writes dx[0..rows·C].
    rt.launch(&f, per_element(rt, p), |a| {
        a.arg(x).arg(dy).arg(affine).arg(&mut *stats);
        match extra {
            Some(e) => a.arg(e),
            None => a.arg(&null),
        };
        a.arg(dx).arg(p);
    })
}
