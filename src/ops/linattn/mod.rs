//! Causal linear attention (SPEC §5; Katharopoulos et al.; flash-linear-attention's vocabulary
//! and layout). Layout `q, k: [B, T, H, K]`, `v, o: [B, T, H, V]`, state `S: [B, H, K, V]`,
//! normalizer state `z: [B, H, K]`.
//!
//! The descriptor, the f64 references (quadratic masked form, recurrent form and the analytic
//! backward, in [`cpu`]), the fused recurrent forward with the single-token decode step
//! (`kernels/linattn.cu`, `shaders/linattn.wgsl`) and the fused recurrent backward
//! (`kernels/linattn.cu`, `shaders/linattn_bwd.wgsl`), and the chunked forms: chunks of
//! [`CHUNK`] rows run in parallel from start states that an inter-chunk scan passes along, as
//! masked matrix products per chunk (`shaders/linattn.wgsl` forward, `shaders/linattn_bwd.wgsl`
//! backward, and their `kernels/linattn.cu` twins). With many sequences·heads the chunked forms
//! carry each state through its sequence's chunks instead: a sweep that stores every chunk's
//! start state for the products, or (`linattn_chunk_fused`, `linattn_chunk_fused_grad` on both
//! device backends; see `FFKERN_LINATTN_KERNEL` in the README) one pass per output that stores
//! none.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::{Backend, DType, Error, Result};

const OP: &str = "linear_attn";

/// The feature map φ applied to q and k.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureMap {
    /// `φ(x) = x`.
    Identity = 0,
    /// `elu(x) + 1`
    Elu1 = 1,
    /// `φ(x) = max(x, 0)`.
    Relu = 2,
}

impl std::str::FromStr for FeatureMap {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "identity" => Ok(FeatureMap::Identity),
            "elu1" | "elu+1" => Ok(FeatureMap::Elu1),
            "relu" => Ok(FeatureMap::Relu),
            _ => Err(Error::Invalid(format!("unknown feature map '{s}' (identity, elu1, relu)"))),
        }
    }
}

/// How outputs are normalized.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Normalize {
    /// `o_t = q̃_t·S_t` as is.
    None,
    /// `o_t /= (q̃_t·z_t + eps)`, `z_t = z_{t−1} + k̃_t`.
    Normalizer {
        /// Added to the denominator.
        eps: f32,
    },
    /// `o_t /= (number of positions attended)` (the mesa-optimization 1/t form).
    Count,
}

impl Normalize {
    /// The kernels' `(normalize, eps)` codes, and back.
    pub fn code(self) -> (u32, f32) {
        match self {
            Normalize::None => (0, 0.0),
            Normalize::Normalizer { eps } => (1, eps),
            Normalize::Count => (2, 0.0),
        }
    }
    /// The mode of the kernels' codes (see [`Normalize::code`]).
    pub fn from_code(code: u32, eps: f32) -> Normalize {
        match code {
            1 => Normalize::Normalizer { eps },
            2 => Normalize::Count,
            _ => Normalize::None,
        }
    }
}

impl FeatureMap {
    /// The feature map of a kernel code (its discriminant).
    pub fn from_code(code: u32) -> FeatureMap {
        match code {
            1 => FeatureMap::Elu1,
            2 => FeatureMap::Relu,
            _ => FeatureMap::Identity,
        }
    }
}

/// The descriptor of one linear-attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearAttention {
    /// B, sequences (1 with packed sequences).
    pub batch: usize,
    /// T, positions per sequence (all positions when packed).
    pub seq: usize,
    /// H, heads.
    pub heads: usize,
    /// K, the width of q and k per head.
    pub k: usize,
    /// V, the width of v and o per head.
    pub v: usize,
    /// φ, applied to q and k.
    pub feature_map: FeatureMap,
    /// `None` = K^-½.
    pub scale: Option<f32>,
    /// How the output is normalized.
    pub normalize: Normalize,
}

/// The saturating product of `dims`.
fn count(dims: &[usize]) -> usize {
    dims.iter().fold(1, |a: usize, &d| a.saturating_mul(d))
}

/// Whether the launch is the decode step (one token of fixed-length sequences, the output
/// wanted), which both device backends run with their own kernel.
pub fn is_decode(p: &LinAttnParams) -> bool {
    p.varlen == 0 && p.seq == 1 && p.aux == 0
}

