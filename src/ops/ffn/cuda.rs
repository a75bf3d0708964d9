//! CUDA launchers of the FFN family's BatchNorm (`kernels/ffn.cu`) on the caller's views.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::{BnParams, BN_ROW_LANES, BN_TILE_CHANNELS};
use crate::runtime::cuda::{check_lens, CudaElem, CudaRuntime, Ptx};
use crate::{DType, Result};

const FAMILY: &str = "ffn";

/// Every kernel this file launches (build.rs checks each is an entry of the PTX).
pub const KERNELS: &[&str] = &[
    "bn_partials_f32",
    "bn_partials_f16",
    "bn_partials_bf16",
    "bn_apply_f32",
    "bn_apply_f16",
    "bn_apply_bf16",
    "bn_backward_partials_f32",
    "bn_backward_partials_f16",
    "bn_backward_partials_bf16",
    "bn_backward_apply_f32",
    "bn_backward_apply_f16",
    "bn_backward_apply_bf16",
    "bn_prepare",
    "bn_backward_reduce",
];

fn name(kind: usize, dtype: DType) -> &'static str {
    let d = match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
    };
    KERNELS[kind * 3 + d]
}

/// One block per (tile of channels, chunk of rows): the reductions' first level.
fn per_chunk(p: &BnParams) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((p.channels as usize).div_ceil(BN_TILE_CHANNELS) as u32, p.chunks, 1),
        block_dim: (BN_TILE_CHANNELS as u32, BN_ROW_LANES as u32, 1),
        shared_mem_bytes: 0,
    }
}

fn per_channel(p: &BnParams) -> LaunchConfig {
    LaunchConfig { grid_dim: ((p.channels as usize).div_ceil(256).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn per_element(rt: &CudaRuntime, p: &BnParams) -> LaunchConfig {
    let n = p.rows as usize * p.channels as usize;
    crate::runtime::cuda::stride_grid(n, rt.sm_count() as usize * 16)
}

/// BatchNorm forward (statistics, running update in train mode, apply). `part` is scratch of
/// [`BnParams::partials_len`] f32s.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm<T: CudaElem>(
    rt: &CudaRuntime,
    p: &BnParams,
    x: &CudaView<T>,
    affine: &CudaView<f32>,
    running_mean: &mut CudaViewMut<f32>,
    running_var: &mut CudaViewMut<f32>,
    stats: &mut CudaViewMut<f32>,
    part: &mut CudaViewMut<f32>,
    y: &mut CudaViewMut<T>,
) -> Result<()> {
    p.check()?;
    let (n, c) = (p.rows as usize * p.channels as usize, p.channels as usize);
    let part_len = if p.train != 0 { p.partials_len() } else { 0 };
    check_lens(
        "batchnorm",
        &[("x", x.len(), n), ("y", y.len(), n), ("affine", affine.len(), 2 * c), ("running_mean", running_mean.len(), c), ("running_var", running_var.len(), c), ("stats", stats.len(), super::BN_STATS * c), ("part", part.len(), part_len)],
    )?;
    if p.train != 0 {
        let f = rt.function(FAMILY, Ptx::Base, name(0, T::DTYPE), 0)?;
        // SAFETY: bn_partials_<dtype>(x, part, p) reads x[0..rows·C] and writes part[0..3·chunks·C];
        // every view's length is checked above.
        rt.launch(&f, per_chunk(p), |a| {
            a.arg(x).arg(&mut *part).arg(p);
        })?;
    }
    let f = rt.function(FAMILY, Ptx::Base, KERNELS[12], 0)?;
    // SAFETY: bn_prepare(part, affine, rm, rv, stats, p) reads part (train mode only) and
    // affine[0..2C], reads/writes rm, rv [0..C] and writes stats[0..4C] and stats[6C..7C];
    // lengths checked above.
    rt.launch(&f, per_channel(p), |a| {
        a.arg(&mut *part).arg(affine).arg(running_mean).arg(running_var).arg(&mut *stats).arg(p);
    })?;
    let f = rt.function(FAMILY, Ptx::Base, name(1, T::DTYPE), 0)?;
    // SAFETY: bn_apply_<dtype>(x, stats, affine, y, p) reads x, stats[0..3C], stats[6C..7C] and
    // affine[C..2C], writes y[0..rows·C].
    rt.launch(&f, per_element(rt, p), |a| {
        a.arg(x).arg(&mut *stats).arg(affine).arg(y).arg(p);
    })
}

/// BatchNorm backward: dγ, dβ into `stats[4C..6C]`, then dx (+ extra). `part` as in [`batchnorm`].
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward<T: CudaElem>(
    rt: &CudaRuntime,
    p: &BnParams,
    x: &CudaView<T>,
    dy: &CudaView<T>,
    affine: &CudaView<f32>,
    stats: &mut CudaViewMut<f32>,
    part: &mut CudaViewMut<f32>,
    extra: Option<&CudaView<T>>,
    dx: &mut CudaViewMut<T>,
) -> Result<()> {
    p.check()?;
    let (n, c) = (p.rows as usize * p.channels as usize, p.channels as usize);
    let extra_len = if p.has_extra != 0 { extra.map_or(0, |e| e.len()) } else { n };
    check_lens(
        "batchnorm",
        &[("x", x.len(), n), ("dy", dy.len(), n), ("extra", extra_len, n), ("dx", dx.len(), n), ("affine", affine.len(), 2 * c), ("stats", stats.len(), super::BN_STATS * c), ("part", part.len(), p.partials_len())],
    )?;
    let f = rt.function(FAMILY, Ptx::Base, name(2, T::DTYPE), 0)?;
    // SAFETY: bn_backward_partials_<dtype>(x, dy, stats, part, p) reads x, dy [0..rows·C],
    // stats[0..2C] and stats[6C..7C], writes part[0..2·chunks·C].
    rt.launch(&f, per_chunk(p), |a| {
        a.arg(x).arg(dy).arg(&mut *stats).arg(&mut *part).arg(p);
    })?;
    let f = rt.function(FAMILY, Ptx::Base, KERNELS[13], 0)?;
    // SAFETY: bn_backward_reduce(part, stats, p) reads part[0..2·chunks·C], writes stats[4C..6C].
    rt.launch(&f, per_channel(p), |a| {
        a.arg(&mut *part).arg(&mut *stats).arg(p);
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
