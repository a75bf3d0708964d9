//! CUDA launchers of the GEMM family (`kernels/gemm.cu`). They take the caller's cudarc views
//! and launch on the runtime's stream (the caller's, with `CudaRuntime::from_stream`); no copies,
//! no synchronisation.

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::{ALayout, ActGrad, BLayout, Gemm};
use crate::runtime::cuda::{check_lens, device_addr, CudaElem, CudaRuntime, Ptx};
use crate::{DType, Error, Result};

const FAMILY: &str = "gemm";

/// Every kernel this file launches (build.rs checks each is an entry of the PTX).
pub const KERNELS: &[&str] = &[
    "gemm_f32_vec",
    "gemm_f32_gen",
    "gemm_f16_vec",
    "gemm_f16_gen",
    "gemm_bf16_vec",
    "gemm_bf16_gen",
    "gemm_f32_vec_split",
    "gemm_f32_gen_split",
    "gemm_f16_vec_split",
    "gemm_f16_gen_split",
    "gemm_bf16_vec_split",
    "gemm_bf16_gen_split",
    "gemm_f16_vec_bk",
    "gemm_f16_vec_akbk",
    "gemm_bf16_vec_bk",
    "gemm_bf16_vec_akbk",
    "gemm_f16_vec_bk_split",
    "gemm_f16_vec_akbk_split",
    "gemm_bf16_vec_bk_split",
    "gemm_bf16_vec_akbk_split",
    "gemm_f16_gen_a",
    "gemm_f16_gen_a_bk",
    "gemm_bf16_gen_a",
    "gemm_bf16_gen_a_bk",
    "gemm_f16_gen_a_split",
    "gemm_f16_gen_a_bk_split",
    "gemm_bf16_gen_a_split",
    "gemm_bf16_gen_a_bk_split",
    "gemm_splitk_f32",
    "gemm_splitk_f16",
    "gemm_splitk_bf16",
    "act_grad_f32",
    "act_grad_f16",
    "act_grad_bf16",
    "col_sum_f32",
    "col_sum_f16",
    "col_sum_bf16",
    "col_sum_finish_f32",
    "col_sum_finish_f16",
    "col_sum_finish_bf16",
];

/// The Hopper-only kernels (in the `compute_90a` PTX).
pub const KERNELS_SM90A: &[&str] = &["gemm_f16_wgmma", "gemm_bf16_wgmma", "gemm_f16_wgmma_pp", "gemm_bf16_wgmma_pp", "gemm_f16_wgmma_ew", "gemm_bf16_wgmma_ew"];

/// Dynamic shared memory of the wgmma kernels: 4 stages × (128 + 256) rows × 64 × 2 bytes, 1 KiB
/// of alignment slack and 32 KiB of epilogue staging (the kernel static_asserts the same number).
const WGMMA_SMEM: u32 = 230400;

/// Which f16/bf16 kernel runs: `FFKERN_GEMM_KERNEL` = `auto` (default: the wgmma kernel on Hopper
/// where A is [M,K] and B is [N,K] with 16-byte-aligned rows, else mma.sync; the backward
/// products with a K-major operand — dA = dC·W, dW = dCᵀ·X — take 16-byte copies and
/// ldmatrix.trans: 1.5× faster on the H100's OneForecast layer than element loads), `pingpong`
/// (the same cases on the wgmma kernel's ping-pong schedule: each consumer warpgroup owns 64×256
/// tiles and its epilogue overlaps the other's products), `mma` (mma.sync everywhere, e.g. to
/// compare on a Hopper card), `kgen` (as `auto`, with the K-major operands loaded element by
/// element, to compare) or `epiwarp` (the wgmma cases with epilogue warps: the consumers stage
/// each tile's α·acc + bias in shared memory and go on to the next tile's products while three
/// warps of the producer's warpgroup write it out).
fn kernel_choice() -> Result<&'static str> {
    static CHOICE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    crate::runtime::kernel_env(&CHOICE, &crate::runtime::GEMM_KERNEL)
}