/// The `(x, y, z)` grid of the linear-attention kernels: tiles of `tile` columns (of `cols`) in
/// x, and `units` (sequence or chunk)·heads folded into y·z past 65535.
pub fn grid(cols: usize, tile: usize, units: usize) -> [u32; 3] {
    let y = units.clamp(1, crate::runtime::grid_cap(65535));
    [cols.div_ceil(tile) as u32, y as u32, units.div_ceil(y).max(1) as u32]
}

/// Columns per workgroup of the scan and state kernels (16) and of the chunked kernels that
/// multiply by a chunk's 64×64 masked scores (64: the scores are computed once per 64 columns).
pub const TILE: usize = 16;
/// See [`TILE`].
pub const WIDE_TILE: usize = 64;

/// The workgroups (sequences·heads·[`outer_tiles`]) from which the chunked forms carry the state
/// (forward) and its gradient (backward) through each sequence's chunks in one sweep rather than
/// as parallel per-chunk sums plus a scan: enough to fill a GPU; the sweep skips a write and a
/// read of every chunk's state.
pub const FUSED_STATES_MIN_BLOCKS: usize = 256;

/// Whether the chunked forms carry the states through each sequence's chunks in one sweep (see
/// [`FUSED_STATES_MIN_BLOCKS`]); `p.batch` sequences.
fn fused_sweep(p: &LinAttnParams, heads: usize) -> bool {
    p.batch as usize * heads * outer_tiles(p) >= FUSED_STATES_MIN_BLOCKS
}

/// Workgroups per chunk·head of the chunk-sum kernels (each a 64×64 tile of the K×V sum).
pub fn outer_tiles(p: &LinAttnParams) -> usize {
    (p.k as usize).div_ceil(64) * (p.v as usize).div_ceil(64)
}

/// `FFKERN_LINATTN_KERNEL`. CUDA: `auto` (default: the state sweeps and the chunk products on
/// 16-bit tensor cores where the inputs allow — 3.5× faster than TF32 for bf16 fwd+bwd at
/// flash-linear-attention's shape on the H100 — else the TF32 tensor-core chunk kernels; the
/// chunked forward and backward in one pass per output where `cuda::chunk_fused` and
/// `cuda::chunk_fused_grads` take them: 1.45× faster than two passes for bf16 fwd+bwd B8 T16384
/// H32 D128 on the H200), `twopass` (`auto` with the per-chunk states and a scan instead), `mma`
/// (the TF32 kernels for every dtype, to compare) or `simt` (their f32-FMA twins); `fused` is
/// `auto`. wgpu: `fused` takes `wgpu::chunk_fused` and `wgpu::chunk_fused_grads` where they fit;
/// any other value the two-pass kernels, unless their per-chunk states would not fit one buffer
/// binding.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub(crate) fn kernel_choice() -> Result<&'static str> {
    static CHOICE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    crate::runtime::kernel_env(&CHOICE, &crate::runtime::LINATTN_KERNEL)
}

/// Rows per chunk of the chunked form, on every backend.
pub const CHUNK: usize = 64;

/// The largest K and V the kernels take (the state of one head lives in shared/workgroup memory).
pub const MAX_DIM: usize = 256;

impl LinearAttention {
    /// The scale applied to q (`scale`, or K^-½).
    pub fn scale(&self) -> f32 {
        self.scale.unwrap_or(1.0 / (self.k as f32).sqrt())
    }

