//! CUDA launchers of the linear-attention family (`kernels/linattn.cu`). Crate-internal: they
//! are the steps of the forms `ops::linattn` composes, on lengths and tables it validated.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::LinAttnParams;
use crate::runtime::cuda::{device_addr, kernel_name, CudaElem, CudaRuntime, Ptx};
use crate::{DType, Error, Result};

const FAMILY: &str = "linattn";
/// Threads per block of the decode step (`DECODE_THREADS` in kernels/linattn.cu: one warp per row
/// group of 16).
const DECODE_THREADS: u32 = 512;

/// Every kernel this file launches (build.rs checks each is an entry of the PTX).
pub const KERNELS: &[&str] = &[
    "linattn_recurrent_f32",
    "linattn_recurrent_f16",
    "linattn_recurrent_bf16",
    "linattn_decode_f32",
    "linattn_decode_f16",
    "linattn_decode_bf16",
    "linattn_decode_vec_f32",
    "linattn_decode_vec_f16",
    "linattn_decode_vec_bf16",
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
    "linattn_chunk_den_f32",
    "linattn_chunk_den_f16",
    "linattn_chunk_den_bf16",
    "linattn_chunk_dstate_f32",
    "linattn_chunk_dstate_f16",
    "linattn_chunk_dstate_bf16",
    "linattn_chunk_dv_f32",
    "linattn_chunk_dv_f16",
    "linattn_chunk_dv_bf16",
    "linattn_chunk_dq_f32",
    "linattn_chunk_dq_f16",
    "linattn_chunk_dq_bf16",
    "linattn_chunk_dk_f32",
    "linattn_chunk_dk_f16",
    "linattn_chunk_dk_bf16",
    "linattn_chunk_states_f32",
    "linattn_chunk_states_f16",
    "linattn_chunk_states_bf16",
    "linattn_chunk_states_mma_f32",
    "linattn_chunk_states_mma_f16",
    "linattn_chunk_states_mma_bf16",
    "linattn_chunk_grad_states_f32",
    "linattn_chunk_grad_states_f16",
    "linattn_chunk_grad_states_bf16",
    "linattn_chunk_grad_states_mma_f32",
    "linattn_chunk_grad_states_mma_f16",
    "linattn_chunk_grad_states_mma_bf16",
    "linattn_chunk_states_mma16_f16",
    "linattn_chunk_states_mma16_bf16",
    "linattn_chunk_grad_states_mma16_f16",
    "linattn_chunk_grad_states_mma16_bf16",
    "linattn_chunk_states_mma16s_bf16",
    "linattn_chunk_grad_states_mma16s_bf16",
    "linattn_chunk_output_mma16_bf16",
    "linattn_chunk_fused_bf16",
    "linattn_chunk_fused_grad_bf16",
    "linattn_chunk_dv_mma16_bf16",
    "linattn_chunk_dq_mma16_bf16",
    "linattn_chunk_dk_mma16_bf16",
    "linattn_chunk_state_mma_f32",
    "linattn_chunk_state_mma_f16",
    "linattn_chunk_state_mma_bf16",
    "linattn_chunk_dstate_mma_f32",
    "linattn_chunk_dstate_mma_f16",
    "linattn_chunk_dstate_mma_bf16",
    "linattn_chunk_output_mma_f32",
    "linattn_chunk_dv_mma_f32",
    "linattn_chunk_dq_mma_f32",
    "linattn_chunk_dk_mma_f32",
    "linattn_chunk_output_mma_f16",
    "linattn_chunk_output_mma_bf16",
    "linattn_chunk_dv_mma_f16",
    "linattn_chunk_dv_mma_bf16",
    "linattn_chunk_dq_mma_f16",
    "linattn_chunk_dq_mma_bf16",
    "linattn_chunk_dk_mma_f16",
    "linattn_chunk_dk_mma_bf16",
];

/// `words` (sequence starts, chunk tables and bounds) on the device; `what` names them in errors.
pub(crate) fn upload_words(rt: &CudaRuntime, words: &[u32], what: &str) -> Result<cudarc::driver::CudaSlice<u32>> {
    rt.stream.clone_htod(words).map_err(|e| crate::Error::driver(format!("cuda: uploading {what}"), e))
}

/// The `base` kernel in T's dtype.
fn typed<T: CudaElem>(base: &str) -> Result<&'static str> {
    kernel_name::<T>(KERNELS, base)
}

use super::kernel_choice;

