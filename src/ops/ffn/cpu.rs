//! CPU references of the FFN family, in f64. Intermediates that a device stores (the hidden
//! activation between the two GEMMs) are rounded to the storage dtype at the same point.

use super::{DenseFfn, RepavitWeights};
use crate::ops::gemm::cpu::{act_f64, act_grad_f64};
use crate::{Activation, DType};

/// Five f64 arrays, in the order the function that returns them names.
pub type Vecs5 = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

fn linear(x: &[f64], w: &[f64], b: &[f64], rows: usize, inp: usize, out: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * out];
    for r in 0..rows {
        for o in 0..out {
            y[r * out + o] = b[o] + (0..inp).map(|i| x[r * inp + i] * w[o * inp + i]).sum::<f64>();
        }
    }
    y
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Dense FFN forward: `(y, z1, u)`, with `u` rounded to `dtype` as the device stores it.
pub fn dense_forward(f: &DenseFfn, dtype: DType, x: &[f32], w1: &[f32], b1: &[f32], w2: &[f32], b2: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (t, c, h) = (f.tokens, f.dim, f.hidden);
    let z1 = linear(&f64s(x), &f64s(w1), &f64s(b1), t, c, h);
    let u: Vec<f64> = z1.iter().map(|&z| dtype.round(act_f64(f.act, z) as f32) as f64).collect();
    let mut y = linear(&u, &f64s(w2), &f64s(b2), t, h, c);
    if f.residual {
        for (yv, &xv) in y.iter_mut().zip(x) {
            *yv += xv as f64;
        }
    }
    (y, z1, u)
}

/// Dense FFN backward: `(dx, dw1, db1, dw2, db2)`, with the hidden gradient rounded to `dtype`
/// as the device stores it.
#[allow(clippy::too_many_arguments)]
pub fn dense_backward(
    f: &DenseFfn,
    dtype: DType,
    x: &[f32],
    w1: &[f32],
    b1: &[f32],
    w2: &[f32],
    b2: &[f32],
    dy: &[f32],
) -> Vecs5 {
    let (t, c, h) = (f.tokens, f.dim, f.hidden);
    let (_, z1, u) = dense_forward(f, dtype, x, w1, b1, w2, b2);
    let z1r: Vec<f64> = z1.iter().map(|&z| dtype.round(z as f32) as f64).collect();
    let dy = f64s(dy);
    let mut dw2 = vec![0.0; c * h];
    let mut db2 = vec![0.0; c];
    let mut du = vec![0.0; t * h];
    for r in 0..t {
        for o in 0..c {
            let g = dy[r * c + o];
            db2[o] += g;
            for i in 0..h {
                dw2[o * h + i] += g * u[r * h + i];
                du[r * h + i] += g * w2[o * h + i] as f64;
            }
        }
    }
    let du: Vec<f64> = du.iter().map(|&v| dtype.round(v as f32) as f64).collect();
    let dz: Vec<f64> = du.iter().zip(&z1r).map(|(&g, &z)| g * act_grad_f64(f.act, z)).collect();
    let dz: Vec<f64> = dz.iter().map(|&v| dtype.round(v as f32) as f64).collect();
    let mut dw1 = vec![0.0; h * c];
    let mut db1 = vec![0.0; h];
    let mut dx = if f.residual { dy.clone() } else { vec![0.0; t * c] };
    for r in 0..t {
        for o in 0..h {
            let g = dz[r * h + o];
            db1[o] += g;
            for i in 0..c {
                dw1[o * c + i] += g * x[r * c + i] as f64;
                dx[r * c + i] += g * w1[o * c + i] as f64;
            }
        }
    }
    (dx, dw1, db1, dw2, db2)
}

/// The RePaViT training form in eval mode (running statistics), SPEC §3:
/// `z = W1·BN1(x) + b1; z[:a] = GELU(z[:a]); y = W2·BN2(z) + b2 + x`.
pub fn repavit_eval(w: &RepavitWeights, active: usize, tokens: usize, x: &[f32]) -> Vec<f64> {
    let (c, h) = (w.b2.len(), w.b1.len());
    let (s1, t1) = w.bn1.scale_shift();
    let (s2, t2) = w.bn2.scale_shift();
    let xn: Vec<f64> = (0..tokens * c).map(|k| x[k] as f64 * s1[k % c] + t1[k % c]).collect();
    let mut z = linear(&xn, &f64s(&w.w1.data), &f64s(&w.b1.data), tokens, c, h);
    for r in 0..tokens {
        for j in 0..h {
            let v = z[r * h + j];
            let v = if j < active { act_f64(Activation::GeluErf, v) } else { v };
            z[r * h + j] = v * s2[j] + t2[j];
        }
    }
    let mut y = linear(&z, &f64s(&w.w2.data), &f64s(&w.b2.data), tokens, h, c);
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += xv as f64;
    }
    y
}

