//! wgpu launchers of the FFN family's BatchNorm (`shaders/ffn.wgsl`).

use super::{BnParams, BN_ROW_LANES, BN_TILE_CHANNELS};
use crate::runtime::wgpu::{check_sizes, WgpuContext};
use crate::{DType, Result};

const FAMILY: &str = "ffn";
/// Binding order: x, dy, affine, extra (read-only), then running mean, running var, stats, out,
/// the per-chunk partials.
const READ_ONLY: usize = 4;
const WRITABLE: usize = 5;

/// The reductions' first level: one workgroup per (tile of channels, chunk of rows).
fn per_chunk(ctx: &WgpuContext, p: &BnParams, what: &str) -> Result<[u32; 3]> {
    // Two sweeps over a thread's rows of its chunk, four rows a step (the step's own loop is
    // unrolled), then one invocation per channel walks the chunks.
    let sweeps = 2 * (p.chunk_rows as u64).div_ceil(4 * BN_ROW_LANES as u64);
    ctx.within_loop_budget(sweeps.max(p.chunks as u64), what, "the CPU backend or a GPU adapter runs it")?;
    Ok([(p.channels as usize).div_ceil(BN_TILE_CHANNELS) as u32, p.chunks, 1])
}

/// BatchNorm forward: per-channel statistics (and the running update in train mode), then the
/// affine apply into `y`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm(
    ctx: &WgpuContext,
    p: &BnParams,
    dtype: DType,
    x: &wgpu::Buffer,
    affine: &wgpu::Buffer,
    running_mean: &wgpu::Buffer,
    running_var: &wgpu::Buffer,
    stats: &wgpu::Buffer,
    y: &wgpu::Buffer,
) -> Result<()> {
    p.check()?;
    let (n, c, f32) = (p.rows as usize * p.channels as usize, p.channels as usize, DType::F32);
    check_sizes(
        "batchnorm",
        &[("x", x, n, dtype), ("y", y, n, dtype), ("affine", affine, 2 * c, f32), ("running_mean", running_mean, c, f32), ("running_var", running_var, c, f32), ("stats", stats, super::BN_STATS * c, f32)],
    )?;
    let ro = ctx.dummy(false);
    let part = if p.train != 0 { Some(ctx.create_buffer(DType::F32, p.partials_len())?) } else { None };
    let buffers = [x, ro, affine, ro, running_mean, running_var, stats, y, part.as_deref().unwrap_or(ctx.dummy(true))];
    if p.train != 0 {
        let groups = per_chunk(ctx, p, &format!("BatchNorm's batch statistics over {} rows", p.rows))?;
        let partials = ctx.pipeline(FAMILY, "bn_partials", dtype, READ_ONLY, WRITABLE)?;
        ctx.dispatch(&partials, FAMILY, READ_ONLY, bytemuck::bytes_of(p), &buffers, groups)?;
    }
    let prepare = ctx.pipeline(FAMILY, "bn_prepare", dtype, READ_ONLY, WRITABLE)?;
    ctx.dispatch(&prepare, FAMILY, READ_ONLY, bytemuck::bytes_of(p), &buffers, ctx.grid_1d(p.channels as usize))?;
    let apply = ctx.pipeline(FAMILY, "bn_apply", dtype, READ_ONLY, WRITABLE)?;
    ctx.dispatch(&apply, FAMILY, READ_ONLY, bytemuck::bytes_of(p), &buffers, ctx.grid_1d((p.rows as usize * p.channels as usize).div_ceil(2)))
}

/// BatchNorm backward: per-channel dγ, dβ into `stats`, then dx (+ extra).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(
    ctx: &WgpuContext,
    p: &BnParams,
    dtype: DType,
    x: &wgpu::Buffer,
    dy: &wgpu::Buffer,
    affine: &wgpu::Buffer,
    stats: &wgpu::Buffer,
    extra: Option<&wgpu::Buffer>,
    dx: &wgpu::Buffer,
) -> Result<()> {
    p.check()?;
    let (n, c, f32) = (p.rows as usize * p.channels as usize, p.channels as usize, DType::F32);
    let extra_n = if p.has_extra != 0 { n } else { 0 };
    check_sizes(
        "batchnorm",
        &[("x", x, n, dtype), ("dy", dy, n, dtype), ("extra", extra.unwrap_or(ctx.dummy(false)), extra_n, dtype), ("dx", dx, n, dtype), ("affine", affine, 2 * c, f32), ("stats", stats, super::BN_STATS * c, f32)],
    )?;
    let groups = per_chunk(ctx, p, &format!("BatchNorm's backward over {} rows", p.rows))?;
    let (ro, rw) = (ctx.dummy(false), ctx.dummy(true));
    let part = ctx.create_buffer(DType::F32, p.partials_len())?;
    let buffers = [x, dy, affine, extra.unwrap_or(ro), rw, rw, stats, dx, &part];
    let partials = ctx.pipeline(FAMILY, "bn_backward_partials", dtype, READ_ONLY, WRITABLE)?;
    ctx.dispatch(&partials, FAMILY, READ_ONLY, bytemuck::bytes_of(p), &buffers, groups)?;
    let reduce = ctx.pipeline(FAMILY, "bn_backward_reduce", dtype, READ_ONLY, WRITABLE)?;
    ctx.dispatch(&reduce, FAMILY, READ_ONLY, bytemuck::bytes_of(p), &buffers, ctx.grid_1d(p.channels as usize))?;
    let apply = ctx.pipeline(FAMILY, "bn_backward_apply", dtype, READ_ONLY, WRITABLE)?;
    ctx.dispatch(&apply, FAMILY, READ_ONLY, bytemuck::bytes_of(p), &buffers, ctx.grid_1d((p.rows as usize * p.channels as usize).div_ceil(2)))
}