    /// Checks the sizes, K and V against [`MAX_DIM`], the scale and eps, and the 32-bit element counts.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 || self.v == 0 || self.heads == 0 || self.batch == 0 {
            return Err(Error::shape(OP, "batch, heads, K and V must be positive"));
        }
        if self.k > MAX_DIM || self.v > MAX_DIM {
            return Err(Error::Unsupported(format!("linear attention: K = {} and V = {} must be at most {MAX_DIM}", self.k, self.v)));
        }
        if !self.scale().is_finite() {
            return Err(Error::Invalid("linear attention: scale must be finite".into()));
        }
        if let Normalize::Normalizer { eps } = self.normalize {
            if !(eps >= 0.0 && eps.is_finite()) {
                return Err(Error::Invalid(format!("linear attention: eps {eps} must be finite and ≥ 0")));
            }
        }
        crate::error::elems("linear attention", &[self.batch, self.seq, self.heads, self.k.max(self.v)])?;
        crate::error::elems("linear attention", &[self.batch, self.heads, self.k, self.v])?;
        Ok(())
    }

    /// Elements of q and k (the lengths saturate at usize::MAX, which [`Self::validate`] and
    /// every length check refuse).
    pub fn qk_len(&self) -> usize {
        count(&[self.batch, self.seq, self.heads, self.k])
    }
    /// Elements of v and o.
    pub fn vo_len(&self) -> usize {
        count(&[self.batch, self.seq, self.heads, self.v])
    }
    /// Elements of the state S `[B, H, K, V]`.
    pub fn state_len(&self) -> usize {
        count(&[self.batch, self.heads, self.k, self.v])
    }
    /// Elements of the normalizer z `[B, H, K]`.
    pub fn z_len(&self) -> usize {
        count(&[self.batch, self.heads, self.k])
    }

    /// The kernel parameter block.
    pub fn params(&self) -> LinAttnParams {
        LinAttnParams {
            batch: self.batch as u32,
            seq: self.seq as u32,
            heads: self.heads as u32,
            k: self.k as u32,
            v: self.v as u32,
            feature_map: self.feature_map as u32,
            normalize: self.normalize.code().0,
            eps: self.normalize.code().1,
            scale: self.scale(),
            count0: 0,
            varlen: 0,
            aux: 0,
        }
    }

    /// The fused recurrent forward: `o` (`[B, T, H, V]`), and the state `S` (f32 `[B, H, K, V]`)
    /// and normalizer `z` (f32 `[B, H, K]`) read as the initial state and left as the final
    /// state (zero them for no initial state). `count0` is the number of positions already
    /// attended before this call (for `Normalize::Count` when continuing a sequence).
    #[allow(clippy::too_many_arguments)]
    pub fn recurrent<Be: Backend>(&self, be: &Be, q: &Be::Buf, k: &Be::Buf, v: &Be::Buf, state: &mut Be::Buf, z: &mut Be::Buf, count0: u32, o: &mut Be::Buf) -> Result<()> {
        self.recurrent_inner(be, q, k, v, state, z, count0, None, o)
    }

    /// [`Self::recurrent`] over variable-length sequences packed along T (`batch` must be 1,
    /// `seq` the packed length): sequence `n` is rows `cu_seqlens[n] .. cu_seqlens[n + 1]`, and
    /// the state and normalizer hold one entry per sequence (`[N, H, K, V]`, `[N, H, K]`).
    #[allow(clippy::too_many_arguments)]
    pub fn recurrent_varlen<Be: Backend>(&self, be: &Be, q: &Be::Buf, k: &Be::Buf, v: &Be::Buf, cu_seqlens: &[u32], state: &mut Be::Buf, z: &mut Be::Buf, o: &mut Be::Buf) -> Result<()> {
        self.check_cu_seqlens(cu_seqlens)?;
        self.recurrent_inner(be, q, k, v, state, z, 0, Some(cu_seqlens), o)
    }

    /// The chunked form, the same result as [`Self::recurrent`] (same arguments) with the
    /// sequence cut into chunks of [`CHUNK`] rows that run in parallel: a pass sums each chunk's
    /// `K̃ᵀV` and `Σ k̃`, an inter-chunk scan turns the sums into each chunk's start state (and
    /// the final state), and a second pass computes every chunk's outputs as masked matrix
    /// products, `o = mask(Q̃K̃ᵀ)·V + Q̃·S_c` (normalized likewise). Memory is linear in T (one
    /// K×V state per chunk); no T×T matrix exists, only 64×64 blocks.
    #[allow(clippy::too_many_arguments)]
    pub fn chunk<Be: Backend>(&self, be: &Be, q: &Be::Buf, k: &Be::Buf, v: &Be::Buf, state: &mut Be::Buf, z: &mut Be::Buf, count0: u32, o: &mut Be::Buf) -> Result<()> {
        self.chunk_inner(be, q, k, v, state, z, count0, None, o)
    }

    /// [`Self::chunk`] over variable-length sequences packed along T (see [`Self::recurrent_varlen`]).
    #[allow(clippy::too_many_arguments)]
    pub fn chunk_varlen<Be: Backend>(&self, be: &Be, q: &Be::Buf, k: &Be::Buf, v: &Be::Buf, cu_seqlens: &[u32], state: &mut Be::Buf, z: &mut Be::Buf, o: &mut Be::Buf) -> Result<()> {
        self.check_cu_seqlens(cu_seqlens)?;
        self.chunk_inner(be, q, k, v, state, z, 0, Some(cu_seqlens), o)
    }

    #[allow(clippy::too_many_arguments)]
    fn chunk_inner<Be: Backend>(&self, be: &Be, q: &Be::Buf, k: &Be::Buf, v: &Be::Buf, state: &mut Be::Buf, z: &mut Be::Buf, count0: u32, cu: Option<&[u32]>, o: &mut Be::Buf) -> Result<()> {
        let (p, starts) = self.forward_setup(be, q, k, v, state, z, count0, cu, o)?;
        let t = ChunkTable::new(&starts[..=p.batch as usize]);
        if t.chunks == 0 {
            return Ok(()); // every sequence is empty: the state stays, there is no output
        }
        // Many sequences·heads: one pass where the backend has it (no per-chunk states at all).
        if fused_sweep(&p, self.heads) && be.linattn_chunk_fused(&p, &t.sweep_table(), q, k, v, state, z, o)? {
            return Ok(());
        }
        let (mut hs, mut zs) = self.chunk_start_states(be, &p, &t, [q, k, v], state, z, o, false)?;
        let pc = LinAttnParams { batch: t.chunks as u32, varlen: 2, aux: 0, ..p };
        be.linattn_recurrent(&pc, q, k, v, &t.bounds, &mut hs, &mut zs, o)
    }

    /// Every chunk's start state `(S_c, z_c)` (`[chunks, H, K, V]`, `[chunks, H, K]`, then room for
    /// each sequence's total), from `state`, `z` (left holding each sequence's final state). With
    /// enough sequences·heads to fill a device ([`FUSED_STATES_MIN_BLOCKS`]) one pass carries each
    /// state through its sequence's chunks; otherwise a state-only pass sums every chunk from zero
    /// in parallel and the inter-chunk scan adds them up. `o` is not written. `S_c` is in
    /// [`Self::snapshot_dtype`]'s dtype (`backward`: for the chunked backward).
    #[allow(clippy::too_many_arguments)]
    fn chunk_start_states<Be: Backend>(&self, be: &Be, p: &LinAttnParams, t: &ChunkTable, qkv: [&Be::Buf; 3], state: &mut Be::Buf, z: &mut Be::Buf, o: &mut Be::Buf, backward: bool) -> Result<(Be::Buf, Be::Buf)> {
        let sequences = p.batch as usize;
        let (kv, k_) = (self.heads * self.k * self.v, self.heads * self.k);
        let mut hs = self.alloc_states(be, p, self.snapshot_dtype(be, p, be.dtype_of(qkv[0]), backward)?, (t.chunks + sequences) * kv, backward)?;
        let mut zs = be.alloc(DType::F32, (t.chunks + sequences) * k_)?;
        if fused_sweep(p, self.heads) {
            be.linattn_chunk_states(p, &t.sweep_table(), qkv[1], qkv[2], state, z, &mut hs, &mut zs)?;
        } else {
            let pc = LinAttnParams { batch: t.chunks as u32, varlen: 2, aux: 1, ..*p };
            be.linattn_recurrent(&pc, qkv[0], qkv[1], qkv[2], &t.bounds, &mut hs, &mut zs, o)?;
            be.linattn_chunk_scan(&LinAttnParams { count0: t.chunks as u32, aux: 0, ..*p }, &t.seq_chunk0, state, z, &mut hs, &mut zs)?;
        }
        Ok((hs, zs))
    }

    /// The per-chunk matrices `S_c` (or `G_c`): the fused sweep writes every chunk's before any is
    /// read, so they start unset; the state-only pass adds each chunk to what its slot holds, zero.
    /// A device that cannot hold them says so (and, for the forward, which form keeps none).
    fn alloc_states<Be: Backend>(&self, be: &Be, p: &LinAttnParams, dtype: DType, len: usize, backward: bool) -> Result<Be::Buf> {
        let states = if fused_sweep(p, self.heads) { be.alloc_uninit(dtype, len) } else { be.alloc(dtype, len) };
        states.map_err(|e| match e {
            Error::Limit(m) => {
                let hint = if backward { "" } else { "; the recurrent form keeps none" };
                Error::Limit(format!("linear attention: the chunked form's per-chunk states ({len} {dtype} values): {m}{hint}"))
            }
            e => e,
        })
    }

    /// The dtype of the per-chunk states `S_c` (and the backward's `G_c`): the backend's choice
    /// when one sweep carries them (see `Backend::linattn_snapshot_dtype`), else f32.
    fn snapshot_dtype<Be: Backend>(&self, be: &Be, p: &LinAttnParams, dtype: DType, backward: bool) -> Result<DType> {
        if fused_sweep(p, self.heads) {
            be.linattn_snapshot_dtype(p, dtype, backward)
        } else {
            Ok(DType::F32)
        }
    }

    /// The backward of [`Self::recurrent`]: dq, dk, dv, dS0 and dz0 from the forward's inputs,
    /// its output `o` (read by the Normalizer mode), the initial state `s0`, `z0` it started
    /// from (f32), `d_o` and the gradients of the final state and normalizer `d_final` (None: 0).
    /// Two scans per sequence and head (forward to rebuild S_t, reverse to carry dS),
    /// deterministic; dq, dk, dv in q's dtype.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<Be: Backend>(&self, be: &Be, q: &Be::Buf, k: &Be::Buf, v: &Be::Buf, o: &Be::Buf, d_o: &Be::Buf, s0: &Be::Buf, z0: &Be::Buf, d_final: [Option<&Be::Buf>; 2], count0: u32) -> Result<LinAttnGrads<Be::Buf>> {
        self.backward_inner(be, [q, k, v, o, d_o], s0, z0, d_final, count0, None, false)
    }

    /// [`Self::backward`] over variable-length sequences packed along T (see
    /// [`Self::recurrent_varlen`]).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_varlen<Be: Backend>(&self, be: &Be, q: &Be::Buf, k: &Be::Buf, v: &Be::Buf, o: &Be::Buf, d_o: &Be::Buf, cu_seqlens: &[u32], s0: &Be::Buf, z0: &Be::Buf, d_final: [Option<&Be::Buf>; 2]) -> Result<LinAttnGrads<Be::Buf>> {
        self.check_cu_seqlens(cu_seqlens)?;
        self.backward_inner(be, [q, k, v, o, d_o], s0, z0, d_final, 0, Some(cu_seqlens), false)
    }

    /// The chunked backward, the same result as [`Self::backward`] (same arguments) with chunks
    /// of [`CHUNK`] rows in parallel, every per-chunk term a product of 64-row blocks: the
    /// forward's start state of every chunk, each chunk's own `Q̃ᵀ·dN` and `Q̃ᵀ·dd` (dn = do/den,
    /// dd = −(do·o)/den), a reverse inter-chunk scan that turns them into the state gradient at
    /// each chunk's end (and dS0, dz0), then dq, dk, dv of every chunk from its start state and
    /// end gradient (`dq̃ = dN·S_cᵀ + B·K̃`, `dk̃ = V·G_cᵀ + Bᵀ·Q̃`, `dv = K̃·G_c + Aᵀ·dN` with the
    /// masked scores `A = Q̃K̃ᵀ` and `B = dN·Vᵀ + dd`, plus the normalizer's terms).
    #[allow(clippy::too_many_arguments)]
    pub fn chunk_backward<Be: Backend>(&self, be: &Be, q: &Be::Buf, k: &Be::Buf, v: &Be::Buf, o: &Be::Buf, d_o: &Be::Buf, s0: &Be::Buf, z0: &Be::Buf, d_final: [Option<&Be::Buf>; 2], count0: u32) -> Result<LinAttnGrads<Be::Buf>> {
        self.backward_inner(be, [q, k, v, o, d_o], s0, z0, d_final, count0, None, true)
    }

    /// [`Self::chunk_backward`] over variable-length sequences packed along T.
    #[allow(clippy::too_many_arguments)]
    pub fn chunk_backward_varlen<Be: Backend>(&self, be: &Be, q: &Be::Buf, k: &Be::Buf, v: &Be::Buf, o: &Be::Buf, d_o: &Be::Buf, cu_seqlens: &[u32], s0: &Be::Buf, z0: &Be::Buf, d_final: [Option<&Be::Buf>; 2]) -> Result<LinAttnGrads<Be::Buf>> {
        self.check_cu_seqlens(cu_seqlens)?;
        self.backward_inner(be, [q, k, v, o, d_o], s0, z0, d_final, 0, Some(cu_seqlens), true)
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_inner<Be: Backend>(&self, be: &Be, x: [&Be::Buf; 5], s0: &Be::Buf, z0: &Be::Buf, d_final: [Option<&Be::Buf>; 2], count0: u32, cu: Option<&[u32]>, chunked: bool) -> Result<LinAttnGrads<Be::Buf>> {
        let (p, starts, dtype) = self.setup(be, &[("q", x[0], self.qk_len()), ("k", x[1], self.qk_len()), ("v", x[2], self.vo_len()), ("o", x[3], self.vo_len()), ("do", x[4], self.vo_len())], count0, cu)?;
        let sequences = p.batch as usize;
        let (kv, k_) = (self.heads * self.k * self.v, self.heads * self.k);
        let mut f32s = vec![("s0", s0, sequences * kv), ("z0", z0, sequences * k_)];
        for (name, t, len) in [("d_state", d_final[0], sequences * kv), ("d_z", d_final[1], sequences * k_)] {
            if let Some(t) = t {
                f32s.push((name, t, len));
            }
        }
        for (name, b, len) in f32s {
            if be.dtype_of(b) != DType::F32 || be.len_of(b) < len {
                return Err(Error::shape(OP, format!("{name} must be f32 with {len} elements")));
            }
        }
        let mut g = LinAttnGrads {
            dq: be.alloc_uninit(dtype, self.qk_len())?,
            dk: be.alloc_uninit(dtype, self.qk_len())?,
            dv: be.alloc_uninit(dtype, self.vo_len())?,
            d_state: be.alloc(DType::F32, sequences * kv)?,
            d_z: be.alloc(DType::F32, sequences * k_)?,
        };
        let table = chunked.then(|| ChunkTable::new(&starts[..=sequences])).filter(|t| t.chunks > 0);
        let Some(t) = table else {
            be.linattn_backward(&p, &starts, x, s0, z0, d_final, [&mut g.dq, &mut g.dk, &mut g.dv, &mut g.d_state, &mut g.d_z])?;
            return Ok(g);
        };
        // dS_T, dz_T (else zeros) into dS0, dz0, which the passes below turn into the gradients.
        for (dst, src) in [(&mut g.d_state, d_final[0]), (&mut g.d_z, d_final[1])] {
            if let Some(src) = src {
                be.copy(src, dst)?;
            }
        }
        // Many sequences·heads: one pass per gradient where the backend has them (no per-chunk
        // state stored at all).
        if fused_sweep(&p, self.heads) && be.linattn_chunk_backward_fused(&p, &t.sweep_table(), x, s0, z0, [&mut g.d_state, &mut g.d_z], [&mut g.dq, &mut g.dk, &mut g.dv])? {
            return Ok(g);
        }
        // The forward's state at every chunk's start (the final state goes to copies).
        let (mut s_end, mut z_end) = (be.alloc(DType::F32, be.len_of(s0))?, be.alloc(DType::F32, be.len_of(z0))?);
        be.copy(s0, &mut s_end)?;
        be.copy(z0, &mut z_end)?;
        let mut o_unused = be.alloc(dtype, 1)?;
        let (hs, zs) = self.chunk_start_states(be, &p, &t, [x[0], x[1], x[2]], &mut s_end, &mut z_end, &mut o_unused, true)?;
        // The gradient at each chunk's end (and dS0, dz0): each chunk's own Σ q̃·dnᵀ and Σ q̃·dd
        // summed from the last chunk back, from dS_T, dz_T (with room after the chunks for each
        // sequence's total, which the wgpu passes leave there).
        let pc = LinAttnParams { batch: t.chunks as u32, varlen: 2, ..p };
        let mut scratch = be.alloc(DType::F32, chunk_scratch_len(&pc, starts[sequences] as usize))?;
        let (mut gs, mut gzs) = (self.alloc_states(be, &p, be.dtype_of(&hs), (t.chunks + sequences) * kv, true)?, be.alloc(DType::F32, (t.chunks + sequences) * k_)?);
        if fused_sweep(&p, self.heads) {
            be.linattn_chunk_dstate(&pc, &t.bounds, x, [&hs, &zs], &mut scratch, None)?;
            be.linattn_chunk_grad_states(&p, &t.sweep_table(), x, [&hs, &zs], &scratch, [&mut g.d_state, &mut g.d_z], [&mut gs, &mut gzs])?;
        } else {
            be.linattn_chunk_dstate(&pc, &t.bounds, x, [&hs, &zs], &mut scratch, Some([&mut gs, &mut gzs]))?;
            be.linattn_chunk_scan(&LinAttnParams { count0: t.chunks as u32, aux: 1, ..p }, &t.seq_chunk0, &mut g.d_state, &mut g.d_z, &mut gs, &mut gzs)?;
        }
        be.linattn_chunk_grads(&pc, &t.bounds, x, [&hs, &zs], [&gs, &gzs], &mut scratch, [&mut g.dq, &mut g.dk, &mut g.dv])?;
        Ok(g)
    }

    fn check_cu_seqlens(&self, cu_seqlens: &[u32]) -> Result<()> {
        if self.batch != 1 {
            return Err(Error::shape(OP, "variable-length sequences are packed with batch = 1"));
        }
        if cu_seqlens.len() < 2 || cu_seqlens[0] != 0 || cu_seqlens.last().copied() != Some(self.seq as u32) || cu_seqlens.windows(2).any(|w| w[1] < w[0]) {
            return Err(Error::Invalid(format!("cu_seqlens must start at 0, never decrease and end at T = {}", self.seq)));
        }
        Ok(())
    }

    /// Validates the descriptor and the dtype tensors; the parameter block and sequence starts.
    fn setup<Be: Backend>(&self, be: &Be, tensors: &[(&str, &Be::Buf, usize)], count0: u32, cu: Option<&[u32]>) -> Result<(LinAttnParams, Vec<u32>, DType)> {
        self.validate()?;
        let dtype = be.dtype_of(tensors[0].1);
        for &(name, b, len) in tensors {
            if be.dtype_of(b) != dtype {
                return Err(Error::dtype(OP, format!("{name} is {}, q is {dtype}", be.dtype_of(b))));
            }
            if be.len_of(b) < len {
                return Err(Error::shape(OP, format!("{name} holds {} elements, needs {len}", be.len_of(b))));
            }
        }
        let mut p = self.params();
        p.count0 = count0;
        let starts: Vec<u32> = match cu {
            Some(c) => {
                p.varlen = 1;
                p.batch = (c.len() - 1) as u32;
                c.to_vec()
            }
            None => (0..=self.batch as u32).map(|b| b * self.seq as u32).collect(),
        };
        Ok((p, starts, dtype))
    }

    #[allow(clippy::too_many_arguments)]
    fn recurrent_inner<Be: Backend>(&self, be: &Be, q: &Be::Buf, k: &Be::Buf, v: &Be::Buf, state: &mut Be::Buf, z: &mut Be::Buf, count0: u32, cu: Option<&[u32]>, o: &mut Be::Buf) -> Result<()> {
        let (p, starts) = self.forward_setup(be, q, k, v, state, z, count0, cu, o)?;
        be.linattn_recurrent(&p, q, k, v, &starts, state, z, o)
    }

    /// The forward's checks (inputs, output, one state and normalizer per sequence).
    #[allow(clippy::too_many_arguments)]
    fn forward_setup<Be: Backend>(&self, be: &Be, q: &Be::Buf, k: &Be::Buf, v: &Be::Buf, state: &Be::Buf, z: &Be::Buf, count0: u32, cu: Option<&[u32]>, o: &Be::Buf) -> Result<(LinAttnParams, Vec<u32>)> {
        let (p, starts, _) = self.setup(be, &[("q", q, self.qk_len()), ("k", k, self.qk_len()), ("v", v, self.vo_len()), ("o", o, self.vo_len())], count0, cu)?;
        let sequences = p.batch as usize;
        let per = self.heads * self.k;
        for (name, b, len) in [("state", state, sequences * per * self.v), ("z", z, sequences * per)] {
            if be.dtype_of(b) != DType::F32 || be.len_of(b) < len {
                return Err(Error::shape(OP, format!("{name} must be f32 with {len} elements")));
            }
        }
        Ok((p, starts))
    }
}

