//! wgpu launchers of the linear-attention family (`shaders/linattn.wgsl`). Crate-internal, like
//! the CUDA ones: steps of the forms `ops::linattn` composes, on lengths and tables it validated.

use super::LinAttnParams;
use crate::runtime::wgpu::WgpuContext;
use crate::{DType, Result};

const FAMILY: &str = "linattn";
/// The backward kernels (`shaders/linattn_bwd.wgsl`, six read-only bindings).
const BWD: &str = "linattn_bwd";
/// Binding order: q, k, v, a copy of the initial z, the sequence starts (read-only), then
/// state, z, o.
const READ_ONLY: usize = 5;

/// The fused recurrent forward / decode step: reads q, k, v; updates `state` and `z` in place;
/// writes `o`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn recurrent(
    ctx: &WgpuContext,
    p: &LinAttnParams,
    dtype: DType,
    q: &wgpu::Buffer,
    k: &wgpu::Buffer,
    v: &wgpu::Buffer,
    starts: &[u32],
    state: &wgpu::Buffer,
    z: &wgpu::Buffer,
    o: &wgpu::Buffer,
) -> Result<()> {
    // Chunks (varlen 2, at most 64 rows each) take the matrix-product kernels.
    let entry = match (p.varlen, p.aux) {
        (2, 1) => "linattn_chunk_state",
        (2, _) => "linattn_chunk_output",
        _ if super::is_decode(p) => "linattn_decode",
        _ => "linattn_recurrent",
    };
    if entry == "linattn_recurrent" {
        scan_fits(ctx, p, starts, 1, "forward")?;
    }
    let pipe = ctx.pipeline(FAMILY, entry, dtype, READ_ONLY, 3)?;
    // With the Normalizer (the scan only) every value tile reads the initial normalizer while
    // tile 0 writes the final one: the others read a copy, queued before the dispatch so that it
    // sees the state as the caller left it. Otherwise a placeholder binds there.
    let copy = if p.normalize == 1 && entry == "linattn_recurrent" { Some(z_copy(ctx, p, z)?) } else { None };
    let z_init = copy.as_deref().unwrap_or(ctx.dummy(false));
    let starts = ctx.upload_u32(starts);
    let units = (p.batch * p.heads) as usize;
    let groups = match entry {
        "linattn_chunk_state" => super::grid(super::outer_tiles(p), 1, units),
        "linattn_chunk_output" => super::grid(p.v as usize, super::WIDE_TILE, units),
        "linattn_decode" => super::grid(1, 1, units),
        _ => super::grid(p.v as usize, super::TILE, units),
    };
    ctx.dispatch(&pipe, FAMILY, READ_ONLY, bytemuck::bytes_of(p), &[q, k, v, z_init, &starts, state, z, o], groups)
}

/// A recurrent scan's loop iterations in one invocation, `per_step` a step of its longest
/// sequence (after the constant-trip loops unroll: the step loop itself, once a scan), against
/// llvmpipe's loop limit (`WgpuContext::within_loop_budget`).
fn scan_fits(ctx: &WgpuContext, p: &LinAttnParams, starts: &[u32], per_step: u64, what: &str) -> Result<()> {
    let longest = starts.windows(2).map(|w| w[1].saturating_sub(w[0])).max().unwrap_or(0) as u64;
    ctx.within_loop_budget(per_step * longest + 2 * p.k.div_ceil(16) as u64, &format!("linear attention's recurrent {what} over {longest} steps"), "the chunked form loops over chunks instead")
}

/// A copy of the normalizer state `z` (N·H·K f32), queued before the dispatches that follow, so
/// that they read it as the caller left it while one workgroup per sequence·head writes `z`.
fn z_copy(ctx: &WgpuContext, p: &LinAttnParams, z: &wgpu::Buffer) -> Result<crate::runtime::wgpu::MeteredBuffer> {
    let n = (p.batch * p.heads * p.k) as usize;
    let z_init = ctx.create_buffer(DType::F32, n)?;
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ffkern z copy") });
    enc.copy_buffer_to_buffer(z, 0, &z_init, 0, (n * 4) as u64);
    ctx.queue.submit([enc.finish()]);
    Ok(z_init)
}

