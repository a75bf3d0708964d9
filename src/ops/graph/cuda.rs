//! CUDA launcher of the graph family (`kernels/graph.cu`). Crate-internal: the kernels trust the
//! index words of a checked `DeviceGraph` and lengths that `ops::graph` validated.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::{GraphKernel, GraphParams};
use crate::runtime::cuda::{device_addr, kernel_name, CudaElem, CudaRuntime, Ptx};
use crate::{Error, Result};

const FAMILY: &str = "graph";

/// Every kernel this file launches (build.rs checks each is an entry of the PTX).
pub const KERNELS: &[&str] = &[
    "graph_gather_f32",
    "graph_gather_f16",
    "graph_gather_bf16",
    "graph_gather16_f32",
    "graph_gather16_f16",
    "graph_gather16_bf16",
    "graph_segment_reduce_f32",
    "graph_segment_reduce_f16",
    "graph_segment_reduce_bf16",
    "graph_spmm_f32",
    "graph_spmm_f16",
    "graph_spmm_bf16",
    "graph_spmm_warp_f32",
    "graph_spmm_warp_f16",
    "graph_spmm_warp_bf16",
    "graph_segment_sum_warp_f32",
    "graph_segment_sum_warp_f16",
    "graph_segment_sum_warp_bf16",
    "graph_seg_partial_reduce_f32",
    "graph_seg_partial_reduce_f16",
    "graph_seg_partial_reduce_bf16",
    "graph_seg_partial_spmm_f32",
    "graph_seg_partial_spmm_f16",
    "graph_seg_partial_spmm_bf16",
    "graph_sddmm_f32",
    "graph_sddmm_f16",
    "graph_sddmm_bf16",
    "graph_sddmm16_f32",
    "graph_sddmm16_f16",
    "graph_sddmm16_bf16",
    "graph_edge_dot16_f32",
    "graph_edge_dot16_f16",
    "graph_edge_dot16_bf16",
    "graph_ln_forward_f32",
    "graph_ln_forward_f16",
    "graph_ln_forward_bf16",
    "graph_ln_backward_f32",
    "graph_ln_backward_f16",
    "graph_ln_backward_bf16",
    "graph_ln_forward16_f32",
    "graph_ln_forward16_f16",
    "graph_ln_forward16_bf16",
    "graph_ln_backward16_f32",
    "graph_ln_backward16_f16",
    "graph_ln_backward16_bf16",
    "graph_ln_params_f32",
    "graph_ln_params_f16",
    "graph_ln_params_bf16",
    "graph_ln_params_sum",
    "graph_seg_fold",
    "graph_edge_combine_f32",
    "graph_edge_combine_f16",
    "graph_edge_combine_bf16",
    "graph_edge_dot_f32",
    "graph_edge_dot_f16",
    "graph_edge_dot_bf16",
    "graph_scale_add_f32",
    "graph_scale_add_f16",
    "graph_scale_add_bf16",
    "graph_scale_add16_f32",
    "graph_scale_add16_f16",
    "graph_scale_add16_bf16",
    "graph_edge_combine16_f32",
    "graph_edge_combine16_f16",
    "graph_edge_combine16_bf16",
    "graph_gate_mean_f32",
    "graph_gate_mean_f16",
    "graph_gate_mean_bf16",
    "graph_gate_backward_f32",
    "graph_gate_backward_f16",
    "graph_gate_backward_bf16",
    "graph_to_f32_f32",
    "graph_to_f32_f16",
    "graph_to_f32_bf16",
    "graph_from_f32_f32",
    "graph_from_f32_f16",
    "graph_from_f32_bf16",
    "graph_softmax_partial",
    "graph_softmax_stats",
    "graph_softmax_write",
];