/// The gradients of [`LinearAttention::backward`]: dq, dk, dv in the inputs' dtype and the
/// initial state's and normalizer's gradients (f32 `[B, H, K, V]`, `[B, H, K]`, one per sequence).
pub struct LinAttnGrads<B> {
    /// `[B, T, H, K]`.
    pub dq: B,
    /// `[B, T, H, K]`.
    pub dk: B,
    /// `[B, T, H, V]`.
    pub dv: B,
    /// `[B, H, K, V]`, f32.
    pub d_state: B,
    /// `[B, H, K]`, f32.
    pub d_z: B,
}

/// The f32 scratch of the chunked backward's two per-chunk passes for the chunk parameters `p`
/// (`p.batch` chunks) over `rows` packed rows: `[bounds and positions (2C + 1) | den, dd per row
/// and head (2·R·H) | z_c, g_c (2·C·H·K)]` (the layout `shaders/linattn_bwd.wgsl` reads).
pub fn chunk_scratch_len(p: &LinAttnParams, rows: usize) -> usize {
    let (c, h) = (p.batch as usize, p.heads as usize);
    2 * c + 1 + 2 * rows * h + 2 * c * h * p.k as usize
}

/// The chunks of the chunked forms: `bounds` holds their row boundaries (chunks + 1) then each
/// chunk's position in its sequence; sequence n's chunks are `seq_chunk0[n] .. seq_chunk0[n + 1]`.
struct ChunkTable {
    bounds: Vec<u32>,
    seq_chunk0: Vec<u32>,
    chunks: usize,
}