/// The chunked form's inter-chunk pass (`linattn_chunk_scan`): `[S_0 | z_0]` go in as a copy
/// (the z_init binding); the chunk sums in `hs`, `zs` become the chunk start states, and the final
/// states, which the kernel leaves after the chunks, are copied back into `state`, `z`.
pub(crate) fn chunk_scan(ctx: &WgpuContext, p: &LinAttnParams, seq_chunk0: &[u32], state: &wgpu::Buffer, z: &wgpu::Buffer, hs: &wgpu::Buffer, zs: &wgpu::Buffer) -> Result<()> {
    let threads = (p.batch * p.heads * (p.k * p.v + p.k)) as usize;
    let table = ctx.upload_u32(seq_chunk0);
    through_chunks(ctx, p, "linattn_chunk_scan", p.count0, &table, [None; 3], [state, z, hs, zs], ctx.grid_1d(threads))
}

/// The chunk start states in one pass (`linattn_chunk_states`, see `Backend::linattn_chunk_states`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_states(ctx: &WgpuContext, p: &LinAttnParams, dtype: DType, table: &[u32], k: &wgpu::Buffer, v: &wgpu::Buffer, state: &wgpu::Buffer, z: &wgpu::Buffer, hs: &wgpu::Buffer, zs: &wgpu::Buffer) -> Result<()> {
    let groups = super::grid(super::outer_tiles(p), 1, (p.batch * p.heads) as usize);
    let t = ctx.upload_u32(table);
    through_chunks(ctx, p, "linattn_chunk_states", table[0], &t, [None, Some((k, dtype)), Some((v, dtype))], [state, z, hs, zs], groups)
}

/// The chunked backward's reverse pass in one sweep (`linattn_chunk_grad_states`, see
/// `Backend::linattn_chunk_grad_states`): the table continues with den, dd of every row, copied
/// from `scratch` (Normalizer), and do binds where the forward reads v.
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_grad_states(ctx: &WgpuContext, p: &LinAttnParams, dtype: DType, table: &[u32], q: &wgpu::Buffer, d_o: &wgpu::Buffer, scratch: &wgpu::Buffer, d: [&wgpu::Buffer; 2], g: [&wgpu::Buffer; 2]) -> Result<()> {
    let (c, rows) = (table[0] as u64, table[1 + table[0] as usize] as u64);
    let dd_len = if p.normalize == 1 { 2 * rows * p.heads as u64 } else { 0 };
    let t = ctx.create_buffer(DType::F32, table.len() + dd_len as usize)?;
    ctx.queue.write_buffer(&t, 0, bytemuck::cast_slice(table));
    if dd_len > 0 {
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ffkern linattn den table") });
        enc.copy_buffer_to_buffer(scratch, (2 * c + 1) * 4, &t, table.len() as u64 * 4, dd_len * 4);
        ctx.queue.submit([enc.finish()]);
    }
    let groups = super::grid(super::outer_tiles(p), 1, (p.batch * p.heads) as usize);
    through_chunks(ctx, p, "linattn_chunk_grad_states", table[0], &t, [Some((q, dtype)), None, Some((d_o, dtype))], [d[0], d[1], g[0], g[1]], groups)
}


/// A pass that carries each sequence's state (or gradient) through its `chunks` chunks (`entry`):
/// `[state | z]` go in as a copy (the z_init binding), `table` in the starts binding, the chunk
/// slots of `hs`, `zs` are written, and the final states, which the kernel leaves after the
/// chunks, are copied back into `state`, `z`. `qkv`: what the entry reads in the q, k, v bindings
/// (and its dtype).
#[allow(clippy::too_many_arguments)]
fn through_chunks(ctx: &WgpuContext, p: &LinAttnParams, entry: &'static str, chunks: u32, table: &wgpu::Buffer, qkv: [Option<(&wgpu::Buffer, DType)>; 3], [state, z, hs, zs]: [&wgpu::Buffer; 4], groups: [u32; 3]) -> Result<()> {
    let (nh, k, v, chunks) = ((p.batch * p.heads) as u64, p.k as u64, p.v as u64, chunks as u64);
    let (s_bytes, z_bytes) = (nh * k * v * 4, nh * k * 4);
    let init = ctx.create_buffer(DType::F32, ((s_bytes + z_bytes) / 4) as usize)?;
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ffkern chunk pass inputs") });
    enc.copy_buffer_to_buffer(state, 0, &init, 0, s_bytes);
    enc.copy_buffer_to_buffer(z, 0, &init, s_bytes, z_bytes);
    ctx.queue.submit([enc.finish()]);
    let dtype = qkv.iter().flatten().map(|x| x.1).next().unwrap_or(DType::F32);
    let pipe = ctx.pipeline(FAMILY, entry, dtype, READ_ONLY, 3)?;
    // Inputs the entry does not read, and o, take placeholders.
    let (none, none_rw) = (ctx.dummy(false), ctx.dummy(true));
    let [q, kb, vb] = qkv.map(|x| x.map_or(none, |x| x.0));
    ctx.dispatch(&pipe, FAMILY, READ_ONLY, bytemuck::bytes_of(p), &[q, kb, vb, &init, table, hs, zs, none_rw], groups)?;
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ffkern chunk pass outputs") });
    enc.copy_buffer_to_buffer(hs, chunks * p.heads as u64 * k * v * 4, state, 0, s_bytes);
    enc.copy_buffer_to_buffer(zs, chunks * p.heads as u64 * k * 4, z, 0, z_bytes);
    ctx.queue.submit([enc.finish()]);
    Ok(())
}