/// A TMA tensor map, passed to a kernel by value (`__grid_constant__ CUtensorMap`).
#[repr(transparent)]
#[derive(Clone, Copy)]
struct TensorMap(cudarc::driver::sys::CUtensorMap);

// SAFETY: the driver's opaque 128-byte descriptor, plain bytes copied into the kernel's parameters.
unsafe impl cudarc::driver::DeviceRepr for TensorMap {}

/// The tensor map of a K-contiguous operand for the wgmma kernel: boxes of 64 K-elements ×
/// `box_rows` rows with the 128-byte swizzle; out-of-range elements read as zero. `batch_stride`
/// 0 (or one batch) maps a single matrix.
#[allow(clippy::too_many_arguments)]
fn tensor_map(dtype: DType, ptr: u64, k: usize, rows: usize, ld: usize, batch: usize, batch_stride: usize, box_rows: u32) -> Result<TensorMap> {
    use cudarc::driver::sys;
    let ty = match dtype {
        DType::F16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        DType::BF16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        DType::F32 => return Err(Error::Unsupported("the wgmma kernels take f16 or bf16".into())),
    };
    let one = batch_stride == 0 || batch == 1;
    let dims: [u64; 3] = [k as u64, rows as u64, if one { 1 } else { batch as u64 }];
    let strides: [u64; 2] = [(ld * 2) as u64, if one { (rows * ld * 2) as u64 } else { (batch_stride * 2) as u64 }];
    let boxes: [u32; 3] = [64, box_rows, 1];
    let elem: [u32; 3] = [1, 1, 1];
    let mut map = TensorMap(sys::CUtensorMap { opaque: [0; 16] });
    // SAFETY: encodes a descriptor from the values above into `map`; the driver reads the arrays
    // and writes only `map`. The global address is not dereferenced here.
    let r = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map.0,
            ty,
            3,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(Error::driver("cuda: encoding a tensor map", format!("{r:?}")));
    }
    Ok(map)
}

/// Dynamic shared memory of the tensor-core kernels (3 stages × (128 + 128) rows × 40 × 2 bytes;
/// the kernel static_asserts the same number).
const MMA_SMEM: u32 = 61440;

/// Dynamic shared memory of the mma.sync (f16/bf16) and SIMT (f32, static only) entries.
fn base_smem(dtype: DType) -> u32 {
    if dtype == DType::F32 {
        0
    } else {
        MMA_SMEM
    }
}

/// The mma.sync / SIMT entry for `dtype`: 16-byte loads (`vec`) or any layout, whole or split-K.
/// How the mma.sync / SIMT kernels load their operands (`Load` in kernels/gemm.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    /// Element loads, any layout and strides.
    Gen,
    /// 16-byte copies of A [M,K] and B [N,K] rows.
    Vec,
    /// 16-byte copies with B stored K-major ([K,N]: dA = dC·W's weights); f16/bf16.
    VecBk,
    /// 16-byte copies with A and B stored K-major (dW = dCᵀ·X); f16/bf16.
    VecAkBk,
    /// A by element loads (any layout and strides: BlockShuffle's stride-k gather), B as `Vec`;
    /// f16/bf16.
    GenA,
    /// A by element loads, B as `VecBk`; f16/bf16.
    GenABk,
}

