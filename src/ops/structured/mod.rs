//! Structured linear layers (SPEC §4; Wei et al., StructuredFFN): LowRank, BlockDense and
//! BlockShuffle, each `in → out` with no bias inside, as fused GEMM launches: block-diagonal
//! products are batched launches (blocks are the batch). BlockShuffle's stride-k gather is fused
//! either into its second product's loads (A's inner stride) or, where the backend's GEMM prefers
//! contiguous rows, into its first product's stores (the middle activation's blocks z_l side by
//! side, see `gather_launches`, which the second product then reads with contiguous rows); the
//! interleaved output is the second product's store stride. No permutation pass. Forward, backward and
//! [`Structured::to_dense`] (pre-merge) on every backend; the reference is [`cpu`]. The
//! structured FFN block and self-guided training are built from these in [`StructuredFfn`] and
//! [`SelfGuided`].

pub mod cpu;

use crate::ops::gemm::{gemm_backward_da_in, gemm_backward_plus, Activation, BLayout, Gemm, GemmGrads, GemmOffsets};
use crate::{Backend, DType, Error, HostTensor, Result};

const OP: &str = "structured";

/// A structured layer's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Structured {
    /// `V [rank, in]`, `U [out, rank]`; `y = U·(V·x)`.
    LowRank {
        /// The input width.
        inp: usize,
        /// The output width.
        out: usize,
        /// r, the inner width.
        rank: usize,
    },
    /// `D [blocks, rank/blocks, in/blocks]`, `L [out, rank]`; `h_b = D[b]·x_b`, `y = L·h`.
    BlockDense {
        /// The input width (a multiple of `blocks`).
        inp: usize,
        /// The output width.
        out: usize,
        /// r, the concatenated width of the blocks' outputs (a multiple of `blocks`).
        rank: usize,
        /// The diagonal blocks.
        blocks: usize,
    },
    /// Monarch-style: `D1 [k, q, in/k]`, `D2 [k, out/k, q]` (SPEC §4's gather and interleaved store).
    BlockShuffle {
        /// The input width (a multiple of `blocks`).
        inp: usize,
        /// The output width (a multiple of `blocks`).
        out: usize,
        /// k, the blocks of each factor.
        blocks: usize,
        /// q, each first-stage block's output width.
        inner: usize,
    },
}

/// One stage of a structured layer: a (possibly batched) GEMM from the previous stage's output.
struct Stage {
    /// The product as the backward differentiates it, with the middle activation in the order
    /// the first stage's blocks produce it (h of SPEC §4).
    prod: Gemm,
    /// The forward's launches when they differ from `prod`: BlockShuffle's first stage, which
    /// writes the middle activation gathered (`gather_launches`), and its second stage, which
    /// reads that gathered layout. Empty: `prod` itself.
    launches: Vec<Gemm>,
    /// The launches compute the transposed product (the factor as A, the input as B).
    transposed: bool,
    /// Elements of this stage's output per token.
    width: usize,
}

impl Stage {
    fn one(prod: Gemm, width: usize) -> Self {
        Stage { prod, launches: Vec::new(), transposed: false, width }
    }

    /// The stage with `f` applied to its product and to every forward launch (an epilogue).
    fn with(mut self, f: impl Fn(Gemm) -> Gemm) -> Self {
        self.prod = f(self.prod);
        self.launches = self.launches.into_iter().map(&f).collect();
        self
    }

    fn launches(&self) -> &[Gemm] {
        if self.launches.is_empty() {
            std::slice::from_ref(&self.prod)
        } else {
            &self.launches
        }
    }

    /// Runs the forward launches into a fresh `[tokens, width]` output (and the pre-activation
    /// `z` when given; only single-launch stages carry an epilogue).
    fn run<Be: Backend>(&self, be: &Be, tokens: usize, a: &Be::Buf, b: &Be::Buf, bias: Option<&Be::Buf>, mut z: Option<&mut Be::Buf>) -> Result<Be::Buf> {
        let mut out = be.alloc_uninit(be.dtype_of(a), tokens * self.width)?;
        let (a, b) = if self.transposed { (b, a) } else { (a, b) };
        for d in self.launches() {
            be.gemm(d, a, b, bias, None, &mut out, z.as_deref_mut())?;
        }
        Ok(out)
    }

