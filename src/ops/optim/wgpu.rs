//! wgpu launchers of the optimizer family (`shaders/optim.wgsl`) on the caller's buffers.

use super::OptimParams;
use crate::runtime::wgpu::{check_sizes, WgpuContext};
use crate::{DType, Result};

const FAMILY: &str = "optim";
/// Binding order: grad (read-only), then param, m, v, scratch (written).
const READ_ONLY: usize = 1;
/// Elements per workgroup of the norm reduction (`CHUNK` in the shader).
const CHUNK: usize = 2048;

/// One fused step: reads `grad` (`grad_dtype` arena), updates `param`, `m`, `v` (f32 arenas;
/// pass any buffer for the ones the rule does not keep). With clipping, two reduction passes run
/// first (deterministic: fixed partition, fixed tree).
pub fn step(
    ctx: &WgpuContext,
    p: &OptimParams,
    grad_dtype: DType,
    grad: &wgpu::Buffer,
    param: &wgpu::Buffer,
    m: Option<&wgpu::Buffer>,
    v: Option<&wgpu::Buffer>,
) -> Result<()> {
    let n = p.n as usize;
    if n == 0 {
        return Ok(());
    }
    // The state the shader touches: m with momentum (and Adam's first moment), v with Adam.
    let rw = ctx.dummy(true);
    let (m, v) = (m.unwrap_or(rw), v.unwrap_or(rw));
    let (mn, vn) = (if p.has_momentum != 0 { n } else { 0 }, if p.rule == 1 { n } else { 0 });
    check_sizes("noisy_optimizer", &[("grad", grad, n, grad_dtype), ("param", param, n, DType::F32), ("m", m, mn, DType::F32), ("v", v, vn, DType::F32)])?;
    let partials = n.div_ceil(CHUNK);
    let scratch = if p.clip != 0 { Some(ctx.create_buffer(DType::F32, partials + 1)?) } else { None };
    let sc = scratch.as_deref().unwrap_or(rw);
    let params = bytemuck::bytes_of(p);
    let buffers = [grad, param, m, v, sc];
    if p.clip != 0 {
        let partial = ctx.pipeline(FAMILY, "clip_partial", grad_dtype, READ_ONLY, 4)?;
        ctx.dispatch(&partial, FAMILY, READ_ONLY, params, &buffers, ctx.grid_1d(partials * 256))?;
        let fin = ctx.pipeline(FAMILY, "clip_final", grad_dtype, READ_ONLY, 4)?;
        ctx.dispatch(&fin, FAMILY, READ_ONLY, params, &buffers, [1, 1, 1])?;
    }
    let update = ctx.pipeline(FAMILY, "update", grad_dtype, READ_ONLY, 4)?;
    ctx.dispatch(&update, FAMILY, READ_ONLY, params, &buffers, ctx.grid_1d(n.div_ceil(4)))
}

/// Standard normals 0..n of step `t` into `out` (f32 words), or the raw Philox words of blocks
/// 0..n (`words`, 4 per block).
pub fn philox(ctx: &WgpuContext, n: usize, seed: u64, t: u32, words: bool, out: &wgpu::Buffer) -> Result<()> {
    check_sizes("philox", &[("out", out, if words { 4 * n } else { n }, DType::F32)])?;
    let n32 = u32::try_from(n).map_err(|_| crate::Error::Limit(format!("philox: {n} values, at most 2^32 - 1")))?;
    let p = OptimParams { n: n32, seed_lo: seed as u32, seed_hi: (seed >> 32) as u32, step: t, ..Default::default() };
    let entry = if words { "philox_words" } else { "philox_normal" };
    let pipe = ctx.pipeline(FAMILY, entry, DType::F32, READ_ONLY, 4)?;
    let (ro, rw) = (ctx.dummy(false), ctx.dummy(true));
    let threads = if words { n } else { n.div_ceil(4) };
    ctx.dispatch(&pipe, FAMILY, READ_ONLY, bytemuck::bytes_of(&p), &[ro, rw, rw, rw, out], ctx.grid_1d(threads))
}
