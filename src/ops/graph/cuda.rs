//! CUDA launcher of the graph family (`kernels/graph.cu`).

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::{GraphKernel, GraphParams};
use crate::runtime::cuda::{CudaElem, CudaRuntime, Ptx};
use crate::{DType, Error, Result};

const FAMILY: &str = "graph";

/// Every kernel this file launches (build.rs checks each is an entry of the PTX).
pub const KERNELS: &[&str] = &[
    "graph_gather_f32",
    "graph_gather_f16",
    "graph_gather_bf16",
    "graph_segment_reduce_f32",
    "graph_segment_reduce_f16",
    "graph_segment_reduce_bf16",
    "graph_spmm_f32",
    "graph_spmm_f16",
    "graph_spmm_bf16",
    "graph_sddmm_f32",
    "graph_sddmm_f16",
    "graph_sddmm_bf16",
    "graph_softmax",
    "graph_softmax_backward",
    "graph_ln_forward_f32",
    "graph_ln_forward_f16",
    "graph_ln_forward_bf16",
    "graph_ln_backward_f32",
    "graph_ln_backward_f16",
    "graph_ln_backward_bf16",
    "graph_ln_params_f32",
    "graph_ln_params_f16",
    "graph_ln_params_bf16",
    "graph_edge_combine_f32",
    "graph_edge_combine_f16",
    "graph_edge_combine_bf16",
    "graph_edge_dot_f32",
    "graph_edge_dot_f16",
    "graph_edge_dot_bf16",
    "graph_scale_add_f32",
    "graph_scale_add_f16",
    "graph_scale_add_bf16",
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
];

/// The typed operands of one launch (see `GraphKernel` for which each kernel reads).
pub struct CudaGraphArgs<'a, T> {
    /// The graph's index words; None for LayerNorm, which reads no graph.
    pub idx: Option<CudaView<'a, f32>>,
    pub x: Option<CudaView<'a, T>>,
    pub y: Option<CudaView<'a, T>>,
    pub w: Option<CudaView<'a, f32>>,
    pub v: Option<CudaView<'a, f32>>,
}

fn need<'b, X>(v: &'b Option<X>, what: &str) -> Result<&'b X> {
    v.as_ref().ok_or_else(|| Error::Invalid(format!("graph: the {what} operand is missing")))
}