/// The mma.sync / SIMT entry for `dtype` and load form, whole or split-K.
fn kernel_name(dtype: DType, load: Load, split: bool) -> &'static str {
    let [whole, split_k] = match (dtype, load) {
        (DType::F32, Load::Vec) => ["gemm_f32_vec", "gemm_f32_vec_split"],
        (DType::F32, _) => ["gemm_f32_gen", "gemm_f32_gen_split"],
        (DType::F16, Load::Vec) => ["gemm_f16_vec", "gemm_f16_vec_split"],
        (DType::F16, Load::Gen) => ["gemm_f16_gen", "gemm_f16_gen_split"],
        (DType::F16, Load::VecBk) => ["gemm_f16_vec_bk", "gemm_f16_vec_bk_split"],
        (DType::F16, Load::VecAkBk) => ["gemm_f16_vec_akbk", "gemm_f16_vec_akbk_split"],
        (DType::F16, Load::GenA) => ["gemm_f16_gen_a", "gemm_f16_gen_a_split"],
        (DType::F16, Load::GenABk) => ["gemm_f16_gen_a_bk", "gemm_f16_gen_a_bk_split"],
        (DType::BF16, Load::Vec) => ["gemm_bf16_vec", "gemm_bf16_vec_split"],
        (DType::BF16, Load::Gen) => ["gemm_bf16_gen", "gemm_bf16_gen_split"],
        (DType::BF16, Load::VecBk) => ["gemm_bf16_vec_bk", "gemm_bf16_vec_bk_split"],
        (DType::BF16, Load::VecAkBk) => ["gemm_bf16_vec_akbk", "gemm_bf16_vec_akbk_split"],
        (DType::BF16, Load::GenA) => ["gemm_bf16_gen_a", "gemm_bf16_gen_a_split"],
        (DType::BF16, Load::GenABk) => ["gemm_bf16_gen_a_bk", "gemm_bf16_gen_a_bk_split"],
    };
    if split {
        split_k
    } else {
        whole
    }
}

/// Pushes the epilogue's operands bias, R, C, Z; absent ones as a null pointer (has_bias, has_r,
/// has_z say they are never read).
macro_rules! push_epilogue {
    ($args:ident, $bias:expr, $r:expr, $c:expr, $z:expr, $null:expr) => {{
        match $bias {
            Some(t) => $args.arg(t),
            None => $args.arg($null),
        };
        match $r {
            Some(t) => $args.arg(t),
            None => $args.arg($null),
        };
        $args.arg($c);
        match $z {
            Some(t) => $args.arg(t),
            None => $args.arg($null),
        };
    }};
}

