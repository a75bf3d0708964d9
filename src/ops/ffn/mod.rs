//! FFN family (SPEC §2–§3): the dense FFN as two fused GEMMs (forward and backward), and the
//! RePaViT channel-idle FFN: BatchNorm folding and merging of the idle path into the shortcut
//! ([`reparameterize`]), and the merged inference form as two fused GEMMs ([`RepavitMerged::forward`]).
//! The CPU references are in [`cpu`]. The FFNs run on the fused GEMM; the family's own kernels
//! (`kernels/ffn.cu`, `shaders/ffn.wgsl`) are the BatchNorm of RePaViT's training form.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::ops::gemm::{gemm_backward, gemm_backward_plus, Activation, Gemm, GemmOffsets};
use crate::{Backend, DType, Error, HostTensor, Result};

const OP: &str = "ffn";

/// `y = W2·act(W1·x + b1) + b2 (+ x)` over `tokens` rows of width `dim`, hidden width `hidden`.
/// Weights use the `[out, in]` layout: `w1 [hidden, dim]`, `b1 [hidden]`, `w2 [dim, hidden]`, `b2 [dim]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DenseFfn {
    /// Rows of x and y.
    pub tokens: usize,
    /// The model width C (x, y).
    pub dim: usize,
    /// The hidden width H.
    pub hidden: usize,
    /// The activation between the products.
    pub act: Activation,
    /// Whether x is added to the output (`dim` in and out).
    pub residual: bool,
}

/// The four weight tensors of a dense FFN on one backend.
pub struct FfnWeights<B> {
    /// `[hidden, dim]`.
    pub w1: B,
    /// `[hidden]`.
    pub b1: B,
    /// `[dim, hidden]`.
    pub w2: B,
    /// `[dim]`.
    pub b2: B,
}

/// What the forward keeps for the backward: the pre-activation and the hidden activation.
pub struct FfnSaved<B> {
    /// `W1·x + b1`, `[tokens, hidden]`.
    pub z1: B,
    /// `act(z1)`, `[tokens, hidden]`.
    pub u: B,
}

/// Gradients of a dense FFN.
pub struct FfnGrads<B> {
    /// `[tokens, dim]`.
    pub dx: B,
    /// `[hidden, dim]`.
    pub dw1: B,
    /// `[hidden]`.
    pub db1: B,
    /// `[dim, hidden]`.
    pub dw2: B,
    /// `[dim]`.
    pub db2: B,
}

impl DenseFfn {
    /// The first product with its fused epilogue: `u = act(x·W1ᵀ + b1)`.
    pub fn gemm1(&self) -> Gemm {
        Gemm::new(self.tokens, self.hidden, self.dim).bias(true).act(self.act)
    }
    /// The second product: `y = u·W2ᵀ + b2 (+ x)`.
    pub fn gemm2(&self) -> Gemm {
        let g = Gemm::new(self.tokens, self.dim, self.hidden).bias(true);
        if self.residual {
            g.residual(None)
        } else {
            g
        }
    }

    fn check<Be: Backend>(&self, be: &Be, x: &Be::Buf, w: &FfnWeights<Be::Buf>) -> Result<DType> {
        let dtype = be.dtype_of(x);
        // Both products within the GEMM's limits (which bounds every product of sizes below).
        self.gemm1().validate()?;
        self.gemm2().validate()?;
        let (t, c, h) = (self.tokens, self.dim, self.hidden);
        for (name, buf, len) in [("x", x, t * c), ("w1", &w.w1, h * c), ("b1", &w.b1, h), ("w2", &w.w2, c * h), ("b2", &w.b2, c)] {
            if be.dtype_of(buf) != dtype {
                return Err(Error::dtype(OP, format!("{name} is {}, x is {dtype}", be.dtype_of(buf))));
            }
            if be.len_of(buf) < len {
                return Err(Error::shape(OP, format!("{name} holds {} elements, needs {len}", be.len_of(buf))));
            }
        }
        Ok(dtype)
    }