/// Workgroup memory of the one-pass chunked kernels (bytes), the largest of their entries: the
/// slabs (slab_x, slab_y, slab_s) and z (sz), the masked scores cw, the forward's running z (zc)
/// and chunk range (the backward's den, dd and row sums, and its first pass's z, take less).
const FUSED_SHARED_BYTES: u32 = 4 * (3 * 1024 + 16 + 4096 + 256 + 2);

/// Whether the one-pass chunked kernels run, for the chunk table `table` ([C | …]): where the
/// adapter's workgroups hold [`FUSED_SHARED_BYTES`], with `FFKERN_LINATTN_KERNEL=fused`, and
/// otherwise where the two-pass form's per-chunk states (`(C + N)·H·K·V` f32) would not fit one
/// buffer binding (at flash-linear-attention's B8 T16384 H32 D128, 4.3 GB).
fn fused(ctx: &WgpuContext, p: &LinAttnParams, table: &[u32]) -> Result<bool> {
    let limits = ctx.device.limits();
    let chunks = table.first().copied().unwrap_or(0) as u64;
    let states = (chunks + p.batch as u64) * (p.heads * p.k * p.v) as u64 * 4;
    let wanted = super::kernel_choice()? == "fused" || states > limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
    Ok(wanted && limits.max_compute_workgroup_storage_size >= FUSED_SHARED_BYTES)
}

/// The chunked forward in one pass (`linattn_chunk_fused`, see `Backend::linattn_chunk_fused`)
/// where `fused` takes it; `Ok(false)`, touching nothing, otherwise. Every value tile reads the
/// initial normalizer state while tile 0 writes the final one, so it binds a copy of `z`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_fused(ctx: &WgpuContext, p: &LinAttnParams, dtype: DType, table: &[u32], q: &wgpu::Buffer, k: &wgpu::Buffer, v: &wgpu::Buffer, state: &wgpu::Buffer, z: &wgpu::Buffer, o: &wgpu::Buffer) -> Result<bool> {
    if !fused(ctx, p, table)? {
        return Ok(false);
    }
    let z_init = z_copy(ctx, p, z)?;
    let pipe = ctx.pipeline(FAMILY, "linattn_chunk_fused", dtype, READ_ONLY, 3)?;
    let t = ctx.upload_u32(table);
    let groups = super::grid(p.v as usize, super::WIDE_TILE, (p.batch * p.heads) as usize);
    ctx.dispatch(&pipe, FAMILY, READ_ONLY, bytemuck::bytes_of(p), &[q, k, v, &z_init, &t, state, z, o], groups)?;
    Ok(true)
}