/// Launches the fused GEMM on the runtime's stream. Reads `a`, `b`, `bias`, `r`; writes `c` and,
/// when given, the pre-activation `z` (same layout as C).
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: CudaElem>(
    rt: &CudaRuntime,
    desc: &Gemm,
    a: &CudaView<T>,
    b: &CudaView<T>,
    bias: Option<&CudaView<T>>,
    r: Option<&CudaView<T>>,
    c: &mut CudaViewMut<T>,
    z: Option<&mut CudaViewMut<T>>,
) -> Result<()> {
    desc.validate_lens(a.len(), b.len(), bias.map(|t| t.len()), r.map(|t| t.len()), c.len(), z.as_ref().map(|t| t.len()))?;
    if desc.m == 0 || desc.n == 0 || desc.batch == 0 {
        return Ok(());
    }
    let mut p = desc.params();
    p.has_z = z.is_some() as u32;
    let dtype = T::DTYPE;
    // The 16-byte copy paths: unit inner stride on both operands, rows and batches 16-byte
    // aligned; A [M,K] and B [N,K] (K contiguous), and for f16/bf16 (unless FFKERN_GEMM_KERNEL=kgen)
    // also B [K,N], or A [K,M] and B [K,N] (the backward's products).
    let choice = kernel_choice()?;
    let a_unit = p.rows_16b(false, dtype) && device_addr(rt, a) % 16 == 0;
    let b_unit = p.rows_16b(true, dtype) && device_addr(rt, b) % 16 == 0;
    let kmajor = choice != "kgen" && dtype != DType::F32;
    // An A that takes no 16-byte copies (a gather's stride, an odd alignment) still leaves B's.
    let b16 = dtype != DType::F32 && b_unit;
    let load = match (a_unit && b_unit, desc.a_layout, desc.b_layout) {
        (true, ALayout::MK, BLayout::NK) => Load::Vec,
        (true, ALayout::MK, BLayout::KN) if kmajor => Load::VecBk,
        (true, ALayout::KM, BLayout::KN) if kmajor => Load::VecAkBk,
        (_, _, BLayout::NK) if b16 => Load::GenA,
        (_, _, BLayout::KN) if b16 && kmajor => Load::GenABk,
        _ => Load::Gen,
    };
    let vec = load == Load::Vec;
    // Few 128×128 tiles and a long K: slices over about two blocks per SM.
    let (kc, splits) = super::split_k(desc, 128, 2 * rt.sm_count() as usize);
    if splits > 1 {
        return gemm_split(rt, desc, &p, load, kc, splits, a, b, bias, r, c, z);
    }
    let wgmma = dtype != DType::F32 && vec && desc.k > 0 && rt.is_sm90a() && choice != "mma";
    let pingpong = choice == "pingpong";
    // The wgmma kernel's tile rows: a shared 128-row tile, or one warpgroup's 64 (ping-pong).
    let tile_m = if pingpong { 64 } else { 128 };
    let (name, ptx, smem) = if wgmma {
        let name = match (dtype == DType::F16, choice) {
            (true, "pingpong") => "gemm_f16_wgmma_pp",
            (false, "pingpong") => "gemm_bf16_wgmma_pp",
            // The epilogue warps write 8 columns a thread, a poor fit for a C with an inner
            // stride, which the cooperative kernel's strided writer takes instead.
            (true, "epiwarp") if desc.inner_c == 1 => "gemm_f16_wgmma_ew",
            (false, "epiwarp") if desc.inner_c == 1 => "gemm_bf16_wgmma_ew",
            (true, _) => "gemm_f16_wgmma",
            (false, _) => "gemm_bf16_wgmma",
        };
        (name, Ptx::Sm90a, WGMMA_SMEM)
    } else {
        (kernel_name(dtype, load, false), Ptx::Base, base_smem(dtype))
    };
    let func = rt.function(FAMILY, ptx, name, smem)?;
    let cfg = if wgmma {
        // Persistent: one block per multiprocessor walks the tile_m×256 tiles (batch, then M, then N).
        let tiles = desc.batch * desc.m.div_ceil(tile_m) * desc.n.div_ceil(256);
        LaunchConfig { grid_dim: (tiles.min(rt.sm_count() as usize) as u32, 1, 1), block_dim: (384, 1, 1), shared_mem_bytes: smem }
    } else {
        LaunchConfig {
            grid_dim: (desc.n.div_ceil(128) as u32, desc.m.div_ceil(128) as u32, desc.batch as u32),
            block_dim: (256, 1, 1),
            shared_mem_bytes: smem,
        }
    };
    let maps = if wgmma {
        let (ao, bo) = (desc.a(), desc.b());
        Some((
            tensor_map(dtype, device_addr(rt, a), desc.k, desc.m, ao.row_stride, desc.batch, ao.batch_stride, tile_m as u32)?,
            tensor_map(dtype, device_addr(rt, b), desc.k, desc.n, bo.row_stride, desc.batch, bo.batch_stride, 256)?,
        ))
    } else {
        None
    };
    let null = 0u64;
    // SAFETY: gemm_<dtype>_<vec|gen|vec_bk|vec_akbk>(A, B, bias, R, C, Z, GemmParams) and
    // gemm_<dtype>_wgmma(..., GemmParams, tmA, tmB) — validate_lens checked that every element the
    // descriptor reaches lies inside a, b, bias, r, c and z (16-byte copies only of rows whose
    // stride and base are 16-byte aligned, zero-filled past the edges; the tensor maps cover exactly A and B,
    // reads outside them are zero-filled by the copy engine); absent optional operands are null and
    // never dereferenced (has_bias / has_r / has_z are 0).
    rt.launch(&func, cfg, |args| {
        args.arg(a).arg(b);
        push_epilogue!(args, bias, r, c, z, &null);
        args.arg(&p);
        if let Some((ma, mb)) = &maps {
            args.arg(ma).arg(mb);
        }
    })
}