    /// The backward of a second stage: reads A in the layout its forward launch read (the
    /// gathered middle activation for BlockShuffle) and writes dA in `prod`'s layout.
    fn backward<Be: Backend>(&self, be: &Be, a: &Be::Buf, b: &Be::Buf, z: Option<&Be::Buf>, dc: &Be::Buf) -> Result<GemmGrads<Be::Buf>> {
        let read = self.launches.first().unwrap_or(&self.prod);
        gemm_backward_da_in(be, read, &self.prod, a, b, z, dc, None)
    }
}

impl Structured {
    /// The input width.
    pub fn inp(&self) -> usize {
        match *self {
            Structured::LowRank { inp, .. } | Structured::BlockDense { inp, .. } | Structured::BlockShuffle { inp, .. } => inp,
        }
    }
    /// The output width.
    pub fn out(&self) -> usize {
        match *self {
            Structured::LowRank { out, .. } | Structured::BlockDense { out, .. } | Structured::BlockShuffle { out, .. } => out,
        }
    }

    /// The lengths of the two factor tensors (first stage, second stage); usize::MAX where a
    /// length passes 2^64 (which [`Self::validate`] refuses).
    pub fn factor_lens(&self) -> (usize, usize) {
        let mul = |a: usize, b: usize| a.saturating_mul(b);
        let nb = self.blocks();
        match *self {
            Structured::LowRank { inp, out, rank } => (mul(rank, inp), mul(out, rank)),
            Structured::BlockDense { inp, out, rank, .. } => (mul(rank, inp / nb), mul(out, rank)),
            Structured::BlockShuffle { inp, out, inner, .. } => (mul(mul(nb, inner), inp / nb), mul(mul(nb, out / nb), inner)),
        }
    }

    fn blocks(&self) -> usize {
        match *self {
            Structured::LowRank { .. } => 1,
            Structured::BlockDense { blocks, .. } | Structured::BlockShuffle { blocks, .. } => blocks.max(1),
        }
    }

    /// Parameters of the structured layer (for the "x % of the dense parameters" comparisons).
    pub fn params(&self) -> usize {
        let (a, b) = self.factor_lens();
        a.saturating_add(b)
    }

