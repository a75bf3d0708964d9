//! Optimizers with annealed gradient noise (SPEC §7): Philox4x32-10 noise, fused SGD
//! (momentum, Nesterov, weight decay) and Adam/AdamW updates, optional clipping by global norm,
//! over a list of parameter tensors in one launch.
//!
//! Multi-tensor layout: a list of tensors is laid out back to back in one arena per role
//! (parameters, gradients, momentum / first moment, second moment); [`TensorList`] names the
//! lengths. Element `i` of the SPEC (the index across the whole list) is the arena position, so
//! one launch covers every tensor whatever their sizes. The CPU reference is in [`cpu`], the
//! kernels are `kernels/optim.cu` and `shaders/optim.wgsl`.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::{Backend, DType, Error, HostTensor, Result};

const OP: &str = "optim";

/// The lengths of the tensors of one parameter list, laid out back to back in each arena.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorList {
    /// Each tensor's element count, in arena order.
    pub lens: Vec<usize>,
}

impl TensorList {
    /// A list of tensors of these lengths.
    pub fn new(lens: Vec<usize>) -> Self {
        TensorList { lens }
    }
    /// Total elements (the arena length; usize::MAX past 2^64, which a step refuses).
    pub fn total(&self) -> usize {
        self.lens.iter().fold(0, |a, &l| a.saturating_add(l))
    }
    /// Arena offset of each tensor.
    pub fn offsets(&self) -> Vec<usize> {
        self.lens.iter().scan(0usize, |acc, &l| {
            let o = *acc;
            *acc = acc.saturating_add(l);
            Some(o)
        })
        .collect()
    }
}

/// The annealed noise schedule `σ_t² = η / (1 + t)^γ` (optax's `add_noise`). η = 0 disables noise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseSchedule {
    /// η, the variance at step 0.
    pub eta: f64,
    /// γ, the decay exponent.
    pub gamma: f64,
}

impl Default for NoiseSchedule {
    fn default() -> Self {
        NoiseSchedule { eta: 0.01, gamma: 0.55 }
    }
}

impl NoiseSchedule {
    /// σ_t (the standard deviation) at step t (t = 0 on the first step).
    pub fn sigma(&self, t: u64) -> f64 {
        (self.eta / (1.0 + t as f64).powf(self.gamma)).sqrt()
    }
}

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// `m = μ·m + g; d = nesterov ? g + μ·m : m` (plain SGD when μ = 0; no momentum buffer then).
    Sgd {
        /// μ; 0 keeps no momentum buffer.
        momentum: f32,
        /// Nesterov's look-ahead step.
        nesterov: bool,
    },
    /// Adam with bias correction; with `decoupled_weight_decay` it is AdamW.
    Adam {
        /// The first moment's decay.
        beta1: f32,
        /// The second moment's decay.
        beta2: f32,
        /// Added to the second moment's square root.
        eps: f32,
    },
}

/// Where clipping by global norm happens relative to the noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClipOrder {
    /// `g' = clip(g) + noise`
    ClipThenNoise,
    /// `g' = clip(g + noise)` (the norm includes the noise)
    NoiseThenClip,
}

/// Clipping by global norm: gradients are scaled by `min(1, max_norm / (‖g‖₂ + 1e-6))`, the norm
/// taken over the whole list with a deterministic reduction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clip {
    /// The largest global norm let through.
    pub max_norm: f32,
    /// Before or after the noise.
    pub order: ClipOrder,
}

/// A noisy optimizer over one tensor list. `step` counts optimizer steps (0 before the first);
/// it and `seed` are the whole RNG state.
#[derive(Clone, Debug, PartialEq)]
pub struct NoisyOptimizer {
    /// SGD (with momentum) or Adam.
    pub rule: Rule,
    /// The learning rate.
    pub lr: f32,
    /// The weight decay (see `decoupled_weight_decay`).
    pub weight_decay: f32,
    /// Decoupled weight decay `p -= lr·wd·p` (SGDW / AdamW) instead of adding `wd·p` to the gradient.
    pub decoupled_weight_decay: bool,
    /// The gradient noise's schedule.
    pub noise: NoiseSchedule,
    /// Clipping by global norm, if any.
    pub clip: Option<Clip>,
    /// The Philox key of the noise.
    pub seed: u64,
    /// Steps taken (the Philox counter's step word).
    pub step: u64,
}