    /// The forward; with `save`, also the pre-activation `z1` and hidden activation `u`.
    #[allow(clippy::type_complexity)]
    pub fn forward<Be: Backend>(&self, be: &Be, x: &Be::Buf, w: &FfnWeights<Be::Buf>, save: bool) -> Result<(Be::Buf, Option<FfnSaved<Be::Buf>>)> {
        let dtype = self.check(be, x, w)?;
        let (t, c, h) = (self.tokens, self.dim, self.hidden);
        let mut u = be.alloc_uninit(dtype, t * h)?;
        let mut z1 = if save { Some(be.alloc_uninit(dtype, t * h)?) } else { None };
        be.gemm(&self.gemm1(), x, &w.w1, Some(&w.b1), None, &mut u, z1.as_mut())?;
        let mut y = be.alloc_uninit(dtype, t * c)?;
        be.gemm(&self.gemm2(), &u, &w.w2, Some(&w.b2), self.residual.then_some(x), &mut y, None)?;
        Ok((y, z1.map(|z1| FfnSaved { z1, u })))
    }

    /// The backward from `dy`: `dx, dW1, db1, dW2, db2`. Without `saved`, the forward's first
    /// GEMM is recomputed (trading a GEMM for the memory of two `[tokens, hidden]` tensors).
    pub fn backward<Be: Backend>(&self, be: &Be, x: &Be::Buf, w: &FfnWeights<Be::Buf>, saved: Option<&FfnSaved<Be::Buf>>, dy: &Be::Buf) -> Result<FfnGrads<Be::Buf>> {
        let dtype = self.check(be, x, w)?;
        if be.dtype_of(dy) != dtype || be.len_of(dy) < self.tokens * self.dim {
            return Err(Error::shape(OP, "dy must match y"));
        }
        let recomputed;
        let saved = match saved {
            Some(s) => s,
            None => {
                let (t, h) = (self.tokens, self.hidden);
                let mut u = be.alloc_uninit(dtype, t * h)?;
                let mut z1 = be.alloc_uninit(dtype, t * h)?;
                be.gemm(&self.gemm1(), x, &w.w1, Some(&w.b1), None, &mut u, Some(&mut z1))?;
                recomputed = FfnSaved { z1, u };
                &recomputed
            }
        };
        let g2 = gemm_backward(be, &self.gemm2(), &saved.u, &w.w2, None, dy)?;
        // dx = (dz1)·W1 (+ dy through the shortcut, added in the same GEMM's epilogue).
        let g1 = gemm_backward_plus(be, &self.gemm1(), x, &w.w1, Some(&saved.z1), &g2.da, self.residual.then_some(dy))?;
        let missing = || Error::Invalid("ffn: a bias gradient is missing".into());
        Ok(FfnGrads { dx: g1.da, dw1: g1.db, db1: g1.dbias.ok_or_else(missing)?, dw2: g2.db, db2: g2.dbias.ok_or_else(missing)? })
    }
}

/// BatchNorm parameters of one layer (eval mode uses the running statistics).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    /// γ, per channel.
    pub gamma: Vec<f32>,
    /// β, per channel.
    pub beta: Vec<f32>,
    /// The running mean, per channel.
    pub mean: Vec<f32>,
    /// The running (unbiased) variance, per channel.
    pub var: Vec<f32>,
    /// Added to the variance under the square root.
    pub eps: f32,
}

impl BatchNorm {
    /// The eval-mode affine map `x ↦ s·x + t` per channel, in f64.
    pub fn scale_shift(&self) -> (Vec<f64>, Vec<f64>) {
        let s: Vec<f64> = self.gamma.iter().zip(&self.var).map(|(&g, &v)| g as f64 / (v as f64 + self.eps as f64).sqrt()).collect();
        let t = self.beta.iter().zip(&self.mean).zip(&s).map(|((&b, &m), &s)| b as f64 - m as f64 * s).collect();
        (s, t)
    }
}

/// The trained weights of a RePaViT channel-idle FFN (host tensors): `w1 [H, C]`, `b1 [H]`,
/// `w2 [C, H]`, `b2 [C]`, BN1 over the C input channels, BN2 over the H hidden channels.
#[derive(Clone, Debug)]
pub struct RepavitWeights {
    /// `[H, C]`.
    pub w1: HostTensor,
    /// `[H]`.
    pub b1: HostTensor,
    /// `[C, H]`.
    pub w2: HostTensor,
    /// `[C]`.
    pub b2: HostTensor,
    /// Over the C input channels.
    pub bn1: BatchNorm,
    /// Over the H hidden channels.
    pub bn2: BatchNorm,
}