    /// Checks that sizes are positive, that the block count divides the widths it splits, and the 32-bit limits.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::shape(OP, m));
        match *self {
            Structured::LowRank { inp, out, rank } if inp == 0 || out == 0 || rank == 0 => bad("sizes must be positive".into()),
            Structured::BlockDense { inp, rank, blocks, .. } if blocks == 0 || inp % blocks != 0 || rank % blocks != 0 => {
                bad(format!("BlockDense: {blocks} blocks must divide in = {inp} and rank = {rank}"))
            }
            Structured::BlockShuffle { inp, out, blocks, inner } if blocks == 0 || inp % blocks != 0 || out % blocks != 0 || inner == 0 => {
                bad(format!("BlockShuffle: {blocks} blocks must divide in = {inp} and out = {out}, inner > 0"))
            }
            _ => {
                // Factors within the kernels' 32-bit indexing, blocks within the GEMM's batch.
                let (l1, l2) = self.factor_lens();
                for n in [l1, l2, self.inp(), self.out()] {
                    crate::error::elems(OP, &[n])?;
                }
                if self.blocks() > 65535 {
                    return Err(Error::Limit(format!("{OP}: {} blocks, at most 65535", self.blocks())));
                }
                Ok(())
            }
        }
    }

    /// Whether BlockShuffle keeps its middle activation gathered on `be` (`FFKERN_SHUFFLE`): by
    /// default where the backend's GEMM prefers contiguous rows and the launches per block are
    /// wide enough (k divides q, q/k ≥ 64 columns) to fill its tiles. In h's order the first
    /// product is one batched launch and the second gathers at stride k, which costs a CPU
    /// adapter little; on CUDA it takes the element-load path.
    fn gathered<Be: Backend>(&self, be: &Be) -> Result<bool> {
        static CHOICE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let Structured::BlockShuffle { blocks: k, inner: q, .. } = *self else { return Ok(false) };
        if k == 0 {
            return Ok(false); // refused by validate
        }
        Ok(match crate::runtime::kernel_env(&CHOICE, &crate::runtime::SHUFFLE_FORM)? {
            // Where k does not divide q the gathered form takes k² launches: up to 64 blocks.
            "gathered" => q % k == 0 || k <= 64,
            "strided" => false,
            _ => be.gemm_prefers_contiguous() && q % k == 0 && q / k >= 64,
        })
    }

    /// The two GEMM stages for `tokens` rows: stage 1 reads x `[tokens, in]`, stage 2 reads stage
    /// 1's output and writes y `[tokens, out]`. `alpha` scales the output (self-guided mixing);
    /// `gathered`: BlockShuffle's middle activation in the gathered order (see [`Self::gathered`]).
    fn stages(&self, tokens: usize, alpha: f32, gathered: bool) -> Result<[Stage; 2]> {
        self.validate()?;
        let t = tokens;
        let stages = match *self {
            Structured::LowRank { inp, out, rank } => [Stage::one(Gemm::new(t, rank, inp), rank), Stage::one(Gemm::new(t, out, rank).alpha(alpha), out)],
            Structured::BlockDense { inp, out, rank, blocks } => {
                let (p, r) = (inp / blocks, rank / blocks);
                [
                    // h[:, b·r + j] = Σ_i D[b, j, i]·x[:, b·p + i]: blocks are the batch.
                    Stage::one(Gemm::new(t, r, p).batch(blocks).lda(inp).ldc(rank).strides(p, r * p, r), rank),
                    Stage::one(Gemm::new(t, out, rank).alpha(alpha), out),
                ]
            }
            Structured::BlockShuffle { inp, out, blocks: k, inner: q } => {
                let (p, s) = (inp / k, out / k);
                let launches = if gathered { gather_launches(t, p, k, q) } else { Vec::new() };
                [
                    // h[:, kk·q + j] = Σ_i D1[kk, j, i]·x[:, kk·p + i]
                    Stage { prod: Gemm::new(t, q, p).batch(k).lda(inp).ldc(k * q).strides(p, q * p, q), launches, transposed: gathered, width: k * q },
                    // y[:, s'·k + l] = Σ_r D2[l, s', r]·z_l[r]: in h's order the gather is A's
                    // inner stride k (block l starts at element l); gathered, the forward reads
                    // z_l with contiguous rows. The interleaved store is C's inner stride.
                    Stage {
                        prod: Gemm::new(t, s, q).batch(k).inner_strides(k, 1, k).lda(k * q).ldc(out).strides(1, s * q, 1).alpha(alpha),
                        launches: if gathered {
                            vec![Gemm::new(t, s, q).batch(k).inner_strides(1, 1, k).lda(k * q).ldc(out).strides(q, s * q, 1).alpha(alpha)]
                        } else {
                            Vec::new()
                        },
                        transposed: false,
                        width: out,
                    },
                ]
            }
        };
        // Every launch within the GEMM's limits before any output is allocated for it.
        for st in &stages {
            st.launches().iter().chain([&st.prod]).try_for_each(Gemm::validate)?;
        }
        Ok(stages)
    }

    /// `y = S(x)` (scaled by `alpha`) for `x [tokens, in]`; also returns the middle activation
    /// for the backward (BlockShuffle's in the gathered order z).
    pub fn forward<Be: Backend>(&self, be: &Be, tokens: usize, x: &Be::Buf, f1: &Be::Buf, f2: &Be::Buf, alpha: f32) -> Result<(Be::Buf, Be::Buf)> {
        let [s1, s2] = self.stages(tokens, alpha, self.gathered(be)?)?;
        let h = s1.run(be, tokens, x, f1, None, None)?;
        let y = s2.run(be, tokens, &h, f2, None, None)?;
        Ok((y, h))
    }

    /// The backward from `dy`: `(dx, d_factor1, d_factor2)` (factors in their storage layouts);
    /// `extra_dx` is added into dx by the last GEMM's epilogue.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<Be: Backend>(
        &self,
        be: &Be,
        tokens: usize,
        x: &Be::Buf,
        f1: &Be::Buf,
        f2: &Be::Buf,
        h: &Be::Buf,
        dy: &Be::Buf,
        alpha: f32,
        extra_dx: Option<&Be::Buf>,
    ) -> Result<(Be::Buf, Be::Buf, Be::Buf)> {
        let [s1, s2] = self.stages(tokens, alpha, self.gathered(be)?)?;
        let g2 = s2.backward(be, h, f2, None, dy)?;
        let g1 = gemm_backward_plus(be, &s1.prod, x, f1, None, &g2.da, extra_dx)?;
        Ok((g1.da, g1.db, g2.db))
    }

    /// Pre-merge on the device: the dense `[out, in]` weight of the layer (both permutations
    /// included) from the factors `f1`, `f2` in their storage layouts, by the backend's GEMM (f32
    /// accumulation, rounded once to the factors' dtype). LowRank is `U·V`; BlockDense one batched
    /// product `L[:, b-th slice]·D[b]`; BlockShuffle one product per (output block l, input block
    /// kk), over the `j` of D1's block kk that the gather sends to l (`(kk·q + j) mod k = l`).
    /// [`Self::to_dense`] is the host reference.
    pub fn dense_on<Be: Backend>(&self, be: &Be, f1: &Be::Buf, f2: &Be::Buf) -> Result<Be::Buf> {
        self.validate()?;
        let (inp, out) = (self.inp(), self.out());
        let mut w = be.alloc(be.dtype_of(f1), crate::error::elems(OP, &[out, inp])?)?;
        match *self {
            Structured::LowRank { rank, .. } => {
                // W[o, i] = Σ_r U[o, r]·V[r, i]: V is B stored K-major.
                be.gemm(&Gemm::new(out, inp, rank).b_layout(BLayout::KN), f2, f1, None, None, &mut w, None)?;
            }
            Structured::BlockDense { rank, blocks, .. } => {
                // W[o, b·p + i] = Σ_j L[o, b·r + j]·D[b, j, i], blocks as the batch.
                let (p, r) = (inp / blocks, rank / blocks);
                let d = Gemm::new(out, p, r).batch(blocks).b_layout(BLayout::KN).lda(rank).ldb(p).ldc(inp).strides(r, r * p, p);
                be.gemm(&d, f2, f1, None, None, &mut w, None)?;
            }
            Structured::BlockShuffle { blocks: k, inner: q, .. } => {
                // W[s'·k + l, kk·p + i] = Σ_m D2[l, s', r0 + m]·D1[kk, j0 + k·m, i] with j0 the
                // first j of block kk whose feature kk·q + j lands in z_l, and r0 its place there.
                let (p, s) = (inp / k, out / k);
                for l in 0..k {
                    for kk in 0..k {
                        let j0 = (l + k - (kk * q) % k) % k;
                        if j0 >= q {
                            continue;
                        }
                        let (count, r0) = ((q - j0).div_ceil(k), (kk * q + j0) / k);
                        let offsets = GemmOffsets { a: l * s * q + r0, b: kk * q * p + j0 * p, c: l * inp + kk * p, ..Default::default() };
                        let d = Gemm::new(s, p, count).b_layout(BLayout::KN).lda(q).ldb(k * p).ldc(k * inp).offsets(offsets);
                        be.gemm(&d, f2, f1, None, None, &mut w, None)?;
                    }
                }
            }
        }
        Ok(w)
    }

    /// Pre-merge on the host: the dense `[out, in]` weight of the layer (both permutations
    /// included), in f64 then rounded to `dtype`: the reference of [`Self::dense_on`].
    pub fn to_dense(&self, f1: &[f32], f2: &[f32], dtype: DType) -> Result<HostTensor> {
        self.validate()?;
        let (l1, l2) = self.factor_lens();
        if f1.len() < l1 || f2.len() < l2 {
            return Err(Error::shape(OP, format!("factors hold {} and {} elements, need {l1} and {l2}", f1.len(), f2.len())));
        }
        let w = cpu::dense_weight(self, f1, f2);
        HostTensor::new(dtype, vec![self.out(), self.inp()], w.into_iter().map(|v| v as f32).collect())
    }
}

