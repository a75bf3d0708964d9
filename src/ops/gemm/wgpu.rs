//! wgpu launchers of the GEMM family (`shaders/gemm.wgsl`). They take the caller's buffers with
//! element offsets and record on the caller's device and queue; no copies, no waits.

use super::{ActGrad, Gemm};
use crate::runtime::wgpu::{check_sizes, BufferRef, WgpuContext};
use crate::{DType, Error, Result};

const FAMILY: &str = "gemm";
/// Binding order: A, B, bias, R, A and B again as 16-byte words (read-only), then C, Z (written).
const READ_ONLY: usize = 6;

/// Launches the fused GEMM. `c` and the optional `z` (pre-activation) are written; the others are
/// read. Offsets are in elements.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    ctx: &WgpuContext,
    desc: &Gemm,
    dtype: DType,
    a: BufferRef,
    b: BufferRef,
    bias: Option<BufferRef>,
    r: Option<BufferRef>,
    c: BufferRef,
    z: Option<BufferRef>,
) -> Result<()> {
    desc.validate_lens(
        a.available(dtype),
        b.available(dtype),
        bias.map(|t| t.available(dtype)),
        r.map(|t| t.available(dtype)),
        c.available(dtype),
        z.map(|t| t.available(dtype)),
    )?;
    let mut p = desc.params();
    let off = |x: &BufferRef| -> Result<u32> {
        u32::try_from(x.offset).map_err(|_| Error::Limit("gemm: element offset over 2^32".into()))
    };
    p.off_a = off(&a)?;
    p.off_b = off(&b)?;
    p.off_c = off(&c)?;
    if let Some(t) = &bias {
        p.off_bias = off(t)?;
    }
    if let Some(t) = &r {
        p.off_r = off(t)?;
    }
    if let Some(t) = &z {
        p.off_z = off(t)?;
        p.has_z = 1;
    }
    if desc.m == 0 || desc.n == 0 || desc.batch == 0 {
        return Ok(());
    }
    let ro = ctx.dummy(false);
    p.vec_a = vec_loads(dtype, &p, false, a.buffer) as u32;
    p.vec_b = vec_loads(dtype, &p, true, b.buffer) as u32;
    let (av, bv) = (if p.vec_a != 0 { a.buffer } else { ro }, if p.vec_b != 0 { b.buffer } else { ro });
    let (bias, r, z) = (bias.map_or(ro, |t| t.buffer), r.map_or(ro, |t| t.buffer), z.map_or(ctx.dummy(true), |t| t.buffer));
    // Few 64×64 tiles and a long K: the K slices' sums into an f32 workspace (bound as C), then
    // their ordered sum through the epilogue (the workspace bound as A).
    let (kc, splits) = super::split_k(desc, 64, SPLIT_TARGET);
    if splits > 1 {
        (p.kc, p.splits) = (kc as u32, splits as u32);
        let ws = ctx.create_buffer(DType::F32, splits * desc.m * desc.n)?;
        let pipe = ctx.pipeline(FAMILY, "gemm_split", dtype, READ_ONLY, 2)?;
        let groups = [desc.n.div_ceil(64) as u32, desc.m.div_ceil(64) as u32, splits as u32];
        ctx.dispatch(&pipe, FAMILY, READ_ONLY, bytemuck::bytes_of(&p), &[a.buffer, b.buffer, ro, ro, av, bv, &ws, ctx.dummy(true)], groups)?;
        let pipe = ctx.pipeline(FAMILY, "gemm_splitk", dtype, READ_ONLY, 2)?;
        let groups = ctx.grid_1d(desc.m * desc.n.div_ceil(4));
        return ctx.dispatch(&pipe, FAMILY, READ_ONLY, bytemuck::bytes_of(&p), &[&ws, ro, bias, r, ro, ro, c.buffer, z], groups);
    }
    // Entry, tile and batches a workgroup: 64×64 tiles of two batches each for the pairs.
    let (entry, tile_m, tile_n, per_group) = if pairs(dtype, &p) {
        ("gemm_pairs", 64, 64, 2)
    } else {
        match form(ctx, desc)? {
            Form::Wide => ("gemm_wide", 128, 128, 1),
            Form::Tall => ("gemm_tall", 128, 64, 1),
            Form::Skinny => ("gemm_skinny", 128, 32, 1),
            Form::Narrow => ("gemm", 64, 64, 1),
        }
    };
    let pipe = ctx.pipeline(FAMILY, entry, dtype, READ_ONLY, 2)?;
    let groups = [desc.n.div_ceil(tile_n) as u32, desc.m.div_ceil(tile_m) as u32, (desc.batch / per_group) as u32];
    ctx.dispatch(&pipe, FAMILY, READ_ONLY, bytemuck::bytes_of(&p), &[a.buffer, b.buffer, bias, r, av, bv, c.buffer, z], groups)
}

