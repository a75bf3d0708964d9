//! wgpu launcher of the graph family (`shaders/graph.wgsl`).

use super::{DeviceGraph, GraphArgs, GraphKernel, GraphParams};
use crate::runtime::wgpu::{WgpuBuffer, WgpuContext};
use crate::{DType, Result};

const FAMILY: &str = "graph";
/// Binding order: the index words, x, y, w, v (read-only), then out, arg.
const READ_ONLY: usize = 5;

/// One graph kernel, in a 2-D grid past 65535 workgroups.
pub fn launch(ctx: &WgpuContext, kind: GraphKernel, p: &GraphParams, g: &DeviceGraph<WgpuBuffer>, a: &GraphArgs<WgpuBuffer>, out: &WgpuBuffer, arg: Option<&WgpuBuffer>) -> Result<()> {
    let dtype = a.x.map_or(DType::F32, |x| x.dtype);
    let (entry, threads) = match kind {
        GraphKernel::Gather => ("graph_gather", (p.num_edges * p.dim) as usize),
        GraphKernel::SegmentReduce => ("graph_segment_reduce", (p.num_nodes * p.dim) as usize),
        GraphKernel::Spmm => ("graph_spmm", (p.num_nodes * p.dim) as usize),
        GraphKernel::Sddmm => ("graph_sddmm", (p.num_nodes * p.heads) as usize),
        GraphKernel::Softmax => ("graph_softmax", (p.num_nodes * p.heads) as usize),
        GraphKernel::SoftmaxBackward => ("graph_softmax_backward", (p.num_nodes * p.heads) as usize),
    };
    // The feature kernels take one invocation per output word (two 16-bit elements).
    let threads = if matches!(kind, GraphKernel::Gather | GraphKernel::SegmentReduce | GraphKernel::Spmm) { threads.div_ceil(if dtype == DType::F32 { 1 } else { 2 }) } else { threads };
    let pipe = ctx.pipeline(FAMILY, entry, dtype, READ_ONLY, 2)?;
    let groups = threads.div_ceil(256);
    let (gx, gy) = if groups <= 65535 { (groups, 1) } else { (65535, groups.div_ceil(65535)) };
    // Unused bindings get a one-word placeholder (a writable binding may not alias `out`).
    let spare = ctx.create_buffer(DType::F32, 1)?;
    fn pick<'a>(b: Option<&'a WgpuBuffer>, none: &'a wgpu::Buffer) -> &'a wgpu::Buffer {
        b.map_or(none, |b| &b.buffer)
    }
    let w0 = &g.words.buffer;
    let arg = arg.map_or(&spare, |a| &a.buffer);
    let bufs = [&g.words.buffer, pick(a.x, w0), pick(a.y, w0), pick(a.w, w0), pick(a.v, w0), &out.buffer, arg];
    ctx.dispatch(&pipe, FAMILY, READ_ONLY, bytemuck::bytes_of(p), &bufs, [gx as u32, gy as u32, 1])
}