/// A chunk kernel in T's dtype: its tensor-core twin `mma` (TF32 mma.sync for f16/bf16, 3xTF32 for
/// f32) unless the f32-FMA kernel `simt` is forced.
fn chunk_kernel<T: CudaElem>(simt: &str, mma: &str) -> Result<&'static str> {
    typed::<T>(if kernel_choice()? == "simt" { simt } else { mma })
}

/// Whether a 16-bit kernel may run: `FFKERN_LINATTN_KERNEL` auto, fused or twopass, the dtype and
/// normalize mode it takes (`fits`), φ identity or relu, K and V multiples of 8 (whole 16-byte
/// copies per row), and every operand 16-byte aligned (`addrs`, read only when the rest holds).
fn mma16(p: &LinAttnParams, fits: bool, addrs: impl FnOnce() -> Vec<u64>) -> Result<bool> {
    Ok(matches!(kernel_choice()?, "auto" | "fused" | "twopass") && fits && (p.feature_map == 0 || p.feature_map == 2) && p.k % 8 == 0 && p.v % 8 == 0 && addrs().iter().all(|a| a % 16 == 0))
}

/// What the chunk products (output, dv, dq, dk) need for their 16-bit kernels
/// (`linattn_chunk_*_mma16_bf16`, see [`mma16`]): bf16 (f16 would round the states into a narrow
/// range), normalize none (the forward output also Count).
fn chunk16_fits(p: &LinAttnParams, dtype: DType, output: bool) -> bool {
    dtype == DType::BF16 && (p.normalize == 0 || (output && p.normalize == 2))
}

/// Whether the chunked forms keep their per-chunk states (`hs`, the backward's `gs`) in bf16
/// (`Backend::linattn_snapshot_dtype`): exactly when the chunk products that read them take their
/// 16-bit kernels, which read bf16 states (half the bytes of f32, the largest arrays of the
/// chunked forms). `backward`: the states of the chunked backward (normalize none only).
pub(crate) fn snapshot16(p: &LinAttnParams, dtype: DType, backward: bool) -> Result<bool> {
    mma16(p, chunk16_fits(p, dtype, !backward) && (!backward || p.normalize == 0), Vec::new)
}

/// An error for per-chunk states of dtype `states` that the kernels at hand cannot read.
fn states_error(states: DType, what: &str) -> Error {
    Error::Unsupported(format!("linear attention: {what} cannot take {states} per-chunk states (FFKERN_LINATTN_KERNEL=auto, bf16, φ identity or relu, K and V multiples of 8, 16-byte aligned operands)"))
}

/// A chunk product's kernel (`base` = linattn_chunk_output, _dv, _dq or _dk): the 16-bit one
/// exactly when the per-chunk states S are 16-bit (chosen by [`snapshot16`]; its conditions and
/// the operands' alignment are checked again here, so a mismatch is an error, never a wrong
/// read), else the TF32 twin (or its f32-FMA one under `simt`).
fn chunk_product<T: CudaElem, S: CudaElem>(p: &LinAttnParams, output: bool, base: &str, addrs: impl FnOnce() -> Vec<u64>) -> Result<&'static str> {
    if S::DTYPE == DType::F32 {
        return chunk_kernel::<T>(base, &format!("{base}_mma"));
    }
    if S::DTYPE != T::DTYPE || !mma16(p, chunk16_fits(p, T::DTYPE, output), addrs)? {
        return Err(states_error(S::DTYPE, base));
    }
    typed::<T>(&format!("{base}_mma16"))
}

/// A state sweep's kernel (`base` = linattn_chunk_states or linattn_chunk_grad_states) over X (q
/// or k, width K) and Y (v or do, width V) writing per-chunk states of type S, with its dynamic
/// shared memory: the 16-bit sweep (see [`mma16`]) for f16/bf16 inputs, whose products are then
/// exact in their own type (the reverse sweep's do/den only with den = 1) — `_mma16s` when S is
/// 16-bit, which only it writes; else the TF32 twin (or `simt`), with none.
fn sweep_kernel<T: CudaElem, S: CudaElem>(rt: &CudaRuntime, p: &LinAttnParams, reverse: bool, x: &CudaView<T>, y: &CudaView<T>, base: &str) -> Result<(&'static str, u32)> {
    let fast = mma16(p, T::DTYPE != DType::F32 && (!reverse || p.normalize == 0), || vec![device_addr(rt, x), device_addr(rt, y)])?;
    match (S::DTYPE == DType::F32, fast) {
        (true, true) => Ok((typed::<T>(&format!("{base}_mma16"))?, SWEEP16_SMEM)),
        (true, false) => Ok((chunk_kernel::<T>(base, &format!("{base}_mma"))?, 0)),
        (false, true) if S::DTYPE == T::DTYPE => Ok((typed::<T>(&format!("{base}_mma16s"))?, SWEEP16_SMEM)),
        (false, _) => Err(states_error(S::DTYPE, base)),
    }
}