/// BlockShuffle's first product writing the middle activation gathered, z[:, l·q + r] = z_l[r] =
/// h[:, r·k + l], for x `[t, k·p]` and D1 `[k, q, p]`. Block kk of h sends its rows j ≡ j0
/// (mod k) to z_l, in order, from z_l[r0] on (r0 = (kk·q + j0)/k): one launch per (l, kk) reading
/// D1's rows j0, j0 + k, … (row stride k·p). Each launch computes the transposed product zᵀ =
/// D1-rows·xᵀ (C stored with rows 1 apart and columns k·q apart): its M is the block's q/k rows
/// and its N the t tokens, so that a narrow block still fills whole tiles (as N it would fill a
/// 256-wide tile by half at q/k = 128).
/// When k divides q (then j0 = l and r0 = kk·q/k for every kk), one launch per input block kk,
/// batched over l: the batches share B, x's block kk, and the GEMM takes the tiles of such a C
/// batch fastest, so the k batches of a tile read its slice of x together, once from memory,
/// where a launch per l batched over kk read all of x k times.
fn gather_launches(t: usize, p: usize, k: usize, q: usize) -> Vec<Gemm> {
    let zt = |rows: usize| Gemm::new(rows, t, p).lda(k * p).ldb(k * p).ldc(1).inner_strides(1, 1, k * q);
    if q % k == 0 {
        return (0..k)
            .map(|kk| {
                let o = GemmOffsets { a: kk * q * p, b: kk * p, c: kk * (q / k), ..Default::default() };
                zt(q / k).batch(k).strides(p, 0, q).offsets(o)
            })
            .collect();
    }
    let mut launches = Vec::new();
    for l in 0..k {
        for kk in 0..k {
            let j0 = (l + k - (kk * q) % k) % k;
            if j0 >= q {
                continue;
            }
            let (count, r0) = ((q - j0).div_ceil(k), (kk * q + j0) / k);
            let o = GemmOffsets { a: kk * q * p + j0 * p, b: kk * p, c: l * q + r0, ..Default::default() };
            launches.push(zt(count).offsets(o));
        }
    }
    launches
}