impl NoisyOptimizer {
    /// SGD with momentum μ (no Nesterov, no weight decay) and the default noise schedule.
    pub fn sgd(lr: f32, momentum: f32, seed: u64) -> Self {
        NoisyOptimizer {
            rule: Rule::Sgd { momentum, nesterov: false },
            lr,
            weight_decay: 0.0,
            decoupled_weight_decay: true,
            noise: NoiseSchedule::default(),
            clip: None,
            seed,
            step: 0,
        }
    }

    /// Adam (β₁ 0.9, β₂ 0.999, ε 1e-8, no weight decay) and the default noise schedule.
    pub fn adam(lr: f32, seed: u64) -> Self {
        NoisyOptimizer {
            rule: Rule::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 },
            lr,
            weight_decay: 0.0,
            decoupled_weight_decay: true,
            noise: NoiseSchedule::default(),
            clip: None,
            seed,
            step: 0,
        }
    }

    /// How many state arenas the rule keeps (0: plain SGD, 1: momentum, 2: Adam moments).
    pub fn state_count(&self) -> usize {
        match self.rule {
            Rule::Sgd { momentum: 0.0, .. } => 0,
            Rule::Sgd { .. } => 1,
            Rule::Adam { .. } => 2,
        }
    }

    /// Checks hyperparameters (finite, in range).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("optimizer: {m}")));
        if !self.lr.is_finite() {
            return bad(format!("learning rate {} is not finite", self.lr));
        }
        if !self.weight_decay.is_finite() || self.weight_decay < 0.0 {
            return bad(format!("weight decay {} must be finite and ≥ 0", self.weight_decay));
        }
        if !self.noise.eta.is_finite() || self.noise.eta < 0.0 {
            return bad(format!("η = {} must be finite and ≥ 0", self.noise.eta));
        }
        if !self.noise.gamma.is_finite() || self.noise.gamma < 0.0 {
            return bad(format!("γ = {} must be finite and ≥ 0", self.noise.gamma));
        }
        match self.rule {
            Rule::Sgd { momentum, .. } if !(0.0..1.0).contains(&momentum) => return bad(format!("momentum {momentum} must be in [0, 1)")),
            Rule::Adam { beta1, beta2, eps } if !((0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2) && eps > 0.0 && eps.is_finite()) => {
                return bad(format!("Adam needs β1, β2 in [0, 1) and ε > 0 (got {beta1}, {beta2}, {eps})"));
            }
            _ => {}
        }
        if let Some(c) = self.clip {
            if !(c.max_norm > 0.0 && c.max_norm.is_finite()) {
                return bad(format!("clip max_norm {} must be finite and > 0", c.max_norm));
            }
        }
        if self.step > u32::MAX as u64 {
            return bad("step counter beyond 2^32 (the Philox counter word holds 32 bits)".into());
        }
        Ok(())
    }

    /// The kernel parameters of the current step.
    pub fn params(&self, n: usize) -> Result<OptimParams> {
        self.validate()?;
        let n = u32::try_from(n).map_err(|_| Error::Limit("optimizer: more than 2^32 elements in one list".into()))?;
        let t = self.step;
        let (rule, mu, nesterov, b1, b2, eps, bc1, bc2) = match self.rule {
            Rule::Sgd { momentum, nesterov } => (0, momentum, nesterov as u32, 0.0, 0.0, 0.0, 1.0, 1.0),
            Rule::Adam { beta1, beta2, eps } => (
                1,
                0.0,
                0,
                beta1,
                beta2,
                eps,
                (1.0 / (1.0 - (beta1 as f64).powi(t as i32 + 1))) as f32,
                (1.0 / (1.0 - (beta2 as f64).powi(t as i32 + 1))) as f32,
            ),
        };
        Ok(OptimParams {
            n,
            rule,
            has_momentum: (self.state_count() > 0) as u32,
            nesterov,
            lr: self.lr,
            wd: self.weight_decay,
            decoupled: self.decoupled_weight_decay as u32,
            mu,
            sigma: if self.noise.eta > 0.0 { self.noise.sigma(t) as f32 } else { 0.0 },
            seed_lo: self.seed as u32,
            seed_hi: (self.seed >> 32) as u32,
            step: t as u32,
            beta1: b1,
            beta2: b2,
            eps,
            bc1,
            bc2,
            clip: match self.clip {
                None => 0,
                Some(Clip { order: ClipOrder::ClipThenNoise, .. }) => 1,
                Some(Clip { order: ClipOrder::NoiseThenClip, .. }) => 2,
            },
            max_norm: self.clip.map_or(0.0, |c| c.max_norm),
            base: 0,
        })
    }

    /// One fused step on `be`: reads `grad` (f32, f16 or bf16 arena), updates `param` (f32
    /// arena) and the state arenas (f32: momentum, or Adam's first and second moments), then
    /// advances `step`.
    pub fn step<Be: Backend>(&mut self, be: &Be, list: &TensorList, param: &mut Be::Buf, grad: &Be::Buf, state: &mut [Be::Buf]) -> Result<()> {
        self.update(be, 0, list.total(), param, grad, state)?;
        self.step += 1;
        Ok(())
    }

    /// Updates one tensor of a list held in separate buffers: elements `base..base + n` of the
    /// list (the noise of element `i` is the same as in a whole-list [`Self::step`]). Does not
    /// advance `step`: call [`Self::advance`] once every tensor of the list is updated. Clipping
    /// needs the whole list in one launch and is refused here.
    pub fn step_tensor<Be: Backend>(&self, be: &Be, base: usize, param: &mut Be::Buf, grad: &Be::Buf, state: &mut [Be::Buf]) -> Result<()> {
        if self.clip.is_some() {
            return Err(Error::Unsupported("clipping by global norm needs the whole list in one arena (use step)".into()));
        }
        self.update(be, base, be.len_of(param), param, grad, state)
    }

    /// Advances the step counter after a round of [`Self::step_tensor`] calls.
    pub fn advance(&mut self) {
        self.step += 1;
    }

    fn update<Be: Backend>(&self, be: &Be, base: usize, n: usize, param: &mut Be::Buf, grad: &Be::Buf, state: &mut [Be::Buf]) -> Result<()> {
        if be.dtype_of(param) != DType::F32 {
            return Err(Error::dtype(OP, "parameters are f32 master weights"));
        }
        if be.len_of(param) < n || be.len_of(grad) < n {
            return Err(Error::shape(OP, format!("the list holds {n} elements; param has {}, grad {}", be.len_of(param), be.len_of(grad))));
        }
        if state.len() != self.state_count() {
            return Err(Error::shape(OP, format!("this rule keeps {} state arenas, {} given", self.state_count(), state.len())));
        }
        for s in state.iter() {
            if be.dtype_of(s) != DType::F32 || be.len_of(s) < n {
                return Err(Error::shape(OP, format!("state arenas must be f32 with {n} elements")));
            }
        }
        let mut p = self.params(n)?;
        p.base = u32::try_from(base)
            .ok()
            .filter(|b| b.checked_add(p.n).is_some())
            .ok_or_else(|| Error::Limit("optimizer: list index beyond 2^32".into()))?;
        be.optim_step(&p, param, grad, state)
    }

    /// The state to save: hyperparameters, step and seed (the state arenas are the caller's
    /// buffers; download them alongside).
    pub fn state(&self) -> NoisyOptimizer {
        self.clone()
    }
}

