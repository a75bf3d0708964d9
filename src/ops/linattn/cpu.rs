//! f64 references of causal linear attention: the recurrent form, the quadratic masked form
//! (never used by a kernel; it cross-checks the recurrence) and the analytic backward.

use super::{FeatureMap, LinearAttention, Normalize};

/// φ(x) of the feature map.
pub fn phi(map: FeatureMap, x: f64) -> f64 {
    match map {
        FeatureMap::Identity => x,
        FeatureMap::Elu1 => {
            if x > 0.0 {
                x + 1.0
            } else {
                x.exp()
            }
        }
        FeatureMap::Relu => x.max(0.0),
    }
}

/// φ'(x) of the feature map.
pub fn phi_grad(map: FeatureMap, x: f64) -> f64 {
    match map {
        FeatureMap::Identity => 1.0,
        FeatureMap::Elu1 => {
            if x > 0.0 {
                1.0
            } else {
                x.exp()
            }
        }
        FeatureMap::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

/// One (batch, head) sequence in f64: q̃, k̃ (`[T, K]`), v (`[T, V]`).
struct Seq {
    qt: Vec<f64>,
    kt: Vec<f64>,
    v: Vec<f64>,
}

/// Rows `row0 .. row0 + len` of head `h`.
fn gather_rows(d: &LinearAttention, q: &[f32], k: &[f32], v: &[f32], row0: usize, len: usize, h: usize) -> Seq {
    let (h_, kd, vd) = (d.heads, d.k, d.v);
    let c = d.scale() as f64;
    let mut s = Seq { qt: vec![0.0; len * kd], kt: vec![0.0; len * kd], v: vec![0.0; len * vd] };
    for t in 0..len {
        for i in 0..kd {
            let idx = ((row0 + t) * h_ + h) * kd + i;
            s.qt[t * kd + i] = c * phi(d.feature_map, q[idx] as f64);
            s.kt[t * kd + i] = phi(d.feature_map, k[idx] as f64);
        }
        for j in 0..vd {
            s.v[t * vd + j] = v[((row0 + t) * h_ + h) * vd + j] as f64;
        }
    }
    s
}

fn gather(d: &LinearAttention, q: &[f32], k: &[f32], v: &[f32], b: usize, h: usize) -> Seq {
    gather_rows(d, q, k, v, b * d.seq, d.seq, h)
}

/// The recurrent state `(S, z)` of one (sequence, head) `bh`, from `s0`, `z0` or zeros.
struct Scan {
    s: Vec<f64>,
    z: Vec<f64>,
}

impl Scan {
    fn new(d: &LinearAttention, s0: Option<&[f32]>, z0: Option<&[f32]>, bh: usize) -> Scan {
        let (kd, vd) = (d.k, d.v);
        Scan {
            s: (0..kd * vd).map(|i| s0.map_or(0.0, |x| x[bh * kd * vd + i] as f64)).collect(),
            z: (0..kd).map(|i| z0.map_or(0.0, |x| x[bh * kd + i] as f64)).collect(),
        }
    }

    /// Step `t`: `S += k̃_t v_tᵀ`, `z += k̃_t`; returns the numerator `n_t = Sᵀ q̃_t` and the
    /// denominator (`position` is t's 1-based position for Count mode).
    fn step(&mut self, d: &LinearAttention, sq: &Seq, t: usize, position: usize) -> (Vec<f64>, f64) {
        let (kd, vd) = (d.k, d.v);
        for i in 0..kd {
            self.z[i] += sq.kt[t * kd + i];
            for j in 0..vd {
                self.s[i * vd + j] += sq.kt[t * kd + i] * sq.v[t * vd + j];
            }
        }
        let den = match d.normalize {
            Normalize::None => 1.0,
            Normalize::Normalizer { eps } => (0..kd).map(|i| sq.qt[t * kd + i] * self.z[i]).sum::<f64>() + eps as f64,
            Normalize::Count => position as f64,
        };
        let n = (0..vd).map(|j| (0..kd).map(|i| self.s[i * vd + j] * sq.qt[t * kd + i]).sum()).collect();
        (n, den)
    }
}

/// The recurrent forward: `(o, final S, final z)`. `s0`, `z0`: the initial state (`[B, H, K, V]`,
/// `[B, H, K]`) or zeros; `count0` positions attended before (Count mode).
pub fn forward(d: &LinearAttention, q: &[f32], k: &[f32], v: &[f32], s0: Option<&[f32]>, z0: Option<&[f32]>, count0: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let starts: Vec<usize> = (0..=d.batch).map(|b| b * d.seq).collect();
    forward_varlen(d, &starts, None, q, k, v, s0, z0, count0)
}

/// [`forward`] over sequences `starts[n] .. starts[n + 1]` of the `[rows, H, ·]` tensors, one
/// state per sequence; sequence n's positions start after `count0 + offsets[n]` (Count mode;
/// chunks of longer sequences).
#[allow(clippy::too_many_arguments)]
pub fn forward_varlen(
    d: &LinearAttention,
    starts: &[usize],
    offsets: Option<&[usize]>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s0: Option<&[f32]>,
    z0: Option<&[f32]>,
    count0: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (h_, kd, vd) = (d.heads, d.k, d.v);
    let n_seq = starts.len() - 1;
    let rows = starts[n_seq];
    let mut o = vec![0.0; rows * h_ * vd];
    let mut s_out = vec![0.0; n_seq * h_ * kd * vd];
    let mut z_out = vec![0.0; n_seq * h_ * kd];
    for n in 0..n_seq {
        let (row0, len) = (starts[n], starts[n + 1] - starts[n]);
        for h in 0..h_ {
            let sq = gather_rows(d, q, k, v, row0, len, h);
            let bh = n * h_ + h;
            let mut scan = Scan::new(d, s0, z0, bh);
            for t in 0..len {
                let (n, den) = scan.step(d, &sq, t, count0 + offsets.map_or(0, |o| o[n]) + t + 1);
                for (j, nv) in n.iter().enumerate() {
                    o[((row0 + t) * h_ + h) * vd + j] = nv / den;
                }
            }
            s_out[bh * kd * vd..(bh + 1) * kd * vd].copy_from_slice(&scan.s);
            z_out[bh * kd..(bh + 1) * kd].copy_from_slice(&scan.z);
        }
    }
    (o, s_out, z_out)
}

/// The quadratic masked form `o_t = Σ_{τ≤t} (q̃_t·k̃_τ) v_τ (+ S_0ᵀ q̃_t)`, normalized the same
/// way; a cross-check of [`forward`].
pub fn forward_quadratic(d: &LinearAttention, q: &[f32], k: &[f32], v: &[f32], s0: Option<&[f32]>, z0: Option<&[f32]>) -> Vec<f64> {
    let (t_, h_, kd, vd) = (d.seq, d.heads, d.k, d.v);
    let mut o = vec![0.0; d.vo_len()];
    for b in 0..d.batch {
        for h in 0..h_ {
            let sq = gather(d, q, k, v, b, h);
            let bh = b * h_ + h;
            for t in 0..t_ {
                let qt = &sq.qt[t * kd..(t + 1) * kd];
                let mut den = match d.normalize {
                    Normalize::Normalizer { eps } => eps as f64 + (0..kd).map(|i| qt[i] * z0.map_or(0.0, |z| z[bh * kd + i] as f64)).sum::<f64>(),
                    Normalize::Count => (t + 1) as f64,
                    Normalize::None => 1.0,
                };
                let mut acc = vec![0.0; vd];
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = (0..kd).map(|i| qt[i] * s0.map_or(0.0, |s| s[(bh * kd + i) * vd + j] as f64)).sum();
                }
                for tau in 0..=t {
                    let w: f64 = (0..kd).map(|i| qt[i] * sq.kt[tau * kd + i]).sum();
                    if let Normalize::Normalizer { .. } = d.normalize {
                        den += w;
                    }
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a += w * sq.v[tau * vd + j];
                    }
                }
                for j in 0..vd {
                    o[((b * t_ + t) * h_ + h) * vd + j] = acc[j] / den;
                }
            }
        }
    }
    o
}