impl RepavitWeights {
    /// (C, H) after checking every shape.
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(x > 0)` refuses NaN too
    pub fn dims(&self) -> Result<(usize, usize)> {
        let h = self.b1.len();
        let c = self.b2.len();
        let bad = |m: String| Err(Error::shape("repavit", m));
        if self.w1.len() != h * c || self.w2.len() != c * h {
            return bad(format!("w1 and w2 must hold H·C = {} elements (H = {h} from b1, C = {c} from b2)", h * c));
        }
        for (name, bn, n) in [("bn1", &self.bn1, c), ("bn2", &self.bn2, h)] {
            if bn.gamma.len() != n || bn.beta.len() != n || bn.mean.len() != n || bn.var.len() != n {
                return bad(format!("{name} parameters must have {n} channels"));
            }
            if bn.var.iter().any(|&v| !(v as f64 + bn.eps as f64 > 0.0)) {
                return Err(Error::Invalid(format!("{name}: var + eps must be positive")));
            }
        }
        Ok((c, h))
    }
}

/// The number of active hidden channels `a = ceil(H·(1 − θ))` (the first `a` channels).
pub fn active_channels(hidden: usize, theta: f64) -> Result<usize> {
    if !(0.0..=1.0).contains(&theta) {
        return Err(Error::Invalid(format!("idle ratio θ = {theta} must be in [0, 1]")));
    }
    // A hair below the exact product, so that θ = 0.75, H = 1536 gives 384 despite rounding.
    Ok(((hidden as f64 * (1.0 - theta)) - 1e-9).ceil().max(0.0) as usize)
}

/// The merged inference weights of SPEC §3 as host tensors of one dtype:
/// `wu = [W1f[:a, :]; M]` (`[a + C, C]`), `bu = [b1f[:a]; c]`, `wo = W2f[:, :a]` (`[C, a]`).
#[derive(Clone, Debug)]
pub struct RepavitMerged {
    /// C.
    pub dim: usize,
    /// a, the active hidden channels.
    pub active: usize,
    /// `[a + C, C]`.
    pub wu: HostTensor,
    /// `[a + C]`.
    pub bu: HostTensor,
    /// `[C, a]`.
    pub wo: HostTensor,
}

/// Folds both BatchNorms and merges the idle path and the shortcut (SPEC §3), in f64, then
/// rounds to `dtype`.
pub fn reparameterize(w: &RepavitWeights, theta: f64, dtype: DType) -> Result<RepavitMerged> {
    let (c, h) = w.dims()?;
    let a = active_channels(h, theta)?;
    let (s1, t1) = w.bn1.scale_shift();
    let (s2, t2) = w.bn2.scale_shift();
    let w1 = |i: usize, j: usize| w.w1.data[i * c + j] as f64;
    let w2 = |i: usize, j: usize| w.w2.data[i * h + j] as f64;
    // W1f = W1·diag(s1), b1f = W1·t1 + b1; W2f = W2·diag(s2), b2f = W2·t2 + b2.
    let w1f: Vec<f64> = (0..h * c).map(|k| w1(k / c, k % c) * s1[k % c]).collect();
    let b1f: Vec<f64> = (0..h).map(|i| (0..c).map(|j| w1(i, j) * t1[j]).sum::<f64>() + w.b1.data[i] as f64).collect();
    let w2f: Vec<f64> = (0..c * h).map(|k| w2(k / h, k % h) * s2[k % h]).collect();
    let b2f: Vec<f64> = (0..c).map(|i| (0..h).map(|j| w2(i, j) * t2[j]).sum::<f64>() + w.b2.data[i] as f64).collect();
    let mut wu = Vec::with_capacity((a + c) * c);
    let mut bu = Vec::with_capacity(a + c);
    wu.extend(w1f[..a * c].iter().map(|&v| v as f32));
    bu.extend(b1f[..a].iter().map(|&v| v as f32));
    // M = I + W2f[:, a:]·W1f[a:, :], c = W2f[:, a:]·b1f[a:] + b2f.
    for i in 0..c {
        for j in 0..c {
            let idle: f64 = (a..h).map(|k| w2f[i * h + k] * w1f[k * c + j]).sum();
            wu.push((idle + if i == j { 1.0 } else { 0.0 }) as f32);
        }
        bu.push(((a..h).map(|k| w2f[i * h + k] * b1f[k]).sum::<f64>() + b2f[i]) as f32);
    }
    let wo: Vec<f32> = (0..c * a).map(|k| w2f[(k / a.max(1)) * h + k % a.max(1)] as f32).collect();
    Ok(RepavitMerged {
        dim: c,
        active: a,
        wu: HostTensor::new(dtype, vec![a + c, c], wu)?,
        bu: HostTensor::new(dtype, vec![a + c], bu)?,
        wo: HostTensor::new(dtype, vec![c, a], wo)?,
    })
}

impl RepavitMerged {
    /// GEMM1 `u = x·wuᵀ + bu` with GELU on the first `a` columns only.
    pub fn gemm1(&self, tokens: usize) -> Gemm {
        Gemm::new(tokens, self.active + self.dim, self.dim).bias(true).act(Activation::GeluErf).act_cols(self.active)
    }

    /// GEMM2 `y = u[:, :a]·woᵀ + u[:, a:]`: A and the residual are column slices of `u`.
    pub fn gemm2(&self, tokens: usize) -> Gemm {
        let w = self.active + self.dim;
        Gemm::new(tokens, self.dim, self.active)
            .lda(w.max(1))
            .residual(Some(w))
            .offsets(GemmOffsets { r: self.active, ..Default::default() })
    }

    /// Merged inference on `x` (`[tokens, C]`, already on the device) with the merged weights
    /// uploaded as `(wu, bu, wo)`: two fused GEMMs, no other pass. 3C² MACs per token at θ = 0.75.
    pub fn forward<Be: Backend>(&self, be: &Be, tokens: usize, x: &Be::Buf, weights: (&Be::Buf, &Be::Buf, &Be::Buf)) -> Result<Be::Buf> {
        let dtype = be.dtype_of(x);
        let (wu, bu, wo) = weights;
        // Both products within the GEMM's limits before their outputs are allocated.
        self.gemm1(tokens).validate()?;
        self.gemm2(tokens).validate()?;
        let mut u = be.alloc_uninit(dtype, tokens * (self.active + self.dim))?;
        be.gemm(&self.gemm1(tokens), x, wu, Some(bu), None, &mut u, None)?;
        let mut y = be.alloc_uninit(dtype, tokens * self.dim)?;
        be.gemm(&self.gemm2(tokens), &u, wo, None, Some(&u), &mut y, None)?;
        Ok(y)
    }
}

/// One BatchNorm over `rows` tokens of `channels` features.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormDesc {
    /// Tokens normalised over.
    pub rows: usize,
    /// Features, each with its own statistics.
    pub channels: usize,
    /// Added to the variance under the square root.
    pub eps: f32,
    /// Running statistics: `running = (1 − momentum)·running + momentum·batch` (PyTorch's convention).
    pub momentum: f32,
}

impl BatchNormDesc {
    /// The kernels' parameter block, after checking eps, momentum and sizes. `train` uses the batch
    /// statistics and updates the running ones; with `has_extra` the backward adds a given tensor
    /// to dx.
    #[allow(clippy::neg_cmp_op_on_partial_ord, clippy::nonminimal_bool)] // `!(x > 0)` refuses NaN too
    pub fn params(&self, train: bool, has_extra: bool) -> Result<BnParams> {
        if !(self.eps > 0.0 && self.eps.is_finite()) || !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::Invalid(format!("batchnorm: eps {} must be > 0 and momentum {} in [0, 1]", self.eps, self.momentum)));
        }
        if train && self.rows == 0 {
            return Err(Error::shape("batchnorm", "training statistics need at least one row"));
        }
        let u = |v: usize| u32::try_from(v).map_err(|_| Error::Limit("batchnorm: more than 2^32 rows or channels".into()));
        crate::error::elems("batchnorm", &[self.rows, self.channels])?;
        if self.channels.div_ceil(BN_TILE_CHANNELS) > 65_535 {
            return Err(Error::Limit(format!("batchnorm: {} channels, at most {} (65,535 tiles of {BN_TILE_CHANNELS})", self.channels, 65_535 * BN_TILE_CHANNELS)));
        }
        // Chunks of BN_CHUNK_ROWS rows, grown (by whole row lanes) where there would be more than
        // 32,768 of them, so the chunk grid stays within every backend's 65,535 limit.
        let chunk_rows = BN_CHUNK_ROWS.max(self.rows.div_ceil(32_768).next_multiple_of(BN_ROW_LANES));
        Ok(BnParams {
            rows: u(self.rows)?,
            channels: u(self.channels)?,
            train: train as u32,
            has_extra: has_extra as u32,
            eps: self.eps,
            momentum: self.momentum,
            chunk_rows: u(chunk_rows)?,
            chunks: u(self.rows.div_ceil(chunk_rows).max(1))?,
        })
    }
}

/// The BatchNorm kernels' parameter block (`kernels/ffn.cu`, `shaders/ffn.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BnParams {
    /// Rows.
    pub rows: u32,
    /// Channels.
    pub channels: u32,
    /// 1 in train mode.
    pub train: u32,
    /// 1 when the backward adds a given tensor to dx.
    pub has_extra: u32,
    /// eps.
    pub eps: f32,
    /// momentum.
    pub momentum: f32,
    /// Rows per chunk of the two-level statistics (a multiple of [`BN_ROW_LANES`]).
    pub chunk_rows: u32,
    /// `ceil(rows / chunk_rows)`, at least 1.
    pub chunks: u32,
}

/// The GPU BatchNorm reductions' shape. Per-channel sums run in two levels, both in a fixed
/// order (deterministic, no atomics): one workgroup per tile of BN_TILE_CHANNELS channels and
/// chunk of rows reduces its chunk (each of BN_ROW_LANES row lanes takes every
/// BN_ROW_LANES-th row, then the lanes combine in lane order) into per-chunk partials, and one
/// invocation per channel combines the chunks' partials in chunk order.
pub const BN_TILE_CHANNELS: usize = 32;
/// Row lanes per workgroup (see [`BN_TILE_CHANNELS`]).
pub const BN_ROW_LANES: usize = 8;
/// Rows per chunk (see [`BN_TILE_CHANNELS`]); more where a batch would have over 32,768 chunks.
pub const BN_CHUNK_ROWS: usize = 256;
/// f32 statistics per channel in a BatchNorm's `stats` (see [`BatchNormState`]).
pub const BN_STATS: usize = 7;

impl BnParams {
    /// f32 elements of the per-chunk partials' scratch: three per chunk and channel (the
    /// forward's mean, M2 and the mean's remainder; the backward uses two).
    pub fn partials_len(&self) -> usize {
        3 * self.chunks as usize * self.channels as usize
    }

