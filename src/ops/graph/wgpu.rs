//! wgpu launcher of the graph family (`shaders/graph.wgsl`). Crate-internal, like the CUDA one:
//! `ops::graph` validates the operands it is given.

use super::{DeviceGraph, GraphArgs, GraphKernel, GraphParams};
use crate::runtime::wgpu::{WgpuBuffer, WgpuContext};
use crate::{DType, Result};

const FAMILY: &str = "graph";
const FAMILY_SG: &str = "graph_sg";
/// Binding order: the index words, x, y, w, v (read-only), then out, arg.
const READ_ONLY: usize = 5;

/// One graph kernel. LayerNorm runs as a row pass
/// (one workgroup per row, two f32 per row into `arg` or a scratch buffer) then an element pass.
/// Segment reductions and spmm first reduce the segments of long rows into a scratch buffer that
/// the main pass combines; the softmax kernels run partial statistics (long rows only), row
/// statistics, then one pass over the edges.
pub(crate) fn launch(ctx: &WgpuContext, kind: GraphKernel, p: &GraphParams, g: Option<&DeviceGraph<WgpuBuffer>>, a: &GraphArgs<WgpuBuffer>, out: &WgpuBuffer, arg: Option<&WgpuBuffer>) -> Result<()> {
    let dtype = a.x.map_or(out.dtype, |x| x.dtype);
    let (rows, dim, heads) = (p.num_nodes as usize, p.dim as usize, p.heads as usize);
    // The feature kernels take one invocation per output word (two 16-bit elements).
    let words = |rows: usize| (rows * dim).div_ceil(if dtype == DType::F32 { 1 } else { 2 });
    let go = |entry, arg, threads| dispatch(ctx, entry, dtype, p, g, a, out, arg, threads);
    // `tasks` of a per-task entry: one subgroup each where the adapter has subgroups (the `_sg`
    // entry of shaders/graph_sg.wgsl, dispatched for its smallest subgroup size), else `width`
    // invocations each of the plain entry.
    let per_task = |plain: &'static str, sg: &'static str, arg, tasks: usize, width: usize| match ctx.subgroups()? {
        Some(lanes) => go(sg, arg, tasks * lanes as usize),
        None => go(plain, arg, tasks * width),
    };
    let scratch = |len: usize| -> Result<WgpuBuffer> { Ok(WgpuBuffer { buffer: ctx.create_buffer(DType::F32, len.max(1))?, dtype: DType::F32, len: len.max(1) }) };
    let segs = p.num_segs as usize;
    // A long row's combine walks its segments in one invocation (the softmax statistics twice),
    // after a binary search over the long rows.
    let combine_budget = |walks: u64| match g {
        Some(g) if segs > 0 => ctx.within_loop_budget(
            walks * g.max_row_segs as u64 + 32,
            &format!("combining a row of {} segments of {} edges", g.max_row_segs, super::SEGMENT_EDGES),
            "the CPU backend or a GPU adapter runs it",
        ),
        _ => Ok(()),
    };
    // The row kernels' entries for widths that are a multiple of 4 have no straddling groups.
    let w4 = dim % 4 == 0;
    match kind {
        // Four outputs per invocation.
        GraphKernel::Gather => go(if w4 { "graph_gather_w4" } else { "graph_gather" }, arg, (p.num_edges as usize * dim).div_ceil(4)),
        GraphKernel::SegmentReduce | GraphKernel::Spmm => {
            let partial = if kind == GraphKernel::Spmm { "graph_seg_partial_spmm" } else { "graph_seg_partial_reduce" };
            let main = match (kind == GraphKernel::Spmm, w4) {
                (true, true) => "graph_spmm_w4",
                (true, false) => "graph_spmm",
                (false, true) => "graph_segment_reduce_w4",
                (false, false) => "graph_segment_reduce",
            };
            combine_budget(1)?;
            // Four outputs per invocation.
            let groups = (rows * dim).div_ceil(4);
            if segs == 0 {
                return go(main, arg, groups);
            }
            let parts = scratch(2 * segs * dim)?;
            dispatch(ctx, partial, dtype, p, g, a, &parts, None, segs * dim.div_ceil(4))?;
            dispatch(ctx, main, dtype, p, g, &GraphArgs { y: Some(&parts), ..*a }, out, arg, groups)
        }
        // A subgroup or one invocation per (edge, head).
        GraphKernel::Sddmm => per_task("graph_sddmm", "graph_sddmm_sg", arg, p.num_edges as usize * heads, 1),
        GraphKernel::EdgeDot => per_task("graph_edge_dot", "graph_edge_dot_sg", arg, p.num_edges as usize * heads, 1),
        GraphKernel::Softmax | GraphKernel::SoftmaxBackward => {
            combine_budget(2)?;
            let p = &GraphParams { reduce: (kind == GraphKernel::SoftmaxBackward) as u32, ..*p };
            // Long rows' partials (none without long rows: the stats pass then binds a placeholder).
            let parts = if segs > 0 { Some(scratch(2 * segs * heads)?) } else { None };
            if let Some(parts) = &parts {
                dispatch(ctx, "graph_softmax_partial", dtype, p, g, a, parts, None, segs * heads)?;
            }
            let stats = scratch(2 * rows * heads)?;
            dispatch(ctx, "graph_softmax_stats", dtype, p, g, &GraphArgs { y: parts.as_ref(), ..*a }, out, Some(&stats), rows * heads)?;
            dispatch(ctx, "graph_softmax_write", dtype, p, g, a, out, Some(&stats), p.num_edges as usize * heads)
        }
        // The row statistics: a subgroup or a workgroup of 256 per row.
        GraphKernel::LayerNorm => {
            per_task("graph_ln_stats", "graph_ln_stats_sg", arg, rows, 256)?;
            go("graph_ln_apply", arg, words(rows))
        }
        GraphKernel::LayerNormBackward => {
            let stats = scratch(2 * rows)?;
            per_task("graph_ln_bwd_stats", "graph_ln_bwd_stats_sg", Some(&stats), rows, 256)?;
            go("graph_ln_bwd_apply", Some(&stats), words(rows))
        }
        GraphKernel::LayerNormParams => {
            let parts = scratch(2 * segs * dim)?;
            dispatch(ctx, "graph_ln_params", dtype, p, g, a, &parts, None, segs * dim)?;
            dispatch(ctx, "graph_ln_params_sum", dtype, p, g, &GraphArgs { v: Some(&parts), ..*a }, out, None, 2 * dim)
        }
        GraphKernel::EdgeCombine => go("graph_edge_combine", arg, words(p.num_edges as usize)),
        GraphKernel::ScaleAdd => go("graph_scale_add", arg, words(rows)),
        GraphKernel::FromF32 => go("graph_from_f32", arg, words(rows)),
        GraphKernel::GateMeanBackward => go("graph_gate_backward", arg, words(rows)),
        GraphKernel::ToF32 => go("graph_to_f32", arg, rows * dim),
        GraphKernel::GateMean => go("graph_gate_mean", arg, rows),
    }
}