/// The structured FFN block `y = S2(act(S1(x) + b1)) + b2` with any layer types.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StructuredFfn {
    /// Rows of x and y.
    pub tokens: usize,
    /// The first layer (`dim → hidden`).
    pub s1: Structured,
    /// The second layer (`hidden → dim`).
    pub s2: Structured,
    /// The activation between them.
    pub act: Activation,
}

/// What the structured FFN's forward keeps for the backward.
pub struct StructuredSaved<B> {
    /// S1's middle activation (its first stage's output).
    pub h1: B,
    /// `S1(x) + b1` before the activation.
    pub z: B,
    /// `act(z)`.
    pub u: B,
    /// S2's middle activation.
    pub h2: B,
}

impl StructuredFfn {
    fn check(&self) -> Result<()> {
        if self.s1.out() != self.s2.inp() || self.s2.out() != self.s1.inp() {
            return Err(Error::shape(OP, "S1 must map dim → hidden and S2 hidden → dim"));
        }
        Ok(())
    }

    /// Bias and activation fused into S1's second GEMM; b2 into S2's.
    fn with_epilogues<Be: Backend>(&self, be: &Be, tokens: usize) -> Result<([Stage; 2], [Stage; 2])> {
        self.check()?;
        let [a1, b1] = self.s1.stages(tokens, 1.0, self.s1.gathered(be)?)?;
        let [a2, b2] = self.s2.stages(tokens, 1.0, self.s2.gathered(be)?)?;
        // The bias follows the output's interleave (BlockShuffle stores feature s'·k + l from
        // batch l, column s'), so feature f always gets bias[f].
        let with_bias = |d: Gemm| {
            let c = d.c();
            let d = d.bias(true);
            if d.inner_c != 1 {
                d.bias_strides(c.batch_stride, c.col_stride)
            } else {
                d
            }
        };
        let act = self.act;
        Ok(([a1, b1.with(|d| with_bias(d).act(act))], [a2, b2.with(with_bias)]))
    }