/// The chunked backward in one pass per gradient (`linattn_chunk_fused_grad`, see
/// `Backend::linattn_chunk_backward_fused`) where `fused` takes it; `Ok(false)`, touching
/// nothing, otherwise. dq runs through a copy of `s0`, dk through a copy of dS_T (`d[0]`) with
/// room for dz0 after it, and dv through `d[0]` itself, which it leaves holding dS0. The table
/// binds with dz_T (`d[1]`), `z0` and, for the normalizer, every row's den and dd after it
/// (`linattn_chunk_fused_den`, a first pass).
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_fused_grads(ctx: &WgpuContext, p: &LinAttnParams, dtype: DType, table: &[u32], x: [&wgpu::Buffer; 5], s0: &wgpu::Buffer, z0: &wgpu::Buffer, d: [&wgpu::Buffer; 2], out: [&wgpu::Buffer; 3]) -> Result<bool> {
    if !fused(ctx, p, table)? {
        return Ok(false);
    }
    let (s_len, z_len) = ((p.batch * p.heads * p.k * p.v) as usize, (p.batch * p.heads * p.k) as usize);
    let rows = table[1 + table[0] as usize] as usize;
    let dd_len = if p.normalize == 1 { 2 * rows * p.heads as usize } else { 0 };
    let fin = ctx.create_buffer(DType::F32, table.len() + 2 * z_len + dd_len)?;
    ctx.queue.write_buffer(&fin, 0, bytemuck::cast_slice(table));
    let (s_run, g_run) = (ctx.create_buffer(DType::F32, s_len)?, ctx.create_buffer(DType::F32, s_len + z_len)?);
    let (t_bytes, s_bytes, z_bytes) = ((table.len() * 4) as u64, (s_len * 4) as u64, (z_len * 4) as u64);
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ffkern linattn one-pass inputs") });
    enc.copy_buffer_to_buffer(d[1], 0, &fin, t_bytes, z_bytes);
    enc.copy_buffer_to_buffer(z0, 0, &fin, t_bytes + z_bytes, z_bytes);
    enc.copy_buffer_to_buffer(s0, 0, &s_run, 0, s_bytes);
    enc.copy_buffer_to_buffer(d[0], 0, &g_run, 0, s_bytes);
    ctx.queue.submit([enc.finish()]);
    let [q, k, v, o, d_o] = x;
    let units = (p.batch * p.heads) as usize;
    if dd_len > 0 {
        let dd = ctx.create_buffer(DType::F32, dd_len)?;
        let pipe = ctx.pipeline(BWD, "linattn_chunk_fused_den", dtype, 6, 2)?;
        ctx.dispatch(&pipe, BWD, 6, bytemuck::bytes_of(p), &[q, k, v, o, d_o, &fin, &dd, ctx.dummy(true)], super::grid(1, super::TILE, units))?;
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ffkern linattn den, dd") });
        enc.copy_buffer_to_buffer(&dd, 0, &fin, t_bytes + 2 * z_bytes, (dd_len * 4) as u64);
        ctx.queue.submit([enc.finish()]);
    }
    let pipe = ctx.pipeline(BWD, "linattn_chunk_fused_grad", dtype, 6, 2)?;
    let [dq, dk, dv] = out;
    for (aux, running, target, cols) in [(0u32, &*s_run, dq, p.k), (1, &*g_run, dk, p.k), (2, d[0], dv, p.v)] {
        let pa = LinAttnParams { aux, ..*p };
        ctx.dispatch(&pipe, BWD, 6, bytemuck::bytes_of(&pa), &[q, k, v, o, d_o, &fin, running, target], super::grid(cols as usize, super::WIDE_TILE, units))?;
    }
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ffkern linattn dz0") });
    enc.copy_buffer_to_buffer(&g_run, s_bytes, d[1], 0, z_bytes);
    ctx.queue.submit([enc.finish()]);
    Ok(true)
}

/// Workgroup memory of `linattn_bwd` (bytes): q̃, k̃, z, the [K][16] products and small arrays.
const BWD_SHARED_BYTES: u32 = 4 * (3 * 256 + 16 + 16 + 272 + 4096 + 2 + 1);