    /// The launchers' check of a parameter block made by hand rather than by
    /// [`BatchNormDesc::params`]: chunks that cover the rows exactly, grids within 65,535.
    pub fn check(&self) -> Result<()> {
        let cover = (self.rows as usize).div_ceil((self.chunk_rows as usize).max(1)).max(1);
        if self.chunk_rows == 0 || self.chunks as usize != cover || cover > 65_535 || (self.channels as usize).div_ceil(BN_TILE_CHANNELS) > 65_535 {
            return Err(Error::Invalid(format!(
                "batchnorm: {} chunks of {} rows for {} rows and {} channels (BatchNormDesc::params makes a consistent block)",
                self.chunks, self.chunk_rows, self.rows, self.channels
            )));
        }
        Ok(())
    }
}

// SAFETY: BnParams is repr(C) plain old data (u32 and f32 fields), laid out like the CUDA struct.
#[cfg(feature = "cuda")]
unsafe impl cudarc::driver::DeviceRepr for BnParams {}

/// A BatchNorm layer's device state: `affine = [γ | β]` and the running statistics (f32), plus
/// `stats` (f32, [`BN_STATS`]·C): `[mean | rstd | scale | shift]` written by the forward for the
/// backward, then `[dγ | dβ]` written by the backward, then `mean_lo`, written by the forward:
/// the batch mean's remainder past its f32 rounding `mean` (0 in eval mode), which the kernels
/// subtract after `mean` so that a mean large against the spread leaves no rounding in x − mean.
pub struct BatchNormState<B> {
    /// `[γ | β]`, f32, 2·C.
    pub affine: B,
    /// f32, C.
    pub running_mean: B,
    /// f32, C.
    pub running_var: B,
    /// f32, [`BN_STATS`]·C (see the type's description).
    pub stats: B,
}

impl<B> BatchNormState<B> {
    /// Uploads a layer's parameters (`stats` zero-filled).
    pub fn upload<Be: Backend<Buf = B>>(be: &Be, bn: &BatchNorm) -> Result<Self> {
        let c = bn.gamma.len();
        let mut affine = bn.gamma.clone();
        affine.extend_from_slice(&bn.beta);
        let t = |v: Vec<f32>| HostTensor::new(DType::F32, vec![v.len()], v);
        Ok(BatchNormState {
            affine: be.upload(&t(affine)?)?,
            running_mean: be.upload(&t(bn.mean.clone())?)?,
            running_var: be.upload(&t(bn.var.clone())?)?,
            stats: be.alloc(DType::F32, BN_STATS * c)?,
        })
    }