    /// The training forward: `y` and what the backward reads (the pre-activation among it).
    pub fn forward<Be: Backend>(&self, be: &Be, x: &Be::Buf, f: [&Be::Buf; 4], b1: &Be::Buf, b2: &Be::Buf) -> Result<(Be::Buf, StructuredSaved<Be::Buf>)> {
        let (y, h1, u, h2, z) = self.run(be, x, f, b1, b2, true)?;
        let z = z.ok_or_else(|| Error::Invalid("structured ffn: the pre-activation was not kept".into()))?;
        Ok((y, StructuredSaved { h1, z, u, h2 }))
    }

    /// Inference: `y` alone, without writing the pre-activation (one `[tokens, hidden]` write
    /// fewer than [`Self::forward`]).
    pub fn infer<Be: Backend>(&self, be: &Be, x: &Be::Buf, f: [&Be::Buf; 4], b1: &Be::Buf, b2: &Be::Buf) -> Result<Be::Buf> {
        Ok(self.run(be, x, f, b1, b2, false)?.0)
    }

    /// The four GEMMs: `(y, h1, u, h2, z)`, z (the pre-activation) only when `save`.
    #[allow(clippy::type_complexity)]
    fn run<Be: Backend>(&self, be: &Be, x: &Be::Buf, f: [&Be::Buf; 4], b1: &Be::Buf, b2: &Be::Buf, save: bool) -> Result<(Be::Buf, Be::Buf, Be::Buf, Be::Buf, Option<Be::Buf>)> {
        let t = self.tokens;
        let ([a1, c1], [a2, c2]) = self.with_epilogues(be, t)?;
        let h1 = a1.run(be, t, x, f[0], None, None)?;
        let mut z = if save { Some(be.alloc_uninit(be.dtype_of(x), t * c1.width)?) } else { None };
        let u = c1.run(be, t, &h1, f[1], Some(b1), z.as_mut())?;
        let h2 = a2.run(be, t, &u, f[2], None, None)?;
        let y = c2.run(be, t, &h2, f[3], Some(b2), None)?;
        Ok((y, h1, u, h2, z))
    }

    /// Gradients `[dx, dF1a, dF1b, dF2a, dF2b, db1, db2]`.
    pub fn backward<Be: Backend>(&self, be: &Be, x: &Be::Buf, f: [&Be::Buf; 4], saved: &StructuredSaved<Be::Buf>, dy: &Be::Buf) -> Result<Vec<Be::Buf>> {
        let t = self.tokens;
        let ([a1, c1], [a2, c2]) = self.with_epilogues(be, t)?;
        let missing = || Error::Invalid("structured ffn: a bias gradient is missing".into());
        let g4 = c2.backward(be, &saved.h2, f[3], None, dy)?;
        let g3 = gemm_backward_plus(be, &a2.prod, &saved.u, f[2], None, &g4.da, None)?;
        let g2 = c1.backward(be, &saved.h1, f[1], Some(&saved.z), &g3.da)?;
        let g1 = gemm_backward_plus(be, &a1.prod, x, f[0], None, &g2.da, None)?;
        Ok(vec![g1.da, g1.db, g2.db, g3.db, g4.db, g2.dbias.ok_or_else(missing)?, g4.dbias.ok_or_else(missing)?])
    }
}

/// Self-guided training (SPEC §4): `o = α·(x·W_gᵀ) + (1 − α)·S(x)`, with the mix fused into the
/// dense GEMM's epilogue (`β·R` with `R = (1 − α)·S(x)`, the `(1 − α)` in S's last GEMM).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SelfGuided {
    /// Rows of x and o.
    pub tokens: usize,
    /// The structured layer S.
    pub layer: Structured,
}