/// The fused recurrent backward (`shaders/linattn_bwd.wgsl`): `x = [q, k, v, o, do]`; writes dq,
/// dk, dv, dS0 and dz0. The f32 inputs travel in one buffer `[S0 | z0 | dS_T | dz_T | starts]`
/// and the f32 scratch in another (the shader stays within 8 storage bindings). The scratch
/// holds each 16-column value tile's part of dq and dk; where those would not fit one binding
/// (lavapipe's 128 MiB at H4, K = V = 128 from about 4,000 rows), the tiles run one dispatch each
/// in order and add to one running part instead (the same sums in the same order).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    ctx: &WgpuContext,
    p: &LinAttnParams,
    dtype: DType,
    starts: &[u32],
    x: [&wgpu::Buffer; 5],
    s0: &wgpu::Buffer,
    z0: &wgpu::Buffer,
    d_final: [Option<&wgpu::Buffer>; 2],
    out: [&wgpu::Buffer; 5],
) -> Result<()> {
    let limit = ctx.device.limits().max_compute_workgroup_storage_size;
    if limit < BWD_SHARED_BYTES {
        return Err(crate::Error::Unsupported(format!("linear attention backward: needs {BWD_SHARED_BYTES} bytes of workgroup memory, the adapter has {limit}")));
    }
    scan_fits(ctx, p, starts, 2, "backward")?;
    let (n, h, k, v) = (p.batch as usize, p.heads as usize, p.k as usize, p.v as usize);
    let rows = starts[n] as usize;
    let (state, zl, nv) = (n * h * k * v, n * h * k, v.div_ceil(16));
    let fin = ctx.create_buffer(DType::F32, 2 * state + 2 * zl + starts.len())?;
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ffkern linattn backward inputs") });
    enc.copy_buffer_to_buffer(s0, 0, &fin, 0, (state * 4) as u64);
    enc.copy_buffer_to_buffer(z0, 0, &fin, (state * 4) as u64, (zl * 4) as u64);
    let [d_state, d_z] = d_final;
    if let Some(ds) = d_state {
        enc.copy_buffer_to_buffer(ds, 0, &fin, ((state + zl) * 4) as u64, (state * 4) as u64);
    }
    if let Some(dz) = d_z {
        enc.copy_buffer_to_buffer(dz, 0, &fin, ((2 * state + zl) * 4) as u64, (zl * 4) as u64);
    }
    ctx.queue.write_buffer(&fin, ((2 * state + 2 * zl) * 4) as u64, bytemuck::cast_slice(starts));
    ctx.queue.submit([enc.finish()]);
    let rhk = rows * h * k;
    let part_len = |tiles: usize| 2 * tiles * rhk + state + zl + tiles * 2 * rows * h;
    let limits = ctx.device.limits();
    let serial = part_len(nv) as u64 * 4 > limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
    let slots = if serial { 1 } else { nv };
    let part = ctx.create_buffer(DType::F32, part_len(slots))?;
    let [q, kb, vb, o, d_o] = x;
    let [dq, dk, dv, ds0, dz0] = out;
    let main = ctx.pipeline(BWD, "linattn_bwd", dtype, 6, 2)?;
    let units = (p.batch * p.heads) as usize;
    if serial {
        for tile in 0..nv as u32 {
            let pt = LinAttnParams { aux: tile + 1, ..*p };
            ctx.dispatch(&main, BWD, 6, bytemuck::bytes_of(&pt), &[q, kb, vb, o, d_o, &fin, &part, dv], super::grid(1, super::TILE, units))?;
        }
    } else {
        let pa = LinAttnParams { aux: 0, ..*p };
        ctx.dispatch(&main, BWD, 6, bytemuck::bytes_of(&pa), &[q, kb, vb, o, d_o, &fin, &part, dv], super::grid(v, super::TILE, units))?;
    }
    let reduce = ctx.pipeline(BWD, "linattn_bwd_reduce", dtype, 6, 2)?;
    let words = rhk.div_ceil(if dtype == DType::F32 { 1 } else { 2 });
    for (which, target) in [(0u32, dq), (1, dk)] {
        let pr = LinAttnParams { aux: which, count0: slots as u32, ..*p };
        ctx.dispatch(&reduce, BWD, 6, bytemuck::bytes_of(&pr), &[q, kb, vb, o, d_o, &fin, &part, target], ctx.grid_1d(words))?;
    }
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ffkern linattn dS0") });
    enc.copy_buffer_to_buffer(&part, (2 * slots * rhk * 4) as u64, ds0, 0, (state * 4) as u64);
    enc.copy_buffer_to_buffer(&part, ((2 * slots * rhk + state) * 4) as u64, dz0, 0, (zl * 4) as u64);
    ctx.queue.submit([enc.finish()]);
    Ok(())
}