/// Whether operand A (`b` false) or B can stage its K slabs with 16-byte loads: its rows start
/// 16-byte words ([`super::GemmParams::rows_16b`]) from an offset that is a multiple of 16 bytes,
/// and the buffer holds at least one such word (a binding of 16-byte words cannot be smaller).
fn vec_loads(dtype: DType, p: &super::GemmParams, b: bool, buffer: &wgpu::Buffer) -> bool {
    let off = if b { p.off_b } else { p.off_a };
    p.rows_16b(b, dtype) && off as usize % (16 / dtype.size()) == 0 && buffer.size() >= 16
}

/// Whether a 16-bit product's batches go in pairs (`gemm_pairs`: BlockShuffle's interleaved
/// store): C's batch stride 1 and an even column stride put the elements of batches 2z and 2z + 1
/// in one word, and even offsets and row strides keep every such pair word-aligned.
fn pairs(dtype: DType, p: &super::GemmParams) -> bool {
    dtype != DType::F32 && p.batch % 2 == 0 && p.sc == 1 && p.c_cs % 2 == 0 && p.ldc % 2 == 0 && p.off_c % 2 == 0 && (p.has_z == 0 || p.off_z % 2 == 0)
}

/// The GEMM's tile forms: 128×128 tiles with 8×8 a thread, 128×64 with 8×4, 128×32 and 64×64
/// with 4×4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Wide,
    Tall,
    Skinny,
    Narrow,
}

/// Which form a product takes: `FFKERN_WGPU_GEMM` = `auto` (default: the largest tile that pads M
/// and N by at most an eighth more than 64×64 tiles would, and of which the product has enough to
/// fill the adapter: any count on a CPU adapter such as lavapipe, whose few cores it fills, at
/// least [`WIDE_MIN_TILES`] on a GPU; 128×64 serves products 64 or fewer columns wide, such as a
/// low-rank factor's, and 128×32 those 32 or fewer wide, such as a block-diagonal stage with
/// narrow blocks), or `wide`, `tall`, `skinny` or `narrow` for every product; any other value is
/// an error. On a GPU adapter `auto` takes only the forms with the 4×4 main loop (128×32 and
/// 64×64): the one GPU measurement of the 8×8 form (H200, Vulkan, BENCHMARKS.md) ran f32 4096³
/// in 63 ms, where the 64×64 form had taken 9.3 ms, so the 8×8 and 8×4 forms stay opt-in there
/// until a GPU run times them faster.
fn form(ctx: &WgpuContext, desc: &Gemm) -> Result<Form> {
    static CHOICE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    Ok(match crate::runtime::kernel_env(&CHOICE, &crate::runtime::WGPU_GEMM)? {
        "wide" => Form::Wide,
        "tall" => Form::Tall,
        "skinny" => Form::Skinny,
        "narrow" => Form::Narrow,
        _ => auto_form(ctx.info.device_type == wgpu::DeviceType::Cpu, desc),
    })
}

/// `auto`'s choice on a CPU adapter (`cpu`) or a GPU (see [`form`]).
fn auto_form(cpu: bool, desc: &Gemm) -> Form {
    let padded = |tm: usize, tn: usize| desc.m.div_ceil(tm) * tm * desc.n.div_ceil(tn) * tn;
    let fits = |tm: usize, tn: usize| {
        let tiles = desc.batch * desc.m.div_ceil(tm) * desc.n.div_ceil(tn);
        8 * padded(tm, tn) <= 9 * padded(64, 64) && (cpu || tiles >= WIDE_MIN_TILES)
    };
    if cpu && fits(128, 128) {
        Form::Wide
    } else if desc.n <= 32 && fits(128, 32) {
        Form::Skinny
    } else if cpu && fits(128, 64) {
        Form::Tall
    } else {
        Form::Narrow
    }
}

