//! CUDA launcher of the graph family (`kernels/graph.cu`).

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::{GraphKernel, GraphParams};
use crate::runtime::cuda::{CudaElem, CudaRuntime, Ptx};
use crate::{DType, Result};

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
];

/// The graph's index arrays (raw words in f32 buffers) as the kernels read them.
pub struct GraphViews<'a> {
    pub row_ptr: CudaView<'a, f32>,
    pub src: CudaView<'a, f32>,
    pub perm: CudaView<'a, f32>,
    pub src_coo: CudaView<'a, f32>,
}

/// One graph kernel on the runtime's stream.
#[allow(clippy::too_many_arguments)]
pub fn launch<T: CudaElem>(
    rt: &CudaRuntime,
    kind: GraphKernel,
    p: &GraphParams,
    g: &GraphViews,
    x: &CudaView<T>,
    w: Option<&CudaView<f32>>,
    out: &mut CudaViewMut<T>,
    arg: Option<&mut CudaViewMut<f32>>,
) -> Result<()> {
    let base = match kind {
        GraphKernel::Gather => 0,
        GraphKernel::SegmentReduce => 3,
        GraphKernel::Spmm => 6,
    };
    let name = KERNELS[base + match T::DTYPE {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
    }];
    let f = rt.function(FAMILY, Ptx::Base, name, |_| Ok(()))?;
    let rows = if kind == GraphKernel::Gather { p.num_edges } else { p.num_nodes } as usize;
    let blocks = (rows * p.dim as usize).div_ceil(256).clamp(1, 1 << 20) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: every entry reads the index words row_ptr [N + 1], src, perm, src_coo [E] (checked
    // < N, resp. ≤ E, when the Graph was built) and x ([N, D] for gather/spmm, [E, D] for
    // segment_reduce; lengths checked by ops::graph), w [E] only when p.has_weight, and writes
    // out [E·D] (gather) or [N·D]; segment_reduce writes arg [N·D] only for max/min, which is
    // when the caller passes it (otherwise the pointer is perm's and is never written).
    match kind {
        GraphKernel::Gather => rt.launch(&f, cfg, |a| {
            a.arg(&g.src_coo).arg(x).arg(out).arg(p);
        }),
        GraphKernel::SegmentReduce => match arg {
            Some(arg) => rt.launch(&f, cfg, |a| {
                a.arg(&g.row_ptr).arg(&g.perm).arg(x).arg(out).arg(arg).arg(p);
            }),
            None => rt.launch(&f, cfg, |a| {
                a.arg(&g.row_ptr).arg(&g.perm).arg(x).arg(out).arg(&g.perm).arg(p);
            }),
        },
        GraphKernel::Spmm => {
            let w = w.unwrap_or(&g.perm);
            rt.launch(&f, cfg, |a| {
                a.arg(&g.row_ptr).arg(&g.src).arg(&g.perm).arg(x).arg(w).arg(out).arg(p);
            })
        }
    }
}