/// Fills the chunked backward's table in `scratch` (`[bounds | positions | den, dd | z_c | g_c]`):
/// the bounds, and the normalizer vectors `z` given (z_c, then g_c), C·H·K each.
fn chunk_table(ctx: &WgpuContext, p: &LinAttnParams, bounds: &[u32], scratch: &wgpu::Buffer, z: &[&wgpu::Buffer]) {
    let (c, h, k) = (p.batch as u64, p.heads as u64, p.k as u64);
    let rows = bounds[c as usize] as u64;
    let (z_off, z_bytes) = ((2 * c + 1 + 2 * rows * h) * 4, c * h * k * 4);
    ctx.queue.write_buffer(scratch, 0, bytemuck::cast_slice(bounds));
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ffkern linattn chunk table") });
    for (i, src) in z.iter().enumerate() {
        enc.copy_buffer_to_buffer(src, 0, scratch, z_off + i as u64 * z_bytes, z_bytes);
    }
    ctx.queue.submit([enc.finish()]);
}

/// The chunked backward's first pass (see `Backend::linattn_chunk_dstate`): den and dd of every
/// row and each chunk's own Σ q̃·dd (Normalizer only, `linattn_chunk_den`), then, with `own`,
/// each chunk's own Σ q̃·dnᵀ (`linattn_chunk_dstate`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_dstate(ctx: &WgpuContext, p: &LinAttnParams, dtype: DType, bounds: &[u32], x: [&wgpu::Buffer; 5], z_start: &wgpu::Buffer, scratch: &wgpu::Buffer, own: Option<[&wgpu::Buffer; 2]>) -> Result<()> {
    chunk_table(ctx, p, bounds, scratch, &[z_start]);
    let [q, k, v, o, d_o] = x;
    let units = (p.batch * p.heads) as usize;
    let (none, none_rw) = (ctx.dummy(false), ctx.dummy(true));
    if p.normalize == 1 {
        let den = ctx.pipeline(BWD, "linattn_chunk_den", dtype, 6, 2)?;
        ctx.dispatch(&den, BWD, 6, bytemuck::bytes_of(p), &[q, k, v, o, d_o, none, scratch, none_rw], super::grid(1, super::TILE, units))?;
        if let Some(own) = own {
            let (c, h, kk) = (p.batch as u64, p.heads as u64, p.k as u64);
            let g_off = (2 * c + 1 + 2 * bounds[c as usize] as u64 * h + c * h * kk) * 4;
            let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("ffkern linattn chunk dz") });
            enc.copy_buffer_to_buffer(scratch, g_off, own[1], 0, c * h * kk * 4);
            ctx.queue.submit([enc.finish()]);
        }
    }
    let Some(own) = own else { return Ok(()) };
    let pipe = ctx.pipeline(BWD, "linattn_chunk_dstate", dtype, 6, 2)?;
    ctx.dispatch(&pipe, BWD, 6, bytemuck::bytes_of(p), &[q, k, v, o, d_o, scratch, own[0], none_rw], super::grid(super::outer_tiles(p), 1, units))
}

/// The chunked backward's second pass (see `Backend::linattn_chunk_grads`): dv
/// (`linattn_chunk_dv`), then dq and dk (`linattn_chunk_dqk`, aux 0 and 1).
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_grads(
    ctx: &WgpuContext,
    p: &LinAttnParams,
    dtype: DType,
    bounds: &[u32],
    x: [&wgpu::Buffer; 5],
    start: [&wgpu::Buffer; 2],
    end: [&wgpu::Buffer; 2],
    scratch: &wgpu::Buffer,
    out: [&wgpu::Buffer; 3],
) -> Result<()> {
    chunk_table(ctx, p, bounds, scratch, &[start[1], end[1]]);
    let [q, k, v, o, d_o] = x;
    let [dq, dk, dv] = out;
    let units = (p.batch * p.heads) as usize;
    let pipe = ctx.pipeline(BWD, "linattn_chunk_dv", dtype, 6, 2)?;
    ctx.dispatch(&pipe, BWD, 6, bytemuck::bytes_of(p), &[q, k, v, o, d_o, scratch, end[0], dv], super::grid(p.v as usize, super::WIDE_TILE, units))?;
    let pipe = ctx.pipeline(BWD, "linattn_chunk_dqk", dtype, 6, 2)?;
    for (aux, matrix, target) in [(0u32, start[0], dq), (1, end[0], dk)] {
        let pa = LinAttnParams { aux, ..*p };
        ctx.dispatch(&pipe, BWD, 6, bytemuck::bytes_of(&pa), &[q, k, v, o, d_o, scratch, matrix, target], super::grid(p.k as usize, super::WIDE_TILE, units))?;
    }
    Ok(())
}