/// One graph kernel on the runtime's stream. `out` is `T` for gather / segment_reduce / spmm
/// and f32 for the per-edge kernels (`out32`).
pub fn launch<T: CudaElem>(
    rt: &CudaRuntime,
    kind: GraphKernel,
    p: &GraphParams,
    a: &CudaGraphArgs<T>,
    out: Option<&mut CudaViewMut<T>>,
    out32: Option<&mut CudaViewMut<f32>>,
    arg: Option<&mut CudaViewMut<f32>>,
) -> Result<()> {
    let typed = |base: usize| {
        KERNELS[base
            + match T::DTYPE {
                DType::F32 => 0,
                DType::F16 => 1,
                DType::BF16 => 2,
            }]
    };
    let rows_dim = p.num_nodes as usize * p.dim as usize;
    let (name, threads) = match kind {
        GraphKernel::Gather => (typed(0), p.num_edges as usize * p.dim as usize),
        GraphKernel::SegmentReduce => (typed(3), rows_dim),
        GraphKernel::Spmm => (typed(6), rows_dim),
        GraphKernel::Sddmm => (typed(9), p.num_nodes as usize * p.heads as usize),
        GraphKernel::Softmax => (KERNELS[12], p.num_nodes as usize * p.heads as usize),
        GraphKernel::SoftmaxBackward => (KERNELS[13], p.num_nodes as usize * p.heads as usize),
        // One block per row.
        GraphKernel::LayerNorm => (typed(14), p.num_nodes as usize * 256),
        GraphKernel::LayerNormBackward => (typed(17), p.num_nodes as usize * 256),
        GraphKernel::LayerNormParams => (typed(20), p.dim as usize),
        GraphKernel::EdgeCombine => (typed(23), p.num_edges as usize * p.dim as usize),
        GraphKernel::EdgeDot => (typed(26), p.num_edges as usize * p.heads as usize),
        GraphKernel::ScaleAdd => (typed(29), rows_dim),
        GraphKernel::GateMean => (typed(32), p.num_nodes as usize),
        GraphKernel::GateMeanBackward => (typed(35), rows_dim),
        GraphKernel::ToF32 => (typed(38), rows_dim),
        GraphKernel::FromF32 => (typed(41), rows_dim),
    };
    let f = rt.function(FAMILY, Ptx::Base, name, |_| Ok(()))?;
    let blocks = threads.div_ceil(256).clamp(1, 1 << 20) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the graph entries read the index words idx [N + 1 + 4E] (each index checked < N,
    // resp. ≤ E, when the Graph was built; only DeviceGraph::upload makes them) and their
    // operands, whose lengths ops::graph checked: x, y [rows · dim] in T, w, v [E · heads] f32.
    // Gather writes out [E · dim], segment_reduce and spmm out [N · dim] (T); segment_reduce
    // writes arg [N · dim] only for max/min (otherwise the pointer is idx's and is never
    // written); sddmm and the softmax kernels write out32 [E · heads], each element once.
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
                    rt.launch(&f, cfg, |l| {
                        l.arg(v).arg(out).arg(p);
                    })
                }
                GraphKernel::GateMeanBackward => {
                    let (x, dg) = (need(&a.x, "logits")?, need(&a.w, "dg")?);
                    rt.launch(&f, cfg, |l| {
                        l.arg(x).arg(dg).arg(out).arg(p);
                    })
                }
                _ => {
                    let x = need(&a.x, "x")?;
                    // Absent operands pass x's pointer; has_y / has_weight say they are not read.
                    let y = a.y.as_ref().unwrap_or(x);
                    match &a.w {
                        Some(w) => rt.launch(&f, cfg, |l| {
                            l.arg(x).arg(y).arg(w).arg(out).arg(p);
                        }),
                        None => rt.launch(&f, cfg, |l| {
                            l.arg(x).arg(y).arg(x).arg(out).arg(p);
                        }),
                    }
                }
            }
        }
        GraphKernel::ToF32 | GraphKernel::GateMean => {
            let out = out32.ok_or_else(|| Error::Invalid("graph: an f32 output is needed".into()))?;
            let x = need(&a.x, "x")?;
            rt.launch(&f, cfg, |l| {
                l.arg(x).arg(out).arg(p);
            })
        }
        GraphKernel::LayerNorm | GraphKernel::LayerNormBackward => {
            let out = out.ok_or_else(|| Error::Invalid("layer_norm: a typed output is needed".into()))?;
            let (x, affine) = (need(&a.x, "x")?, need(&a.w, "affine")?);
            if kind == GraphKernel::LayerNorm {
                let stats = arg.ok_or_else(|| Error::Invalid("layer_norm: the stats output is missing".into()))?;
                rt.launch(&f, cfg, |l| {
                    l.arg(x).arg(affine).arg(out).arg(stats).arg(p);
                })
            } else {
                let (dy, stats) = (need(&a.y, "dy")?, need(&a.v, "stats")?);
                rt.launch(&f, cfg, |l| {
                    l.arg(x).arg(dy).arg(affine).arg(stats).arg(out).arg(p);
                })
            }
        }
        GraphKernel::LayerNormParams => {
            let out = out32.ok_or_else(|| Error::Invalid("layer_norm: an f32 output is needed".into()))?;
            let (x, dy, stats) = (need(&a.x, "x")?, need(&a.y, "dy")?, need(&a.v, "stats")?);
            rt.launch(&f, cfg, |l| {
                l.arg(x).arg(dy).arg(stats).arg(out).arg(p);
            })
        }
        GraphKernel::EdgeCombine => {
            let out = out.ok_or_else(|| Error::Invalid("edge_mlp: a typed output is needed".into()))?;
            let (idx, ee, pn) = (need(&a.idx, "graph")?, need(&a.x, "Ee")?, need(&a.y, "P")?);
            rt.launch(&f, cfg, |l| {
                l.arg(idx).arg(ee).arg(pn).arg(out).arg(p);
            })
        }
        GraphKernel::Gather | GraphKernel::SegmentReduce | GraphKernel::Spmm => {
            let out = out.ok_or_else(|| Error::Invalid("graph: a typed output is needed".into()))?;
            let (idx, x) = (need(&a.idx, "graph")?, need(&a.x, "x")?);
            // Without weights the w pointer is idx's and is never read (p.has_weight = 0).
            let w = a.w.as_ref().unwrap_or(idx);
            match kind {
                GraphKernel::SegmentReduce => match arg {
                    Some(arg) => rt.launch(&f, cfg, |l| {
                        l.arg(idx).arg(x).arg(w).arg(out).arg(arg).arg(p);
                    }),
                    None => rt.launch(&f, cfg, |l| {
                        l.arg(idx).arg(x).arg(w).arg(out).arg(idx).arg(p);
                    }),
                },
                _ => rt.launch(&f, cfg, |l| {
                    l.arg(idx).arg(x).arg(w).arg(out).arg(p);
                }),
            }
        }
        _ => {
            let out = out32.ok_or_else(|| Error::Invalid("graph: an f32 output is needed".into()))?;
            match kind {
                GraphKernel::EdgeDot => {
                    let (x, y) = (need(&a.x, "x")?, need(&a.y, "y")?);
                    rt.launch(&f, cfg, |l| {
                        l.arg(x).arg(y).arg(out).arg(p);
                    })
                }
                GraphKernel::Sddmm => {
                    let (idx, x, y) = (need(&a.idx, "graph")?, need(&a.x, "A")?, need(&a.y, "B")?);
                    rt.launch(&f, cfg, |l| {
                        l.arg(idx).arg(x).arg(y).arg(out).arg(p);
                    })
                }
                GraphKernel::Softmax => {
                    let (idx, w) = (need(&a.idx, "graph")?, need(&a.w, "scores")?);
                    rt.launch(&f, cfg, |l| {
                        l.arg(idx).arg(w).arg(out).arg(p);
                    })
                }
                _ => {
                    let (idx, w, v) = (need(&a.idx, "graph")?, need(&a.w, "alpha")?, need(&a.v, "d_alpha")?);
                    rt.launch(&f, cfg, |l| {
                        l.arg(idx).arg(w).arg(v).arg(out).arg(p);
                    })
                }
            }
        }
    }
}