    /// BatchNorm forward into a new buffer: batch statistics and a running update when `train`,
    /// running statistics otherwise.
    pub fn forward<Be: Backend<Buf = B>>(&mut self, be: &Be, d: &BatchNormDesc, x: &B, train: bool) -> Result<B> {
        self.check(be, d, x)?;
        let p = d.params(train, false)?;
        let mut y = be.alloc_uninit(be.dtype_of(x), d.rows * d.channels)?;
        be.batchnorm(&p, x, &self.affine, &mut self.running_mean, &mut self.running_var, &mut self.stats, &mut y)?;
        Ok(y)
    }

    /// The backward of a training-mode forward on `x`: returns dx (`+ extra` when given); dγ and dβ
    /// land in `stats[4C..6C]`.
    pub fn backward<Be: Backend<Buf = B>>(&mut self, be: &Be, d: &BatchNormDesc, x: &B, dy: &B, extra: Option<&B>) -> Result<B> {
        self.check(be, d, x)?;
        for (name, t) in [("dy", Some(dy)), ("extra", extra)] {
            if let Some(t) = t {
                if be.dtype_of(t) != be.dtype_of(x) || be.len_of(t) < d.rows * d.channels {
                    return Err(Error::shape("batchnorm", format!("{name} must match x")));
                }
            }
        }
        let mut dx = be.alloc_uninit(be.dtype_of(x), d.rows * d.channels)?;
        be.batchnorm_backward(&d.params(true, extra.is_some())?, x, dy, &self.affine, &mut self.stats, extra, &mut dx)?;
        Ok(dx)
    }