/// The split-K form of [`gemm`] (see [`super::split_k`]): the slices' raw sums into an f32 workspace,
/// then their ordered sum through the epilogue.
#[allow(clippy::too_many_arguments)]
fn gemm_split<T: CudaElem>(
    rt: &CudaRuntime,
    desc: &Gemm,
    p: &super::GemmParams,
    load: Load,
    kc: usize,
    splits: usize,
    a: &CudaView<T>,
    b: &CudaView<T>,
    bias: Option<&CudaView<T>>,
    r: Option<&CudaView<T>>,
    c: &mut CudaViewMut<T>,
    z: Option<&mut CudaViewMut<T>>,
) -> Result<()> {
    let smem = base_smem(T::DTYPE);
    let func = rt.function(FAMILY, Ptx::Base, kernel_name(T::DTYPE, load, true), smem)?;
    // Every block writes its whole tile's slice sums (zeros for an empty slice): no fill needed.
    let mut ws = rt.uninit::<f32>(splits * desc.m * desc.n)?;
    let cfg = LaunchConfig { grid_dim: (desc.n.div_ceil(128) as u32, desc.m.div_ceil(128) as u32, splits as u32), block_dim: (256, 1, 1), shared_mem_bytes: smem };
    let kc32 = kc as u32;
    // SAFETY: gemm_<dtype>_<load>_split(A, B, GemmParams, kc, ws): block z reads the K slice
    // [z·kc, min(K, (z + 1)·kc)) of A and B, inside the lengths validate_lens checked (batch 1), and
    // writes its tile's raw sums to ws[z] [M·N] f32; ws holds splits·M·N and z < splits.
    rt.launch(&func, cfg, |args| {
        args.arg(a).arg(b).arg(p).arg(&kc32).arg(&mut ws);
    })?;
    let sum = rt.function(FAMILY, Ptx::Base, crate::runtime::cuda::kernel_name::<T>(KERNELS, "gemm_splitk")?, 0)?;
    let pairs = desc.m * desc.n.div_ceil(2);
    let cfg = crate::runtime::cuda::stride_grid(pairs, 65535 * 8);
    let (s32, null) = (splits as u32, 0u64);
    // SAFETY: gemm_splitk_<dtype>(ws, splits, bias, R, C, Z, GemmParams) reads ws [splits·M·N] and
    // the epilogue's operands, writes C (and Z) at the elements validate_lens checked; absent
    // optional operands are null and never dereferenced (has_bias / has_r / has_z are 0).
    rt.launch(&sum, cfg, |args| {
        args.arg(&ws).arg(&s32);
        push_epilogue!(args, bias, r, c, z, &null);
        args.arg(p);
    })
}

fn helper_name(kind: &str, dtype: DType) -> Result<&'static str> {
    Ok(match (kind, dtype) {
        ("act_grad", DType::F32) => "act_grad_f32",
        ("act_grad", DType::F16) => "act_grad_f16",
        ("act_grad", DType::BF16) => "act_grad_bf16",
        ("col_sum", DType::F32) => "col_sum_f32",
        ("col_sum", DType::F16) => "col_sum_f16",
        ("col_sum", DType::BF16) => "col_sum_bf16",
        ("col_sum_finish", DType::F32) => "col_sum_finish_f32",
        ("col_sum_finish", DType::F16) => "col_sum_finish_f16",
        ("col_sum_finish", DType::BF16) => "col_sum_finish_bf16",
        _ => return Err(Error::Unsupported(format!("no CUDA helper {kind}"))),
    })
}

/// `out = dc ⊙ act'(z)` over compact `[rows, cols]`.
pub fn act_grad<T: CudaElem>(rt: &CudaRuntime, d: &ActGrad, dc: &CudaSlice<T>, z: &CudaSlice<T>, out: &mut CudaSlice<T>) -> Result<()> {
    let n = d.rows * d.cols;
    if n == 0 {
        return Ok(());
    }
    check_lens("act_grad", &[("dc", dc.len(), n), ("z", z.len(), n), ("out", out.len(), n)])?;
    let func = rt.function(FAMILY, Ptx::Base, helper_name("act_grad", T::DTYPE)?, 0)?;
    let cfg = crate::runtime::cuda::stride_grid(n, 65535 * 8);
    let (rows, cols, act, act_cols) = (d.rows as u32, d.cols as u32, d.act as u32, d.act_cols as u32);
    // SAFETY: act_grad_<dtype>(dc, z, out, rows, cols, act, act_cols) touches elements < rows·cols,
    // which all three buffers hold (checked above).
    rt.launch(&func, cfg, |args| {
        args.arg(dc).arg(z).arg(out).arg(&rows).arg(&cols).arg(&act).arg(&act_cols);
    })
}