/// Dynamic shared memory of the 16-bit sweeps: SW_STAGES (4) stages of a 64-row X and Y tile,
/// rows of SW_LDS (72) 16-bit elements (SW_SMEM in kernels/linattn.cu; a launch with less traps).
const SWEEP16_SMEM: u32 = 4 * 2 * 64 * 72 * 2;

/// A state sweep's function and launch (kernel and shared memory from [`sweep_kernel`]): one
/// block of 256 per (sequence·head, 64×64 state tile).
fn sweep_launch(rt: &CudaRuntime, p: &LinAttnParams, (name, smem): (&'static str, u32)) -> Result<(cudarc::driver::CudaFunction, LaunchConfig)> {
    let f = rt.function(FAMILY, Ptx::Base, name, smem)?;
    let [gx, gy, gz] = super::grid(super::outer_tiles(p), 1, (p.batch * p.heads) as usize);
    Ok((f, LaunchConfig { grid_dim: (gx, gy, gz), block_dim: (256, 1, 1), shared_mem_bytes: smem }))
}

/// The fused recurrent forward / decode step on the runtime's stream.
#[allow(clippy::too_many_arguments)]
pub(crate) fn recurrent<T: CudaElem>(
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
    let err = |what: &'static str| move |e| crate::Error::driver(what, e);
    let cfg = |cols: usize, tile: usize| {
        let [gx, gy, gz] = super::grid(cols, tile, (p.batch * p.heads) as usize);
        LaunchConfig { grid_dim: (gx, gy, gz), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
    };
    // The decode step (one token per sequence): its own kernel, one block of DECODE_THREADS per
    // sequence·head, 16-byte state accesses where V and the state's address allow.
    if super::is_decode(p) {
        let vec = p.v % 4 == 0 && device_addr(rt, &*state) % 16 == 0;
        let f = rt.function(FAMILY, Ptx::Base, typed::<T>(if vec { "linattn_decode_vec" } else { "linattn_decode" })?, 0)?;
        let [gx, gy, gz] = super::grid(1, 1, (p.batch * p.heads) as usize);
        let cfg = LaunchConfig { grid_dim: (gx, gy, gz), block_dim: (DECODE_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: linattn_decode[_vec]_<dtype>(q, k, v, state, z, o, p) reads q, k [B·H·K], v
        // [B·H·V], reads and writes state [B·H·K·V] (VEC: as float4, V % 4 == 0 and the base
        // 16-byte aligned, checked above) and z [B·H·K], and writes o [B·H·V]; each block touches
        // only its own sequence·head. LinearAttention::recurrent checked every length, K, V ≤ 256.
        return rt.launch(&f, cfg, |a| {
            a.arg(q).arg(k).arg(v).arg(&mut *state).arg(&mut *z).arg(&mut *o).arg(p);
        });
    }
    // Fixed-length batches need no sequence starts (the kernel computes them): a one-word stand-in
    // spares a host-to-device copy.
    let starts_dev = if p.varlen == 0 { rt.stream.alloc_zeros::<u32>(1).map_err(err("cuda: alloc"))? } else { upload_words(rt, starts, "the sequence starts")? };
    // Chunks (varlen 2, at most 64 rows each) take the matrix-product kernels.
    if p.varlen == 2 {
        return if p.aux == 1 {
            let f = rt.function(FAMILY, Ptx::Base, chunk_kernel::<T>("linattn_chunk_state", "linattn_chunk_state_mma")?, 0)?;
            // SAFETY: linattn_chunk_state[_mma]_<dtype>(k, v, state, starts, z, p) reads k [R·H·K], v
            // [R·H·V] and starts [2·C + 1] (chunk bounds, then positions; each chunk ≤ 64 rows) and
            // writes state [C·H·K·V] and z [C·H·K]; LinearAttention::chunk sized every buffer.
            rt.launch(&f, cfg(super::outer_tiles(p), 1), |a| {
                a.arg(k).arg(v).arg(state).arg(&starts_dev).arg(z).arg(p);
            })
        } else {
            chunk_output(rt, p, q, k, v, &starts_dev, &state.as_view(), &z.as_view(), o)
        };
    }
    let f = rt.function(FAMILY, Ptx::Base, typed::<T>("linattn_recurrent")?, 0)?;
    // With the Normalizer every value tile reads the initial normalizer while tile 0 writes the
    // final one: the others read a copy (else only tile 0 reads it, and a one-word stand-in serves).
    let z_init = if p.normalize == 1 { rt.stream.clone_dtod(&*z).map_err(err("cuda: copying z"))? } else { rt.stream.alloc_zeros::<f32>(1).map_err(err("cuda: alloc"))? };
    // SAFETY: linattn_recurrent_<dtype>(q, k, v, state, z_init, starts, z, o, p) reads q, k [B·T·H·K],
    // v [B·T·H·V], z_init [B·H·K] (Normalizer only), starts [B + 1] (varlen 1 only; non-decreasing,
    // ending at the row count),
    // reads and writes state [B·H·K·V] and z [B·H·K], writes o [B·T·H·V]; the caller
    // (LinearAttention::recurrent) checked every length and K, V ≤ 256.
    rt.launch(&f, cfg(p.v as usize, super::TILE), |a| {
        a.arg(q).arg(k).arg(v).arg(state).arg(&z_init).arg(&starts_dev).arg(z).arg(o).arg(p);
    })
}

/// The chunked form's output from each chunk's start state (`p.varlen == 2`, `p.aux == 0`;
/// `starts` on the device): `state` holds the start states in f32 or, from the 16-bit sweep, bf16.
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_output<T: CudaElem, S: CudaElem>(
    rt: &CudaRuntime,
    p: &LinAttnParams,
    q: &CudaView<T>,
    k: &CudaView<T>,
    v: &CudaView<T>,
    starts: &cudarc::driver::CudaSlice<u32>,
    state: &CudaView<S>,
    z: &CudaView<f32>,
    o: &mut CudaViewMut<T>,
) -> Result<()> {
    let addrs = || vec![device_addr(rt, q), device_addr(rt, k), device_addr(rt, v), device_addr(rt, state), device_addr(rt, &*o)];
    let f = rt.function(FAMILY, Ptx::Base, chunk_product::<T, S>(p, true, "linattn_chunk_output", addrs)?, 0)?;
    let [gx, gy, gz] = super::grid(p.v as usize, super::WIDE_TILE, (p.batch * p.heads) as usize);
    let cfg = LaunchConfig { grid_dim: (gx, gy, gz), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: linattn_chunk_output[_mma|_mma16]_<dtype>(q, k, v, state, starts, z, o, p) reads q, k
    // [R·H·K], v [R·H·V], the chunk start states state [C·H·K·V] (f32, or bf16 for _mma16 only:
    // chunk_product matches the kernel to S), z [C·H·K] and starts [2·C + 1] (chunk bounds ending
    // at R, each chunk ≤ 64 rows, then positions; mma16: whole 16-byte pieces of rows and 8-byte
    // pieces of state, K and V multiples of 8, checked by chunk_product), and writes o [R·H·V],
    // each element once.
    rt.launch(&f, cfg, |a| {
        a.arg(q).arg(k).arg(v).arg(state).arg(starts).arg(z).arg(o).arg(p);
    })
}

/// The fused recurrent backward: `x = [q, k, v, o, do]`; writes dq, dk, dv (T) and dS0 (f32).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: CudaElem>(
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
    let starts = upload_words(rt, starts, "the sequence starts")?;
    let [q, kk, vv, o, d_o] = x;
    let [dq, dk, dv] = out;
    let f = rt.function(FAMILY, Ptx::Base, typed::<T>("linattn_backward")?, 0)?;
    let [gx, gy, gz] = super::grid(v, super::TILE, (p.batch * p.heads) as usize);
    let cfg = LaunchConfig { grid_dim: (gx, gy, gz), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: linattn_backward_<dtype> reads q, k [R·H·K], v, o, do [R·H·V] (T), s0, d_state
    // [N·H·K·V], z0, d_z [N·H·K] (absent gradients: zeros of the state's size) and starts [N + 1]
    // (non-decreasing, ending at R; then N positions for chunks); it writes dq_part, dk_part
    // [NV·R·H·K] and dendd [NV·2·R·H] (allocated here), ds0 [N·H·K·V], dz0 [N·H·K] and dv [R·H·V];
    // LinearAttention::backward checked every length and K, V ≤ 256.
    rt.launch(&f, cfg, |a| {
        a.arg(q).arg(kk).arg(vv).arg(o).arg(d_o).arg(s0).arg(z0).arg(d_state).arg(d_z).arg(&starts).arg(&mut dq_part).arg(&mut dk_part).arg(&mut dendd).arg(ds0).arg(dz0).arg(dv).arg(p);
    })?;
    let f = rt.function(FAMILY, Ptx::Base, typed::<T>("linattn_backward_reduce")?, 0)?;
    let cfg = crate::runtime::cuda::stride_grid(rhk, 1 << 20);
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

/// The chunk start states in one pass (see `Backend::linattn_chunk_states`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_states<T: CudaElem, S: CudaElem>(
    rt: &CudaRuntime,
    p: &LinAttnParams,
    table: &[u32],
    k: &CudaView<T>,
    v: &CudaView<T>,
    state: &mut CudaViewMut<f32>,
    z: &mut CudaViewMut<f32>,
    hs: &mut CudaViewMut<S>,
    zs: &mut CudaViewMut<f32>,
) -> Result<()> {
    let (f, cfg) = sweep_launch(rt, p, sweep_kernel::<T, S>(rt, p, false, k, v, "linattn_chunk_states")?)?;
    let table = upload_words(rt, table, "the chunk table")?;
    // SAFETY: linattn_chunk_states[_mma|_mma16|_mma16s]_<dtype>(k, v, state, z, starts, hs, zs, p)
    // reads k [R·H·K], v [R·H·V] (mma16: whole 16-byte pieces of rows, K and V multiples of 8,
    // checked by sweep_kernel, which also matches the kernel to hs's type S) and the table [2·C + 1 + N + 1] (chunk bounds ending at R, each chunk ≤ 64 rows,
    // positions, each sequence's chunk range); it reads and writes state [N·H·K·V] and z [N·H·K]
    // (each element by one thread) and writes hs [C·H·K·V], zs [C·H·K]; LinearAttention::chunk
    // sized every buffer.
    rt.launch(&f, cfg, |a| {
        a.arg(k).arg(v).arg(state).arg(z).arg(&table).arg(hs).arg(zs).arg(p);
    })
}

/// Dynamic shared memory of the one-pass chunked forward: three stages of the q, k (rows of 136)
/// and v (rows of 72) tiles, then S_c [128][72] and the masked scores [64][72], 16-bit elements
/// (FU_SMEM in kernels/linattn.cu; a launch with less traps): 156 KiB, within an A100's blocks.
const FUSED_SMEM: u32 = (3 * (2 * 64 * 136 + 64 * 72) + 128 * 72 + 64 * 72) * 2;

/// A one-pass kernel's function and chunk table on the device, or None where it may not run:
/// under `FFKERN_LINATTN_KERNEL=auto` (the default) or `fused`, the inputs take the 16-bit
/// products (`output`: the forward's, else the backward's; see [`mma16`]: bf16, φ identity or
/// relu, normalize none (the forward also Count), K and V multiples of 8, the operands at `addrs`
/// 16-byte aligned), the widths its passes carry whole (`wide`: the block's state slice in
/// registers) are at most 128 and the GPU's blocks may take [`FUSED_SMEM`].
fn fused_function<T: CudaElem>(
    rt: &CudaRuntime,
    p: &LinAttnParams,
    output: bool,
    wide: u32,
    table: &[u32],
    addrs: impl FnOnce() -> Vec<u64>,
) -> Result<Option<(cudarc::driver::CudaFunction, cudarc::driver::CudaSlice<u32>)>> {
    if !matches!(kernel_choice()?, "auto" | "fused") || wide > 128 || rt.max_block_smem() < FUSED_SMEM || !mma16(p, chunk16_fits(p, T::DTYPE, output), addrs)? {
        return Ok(None);
    }
    let f = rt.function(FAMILY, Ptx::Base, typed::<T>(if output { "linattn_chunk_fused" } else { "linattn_chunk_fused_grad" })?, FUSED_SMEM)?;
    let table = upload_words(rt, table, "the chunk table")?;
    Ok(Some((f, table)))
}

/// A one-pass kernel's launch: one block of 256 per sequence·head and 64 of the output's `cols`.
fn fused_cfg(p: &LinAttnParams, cols: u32) -> LaunchConfig {
    let [gx, gy, gz] = super::grid(cols as usize, super::WIDE_TILE, (p.batch * p.heads) as usize);
    LaunchConfig { grid_dim: (gx, gy, gz), block_dim: (256, 1, 1), shared_mem_bytes: FUSED_SMEM }
}

/// The chunked forward in one pass (see `Backend::linattn_chunk_fused`) where `fused_function`
/// allows (K ≤ 128); `Ok(false)`, launching nothing, otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_fused<T: CudaElem>(
    rt: &CudaRuntime,
    p: &LinAttnParams,
    table: &[u32],
    q: &CudaView<T>,
    k: &CudaView<T>,
    v: &CudaView<T>,
    state: &mut CudaViewMut<f32>,
    z: &mut CudaViewMut<f32>,
    o: &mut CudaViewMut<T>,
) -> Result<bool> {
    let Some((f, table)) = fused_function::<T>(rt, p, true, p.k, table, || vec![device_addr(rt, q), device_addr(rt, k), device_addr(rt, v), device_addr(rt, &*o)])? else {
        return Ok(false);
    };
    // SAFETY: linattn_chunk_fused_bf16(q, k, v, state, z, table, o, p) reads q, k [R·H·K] and v
    // [R·H·V] in whole 16-byte pieces (K, V multiples of 8, 16-byte aligned, K ≤ 128: checked by
    // fused_function) and the table [2·C + 1 + N + 1] (chunk bounds ending at R, each chunk ≤ 64
    // rows, positions, each sequence's chunk range); block (x, n·H + h) reads and writes columns
    // 64x.. of state [N·H·K·V] of its sequence·head (and the blocks of x = 0 its z [N·H·K]) and
    // writes those columns of o [R·H·V] for its sequence's rows; LinearAttention::chunk sized
    // every buffer.
    rt.launch(&f, fused_cfg(p, p.v), |a| {
        a.arg(q).arg(k).arg(v).arg(state).arg(z).arg(&table).arg(o).arg(p);
    })?;
    Ok(true)
}

/// The chunked backward in one pass per gradient (see `Backend::linattn_chunk_backward_fused`)
/// where `fused_function` allows (K and V ≤ 128): dq from `s0`, then dk and dv from the state's
/// gradient `d.0` (dS_T), which the dv pass turns into dS0; `d.1` is dz_T. `Ok(false)`, launching
/// nothing, otherwise.
pub(crate) fn chunk_fused_grads<T: CudaElem>(
    rt: &CudaRuntime,
    p: &LinAttnParams,
    table: &[u32],
    x: [&CudaView<T>; 4],
    s0: &CudaView<f32>,
    d: (&mut CudaViewMut<f32>, &CudaView<f32>),
    out: [&mut CudaViewMut<T>; 3],
) -> Result<bool> {
    let ([q, k, v, d_o], [dq, dk, dv], (ds, dz)) = (x, out, d);
    let addrs = || [device_addr(rt, q), device_addr(rt, k), device_addr(rt, v), device_addr(rt, d_o), device_addr(rt, &*dq), device_addr(rt, &*dk), device_addr(rt, &*dv)].to_vec();
    let Some((f, table)) = fused_function::<T>(rt, p, false, p.k.max(p.v), table, addrs)? else {
        return Ok(false);
    };
    // SAFETY: linattn_chunk_fused_grad_bf16(q, k, v, do, state, dz, table, out, p) reads q, k [R·H·K]
    // and v, do [R·H·V] in whole 16-byte pieces (K, V multiples of 8, 16-byte aligned, both ≤ 128:
    // checked by fused_function), the table as linattn_chunk_fused, dz [N·H·K] (f32, dk only) and
    // state [N·H·K·V] (f32: s0 for dq and ds for dk, read; ds for dv, whose block (x, n·H + h) reads
    // and writes columns 64x.. of its sequence·head's); block (x, n·H + h) writes columns 64x.. of
    // out (dq, dk [R·H·K] or dv [R·H·V]) for its sequence's rows and head. The dk pass reads ds
    // before the dv pass, later on the same stream, writes it. LinearAttention::chunk_backward sized
    // every buffer.
    // p.aux picks the pass: chunk16_impl's mode numbers.
    let [p_dq, p_dk, p_dv] = [2, 3, 1].map(|aux| LinAttnParams { aux, ..*p });
    rt.launch(&f, fused_cfg(p, p.k), |a| {
        a.arg(q).arg(k).arg(v).arg(d_o).arg(s0).arg(dz).arg(&table).arg(dq).arg(&p_dq);
    })?;
    {
        let ds_in = ds.as_view();
        rt.launch(&f, fused_cfg(p, p.k), |a| {
            a.arg(q).arg(k).arg(v).arg(d_o).arg(&ds_in).arg(dz).arg(&table).arg(dk).arg(&p_dk);
        })?;
    }
    rt.launch(&f, fused_cfg(p, p.v), |a| {
        a.arg(q).arg(k).arg(v).arg(d_o).arg(ds).arg(dz).arg(&table).arg(dv).arg(&p_dv);
    })?;
    Ok(true)
}

/// The chunked form's inter-chunk pass (see `Backend::linattn_chunk_scan`).
pub(crate) fn chunk_scan(rt: &CudaRuntime, p: &LinAttnParams, seq_chunk0: &[u32], state: &mut CudaViewMut<f32>, z: &mut CudaViewMut<f32>, hs: &mut CudaViewMut<f32>, zs: &mut CudaViewMut<f32>) -> Result<()> {
    let f = rt.function(FAMILY, Ptx::Base, "linattn_chunk_scan", 0)?;
    let seqs = upload_words(rt, seq_chunk0, "the chunk ranges")?;
    let threads = (p.batch * p.heads) as usize * (p.k * p.v + p.k) as usize;
    let cfg = crate::runtime::cuda::stride_grid(threads, 1 << 20);
    // SAFETY: linattn_chunk_scan reads and writes state [N·H·K·V], z [N·H·K] (each element by its
    // own thread), hs [NC·H·K·V] and zs [NC·H·K] (each chunk slot by the thread of its element),
    // and reads seq_chunk0 [N + 1] (non-decreasing, ending at NC = p.count0); LinearAttention::chunk
    // sized every buffer.
    rt.launch(&f, cfg, |a| {
        a.arg(state).arg(z).arg(hs).arg(zs).arg(&seqs).arg(p);
    })
}

/// The chunked backward's first pass (see `Backend::linattn_chunk_dstate`): den and dd of every row
/// and each chunk's own Σ q̃·dd (Normalizer only), then each chunk's own Σ q̃·dnᵀ.
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_dstate<T: CudaElem>(
    rt: &CudaRuntime,
    p: &LinAttnParams,
    bounds: &[u32],
    x: [&CudaView<T>; 5],
    z_start: &CudaView<f32>,
    dendd: &mut CudaViewMut<f32>,
    mut own: Option<[&mut CudaViewMut<f32>; 2]>,
) -> Result<()> {
    let bounds_dev = upload_words(rt, bounds, "the chunk bounds")?;
    let [q, k, _, o, d_o] = x;
    let units = (p.batch * p.heads) as usize;
    let cfg = |cols: usize, tile: usize| {
        let [gx, gy, gz] = super::grid(cols, tile, units);
        LaunchConfig { grid_dim: (gx, gy, gz), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
    };
    if p.normalize == 1 {
        let f = rt.function(FAMILY, Ptx::Base, typed::<T>("linattn_chunk_den")?, 0)?;
        // SAFETY: linattn_chunk_den_<dtype>(q, k, o, do, bounds, z, dendd, hz, p) reads q, k
        // [R·H·K], o, do [R·H·V], bounds [2·C + 1] (chunk boundaries ending at R, each chunk ≤ 64
        // rows, then positions) and z [C·H·K]; it writes dendd [R·H·2] and, unless hz is null
        // (no `own`), hz [C·H·K], each element once. LinearAttention::chunk_backward sized every
        // buffer.
        rt.launch(&f, cfg(1, super::TILE), |a| {
            a.arg(q).arg(k).arg(o).arg(d_o).arg(&bounds_dev).arg(z_start).arg(&mut *dendd);
            match own.as_mut() {
                Some([_, hz]) => a.arg(&mut **hz),
                None => a.arg(&NULL),
            };
            a.arg(p);
        })?;
    }
    let Some([g, _]) = own else { return Ok(()) };
    let f = rt.function(FAMILY, Ptx::Base, chunk_kernel::<T>("linattn_chunk_dstate", "linattn_chunk_dstate_mma")?, 0)?;
    // SAFETY: linattn_chunk_dstate[_mma]_<dtype>(q, do, bounds, dendd, g, p) reads q, do, bounds as above
    // and dendd (Normalizer only), and writes g [C·H·K·V], each element once.
    rt.launch(&f, cfg(super::outer_tiles(p), 1), |a| {
        a.arg(q).arg(d_o).arg(&bounds_dev).arg(&mut *dendd).arg(g).arg(p);
    })
}

/// A null device pointer, for a kernel's optional output.
const NULL: u64 = 0;

/// The chunked backward's reverse pass in one sweep (see `Backend::linattn_chunk_grad_states`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_grad_states<T: CudaElem, S: CudaElem>(
    rt: &CudaRuntime,
    p: &LinAttnParams,
    table: &[u32],
    q: &CudaView<T>,
    d_o: &CudaView<T>,
    dendd: &CudaView<f32>,
    d: [&mut CudaViewMut<f32>; 2],
    g: (&mut CudaViewMut<S>, &mut CudaViewMut<f32>),
) -> Result<()> {
    let (f, cfg) = sweep_launch(rt, p, sweep_kernel::<T, S>(rt, p, true, q, d_o, "linattn_chunk_grad_states")?)?;
    let table = upload_words(rt, table, "the chunk table")?;
    let ([ds, dz], (gs, gzs)) = (d, g);
    // SAFETY: linattn_chunk_grad_states[_mma|_mma16|_mma16s]_<dtype>(q, do, dendd, d_state, d_z,
    // table, gs, gzs, p) reads q [R·H·K], do [R·H·V] (mma16: whole 16-byte pieces of rows, K and V
    // multiples of 8, checked by sweep_kernel, which also matches the kernel to gs's type S), dendd [R·H·2] (Normalizer only) and the table [2·C + 1 + N + 2]
    // (C, chunk bounds ending at R, each chunk ≤ 64 rows, positions, each sequence's chunk range);
    // it reads and writes d_state [N·H·K·V] and d_z [N·H·K] (each element by one thread) and
    // writes gs [C·H·K·V], gzs [C·H·K]; LinearAttention::chunk_backward sized every buffer.
    rt.launch(&f, cfg, |a| {
        a.arg(q).arg(d_o).arg(dendd).arg(ds).arg(dz).arg(&table).arg(gs).arg(gzs).arg(p);
    })
}

/// The chunked backward's second pass (see `Backend::linattn_chunk_grads`): dv, then dq and dk.
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_grads<T: CudaElem, S: CudaElem>(
    rt: &CudaRuntime,
    p: &LinAttnParams,
    bounds: &[u32],
    x: [&CudaView<T>; 5],
    start: (&CudaView<S>, &CudaView<f32>),
    end: (&CudaView<S>, &CudaView<f32>),
    dendd: &CudaView<f32>,
    out: [&mut CudaViewMut<T>; 3],
) -> Result<()> {
    let bounds_dev = upload_words(rt, bounds, "the chunk bounds")?;
    let [q, k, v, _, d_o] = x;
    let [dq, dk, dv] = out;
    let units = (p.batch * p.heads) as usize;
    let cfg = |cols: usize, tile: usize| {
        let [gx, gy, gz] = super::grid(cols, tile, units);
        LaunchConfig { grid_dim: (gx, gy, gz), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
    };
    let [dv_name, dq_name, dk_name] = {
        let addrs = || {
            let (ins, states, outs) = ([q, k, v, d_o], [start.0, end.0], [&*dq, &*dk, &*dv]);
            ins.iter().map(|x| device_addr(rt, *x)).chain(states.iter().map(|x| device_addr(rt, *x))).chain(outs.iter().map(|x| device_addr(rt, *x))).collect::<Vec<u64>>()
        };
        ["linattn_chunk_dv", "linattn_chunk_dq", "linattn_chunk_dk"].map(|base| chunk_product::<T, S>(p, false, base, addrs))
    };
    let f = rt.function(FAMILY, Ptx::Base, dv_name?, 0)?;
    // SAFETY: linattn_chunk_dv[_mma|_mma16]_<dtype>(q, k, do, bounds, dendd, g, dv, p) reads q, k
    // [R·H·K], do [R·H·V], bounds [2·C + 1], dendd [R·H·2] (Normalizer only) and g [C·H·K·V] (f32,
    // or bf16 for _mma16 only: chunk_product matches the kernel to S and checks mma16's 16-byte and
    // 8-byte pieces), and writes dv [R·H·V], each element once.
    rt.launch(&f, cfg(p.v as usize, super::WIDE_TILE), |a| {
        a.arg(q).arg(k).arg(d_o).arg(&bounds_dev).arg(dendd).arg(end.0).arg(dv).arg(p);
    })?;
    for (name, m, zv, target) in [(dq_name, start.0, start.1, dq), (dk_name, end.0, end.1, dk)] {
        let f = rt.function(FAMILY, Ptx::Base, name?, 0)?;
        // SAFETY: linattn_chunk_dq[_mma|_mma16]_<dtype> and linattn_chunk_dk[_mma|_mma16]_<dtype>
        // (q, k, v, do, bounds, dendd, m, zv, out, p) read q, k [R·H·K], v, do [R·H·V], bounds and
        // dendd as above, m [C·H·K·V] (S_c or G_c, of type S as chunk_product matched) and zv
        // [C·H·K] (z_c or g_c), and write out [R·H·K] (dq or dk), each element once.
        rt.launch(&f, cfg(p.k as usize, super::WIDE_TILE), |a| {
            a.arg(q).arg(k).arg(v).arg(d_o).arg(&bounds_dev).arg(dendd).arg(m).arg(zv).arg(target).arg(p);
        })?;
    }
    Ok(())
}