    fn check<Be: Backend<Buf = B>>(&self, be: &Be, d: &BatchNormDesc, x: &B) -> Result<()> {
        let c = d.channels;
        // x [rows, C] and the statistics [BN_STATS·C] within 32-bit indexing (so the products below fit).
        crate::error::elems("batchnorm", &[d.rows, c])?;
        crate::error::elems("batchnorm", &[BN_STATS, c])?;
        if be.len_of(x) < d.rows * c {
            return Err(Error::shape("batchnorm", format!("x holds {} elements, needs {}", be.len_of(x), d.rows * c)));
        }
        for (name, t, n) in [("affine", &self.affine, 2 * c), ("running_mean", &self.running_mean, c), ("running_var", &self.running_var, c), ("stats", &self.stats, BN_STATS * c)] {
            if be.dtype_of(t) != DType::F32 || be.len_of(t) < n {
                return Err(Error::shape("batchnorm", format!("{name} must be f32 with {n} elements")));
            }
        }
        Ok(())
    }
}

/// The RePaViT channel-idle FFN in its training form (SPEC §3):
/// `z = W1·BN1(x) + b1; z[:a] = GELU(z[:a]); y = W2·BN2(z) + b2 + x`, BatchNorm over all tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RepavitFfn {
    /// Rows of x and y.
    pub tokens: usize,
    /// C.
    pub dim: usize,
    /// H.
    pub hidden: usize,
    /// The number of active hidden channels (see [`active_channels`]).
    pub active: usize,
    /// The BatchNorms' eps.
    pub eps: f32,
    /// The BatchNorms' running-statistics momentum.
    pub momentum: f32,
}

/// The training-form parameters on one backend.
pub struct RepavitTrain<B> {
    /// `[H, C]`.
    pub w1: B,
    /// `[H]`.
    pub b1: B,
    /// `[C, H]`.
    pub w2: B,
    /// `[C]`.
    pub b2: B,
    /// BN1, over C.
    pub bn1: BatchNormState<B>,
    /// BN2, over H.
    pub bn2: BatchNormState<B>,
}

impl<B> RepavitTrain<B> {
    /// Uploads host weights for training: W1, b1, W2, b2 rounded to `dtype` (the activations'
    /// dtype), both BatchNorms' parameters and running statistics in f32.
    pub fn upload<Be: Backend<Buf = B>>(be: &Be, w: &RepavitWeights, dtype: DType) -> Result<Self> {
        w.dims()?;
        let up = |t: &HostTensor| be.upload(&HostTensor::new(dtype, t.shape.clone(), t.data.clone())?);
        Ok(RepavitTrain {
            w1: up(&w.w1)?,
            b1: up(&w.b1)?,
            w2: up(&w.w2)?,
            b2: up(&w.b2)?,
            bn1: BatchNormState::upload(be, &w.bn1)?,
            bn2: BatchNormState::upload(be, &w.bn2)?,
        })
    }
}

