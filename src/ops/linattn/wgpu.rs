//! wgpu launcher of the linear-attention family (`shaders/linattn.wgsl`).

use super::LinAttnParams;
use crate::runtime::wgpu::WgpuContext;
use crate::{DType, Result};

const FAMILY: &str = "linattn";
/// Binding order: q, k, v, a copy of the initial z, the sequence starts (read-only), then
/// state, z, o.
const READ_ONLY: usize = 5;

/// The fused recurrent forward / decode step: reads q, k, v; updates `state` and `z` in place;
/// writes `o`.
#[allow(clippy::too_many_arguments)]
pub fn recurrent(
    ctx: &WgpuContext,
    p: &LinAttnParams,
    dtype: DType,
    q: &wgpu::Buffer,
    k: &wgpu::Buffer,
    v: &wgpu::Buffer,
    starts: &[u32],
    state: &wgpu::Buffer,
    z: &wgpu::Buffer,
    o: &wgpu::Buffer,
) -> Result<()> {
    let pipe = ctx.pipeline(FAMILY, "linattn_recurrent", dtype, READ_ONLY, 3)?;
    // Every value tile reads the initial normalizer while tile 0 writes the final one: a copy
    // (queued before the dispatch, so it sees the state as the caller left it).
    let n = (p.batch * p.heads * p.k) as usize;
    let z_init = ctx.create_buffer(DType::F32, n)?;
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ffkern z copy") });
    enc.copy_buffer_to_buffer(z, 0, &z_init, 0, (n * 4).div_ceil(4) as u64 * 4);
    ctx.queue.submit([enc.finish()]);
    let starts = wgpu::util::DeviceExt::create_buffer_init(
        &ctx.device,
        &wgpu::util::BufferInitDescriptor { label: Some("ffkern starts"), contents: bytemuck::cast_slice(starts), usage: wgpu::BufferUsages::STORAGE },
    );
    let groups = [(p.v as usize).div_ceil(16) as u32, p.batch * p.heads, 1];
    ctx.dispatch(&pipe, FAMILY, READ_ONLY, bytemuck::bytes_of(p), &[q, k, v, &z_init, &starts, state, z, o], groups)
}