impl ChunkTable {
    /// The table of the one-sweep passes: `[C | bounds and positions | seq_chunk0]`.
    fn sweep_table(&self) -> Vec<u32> {
        std::iter::once(self.chunks as u32).chain(self.bounds.iter().copied()).chain(self.seq_chunk0.iter().copied()).collect()
    }

    fn new(starts: &[u32]) -> ChunkTable {
        let (mut bounds, mut positions, mut seq_chunk0) = (Vec::new(), Vec::new(), vec![0u32]);
        for w in starts.windows(2) {
            for r0 in (w[0]..w[1]).step_by(CHUNK) {
                bounds.push(r0);
                positions.push(r0 - w[0]);
            }
            seq_chunk0.push(bounds.len() as u32);
        }
        let chunks = positions.len();
        bounds.push(starts.last().copied().unwrap_or(0));
        bounds.extend(positions);
        ChunkTable { bounds, seq_chunk0, chunks }
    }
}

/// The linear-attention kernels' parameter block (`kernels/linattn.cu`, `shaders/linattn.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LinAttnParams {
    /// B (sequences when packed).
    pub batch: u32,
    /// T.
    pub seq: u32,
    /// H.
    pub heads: u32,
    /// K.
    pub k: u32,
    /// V.
    pub v: u32,
    /// The [`FeatureMap`] discriminant.
    pub feature_map: u32,
    /// The [`Normalize::code`].
    pub normalize: u32,
    /// The normalizer's eps.
    pub eps: f32,
    /// The scale applied to q.
    pub scale: f32,
    /// Positions attended before this call (Count mode); the inter-chunk scan's chunk count.
    pub count0: u32,
    /// 0: fixed-length sequences (`b·T ..`); 1: sequences are packed (B = 1) with boundaries in
    /// `cu_seqlens`, `batch` being the number of sequences; 2: the sequences are chunks, and
    /// `starts` carries each one's position in its sequence after the `batch + 1` boundaries.
    pub varlen: u32,
    /// The recurrent form: 1 updates the state only (no output). The backward's reduce pass:
    /// 0 sums dq, 1 dk. The inter-chunk scan: 1 runs from the last chunk back. The chunked
    /// backward's dq/dk kernel: 0 dq, 1 dk.
    pub aux: u32,
}

impl LinAttnParams {
    /// The descriptor these parameters were made from ([`LinearAttention::params`]).
    pub fn descriptor(&self) -> LinearAttention {
        LinearAttention {
            batch: self.batch as usize,
            seq: self.seq as usize,
            heads: self.heads as usize,
            k: self.k as usize,
            v: self.v as usize,
            feature_map: FeatureMap::from_code(self.feature_map),
            scale: Some(self.scale),
            normalize: Normalize::from_code(self.normalize, self.eps),
        }
    }
}

// SAFETY: LinAttnParams is repr(C) plain old data (u32 and f32 fields), laid out like the CUDA struct.
#[cfg(feature = "cuda")]
unsafe impl cudarc::driver::DeviceRepr for LinAttnParams {}