/// What the training forward keeps for the backward.
pub struct RepavitSaved<B> {
    /// `BN1(x)`, `[tokens, C]`.
    pub xn: B,
    /// `W1·xn + b1` before the activation, `[tokens, H]`.
    pub zpre: B,
    /// `zpre` with GELU on the first a channels.
    pub z: B,
    /// `BN2(z)`, `[tokens, H]`.
    pub zn: B,
}

impl RepavitFfn {
    /// BN1's descriptor (over C).
    pub fn bn1(&self) -> BatchNormDesc {
        BatchNormDesc { rows: self.tokens, channels: self.dim, eps: self.eps, momentum: self.momentum }
    }
    /// BN2's descriptor (over H).
    pub fn bn2(&self) -> BatchNormDesc {
        BatchNormDesc { rows: self.tokens, channels: self.hidden, eps: self.eps, momentum: self.momentum }
    }
    /// `z = xn·W1ᵀ + b1` with GELU on the first `a` channels (the partial activation).
    pub fn gemm1(&self) -> Gemm {
        Gemm::new(self.tokens, self.hidden, self.dim).bias(true).act(Activation::GeluErf).act_cols(self.active)
    }
    /// `y = zn·W2ᵀ + b2 + x`.
    pub fn gemm2(&self) -> Gemm {
        Gemm::new(self.tokens, self.dim, self.hidden).bias(true).residual(None)
    }

    /// The forward; `train` uses batch statistics and updates the running ones, otherwise the
    /// running statistics are used (eval mode).
    pub fn forward<Be: Backend>(&self, be: &Be, x: &Be::Buf, w: &mut RepavitTrain<Be::Buf>, train: bool) -> Result<(Be::Buf, RepavitSaved<Be::Buf>)> {
        if self.active > self.hidden {
            return Err(Error::shape("repavit", format!("{} active channels of {}", self.active, self.hidden)));
        }
        let dtype = be.dtype_of(x);
        self.gemm1().validate()?;
        self.gemm2().validate()?;
        let (t, h) = (self.tokens, self.hidden);
        let xn = w.bn1.forward(be, &self.bn1(), x, train)?;
        let mut z = be.alloc_uninit(dtype, t * h)?;
        let mut zpre = be.alloc_uninit(dtype, t * h)?;
        be.gemm(&self.gemm1(), &xn, &w.w1, Some(&w.b1), None, &mut z, Some(&mut zpre))?;
        let zn = w.bn2.forward(be, &self.bn2(), &z, train)?;
        let mut y = be.alloc_uninit(dtype, t * self.dim)?;
        be.gemm(&self.gemm2(), &zn, &w.w2, Some(&w.b2), Some(x), &mut y, None)?;
        Ok((y, RepavitSaved { xn, zpre, z, zn }))
    }

    /// The backward of a training forward: `dx` (the shortcut's `dy` added in BN1's backward pass)
    /// and the weight gradients; dγ, dβ of both BatchNorms are in `w.bn{1,2}.stats[4C..6C]`.
    pub fn backward<Be: Backend>(&self, be: &Be, x: &Be::Buf, w: &mut RepavitTrain<Be::Buf>, saved: &RepavitSaved<Be::Buf>, dy: &Be::Buf) -> Result<FfnGrads<Be::Buf>> {
        let g2 = gemm_backward(be, &self.gemm2(), &saved.zn, &w.w2, None, dy)?;
        let dz = w.bn2.backward(be, &self.bn2(), &saved.z, &g2.da, None)?;
        let g1 = gemm_backward(be, &self.gemm1(), &saved.xn, &w.w1, Some(&saved.zpre), &dz)?;
        let dx = w.bn1.backward(be, &self.bn1(), x, &g1.da, Some(dy))?;
        let missing = || Error::Invalid("repavit: a bias gradient is missing".into());
        Ok(FfnGrads { dx, dw1: g1.db, db1: g1.dbias.ok_or_else(missing)?, dw2: g2.db, db2: g2.dbias.ok_or_else(missing)? })
    }
}