/// `α(t) = ½(1 + cos(π·t/T_g))` for `t ≤ T_g`, else 0 (t counts optimizer steps).
pub fn guide_alpha(step: u64, guided_steps: u64) -> f32 {
    if guided_steps == 0 || step > guided_steps {
        return 0.0;
    }
    (0.5 * (1.0 + (std::f64::consts::PI * step as f64 / guided_steps as f64).cos())) as f32
}

impl SelfGuided {
    fn dense(&self, alpha: f32) -> Gemm {
        Gemm::new(self.tokens, self.layer.out(), self.layer.inp()).alpha(alpha).residual(None).beta(1.0)
    }

    /// `o` and the structured middle activation. With `alpha = 0` the dense branch is not run.
    pub fn forward<Be: Backend>(&self, be: &Be, x: &Be::Buf, wg: &Be::Buf, f1: &Be::Buf, f2: &Be::Buf, alpha: f32) -> Result<(Be::Buf, Be::Buf)> {
        if !(0.0..=1.0).contains(&alpha) {
            return Err(Error::Invalid(format!("self-guided α = {alpha} must be in [0, 1]")));
        }
        let (s, h) = self.layer.forward(be, self.tokens, x, f1, f2, 1.0 - alpha)?;
        if alpha == 0.0 {
            return Ok((s, h));
        }
        let mut o = be.alloc_uninit(be.dtype_of(x), self.tokens * self.layer.out())?;
        be.gemm(&self.dense(alpha), x, wg, None, Some(&s), &mut o, None)?;
        Ok((o, h))
    }

    /// Gradients `(dx, dW_g, d_factor1, d_factor2)`; `dW_g` is `None` when `alpha = 0`.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    pub fn backward<Be: Backend>(
        &self,
        be: &Be,
        x: &Be::Buf,
        wg: &Be::Buf,
        f1: &Be::Buf,
        f2: &Be::Buf,
        h: &Be::Buf,
        dy: &Be::Buf,
        alpha: f32,
    ) -> Result<(Be::Buf, Option<Be::Buf>, Be::Buf, Be::Buf)> {
        let (dxs, d1, d2) = self.layer.backward(be, self.tokens, x, f1, f2, h, dy, 1.0 - alpha, None)?;
        if alpha == 0.0 {
            return Ok((dxs, None, d1, d2));
        }
        let g = gemm_backward_plus(be, &self.dense(alpha), x, wg, None, dy, Some(&dxs))?;
        Ok((g.da, Some(g.db), d1, d2))
    }
}

/// Which form runs a structured layer for a given number of tokens in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// The pre-merged dense weight: one GEMM (fewer launches; wins when few tokens are in flight).
    Dense,
    /// The structured factors (fewer FLOPs and bytes; wins with many tokens).
    Structured,
}

/// The form to run for `tokens` given a measured crossover (tokens at which the structured form
/// starts to win on this backend; see [`measure_crossover`]).
pub fn choose_form(tokens: usize, crossover: usize) -> Form {
    if tokens < crossover {
        Form::Dense
    } else {
        Form::Structured
    }
}

/// Measures the crossover on `be`: times the dense (pre-merged) and structured forms at
/// `tokens = 1, 2, 4, …, max_tokens` and returns the first token count at which the structured
/// form is at least as fast (or `max_tokens + 1` if it never is).
pub fn measure_crossover<Be: Backend>(be: &Be, layer: &Structured, dtype: DType, max_tokens: usize, reps: usize) -> Result<usize> {
    let (l1, l2) = layer.factor_lens();
    let f1 = be.upload(&HostTensor::random(dtype, vec![l1], 1))?;
    let f2 = be.upload(&HostTensor::random(dtype, vec![l2], 2))?;
    let w = layer.dense_on(be, &f1, &f2)?;
    let mut tokens = 1;
    while tokens <= max_tokens {
        let x = be.upload(&HostTensor::random(dtype, vec![tokens * layer.inp()], 3))?;
        let mut y = be.alloc_uninit(dtype, tokens * layer.out())?;
        let dense = Gemm::new(tokens, layer.out(), layer.inp());
        let td = crate::bench::median(&be.time_runs(reps, &mut || be.gemm(&dense, &x, &w, None, None, &mut y, None))?);
        let ts = crate::bench::median(&be.time_runs(reps, &mut || layer.forward(be, tokens, &x, &f1, &f2, 1.0).map(|_| ()))?);
        if ts <= td {
            return Ok(tokens);
        }
        tokens *= 2;
    }
    Ok(max_tokens + 1)
}