/// The typed operands of one launch (see `GraphKernel` for which each kernel reads).
pub(crate) struct CudaGraphArgs<'a, T> {
    /// The graph's index words; None for LayerNorm, which reads no graph.
    pub idx: Option<CudaView<'a, f32>>,
    /// The first feature operand (see `GraphKernel`).
    pub x: Option<CudaView<'a, T>>,
    /// The second feature operand.
    pub y: Option<CudaView<'a, T>>,
    /// An f32 operand: edge weights or per-row factors.
    pub w: Option<CudaView<'a, f32>>,
    /// A second f32 operand: statistics or an f32 input.
    pub v: Option<CudaView<'a, f32>>,
}

/// `FFKERN_GRAPH_KERNEL`: `auto` (default) or `warp` (a warp per 32 16-byte pieces of a row for
/// spmm and sum/mean where the widths allow, narrower rows several to a warp, long rows' segments
/// and their combines in the same launch; on the H200's power-law graphs, where the thread form
/// ran before, 0.88–0.89× its time on the bf16 mesh, 0.91–1.07× on the rest, with the segments
/// then in launches of their own) or `thread` (four columns per thread).
fn kernel_choice() -> Result<&'static str> {
    static CHOICE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    crate::runtime::kernel_env(&CHOICE, &crate::runtime::GRAPH_KERNEL)
}

/// Pushes the long rows' partials, or (a graph without long rows, whose kernels never read them)
/// another operand's pointer in their place.
fn part_arg<'l, 'b: 'l>(l: &'l mut cudarc::driver::LaunchArgs<'b>, part: &'b Option<cudarc::driver::CudaSlice<f32>>, other: &'b CudaView<'_, f32>) -> &'l mut cudarc::driver::LaunchArgs<'b> {
    match part {
        Some(part) => l.arg(part),
        None => l.arg(other),
    }
}

/// The words before the partials in the warp form's sync scratch: ticket, finish count and one
/// flag per (segment, piece group), padded to 16 bytes (kernels/graph.cu, `graph_sync_words`).
fn sync_words(flags: usize) -> usize {
    (2 + flags).div_ceil(4) * 4
}

/// The lanes that take one row's (or segment's, or edge head's) pieces together in the 16-byte
/// kernels: the power of two at or above the pieces, up to 32 (kernels/graph.cu,
/// `graph_lane_group`).
fn lane_group(pieces: usize) -> usize {
    pieces.next_power_of_two().min(32)
}

fn need<'b, X>(v: &'b Option<X>, what: &str) -> Result<&'b X> {
    v.as_ref().ok_or_else(|| Error::Invalid(format!("graph: the {what} operand is missing")))
}

/// Whether the rows of `x` and `out` move in whole 16-byte pieces: the width (and, with weights,
/// each head's columns) a multiple of 16 bytes, both buffers 16-byte aligned.
fn whole_pieces<T, X: cudarc::driver::DevicePtr<T>, O: cudarc::driver::DevicePtr<T>>(rt: &CudaRuntime, p: &GraphParams, x: &X, out: &O) -> bool {
    let per16 = (16 / std::mem::size_of::<T>()) as u32;
    pieces16::<T>(p.dim, 0, &[device_addr(rt, x), device_addr(rt, out)]).is_some() && (p.has_weight == 0 || (p.dim / p.heads) % per16 == 0)
}

/// The piece count of a pass over `len` elements in rows (or heads) `dim` wide in whole 16-byte
/// pieces, where it can take them: `dim` a multiple of 16 bytes, every operand address 16-byte
/// aligned, fewer than 2³¹ pieces (the kernels index pieces in 32 bits).
fn pieces16<T>(p_dim: u32, len: usize, addrs: &[u64]) -> Option<usize> {
    let per16 = 16 / std::mem::size_of::<T>();
    let n = len / per16;
    (p_dim as usize % per16 == 0 && addrs.iter().all(|a| a % 16 == 0) && n < 1 << 31).then_some(n)
}

