//! The CPU reference of the noisy optimizers: f64 arithmetic from the same f32/f16/bf16 inputs
//! the devices see, the noise from [`super::noise_normals`].

use super::OptimParams;

/// The noise `σ·z_i` for elements 0..n (zeros when σ = 0).
pub fn noise(p: &OptimParams, n: usize) -> Vec<f64> {
    if p.sigma == 0.0 {
        return vec![0.0; n];
    }
    let seed = p.seed_lo as u64 | ((p.seed_hi as u64) << 32);
    super::reference_normals_at(seed, p.step, p.base as usize, n).into_iter().map(|z| p.sigma as f64 * z).collect()
}

/// The clipping scale `min(1, max_norm / (‖g‖ + 1e-6))`, the norm over `g` (clip then noise) or
/// `g + noise` (noise then clip); 1 without clipping.
pub fn clip_scale(p: &OptimParams, grad: &[f32], noise: &[f64]) -> f64 {
    if p.clip == 0 {
        return 1.0;
    }
    let sq: f64 = grad
        .iter()
        .zip(noise)
        .map(|(&g, &e)| {
            let x = if p.clip == 2 { g as f64 + e } else { g as f64 };
            x * x
        })
        .sum();
    (p.max_norm as f64 / (sq.sqrt() + 1e-6)).min(1.0)
}

/// One step: returns the new parameters and the new state arenas (momentum, or Adam's m and v).
pub fn step(p: &OptimParams, param: &[f32], grad: &[f32], state: &[Vec<f32>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = p.n as usize;
    let noise = noise(p, n);
    let scale = clip_scale(p, &grad[..n], &noise);
    let (lr, wd, mu) = (p.lr as f64, p.wd as f64, p.mu as f64);
    let mut out = Vec::with_capacity(n);
    let mut st: Vec<Vec<f64>> = state.iter().map(|s| s[..n].iter().map(|&x| x as f64).collect()).collect();
    for i in 0..n {
        let g = grad[i] as f64;
        let mut g = match p.clip {
            1 => g * scale + noise[i],
            2 => (g + noise[i]) * scale,
            _ => g + noise[i],
        };
        let mut w = param[i] as f64;
        if wd > 0.0 {
            if p.decoupled != 0 {
                w -= lr * wd * w;
            } else {
                g += wd * param[i] as f64;
            }
        }
        if p.rule == 0 {
            let d = if p.has_momentum != 0 {
                let m = mu * st[0][i] + g;
                st[0][i] = m;
                if p.nesterov != 0 {
                    g + mu * m
                } else {
                    m
                }
            } else {
                g
            };
            w -= lr * d;
        } else {
            let (b1, b2) = (p.beta1 as f64, p.beta2 as f64);
            let m = b1 * st[0][i] + (1.0 - b1) * g;
            let v = b2 * st[1][i] + (1.0 - b2) * g * g;
            st[0][i] = m;
            st[1][i] = v;
            w -= lr * (m * p.bc1 as f64) / ((v * p.bc2 as f64).sqrt() + p.eps as f64);
        }
        out.push(w);
    }
    (out, st)
}