/// BatchNorm forward reference: `(y, mean, var, new running mean, new running var)`; train mode
/// uses the batch statistics (biased variance; unbiased in the running update).
pub fn batchnorm_forward(d: &super::BatchNormDesc, train: bool, x: &[f32], bn: &super::BatchNorm) -> Vecs5 {
    let (r, c) = (d.rows, d.channels);
    let mut mean: Vec<f64> = bn.mean.iter().map(|&v| v as f64).collect();
    let mut var: Vec<f64> = bn.var.iter().map(|&v| v as f64).collect();
    let mut rm = mean.clone();
    let mut rv = var.clone();
    if train {
        let m = d.momentum as f64;
        for ch in 0..c {
            let mu = (0..r).map(|i| x[i * c + ch] as f64).sum::<f64>() / r as f64;
            let q = (0..r).map(|i| (x[i * c + ch] as f64 - mu).powi(2)).sum::<f64>();
            mean[ch] = mu;
            var[ch] = q / r as f64;
            let unbiased = if r > 1 { q / (r - 1) as f64 } else { var[ch] };
            rm[ch] = (1.0 - m) * rm[ch] + m * mu;
            rv[ch] = (1.0 - m) * rv[ch] + m * unbiased;
        }
    }
    let y = (0..r * c)
        .map(|k| {
            let ch = k % c;
            (x[k] as f64 - mean[ch]) / (var[ch] + d.eps as f64).sqrt() * bn.gamma[ch] as f64 + bn.beta[ch] as f64
        })
        .collect();
    (y, mean, var, rm, rv)
}

/// BatchNorm backward reference (training mode): `(dx, dγ, dβ)`.
pub fn batchnorm_backward(d: &super::BatchNormDesc, x: &[f32], dy: &[f32], bn: &super::BatchNorm) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (r, c) = (d.rows, d.channels);
    let (_, mean, var, _, _) = batchnorm_forward(d, true, x, bn);
    let rstd: Vec<f64> = var.iter().map(|&v| 1.0 / (v + d.eps as f64).sqrt()).collect();
    let mut dg = vec![0.0; c];
    let mut db = vec![0.0; c];
    for k in 0..r * c {
        let ch = k % c;
        db[ch] += dy[k] as f64;
        dg[ch] += dy[k] as f64 * (x[k] as f64 - mean[ch]) * rstd[ch];
    }
    let dx = (0..r * c)
        .map(|k| {
            let ch = k % c;
            let xhat = (x[k] as f64 - mean[ch]) * rstd[ch];
            bn.gamma[ch] as f64 * rstd[ch] / r as f64 * (r as f64 * dy[k] as f64 - db[ch] - xhat * dg[ch])
        })
        .collect();
    (dx, dg, db)
}

/// The RePaViT training form in training mode, forward and backward, mirroring the storage
/// rounding of the device at each stored tensor: `(y, [dx, dw1, db1, dw2, db2, dγ1, dβ1, dγ2, dβ2])`.
pub fn repavit_train(
    f: &super::RepavitFfn,
    dtype: DType,
    w: &RepavitWeights,
    x: &[f32],
    dy: &[f32],
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let (t, c, h, a) = (f.tokens, f.dim, f.hidden, f.active);
    let rnd = |v: &[f64]| -> Vec<f32> { v.iter().map(|&x| dtype.round(x as f32)).collect() };
    let (xn, ..) = batchnorm_forward(&f.bn1(), true, x, &w.bn1);
    let xn = rnd(&xn);
    let zpre = linear(&f64s(&xn), &f64s(&w.w1.data), &f64s(&w.b1.data), t, c, h);
    let z: Vec<f64> = zpre.iter().enumerate().map(|(k, &v)| if k % h < a { act_f64(Activation::GeluErf, v) } else { v }).collect();
    let (zpre, z) = (rnd(&zpre), rnd(&z));
    let (zn, ..) = batchnorm_forward(&f.bn2(), true, &z, &w.bn2);
    let zn = rnd(&zn);
    let mut y = linear(&f64s(&zn), &f64s(&w.w2.data), &f64s(&w.b2.data), t, h, c);
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += xv as f64;
    }
    // Backward.
    let (dzn, dw2, db2) = linear_backward(&zn, &w.w2.data, dy, t, h, c);
    let dzn = rnd(&dzn);
    let (dz, dg2, db2n) = batchnorm_backward(&f.bn2(), &z, &dzn, &w.bn2);
    // The device stores BN2's dz, then the product with the activation derivative.
    let dz = rnd(&dz);
    let dz: Vec<f64> =
        dz.iter().enumerate().map(|(k, &g)| if k % h < a { g as f64 * act_grad_f64(Activation::GeluErf, zpre[k] as f64) } else { g as f64 }).collect();
    let (dxn, dw1, db1) = linear_backward(&xn, &w.w1.data, &rnd(&dz), t, c, h);
    let dxn = rnd(&dxn);
    let (dx, dg1, db1n) = batchnorm_backward(&f.bn1(), x, &dxn, &w.bn1);
    let dx = dx.iter().zip(dy).map(|(&g, &d)| g + d as f64).collect();
    (y, vec![dx, dw1, db1, dw2, db2, dg1, db1n, dg2, db2n])
}

/// `y = x·Wᵀ + b` backward: `(dx, dW, db)` from `dy` (`x [rows, inp]`, `W [out, inp]`).
fn linear_backward(x: &[f32], w: &[f32], dy: &[f32], rows: usize, inp: usize, out: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0; rows * inp];
    let mut dw = vec![0.0; out * inp];
    let mut db = vec![0.0; out];
    for r in 0..rows {
        for o in 0..out {
            let g = dy[r * out + o] as f64;
            db[o] += g;
            for i in 0..inp {
                dw[o * inp + i] += g * x[r * inp + i] as f64;
                dx[r * inp + i] += g * w[o * inp + i] as f64;
            }
        }
    }
    (dx, dw, db)
}
