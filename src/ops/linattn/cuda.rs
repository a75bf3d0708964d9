//! CUDA launcher of the linear-attention family (`kernels/linattn.cu`).

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::LinAttnParams;
use crate::runtime::cuda::{CudaElem, CudaRuntime, Ptx};
use crate::{DType, Result};

const FAMILY: &str = "linattn";

/// Every kernel this file launches (build.rs checks each is an entry of the PTX).
pub const KERNELS: &[&str] = &["linattn_recurrent_f32", "linattn_recurrent_f16", "linattn_recurrent_bf16"];

/// The fused recurrent forward / decode step on the runtime's stream.
#[allow(clippy::too_many_arguments)]
pub fn recurrent<T: CudaElem>(
    rt: &CudaRuntime,
    p: &LinAttnParams,
    q: &CudaView<T>,
    k: &CudaView<T>,
    v: &CudaView<T>,
    starts: &[u32],
    state: &mut CudaViewMut<f32>,
    z: &mut CudaViewMut<f32>,
    o: &mut CudaViewMut<T>,
) -> Result<()> {
    let name = match T::DTYPE {
        DType::F32 => KERNELS[0],
        DType::F16 => KERNELS[1],
        DType::BF16 => KERNELS[2],
    };
    let f = rt.function(FAMILY, Ptx::Base, name, |_| Ok(()))?;
    // Every value tile reads the initial normalizer while tile 0 writes the final one: a copy.
    let z_init = rt.stream.clone_dtod(&*z).map_err(|e| crate::Error::driver("cuda: copying z", e))?;
    let starts = rt.stream.clone_htod(starts).map_err(|e| crate::Error::driver("cuda: uploading the sequence starts", e))?;
    let cfg = LaunchConfig { grid_dim: ((p.v as usize).div_ceil(16) as u32, p.batch * p.heads, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: linattn_recurrent_<dtype>(q, k, v, state, z_init, starts, z, o, p) reads q, k [B·T·H·K],
    // v [B·T·H·V], z_init [B·H·K], starts [B + 1] (non-decreasing, ending at the row count),
    // reads and writes state [B·H·K·V] and z [B·H·K], writes o [B·T·H·V]; the caller
    // (LinearAttention::recurrent) checked every length and K, V ≤ 256.
    rt.launch(&f, cfg, |a| {
        a.arg(q).arg(k).arg(v).arg(state).arg(&z_init).arg(&starts).arg(z).arg(o).arg(p);
    })
}