/// The kernel parameter block (same field order in `kernels/optim.cu` and `shaders/optim.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct OptimParams {
    /// Elements in this launch.
    pub n: u32,
    /// 0: SGD, 1: Adam.
    pub rule: u32,
    /// 1 when SGD keeps a momentum buffer.
    pub has_momentum: u32,
    /// 1 for Nesterov momentum.
    pub nesterov: u32,
    /// The learning rate.
    pub lr: f32,
    /// The weight decay.
    pub wd: f32,
    /// 1 for decoupled weight decay.
    pub decoupled: u32,
    /// μ, SGD's momentum.
    pub mu: f32,
    /// σ_t, the noise's standard deviation this step.
    pub sigma: f32,
    /// The Philox key's low word.
    pub seed_lo: u32,
    /// The Philox key's high word.
    pub seed_hi: u32,
    /// The step (the Philox counter's step word).
    pub step: u32,
    /// Adam's β₁.
    pub beta1: f32,
    /// Adam's β₂.
    pub beta2: f32,
    /// Adam's ε.
    pub eps: f32,
    /// Adam's bias correction `1 / (1 − β₁^(t+1))`.
    pub bc1: f32,
    /// Adam's bias correction `1 / (1 − β₂^(t+1))`.
    pub bc2: f32,
    /// 0: none, 1: clip then noise, 2: noise then clip.
    pub clip: u32,
    /// The clipping norm.
    pub max_norm: f32,
    /// List index of this launch's first element (0 when the launch covers the whole list).
    pub base: u32,
}