/// The fewest 128-row tiles for which the auto choice takes a 128-row form on a GPU: below it the
/// 64×64 tiles keep more of its cores busy.
const WIDE_MIN_TILES: usize = 64;

/// The workgroups a split-K product aims to spread over (a mid-size GPU's worth).
const SPLIT_TARGET: usize = 256;

/// `out = dc ⊙ act'(z)` over compact `[rows, cols]` (element offsets 0).
pub fn act_grad(ctx: &WgpuContext, d: &ActGrad, dtype: DType, dc: &wgpu::Buffer, z: &wgpu::Buffer, out: &wgpu::Buffer) -> Result<()> {
    let n = d.rows * d.cols;
    check_sizes("act_grad", &[("dc", dc, n, dtype), ("z", z, n, dtype), ("out", out, n, dtype)])?;
    let mut p = Gemm::new(d.rows, d.cols, 1).params();
    p.act = d.act as u32;
    p.act_cols = d.act_cols as u32;
    let pipe = ctx.pipeline(FAMILY, "act_grad", dtype, READ_ONLY, 2)?;
    let ro = ctx.dummy(false);
    let groups = ctx.grid_1d((d.rows * d.cols).div_ceil(2));
    ctx.dispatch(&pipe, FAMILY, READ_ONLY, bytemuck::bytes_of(&p), &[dc, z, ro, ro, ro, ro, out, ctx.dummy(true)], groups)
}

/// `out[j] = Σ_i x[i, j]` over compact `[rows, cols]`, deterministic.
pub fn col_sum(ctx: &WgpuContext, rows: usize, cols: usize, dtype: DType, x: &wgpu::Buffer, out: &wgpu::Buffer) -> Result<()> {
    check_sizes("col_sum", &[("x", x, rows * cols, dtype), ("out", out, cols, dtype)])?;
    let mut p = Gemm::new(rows, cols, 1).params();
    // Chunks of COL_SUM_ROWS rows (p.kc in the shader) into f32 partials, then summed in order.
    p.kc = super::COL_SUM_ROWS as u32;
    let chunks = rows.div_ceil(super::COL_SUM_ROWS).max(1);
    let part = ctx.create_buffer(DType::F32, chunks * cols)?;
    let ro = ctx.dummy(false);
    let pipe = ctx.pipeline(FAMILY, "col_sum", dtype, READ_ONLY, 2)?;
    ctx.dispatch(&pipe, FAMILY, READ_ONLY, bytemuck::bytes_of(&p), &[x, ro, ro, ro, ro, ro, &part, ctx.dummy(true)], ctx.grid_1d(chunks * cols.div_ceil(2)))?;
    let pipe = ctx.pipeline(FAMILY, "col_sum_finish", dtype, READ_ONLY, 2)?;
    ctx.dispatch(&pipe, FAMILY, READ_ONLY, bytemuck::bytes_of(&p), &[&part, ro, ro, ro, ro, ro, out, ctx.dummy(true)], ctx.grid_1d(cols.div_ceil(2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_keeps_the_8x8_and_8x4_forms_to_cpu_adapters() {
        let gemm = |m, n, batch| Gemm { batch, ..Gemm::new(m, n, 256) };
        // Large square: 128×128 on a CPU adapter, 64×64 on a GPU.
        assert_eq!(auto_form(true, &gemm(4096, 4096, 1)), Form::Wide);
        assert_eq!(auto_form(false, &gemm(4096, 4096, 1)), Form::Narrow);
        // 64 columns (a low-rank factor): 128×64 on a CPU adapter only.
        assert_eq!(auto_form(true, &gemm(8192, 64, 1)), Form::Tall);
        assert_eq!(auto_form(false, &gemm(8192, 64, 1)), Form::Narrow);
        // 24 columns (a narrow block stage): 128×32 on both, given enough tiles on a GPU.
        assert_eq!(auto_form(true, &gemm(8192, 24, 4)), Form::Skinny);
        assert_eq!(auto_form(false, &gemm(8192, 24, 4)), Form::Skinny);
        assert_eq!(auto_form(false, &gemm(256, 24, 1)), Form::Narrow);
        // Rows that a 128-row tile would pad by more than an eighth: 64×64 everywhere.
        assert_eq!(auto_form(true, &gemm(129, 4096, 1)), Form::Narrow);
    }
}
