//! wgpu launchers of the FFN family's BatchNorm (`shaders/ffn.wgsl`).

use super::BnParams;
use crate::runtime::wgpu::WgpuContext;
use crate::{DType, Result};

const FAMILY: &str = "ffn";
/// Binding order: x, dy, affine, extra (read-only), then running mean, running var, stats, out.
const READ_ONLY: usize = 4;

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
    // Batch statistics loop over the rows twice in one invocation per channel.
    if p.train != 0 {
        ctx.within_loop_budget(2 * p.rows as u64, &format!("BatchNorm's batch statistics over {} rows", p.rows), "the CPU backend or a GPU adapter runs it")?;
    }
    let ro = ctx.dummy(false);
    let buffers = [x, ro, affine, ro, running_mean, running_var, stats, y];
    let prepare = ctx.pipeline(FAMILY, "bn_prepare", dtype, READ_ONLY, 4)?;
    ctx.dispatch(&prepare, FAMILY, READ_ONLY, bytemuck::bytes_of(p), &buffers, ctx.grid_1d(p.channels as usize))?;
    let apply = ctx.pipeline(FAMILY, "bn_apply", dtype, READ_ONLY, 4)?;
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
    ctx.within_loop_budget(p.rows as u64, &format!("BatchNorm's backward over {} rows", p.rows), "the CPU backend or a GPU adapter runs it")?;
    let (ro, rw) = (ctx.dummy(false), ctx.dummy(true));
    let buffers = [x, dy, affine, extra.unwrap_or(ro), rw, rw, stats, dx];
    let reduce = ctx.pipeline(FAMILY, "bn_backward_reduce", dtype, READ_ONLY, 4)?;
    ctx.dispatch(&reduce, FAMILY, READ_ONLY, bytemuck::bytes_of(p), &buffers, ctx.grid_1d(p.channels as usize))?;
    let apply = ctx.pipeline(FAMILY, "bn_backward_apply", dtype, READ_ONLY, 4)?;
    ctx.dispatch(&apply, FAMILY, READ_ONLY, bytemuck::bytes_of(p), &buffers, ctx.grid_1d((p.rows as usize * p.channels as usize).div_ceil(2)))
}
