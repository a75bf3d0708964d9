//! CUDA launcher of the linear-attention family (`kernels/linattn.cu`).

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::LinAttnParams;
use crate::runtime::cuda::{CudaElem, CudaRuntime, Ptx};
use crate::{DType, Result};

const FAMILY: &str = "linattn";

/// Every kernel this file launches (build.rs checks each is an entry of the PTX).
pub const KERNELS: &[&str] = &[
    "linattn_recurrent_f32",
    "linattn_recurrent_f16",
    "linattn_recurrent_bf16",
    "linattn_backward_f32",
    "linattn_backward_f16",
    "linattn_backward_bf16",
    "linattn_backward_reduce_f32",
    "linattn_backward_reduce_f16",
    "linattn_backward_reduce_bf16",
    "linattn_chunk_scan",
    "linattn_chunk_state_f32",
    "linattn_chunk_state_f16",
    "linattn_chunk_state_bf16",
    "linattn_chunk_output_f32",
    "linattn_chunk_output_f16",
    "linattn_chunk_output_bf16",
];

fn typed<T: CudaElem>(base: usize) -> &'static str {
    KERNELS[base
        + match T::DTYPE {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
        }]
}

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
    let starts_dev = rt.stream.clone_htod(starts).map_err(|e| crate::Error::driver("cuda: uploading the sequence starts", e))?;
    let [gx, gy, gz] = super::grid(p.v as usize, (p.batch * p.heads) as usize);
    let cfg = LaunchConfig { grid_dim: (gx, gy, gz), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // Chunks (varlen 2, at most 64 rows each) take the matrix-product kernels.
    if p.varlen == 2 {
        return if p.aux == 1 {
            let f = rt.function(FAMILY, Ptx::Base, typed::<T>(10), |_| Ok(()))?;
            // SAFETY: linattn_chunk_state_<dtype>(k, v, state, starts, z, p) reads k [R·H·K], v
            // [R·H·V] and starts [2·C + 1] (chunk bounds, then positions; each chunk ≤ 64 rows) and
            // writes state [C·H·K·V] and z [C·H·K]; LinearAttention::chunk sized every buffer.
            rt.launch(&f, cfg, |a| {
                a.arg(k).arg(v).arg(state).arg(&starts_dev).arg(z).arg(p);
            })
        } else {
            let f = rt.function(FAMILY, Ptx::Base, typed::<T>(13), |_| Ok(()))?;
            // SAFETY: linattn_chunk_output_<dtype>(q, k, v, state, starts, z, o, p) reads q, k
            // [R·H·K], v [R·H·V], the chunk start states state [C·H·K·V], z [C·H·K] and starts as
            // above, and writes o [R·H·V], each element once.
            rt.launch(&f, cfg, |a| {
                a.arg(q).arg(k).arg(v).arg(&mut *state).arg(&starts_dev).arg(&mut *z).arg(o).arg(p);
            })
        };
    }
    let f = rt.function(FAMILY, Ptx::Base, typed::<T>(0), |_| Ok(()))?;
    // Every value tile reads the initial normalizer while tile 0 writes the final one: a copy.
    let z_init = rt.stream.clone_dtod(&*z).map_err(|e| crate::Error::driver("cuda: copying z", e))?;
    // SAFETY: linattn_recurrent_<dtype>(q, k, v, state, z_init, starts, z, o, p) reads q, k [B·T·H·K],
    // v [B·T·H·V], z_init [B·H·K], starts [B + 1] (non-decreasing, ending at the row count),
    // reads and writes state [B·H·K·V] and z [B·H·K], writes o [B·T·H·V]; the caller
    // (LinearAttention::recurrent) checked every length and K, V ≤ 256.
    rt.launch(&f, cfg, |a| {
        a.arg(q).arg(k).arg(v).arg(state).arg(&z_init).arg(&starts_dev).arg(z).arg(o).arg(p);
    })
}