/// A structured layer kept in both forms on one backend: the factors and the pre-merged dense
/// weight, with the form for each call chosen by token count against `crossover`
/// ([`choose_form`]). Calibrate the crossover on the backend in use with [`Self::calibrate`];
/// until then it is the measured default for the backend ([`default_crossover`]).
pub struct PreMerged<B> {
    /// The layer's shape.
    pub layer: Structured,
    /// The first stage's factor.
    pub f1: B,
    /// The second stage's factor.
    pub f2: B,
    /// The pre-merged `[out, in]` weight.
    pub dense: B,
    /// Token counts from this one up take the structured form; fewer, the dense weight.
    pub crossover: usize,
}

/// The crossover used before calibration on a CPU adapter or the CPU: measured with
/// `measure_crossover` on lavapipe (2 cores) for LowRank 256→1024 rank 64, BlockDense 256→1024
/// rank 96 in 4 blocks and BlockShuffle 256→256 in 4 blocks of 64, the structured form is faster
/// from 1 token on, so 1.
pub const DEFAULT_CROSSOVER: usize = 1;
/// The crossover used before calibration on CUDA: on an H100, LowRank 2048→8192 in f32 wins from
/// 128 tokens (the extra launch costs more than the saved work below that). Run
/// [`PreMerged::calibrate`] for the layer and card in use.
pub const DEFAULT_CROSSOVER_CUDA: usize = 128;

/// The measured default crossover for `be` (see [`DEFAULT_CROSSOVER`], [`DEFAULT_CROSSOVER_CUDA`]).
pub fn default_crossover<Be: Backend>(be: &Be) -> usize {
    if be.name() == "cuda" {
        DEFAULT_CROSSOVER_CUDA
    } else {
        DEFAULT_CROSSOVER
    }
}

impl<B> PreMerged<B> {
    /// Uploads the factors and merges them on the device ([`Structured::dense_on`], both
    /// permutations included).
    pub fn new<Be: Backend<Buf = B>>(be: &Be, layer: Structured, f1: &HostTensor, f2: &HostTensor) -> Result<Self> {
        let (f1, f2) = (be.upload(f1)?, be.upload(f2)?);
        let dense = layer.dense_on(be, &f1, &f2)?;
        Ok(PreMerged { layer, f1, f2, dense, crossover: default_crossover(be) })
    }

    /// Measures the crossover on `be` (see [`measure_crossover`]) and keeps it.
    pub fn calibrate<Be: Backend<Buf = B>>(&mut self, be: &Be, max_tokens: usize, reps: usize) -> Result<usize> {
        self.crossover = measure_crossover(be, &self.layer, be.dtype_of(&self.f1), max_tokens, reps)?;
        Ok(self.crossover)
    }

    /// `y = S(x)` for `tokens` rows, in the form the crossover picks; returns the form used.
    pub fn forward<Be: Backend<Buf = B>>(&self, be: &Be, tokens: usize, x: &B) -> Result<(B, Form)> {
        match choose_form(tokens, self.crossover) {
            Form::Dense => {
                let mut y = be.alloc_uninit(be.dtype_of(x), tokens * self.layer.out())?;
                be.gemm(&Gemm::new(tokens, self.layer.out(), self.layer.inp()), x, &self.dense, None, None, &mut y, None)?;
                Ok((y, Form::Dense))
            }
            Form::Structured => Ok((self.layer.forward(be, tokens, x, &self.f1, &self.f2, 1.0)?.0, Form::Structured)),
        }
    }
}