// SAFETY: OptimParams is repr(C) plain old data (u32 and f32 fields), laid out like the CUDA struct.
#[cfg(feature = "cuda")]
unsafe impl cudarc::driver::DeviceRepr for OptimParams {}

/// Philox4x32-10 (Salmon et al., Random123): four 32-bit words from a 128-bit counter and a
/// 64-bit key.
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    const M0: u64 = 0xD251_1F53;
    const M1: u64 = 0xCD9E_8D57;
    const W0: u32 = 0x9E37_79B9;
    const W1: u32 = 0xBB67_AE85;
    let (mut c, mut k) = (ctr, key);
    for r in 0..10 {
        if r > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let p0 = M0 * c[0] as u64;
        let p1 = M1 * c[2] as u64;
        c = [((p1 >> 32) as u32) ^ c[1] ^ k[0], p1 as u32, ((p0 >> 32) as u32) ^ c[3] ^ k[1], p0 as u32];
    }
    c
}

/// The Philox words of block `j` at step `t` for `seed` (SPEC §7 counter layout).
pub fn noise_words(seed: u64, t: u32, j: u64) -> [u32; 4] {
    philox4x32_10([j as u32, (j >> 32) as u32, t, 0], [seed as u32, (seed >> 32) as u32])
}

/// The four standard normals of block `j` (Box–Muller on word pairs), in f64.
pub fn noise_normals(seed: u64, t: u32, j: u64) -> [f64; 4] {
    let x = noise_words(seed, t, j);
    let pair = |a: u32, b: u32| {
        let u1 = ((a >> 8) as f64 + 1.0) * (1.0 / 16_777_216.0);
        let u2 = (b >> 8) as f64 * (1.0 / 16_777_216.0);
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        (r * th.cos(), r * th.sin())
    };
    let (z0, z1) = pair(x[0], x[1]);
    let (z2, z3) = pair(x[2], x[3]);
    [z0, z1, z2, z3]
}

/// `n` standard normals of step `t` (elements 0..n of a list), the reference values.
pub fn reference_normals(seed: u64, t: u32, n: usize) -> Vec<f64> {
    reference_normals_at(seed, t, 0, n)
}

/// The reference normals of list elements `base..base + n`.
pub fn reference_normals_at(seed: u64, t: u32, base: usize, n: usize) -> Vec<f64> {
    (base / 4..(base + n).div_ceil(4)).flat_map(|j| noise_normals(seed, t, j as u64)).skip(base % 4).take(n).collect()
}

/// Host-side convenience: `n` standard normals of step `t` computed on `be` (as f32).
pub fn philox_normal_host<Be: Backend>(be: &Be, n: usize, seed: u64, t: u32) -> Result<HostTensor> {
    let mut out = be.alloc(DType::F32, n)?;
    be.philox_normal(n, seed, t, &mut out)?;
    be.download(&out)
}