/// The fused recurrent backward: `x = [q, k, v, o, do]`; writes dq, dk, dv (T) and dS0 (f32).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: CudaElem>(
    rt: &CudaRuntime,
    p: &LinAttnParams,
    starts: &[u32],
    x: [&CudaView<T>; 5],
    s0: &CudaView<f32>,
    z0: &CudaView<f32>,
    d_final: [Option<&CudaView<f32>>; 2],
    out: [&mut CudaViewMut<T>; 3],
    d_init: [&mut CudaViewMut<f32>; 2],
) -> Result<()> {
    let err = |what: &'static str| move |e| crate::Error::driver(what, e);
    let (n, h, k, v) = (p.batch as usize, p.heads as usize, p.k as usize, p.v as usize);
    let rows = starts[n] as usize;
    let (nv, rhk) = (v.div_ceil(16), rows * h * k);
    let mut dq_part = rt.stream.alloc_zeros::<f32>((nv * rhk).max(1)).map_err(err("cuda: alloc"))?;
    let mut dk_part = rt.stream.alloc_zeros::<f32>((nv * rhk).max(1)).map_err(err("cuda: alloc"))?;
    let mut dendd = rt.stream.alloc_zeros::<f32>((nv * 2 * rows * h).max(1)).map_err(err("cuda: alloc"))?;
    let zeros = rt.stream.alloc_zeros::<f32>(n * h * k * v).map_err(err("cuda: alloc"))?;
    let zero_view = zeros.as_view();
    let (d_state, d_z) = (d_final[0].unwrap_or(&zero_view), d_final[1].unwrap_or(&zero_view));
    let [ds0, dz0] = d_init;
    let starts = rt.stream.clone_htod(starts).map_err(err("cuda: uploading the sequence starts"))?;
    let [q, kk, vv, o, d_o] = x;
    let [dq, dk, dv] = out;
    let f = rt.function(FAMILY, Ptx::Base, typed::<T>(3), |_| Ok(()))?;
    let [gx, gy, gz] = super::grid(v, (p.batch * p.heads) as usize);
    let cfg = LaunchConfig { grid_dim: (gx, gy, gz), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: linattn_backward_<dtype> reads q, k [R·H·K], v, o, do [R·H·V] (T), s0, d_state
    // [N·H·K·V], z0, d_z [N·H·K] (absent gradients: zeros of the state's size) and starts [N + 1]
    // (non-decreasing, ending at R; then N positions for chunks); it writes dq_part, dk_part
    // [NV·R·H·K] and dendd [NV·2·R·H] (allocated here), ds0 [N·H·K·V], dz0 [N·H·K] and dv [R·H·V];
    // LinearAttention::backward checked every length and K, V ≤ 256.
    rt.launch(&f, cfg, |a| {
        a.arg(q).arg(kk).arg(vv).arg(o).arg(d_o).arg(s0).arg(z0).arg(d_state).arg(d_z).arg(&starts).arg(&mut dq_part).arg(&mut dk_part).arg(&mut dendd).arg(ds0).arg(dz0).arg(dv).arg(p);
    })?;
    let f = rt.function(FAMILY, Ptx::Base, typed::<T>(6), |_| Ok(()))?;
    let cfg = LaunchConfig { grid_dim: (rhk.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    for (which, src, part, target) in [(0u32, q, &dq_part, dq), (1, kk, &dk_part, dk)] {
        let pr = LinAttnParams { aux: which, count0: nv as u32, ..*p };
        // SAFETY: linattn_backward_reduce_<dtype> reads x (q or k) and starts as above and part
        // [NV·R·H·K], and writes out [R·H·K] (dq or dk), each element once.
        rt.launch(&f, cfg, |a| {
            a.arg(src).arg(part).arg(&starts).arg(target).arg(&pr);
        })?;
    }
    Ok(())
}

/// The chunked form's inter-chunk pass (see `Backend::linattn_chunk_scan`).
pub fn chunk_scan(rt: &CudaRuntime, p: &LinAttnParams, seq_chunk0: &[u32], state: &mut CudaViewMut<f32>, z: &mut CudaViewMut<f32>, hs: &mut CudaViewMut<f32>, zs: &mut CudaViewMut<f32>) -> Result<()> {
    let f = rt.function(FAMILY, Ptx::Base, KERNELS[9], |_| Ok(()))?;
    let seqs = rt.stream.clone_htod(seq_chunk0).map_err(|e| crate::Error::driver("cuda: uploading the chunk ranges", e))?;
    let threads = (p.batch * p.heads) as usize * (p.k * p.v + p.k) as usize;
    let cfg = LaunchConfig { grid_dim: (threads.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: linattn_chunk_scan reads and writes state [N·H·K·V], z [N·H·K] (each element by its
    // own thread), hs [NC·H·K·V] and zs [NC·H·K] (each chunk slot by the thread of its element),
    // and reads seq_chunk0 [N + 1] (non-decreasing, ending at NC = p.count0); LinearAttention::chunk
    // sized every buffer.
    rt.launch(&f, cfg, |a| {
        a.arg(state).arg(z).arg(hs).arg(zs).arg(&seqs).arg(p);
    })
}