/// One graph kernel on the runtime's stream. `out` is `T` for gather / segment_reduce / spmm
/// and f32 for the per-edge kernels (`out32`).
pub(crate) fn launch<T: CudaElem>(
    rt: &CudaRuntime,
    kind: GraphKernel,
    p: &GraphParams,
    a: &CudaGraphArgs<T>,
    out: Option<&mut CudaViewMut<T>>,
    out32: Option<&mut CudaViewMut<f32>>,
    arg: Option<&mut CudaViewMut<f32>>,
) -> Result<()> {
    // The entry `base` (typed by T where it has a dtype suffix), loaded once.
    let load = |base: &str| -> Result<cudarc::driver::CudaFunction> { rt.function(FAMILY, Ptx::Base, kernel_name::<T>(KERNELS, base)?, 0) };
    let cfg = |threads: usize| crate::runtime::cuda::stride_grid(threads, 1 << 20);
    // The long rows' partials and the softmax statistics: written in full before they are read.
    let scratch = |len: usize| rt.uninit::<f32>(len);
    let (rows, dim, heads, edges) = (p.num_nodes as usize, p.dim as usize, p.heads as usize, p.num_edges as usize);
    let (segs, rows_dim) = (p.num_segs as usize, rows * dim);
    let (name, threads) = match kind {
        // Four outputs per thread.
        GraphKernel::Gather => ("graph_gather", (edges * dim).div_ceil(4)),
        // Four outputs per thread.
        GraphKernel::SegmentReduce => ("graph_segment_reduce", rows_dim.div_ceil(4)),
        GraphKernel::Spmm => ("graph_spmm", rows_dim.div_ceil(4)),
        GraphKernel::Sddmm => ("graph_sddmm", edges * heads),
        GraphKernel::Softmax | GraphKernel::SoftmaxBackward => ("graph_softmax_write", edges * heads),
        // One block per row.
        GraphKernel::LayerNorm => ("graph_ln_forward", rows * 256),
        GraphKernel::LayerNormBackward => ("graph_ln_backward", rows * 256),
        GraphKernel::LayerNormParams => ("graph_ln_params", segs * dim),
        GraphKernel::EdgeCombine => ("graph_edge_combine", edges * dim),
        GraphKernel::EdgeDot => ("graph_edge_dot", edges * heads),
        GraphKernel::ScaleAdd => ("graph_scale_add", rows_dim),
        GraphKernel::GateMean => ("graph_gate_mean", rows),
        GraphKernel::GateMeanBackward => ("graph_gate_backward", rows_dim),
        GraphKernel::ToF32 => ("graph_to_f32", rows_dim),
        GraphKernel::FromF32 => ("graph_from_f32", rows_dim),
    };
    let (f, cfg_main) = (load(name)?, cfg(threads));
    // The 16-byte entry `name16` over `len` elements where its operands take whole pieces (see
    // [`pieces16`]), one thread per piece; `None` keeps the element entry.
    let entry16 = |name16: &str, len: usize, addrs: &[u64]| pieces16::<T>(p.dim, len, addrs).map(|n| Ok((load(name16)?, cfg(n)))).transpose();
    // SAFETY: the graph entries read the index words idx [N + 1 + 4E + 2L + 1 + S] (each index
    // checked < N, resp. ≤ E, when the Graph was built, and the segment lists derived from it;
    // only DeviceGraph::upload makes them) and their operands, whose lengths ops::graph checked:
    // x, y [rows · dim] in T, w, v [E · heads] f32. Gather writes out [E · dim], segment_reduce
    // and spmm out [N · dim] (T), after the segment partials write part [2 · S · dim] (f32,
    // allocated here) which they then read (with S = 0 part is idx's pointer, never read; the row
    // kernels read part only for long rows); segment_reduce writes arg [N · dim] only for
    // max/min (otherwise the pointer is idx's and is never written); sddmm writes out32
    // [E · heads]. The softmax passes write part [S · heads] (float2, allocated here where
    // S > 0; else the pointer is w's, never read) and stats [N · heads] (float2, allocated here),
    // then out32 [E · heads], each element once.
    // edge_combine reads Ee [E · dim] and P [N · 2·dim] (T) and writes m [E · dim]; edge_dot
    // reads x, y [E · dim] and writes out32 [E · heads]. LayerNorm reads no graph: x, dy
    // [rows · dim] (T), [γ | β] [2 · dim] and stats [2 · rows] (f32), and writes y or dx
    // [rows · dim] (T), stats (forward) or [dγ | dβ] (out32, 2 · dim). The row-wise helpers
    // read no graph: x, y [rows · dim] (T) and w [rows] or v [rows · dim] (f32), and write
    // out [rows · dim] (T; to_f32 out32) or, for the gate mean, out32 [rows].
    match kind {
        GraphKernel::ScaleAdd | GraphKernel::GateMeanBackward | GraphKernel::FromF32 => {
            let out = out.ok_or_else(|| Error::Invalid("graph: a typed output is needed".into()))?;
            match kind {
                GraphKernel::FromF32 => {
                    let v = need(&a.v, "v")?;
                    rt.launch(&f, cfg_main, |l| {
                        l.arg(v).arg(out).arg(p);
                    })
                }
                GraphKernel::GateMeanBackward => {
                    let (x, dg) = (need(&a.x, "logits")?, need(&a.w, "dg")?);
                    rt.launch(&f, cfg_main, |l| {
                        l.arg(x).arg(dg).arg(out).arg(p);
                    })
                }
                _ => {
                    let x = need(&a.x, "x")?;
                    // Absent operands pass x's pointer; has_y / has_weight say they are not read.
                    let y = a.y.as_ref().unwrap_or(x);
                    // SAFETY (graph_scale_add16): as graph_scale_add, in whole 16-byte pieces of
                    // x, y and out (checked by pieces16).
                    let (f, cfg_main) = entry16("graph_scale_add16", rows_dim, &[device_addr(rt, x), device_addr(rt, y), device_addr(rt, &*out)])?.unwrap_or((f, cfg_main));
                    match &a.w {
                        Some(w) => rt.launch(&f, cfg_main, |l| {
                            l.arg(x).arg(y).arg(w).arg(out).arg(p);
                        }),
                        None => rt.launch(&f, cfg_main, |l| {
                            l.arg(x).arg(y).arg(x).arg(out).arg(p);
                        }),
                    }
                }
            }
        }
        GraphKernel::ToF32 | GraphKernel::GateMean => {
            let out = out32.ok_or_else(|| Error::Invalid("graph: an f32 output is needed".into()))?;
            let x = need(&a.x, "x")?;
            rt.launch(&f, cfg_main, |l| {
                l.arg(x).arg(out).arg(p);
            })
        }
        GraphKernel::LayerNorm | GraphKernel::LayerNormBackward => {
            let out = out.ok_or_else(|| Error::Invalid("layer_norm: a typed output is needed".into()))?;
            let (x, affine) = (need(&a.x, "x")?, need(&a.w, "affine")?);
            // One warp per row on 16-byte pieces where the row is at most 512 elements in whole
            // pieces and x, dy, the output and γ, β are 16-byte aligned (LN_PIECES in
            // kernels/graph.cu; β follows γ, dim floats on, a multiple of 16 bytes with the pieces).
            let dy_addr = a.y.as_ref().map_or(0, |dy| device_addr(rt, dy));
            let addrs = [device_addr(rt, x), device_addr(rt, &*out), dy_addr, device_addr(rt, affine)];
            let warp_rows = dim <= 512 && pieces16::<T>(p.dim, 0, &addrs).is_some();
            let (f, cfg_main) = if warp_rows {
                (load(if kind == GraphKernel::LayerNorm { "graph_ln_forward16" } else { "graph_ln_backward16" })?, cfg(rows * 32))
            } else {
                (f, cfg_main)
            };
            // SAFETY (the warp forms): as below, rows read and written in whole 16-byte pieces
            // (checked above); warp w handles rows w, w + warps, … alone.
            if kind == GraphKernel::LayerNorm {
                let stats = arg.ok_or_else(|| Error::Invalid("layer_norm: the stats output is missing".into()))?;
                rt.launch(&f, cfg_main, |l| {
                    l.arg(x).arg(affine).arg(out).arg(stats).arg(p);
                })
            } else {
                let (dy, stats) = (need(&a.y, "dy")?, need(&a.v, "stats")?);
                rt.launch(&f, cfg_main, |l| {
                    l.arg(x).arg(dy).arg(affine).arg(stats).arg(out).arg(p);
                })
            }
        }
        GraphKernel::LayerNormParams => {
            let out = out32.ok_or_else(|| Error::Invalid("layer_norm: an f32 output is needed".into()))?;
            let (x, dy, stats) = (need(&a.x, "x")?, need(&a.y, "dy")?, need(&a.v, "stats")?);
            let mut part = scratch(2 * segs * dim)?;
            rt.launch(&f, cfg_main, |l| {
                l.arg(x).arg(dy).arg(stats).arg(&mut part).arg(p);
            })?;
            let sum = load("graph_ln_params_sum")?;
            rt.launch(&sum, cfg(2 * dim), |l| {
                l.arg(&part).arg(out).arg(p);
            })
        }
        GraphKernel::EdgeCombine => {
            let out = out.ok_or_else(|| Error::Invalid("edge_mlp: a typed output is needed".into()))?;
            let (idx, ee, pn) = (need(&a.idx, "graph")?, need(&a.x, "Ee")?, need(&a.y, "P")?);
            // SAFETY (graph_edge_combine16): as graph_edge_combine, in whole 16-byte pieces of Ee,
            // P and m (checked by pieces16).
            let (f, cfg_main) = entry16("graph_edge_combine16", edges * dim, &[device_addr(rt, ee), device_addr(rt, pn), device_addr(rt, &*out)])?.unwrap_or((f, cfg_main));
            rt.launch(&f, cfg_main, |l| {
                l.arg(idx).arg(ee).arg(pn).arg(out).arg(p);
            })
        }
        GraphKernel::Gather => {
            let out = out.ok_or_else(|| Error::Invalid("graph: a typed output is needed".into()))?;
            let (idx, x) = (need(&a.idx, "graph")?, need(&a.x, "x")?);
            // Without weights the w pointer is idx's and is never read (p.has_weight = 0).
            let w = a.w.as_ref().unwrap_or(idx);
            // SAFETY (graph_gather16): as graph_gather, with x and out read and written in whole
            // 16-byte pieces (dim and, with weights, each head's columns a multiple of 16 bytes,
            // both 16-byte aligned, the piece count below 2³¹: checked by whole_pieces and pieces16).
            let entry = if whole_pieces::<T, _, _>(rt, p, x, &*out) { entry16("graph_gather16", edges * dim, &[device_addr(rt, x), device_addr(rt, &*out)])? } else { None };
            let (f, cfg_main) = entry.unwrap_or((f, cfg_main));
            rt.launch(&f, cfg_main, |l| {
                l.arg(idx).arg(x).arg(w).arg(out).arg(p);
            })
        }
        GraphKernel::SegmentReduce | GraphKernel::Spmm => {
            let out = out.ok_or_else(|| Error::Invalid("graph: a typed output is needed".into()))?;
            let (idx, x) = (need(&a.idx, "graph")?, need(&a.x, "x")?);
            if dim == 0 {
                // Nothing to write, and the warp form's pieces per row would be 0 (a division by
                // zero, whose result the GPU leaves unspecified, before its row test).
                return Ok(());
            }
            let w = a.w.as_ref().unwrap_or(idx);
            // Warps of 32 16-byte pieces of a row (see `kernel_choice`) for spmm and sum/mean, in
            // one launch with or without long rows.
            let warp_ok = kernel_choice()? != "thread"
                && (kind == GraphKernel::Spmm || (p.reduce <= 1 && arg.is_none()))
                && whole_pieces::<T, _, _>(rt, p, x, &*out);
            if warp_ok {
                let fw = load(if kind == GraphKernel::Spmm { "graph_spmm_warp" } else { "graph_segment_sum_warp" })?;
                // A row's groups of 32 pieces; rows of 16 pieces or fewer share a warp, 32 / W
                // of them (W lanes each).
                let pieces = dim / (16 / std::mem::size_of::<T>());
                let groups = pieces.div_ceil(32);
                let per_block = 8 * (32 / lane_group(pieces));
                let blocks = (segs * groups).div_ceil(per_block) + p.num_long as usize * groups + (rows * groups).div_ceil(per_block);
                // The kernel numbers its work items in 32 bits.
                let blocks = u32::try_from(blocks.max(1))
                    .ok()
                    .filter(|&b| (b as u64) * (per_block as u64) < 1 << 32)
                    .ok_or_else(|| Error::Limit(format!("graph: {blocks} blocks of {per_block} rows or segments")))?;
                let cfg_warp = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                // SAFETY: graph_spmm_warp_<dtype> / graph_segment_sum_warp_<dtype>(idx, x, w, sync,
                // out, p): as the row kernels above, with x and out read and written in whole
                // 16-byte pieces (dim a multiple of 16 bytes, both 16-byte aligned: checked here).
                // Without long rows the sync pointer is idx's and is never touched; with them it is
                // the runtime's sync scratch of sync_words(S · G) + S · dim words (G the piece
                // groups of a row): blocks count tickets and finishes in its words 0 and 1, raise
                // and lower one flag per (segment, group), write each segment's partial into its
                // own part slot before raising that flag and read it only after, and leave every
                // counter and flag 0. out's row pieces each have one writer: a segment's group
                // writes only part, a long row's group block its row, a short row's lane group its
                // row.
                return if segs == 0 {
                    rt.launch(&fw, cfg_warp, |l| {
                        l.arg(idx).arg(x).arg(w).arg(idx).arg(out).arg(p);
                    })
                } else {
                    let words = sync_words(segs * groups) + segs * dim;
                    rt.with_sync_scratch(words, |sync| {
                        rt.launch(&fw, cfg_warp, |l| {
                            l.arg(idx).arg(x).arg(w).arg(sync).arg(out).arg(p);
                        })
                    })
                };
            }
            // Long rows first: their segments' partials, which the row pass combines. Without
            // long rows the part pointer is idx's and is never read (no allocation: a short op's
            // host time counts).
            let mut part = if segs > 0 { Some(scratch(2 * segs * dim)?) } else { None };
            let folded;
            let p = if let Some(part) = part.as_mut() {
                let fp = load(if kind == GraphKernel::Spmm { "graph_seg_partial_spmm" } else { "graph_seg_partial_reduce" })?;
                rt.launch(&fp, cfg(segs * dim.div_ceil(4)), |l| {
                    l.arg(idx).arg(x).arg(w).arg(&mut *part).arg(p);
                })?;
                // Each long row's partials folded into its first segment (spmm's are sums).
                let fold = GraphParams { reduce: if kind == GraphKernel::Spmm { 0 } else { p.reduce }, ..*p };
                let grid = (dim.div_ceil(32) as u32, (p.num_long as usize).clamp(1, crate::runtime::grid_cap(65535)) as u32, 1);
                // SAFETY: graph_seg_fold(idx, part, p) reads the long rows' segment lists (idx, built
                // with the graph) and part [2 · S · dim], and rewrites each long row's first
                // segment's values (and args) after every read of them in its block (a barrier
                // between); blocks own disjoint (row, column) slots.
                rt.launch(&rt.function(FAMILY, Ptx::Base, "graph_seg_fold", 0)?, LaunchConfig { grid_dim: grid, block_dim: (256, 1, 1), shared_mem_bytes: 0 }, |l| {
                    l.arg(idx).arg(&mut *part).arg(&fold);
                })?;
                folded = GraphParams { folded: 1, ..*p };
                &folded
            } else {
                p
            };
            match (kind, arg) {
                (GraphKernel::SegmentReduce, Some(arg)) => rt.launch(&f, cfg_main, |l| {
                    l.arg(idx).arg(x).arg(w);
                    part_arg(l, &part, idx).arg(out).arg(arg).arg(p);
                }),
                (GraphKernel::SegmentReduce, None) => rt.launch(&f, cfg_main, |l| {
                    l.arg(idx).arg(x).arg(w);
                    part_arg(l, &part, idx).arg(out).arg(idx).arg(p);
                }),
                _ => rt.launch(&f, cfg_main, |l| {
                    l.arg(idx).arg(x).arg(w);
                    part_arg(l, &part, idx).arg(out).arg(p);
                }),
            }
        }
        GraphKernel::Softmax | GraphKernel::SoftmaxBackward => {
            let out = out32.ok_or_else(|| Error::Invalid("graph: an f32 output is needed".into()))?;
            let (idx, w) = (need(&a.idx, "graph")?, need(&a.w, "scores or alpha")?);
            // The forward reads no v: its pointer is w's.
            let v = if kind == GraphKernel::SoftmaxBackward { need(&a.v, "d_alpha")? } else { w };
            let p = &GraphParams { reduce: (kind == GraphKernel::SoftmaxBackward) as u32, ..*p };
            // Without long rows the part pointer is w's and is never read.
            let (mut part, mut stats) = (if segs > 0 { Some(scratch(2 * segs * heads)?) } else { None }, scratch(2 * rows * heads)?);
            if let Some(part) = part.as_mut() {
                rt.launch(&load("graph_softmax_partial")?, cfg(segs * heads), |l| {
                    l.arg(idx).arg(w).arg(v).arg(part).arg(p);
                })?;
            }
            rt.launch(&load("graph_softmax_stats")?, cfg(rows * heads), |l| {
                l.arg(idx).arg(w).arg(v);
                part_arg(l, &part, w).arg(&mut stats).arg(p);
            })?;
            rt.launch(&f, cfg_main, |l| {
                l.arg(idx).arg(w).arg(v).arg(&stats).arg(out).arg(p);
            })
        }
        _ => {
            let out = out32.ok_or_else(|| Error::Invalid("graph: an f32 output is needed".into()))?;
            let (x, y) = (need(&a.x, "x or A")?, need(&a.y, "y or B")?);
            // A lane group per (edge, head) on 16-byte pieces where each head's columns are whole
            // pieces and both operands 16-byte aligned.
            let dh = dim / heads.max(1);
            let (f, cfg_main) = match pieces16::<T>(dh as u32, dh, &[device_addr(rt, x), device_addr(rt, y)]) {
                Some(head_pieces) => {
                    (load(if kind == GraphKernel::EdgeDot { "graph_edge_dot16" } else { "graph_sddmm16" })?, cfg(edges * heads * lane_group(head_pieces)))
                }
                None => (f, cfg_main),
            };
            match kind {
                // SAFETY (the 16-byte forms): as below, with x and y (A and B) read in whole 16-byte
                // pieces of one head's columns (checked above); lane group j of a warp writes
                // out[t] for its task t alone, tasks past E · heads write nothing.
                GraphKernel::EdgeDot => rt.launch(&f, cfg_main, |l| {
                    l.arg(x).arg(y).arg(out).arg(p);
                }),
                _ => {
                    let idx = need(&a.idx, "graph")?;
                    rt.launch(&f, cfg_main, |l| {
                        l.arg(idx).arg(x).arg(y).arg(out).arg(p);
                    })
                }
            }
        }
    }
}
