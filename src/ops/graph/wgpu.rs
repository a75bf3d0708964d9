//! wgpu launcher of the graph family (`shaders/graph.wgsl`).

use super::{DeviceGraph, GraphKernel, GraphParams};
use crate::runtime::wgpu::{WgpuBuffer, WgpuContext};
use crate::{DType, Result};

const FAMILY: &str = "graph";
/// Binding order: row_ptr, src, perm, src_coo, x, w (read-only), then out, arg.
const READ_ONLY: usize = 6;

/// One graph kernel: one invocation per output word, in a 2-D grid past 65535 workgroups.
#[allow(clippy::too_many_arguments)]
pub fn launch(
    ctx: &WgpuContext,
    kind: GraphKernel,
    p: &GraphParams,
    dtype: DType,
    g: &DeviceGraph<WgpuBuffer>,
    x: &wgpu::Buffer,
    w: Option<&wgpu::Buffer>,
    out: &wgpu::Buffer,
    arg: Option<&wgpu::Buffer>,
) -> Result<()> {
    let entry = match kind {
        GraphKernel::Gather => "graph_gather",
        GraphKernel::SegmentReduce => "graph_segment_reduce",
        GraphKernel::Spmm => "graph_spmm",
    };
    let pipe = ctx.pipeline(FAMILY, entry, dtype, READ_ONLY, 2)?;
    let rows = if kind == GraphKernel::Gather { p.num_edges } else { p.num_nodes } as usize;
    let words = (rows * p.dim as usize).div_ceil(if dtype == DType::F32 { 1 } else { 2 });
    let groups = words.div_ceil(256);
    let (gx, gy) = if groups <= 65535 { (groups, 1) } else { (65535, groups.div_ceil(65535)) };
    // Unused bindings get a one-word placeholder (a writable binding may not alias `out`).
    let spare = ctx.create_buffer(DType::F32, 1)?;
    let w = w.unwrap_or(&g.perm.buffer);
    let arg = arg.unwrap_or(&spare);
    let bufs = [&g.row_ptr.buffer, &g.src.buffer, &g.perm.buffer, &g.src_coo.buffer, x, w, out, arg];
    ctx.dispatch(&pipe, FAMILY, READ_ONLY, bytemuck::bytes_of(p), &bufs, [gx as u32, gy as u32, 1])
}