/// One dispatch of `threads` invocations (256 per workgroup); absent operands (and the graph,
/// for LayerNorm) bind the context's dummy buffers.
#[allow(clippy::too_many_arguments)]
fn dispatch<'a>(ctx: &'a WgpuContext, entry: &'static str, dtype: DType, p: &GraphParams, g: Option<&'a DeviceGraph<WgpuBuffer>>, a: &GraphArgs<'a, WgpuBuffer>, out: &WgpuBuffer, arg: Option<&'a WgpuBuffer>, threads: usize) -> Result<()> {
    // The `_sg` entries live in their own module (shaders/graph_sg.wgsl), which only a device
    // with subgroup operations can build.
    let family = if entry.ends_with("_sg") { FAMILY_SG } else { FAMILY };
    let pipe = ctx.pipeline(family, entry, dtype, READ_ONLY, 2)?;
    let buf = |b: Option<&'a WgpuBuffer>, writable: bool| b.map_or(ctx.dummy(writable), |b| &b.buffer);
    let bufs = [buf(g.map(|g| &g.words), false), buf(a.x, false), buf(a.y, false), buf(a.w, false), buf(a.v, false), &out.buffer, buf(arg, true)];
    ctx.dispatch(&pipe, family, READ_ONLY, bytemuck::bytes_of(p), &bufs, ctx.grid_1d(threads))
}