/// The analytic backward: `(dq, dk, dv, dS0)` from `do` and the final-state gradient `ds_t`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    d: &LinearAttention,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s0: Option<&[f32]>,
    z0: Option<&[f32]>,
    dout: &[f32],
    ds_t: Option<&[f32]>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let starts: Vec<usize> = (0..=d.batch).map(|b| b * d.seq).collect();
    let g = backward_varlen(d, &starts, None, q, k, v, s0, z0, None, dout, [ds_t, None], 0);
    (g.dq, g.dk, g.dv, g.ds0)
}

/// The gradients of [`backward_varlen`].
pub struct Grads {
    /// `[B, T, H, K]`.
    pub dq: Vec<f64>,
    /// `[B, T, H, K]`.
    pub dk: Vec<f64>,
    /// `[B, T, H, V]`.
    pub dv: Vec<f64>,
    /// The initial state's gradient, `[B, H, K, V]`.
    pub ds0: Vec<f64>,
    /// The initial normalizer's gradient (Normalizer mode; 0 otherwise).
    pub dz0: Vec<f64>,
}

/// [`backward`] over sequences `starts[n] .. starts[n + 1]` of the `[rows, H, ·]` tensors, one
/// state per sequence, with the gradients of the final state and normalizer `d_final`; sequence
/// n's positions start after `count0 + offsets[n]` (Count mode; chunks of longer sequences).
/// `o`: the forward's output as the caller stored it, which the Normalizer's
/// `dd_t = −(do_t·o_t)/den_t` then reads, as the device backward passes do (a 16-bit o carries
/// its rounding into dd); `None` takes o from this forward in f64 (the exact gradient).
#[allow(clippy::too_many_arguments)]
pub fn backward_varlen(
    d: &LinearAttention,
    starts: &[usize],
    offsets: Option<&[usize]>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s0: Option<&[f32]>,
    z0: Option<&[f32]>,
    o: Option<&[f32]>,
    dout: &[f32],
    d_final: [Option<&[f32]>; 2],
    count0: usize,
) -> Grads {
    let [ds_t, dz_t] = d_final;
    let (h_, kd, vd) = (d.heads, d.k, d.v);
    let n_seq = starts.len() - 1;
    let rows = starts[n_seq];
    let c = d.scale() as f64;
    let (mut dq, mut dk, mut dv) = (vec![0.0; rows * h_ * kd], vec![0.0; rows * h_ * kd], vec![0.0; rows * h_ * vd]);
    let mut ds0 = vec![0.0; n_seq * h_ * kd * vd];
    let mut dz0 = vec![0.0; n_seq * h_ * kd];
    for b in 0..n_seq {
        let (row0, t_) = (starts[b], starts[b + 1] - starts[b]);
        for h in 0..h_ {
            let sq = gather_rows(d, q, k, v, row0, t_, h);
            let bh = b * h_ + h;
            // Forward pass of this sequence, keeping S_t, z_t, n_t and the denominators.
            let mut scan = Scan::new(d, s0, z0, bh);
            let mut states = Vec::with_capacity(t_);
            let mut dens = Vec::with_capacity(t_);
            let mut ns = Vec::with_capacity(t_);
            for t in 0..t_ {
                let (n, den) = scan.step(d, &sq, t, count0 + offsets.map_or(0, |o| o[b]) + t + 1);
                states.push((scan.s.clone(), scan.z.clone()));
                dens.push(den);
                ns.push(n);
            }
            // Reverse: G = Σ_{τ≥t} q̃_τ dn_τᵀ + dS_T, Hz = Σ_{τ≥t} q̃_τ dd_τ.
            let mut g: Vec<f64> = (0..kd * vd).map(|i| ds_t.map_or(0.0, |x| x[bh * kd * vd + i] as f64)).collect();
            let mut hz: Vec<f64> = (0..kd).map(|i| dz_t.map_or(0.0, |x| x[bh * kd + i] as f64)).collect();
            for t in (0..t_).rev() {
                let o_idx = |j: usize| ((row0 + t) * h_ + h) * vd + j;
                let dout_t: Vec<f64> = (0..vd).map(|j| dout[o_idx(j)] as f64).collect();
                let den = dens[t];
                let dn: Vec<f64> = dout_t.iter().map(|x| x / den).collect();
                let dd = match d.normalize {
                    Normalize::Normalizer { .. } => match o {
                        Some(o) => -(0..vd).map(|j| dout_t[j] * o[o_idx(j)] as f64).sum::<f64>() / den,
                        None => -dout_t.iter().zip(&ns[t]).map(|(a, b)| a * b).sum::<f64>() / (den * den),
                    },
                    _ => 0.0,
                };
                let (st, zt) = &states[t];
                let qt = &sq.qt[t * kd..(t + 1) * kd];
                for i in 0..kd {
                    let dqt: f64 = (0..vd).map(|j| st[i * vd + j] * dn[j]).sum::<f64>() + zt[i] * dd;
                    let idx = ((row0 + t) * h_ + h) * kd + i;
                    dq[idx] = c * phi_grad(d.feature_map, q[idx] as f64) * dqt;
                    hz[i] += qt[i] * dd;
                    for j in 0..vd {
                        g[i * vd + j] += qt[i] * dn[j];
                    }
                }
                for i in 0..kd {
                    let dkt: f64 = (0..vd).map(|j| g[i * vd + j] * sq.v[t * vd + j]).sum::<f64>() + hz[i];
                    let idx = ((row0 + t) * h_ + h) * kd + i;
                    dk[idx] = phi_grad(d.feature_map, k[idx] as f64) * dkt;
                }
                for j in 0..vd {
                    dv[o_idx(j)] = (0..kd).map(|i| g[i * vd + j] * sq.kt[t * kd + i]).sum();
                }
            }
            ds0[bh * kd * vd..(bh + 1) * kd * vd].copy_from_slice(&g);
            dz0[bh * kd..(bh + 1) * kd].copy_from_slice(&hz);
        }
    }
    Grads { dq, dk, dv, ds0, dz0 }
}