/// `out[j] = Σ_i x[i, j]` over compact `[rows, cols]`, deterministic.
pub fn col_sum<T: CudaElem>(rt: &CudaRuntime, rows: usize, cols: usize, x: &CudaSlice<T>, out: &mut CudaSlice<T>) -> Result<()> {
    if cols == 0 {
        return Ok(());
    }
    check_lens("col_sum", &[("x", x.len(), rows * cols), ("out", out.len(), cols)])?;
    // Chunks of COL_SUM_ROWS rows, summed into f32 partials, then in order.
    let chunks = rows.div_ceil(super::COL_SUM_ROWS).max(1);
    let mut part = rt.uninit::<f32>(chunks * cols)?;  // every (chunk, column) written below
    let func = rt.function(FAMILY, Ptx::Base, helper_name("col_sum", T::DTYPE)?, 0)?;
    let cfg = LaunchConfig { grid_dim: (cols.div_ceil(32) as u32, chunks as u32, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 };
    let (r32, c32, n32, chunk_rows) = (rows as u32, cols as u32, chunks as u32, super::COL_SUM_ROWS as u32);
    // SAFETY: col_sum_<dtype>(x, part, rows, cols, chunk_rows) reads rows·cols elements of x
    // (checked above) and writes part [chunks · cols] (f32, allocated above; blockIdx.y < chunks).
    rt.launch(&func, cfg, |args| {
        args.arg(x).arg(&mut part).arg(&r32).arg(&c32).arg(&chunk_rows);
    })?;
    let finish = rt.function(FAMILY, Ptx::Base, helper_name("col_sum_finish", T::DTYPE)?, 0)?;
    let cfg = LaunchConfig { grid_dim: (cols.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: col_sum_finish_<dtype>(part, out, chunks, cols) reads part [chunks · cols] and writes
    // cols elements of out (checked above).
    rt.launch(&finish, cfg, |args| {
        args.arg(&part).arg(out).arg(&n32).arg(&c32);
    })
}

/// The vendor library baseline for a GEMM case on the same stream: cuBLAS for a plain product
/// (f32 with no TF32; f16/bf16 with f32 compute), cuBLASLt with its bias(+GELU) epilogue where the
/// case has a bias (f16/bf16). Runs `C = A·Bᵀ (+ bias, act)`; `None` when the case has no
/// counterpart (other layouts, batches, partial activation, residual slices).
/// Returns the library's name for the record.
pub fn vendor_baseline<T: CudaElem>(
    rt: &CudaRuntime,
    desc: &Gemm,
    a: &CudaSlice<T>,
    b: &CudaSlice<T>,
    bias: Option<&CudaSlice<T>>,
    c: &mut CudaSlice<T>,
) -> Result<Option<&'static str>>
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
    cudarc::cublaslt::CudaBlasLT: cudarc::cublaslt::Matmul<T>,
{
    use super::Activation;
    let plain = desc.batch == 1 && desc.a_layout == ALayout::MK && desc.b_layout == BLayout::NK && desc.act_cols.is_none();
    if !plain || desc.residual || desc.lda.is_some() || desc.ldb.is_some() || desc.ldc.is_some() || (desc.inner_a, desc.inner_b, desc.inner_c) != (1, 1, 1) {
        return Ok(None);
    }
    let (m, n, k) = (desc.m, desc.n, desc.k);
    let bias_len = if desc.bias { bias.map_or(0, |t| t.len()) } else { n };
    check_lens("vendor_baseline", &[("a", a.len(), m * k), ("b", b.len(), n * k), ("bias", bias_len, n), ("c", c.len(), m * n)])?;
    if desc.bias {
        let act = match desc.act {
            Activation::Identity => None,
            Activation::GeluErf | Activation::GeluTanh => Some(cudarc::cublaslt::Activation::Gelu),
            Activation::Relu => Some(cudarc::cublaslt::Activation::Relu),
            Activation::Silu | Activation::LeakyRelu => return Ok(None),
        };
        if T::DTYPE == DType::F32 {
            return Ok(None); // cuBLASLt computes f32 in TF32 here: not a like-for-like baseline.
        }
        let lt = rt.blas_lt()?;
        let cfg = cudarc::cublaslt::MatmulConfig {
            transa: true,
            transb: false,
            transc: false,
            m: n as u64,
            n: m as u64,
            k: k as u64,
            alpha: desc.alpha,
            lda: k as i64,
            ldb: k as i64,
            beta: 0.0,
            ldc: n as i64,
            stride_a: None,
            stride_b: None,
            stride_c: None,
            stride_bias: None,
            batch_size: None,
        };
        // SAFETY: column-major view of the row-major problem: C[N×M] = B[K×N]ᵀ·A[K×M] with
        // leading dimensions K, K, N; the slices hold N·K, M·K, N and M·N elements (the caller
        // allocated them from this descriptor).
        unsafe { cudarc::cublaslt::Matmul::matmul(lt, cfg, b, a, c, bias, act.as_ref()) }
            .map_err(|e| Error::driver("cublasLt matmul", e))?;
        return Ok(Some("cuBLASLt (bias+GELU epilogue)"));
    }
    if desc.act != Activation::Identity {
        return Ok(None);
    }
    let blas = rt.blas()?;
    let cfg = cudarc::cublas::GemmConfig {
        transa: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
        transb: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
        m: n as i32,
        n: m as i32,
        k: k as i32,
        alpha: T::from_f32(desc.alpha),
        lda: k as i32,
        ldb: k as i32,
        beta: T::from_f32(0.0),
        ldc: n as i32,
    };
    // SAFETY: as above, C[N×M] = B[K×N]ᵀ·A[K×M] column-major over slices of N·K, M·K, M·N elements.
    unsafe { cudarc::cublas::Gemm::gemm(blas, cfg, b, a, c) }.map_err(|e| Error::driver("cublas gemm", e))?;
    Ok(Some("cuBLAS"))
}

/// Times [`vendor_baseline`] on `x` (uploaded here): `(library, seconds per run)`, or `None`.
pub fn time_vendor_baseline(rt: &CudaRuntime, desc: &Gemm, x: &super::GemmInputs, reps: usize) -> Result<Option<(&'static str, Vec<f64>)>> {
    fn run<T: CudaElem>(rt: &CudaRuntime, desc: &Gemm, x: &super::GemmInputs, reps: usize) -> Result<Option<(&'static str, Vec<f64>)>>
    where
        cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
        cudarc::cublaslt::CudaBlasLT: cudarc::cublaslt::Matmul<T>,
    {
        let up = |v: &[f32]| -> Result<CudaSlice<T>> {
            let h: Vec<T> = v.iter().map(|&f| T::from_f32(f)).collect();
            rt.stream.clone_htod(&h).map_err(|e| Error::driver("cuda: upload", e))
        };
        let (a, b) = (up(&x.a.data)?, up(&x.b.data)?);
        let bias = x.bias.as_ref().map(|t| up(&t.data)).transpose()?;
        let mut c = rt.stream.alloc_zeros::<T>(desc.m * desc.n).map_err(|e| Error::driver("cuda: alloc", e))?;
        let Some(name) = vendor_baseline(rt, desc, &a, &b, bias.as_ref(), &mut c)? else {
            return Ok(None);
        };
        let times = rt.time_runs(reps, || vendor_baseline(rt, desc, &a, &b, bias.as_ref(), &mut c).map(|_| ()))?;
        Ok(Some((name, times)))
    }
    match x.a.dtype {
        DType::F32 => run::<f32>(rt, desc, x, reps),
        DType::F16 => run::<half::f16>(rt, desc, x, reps),
        DType::BF16 => run::<half::bf16>(rt, desc, x, reps),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_the_launcher_names_is_listed() {
        for dtype in DType::ALL {
            for load in [Load::Gen, Load::Vec, Load::VecBk, Load::VecAkBk, Load::GenA, Load::GenABk] {
                for split in [false, true] {
                    let name = kernel_name(dtype, load, split);
                    assert!(KERNELS.contains(&name), "{name} is not in KERNELS (build.rs checks that list against the PTX)");
                }
            }
        }
    }
}
