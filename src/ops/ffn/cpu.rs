//! CPU references of the FFN family, in f64. Intermediates that a device stores (the hidden
//! activation between the two GEMMs) are rounded to the storage dtype at the same point.

use super::{DenseFfn, RepavitWeights};
use crate::ops::gemm::cpu::{act_f64, act_grad_f64};
use crate::{Activation, DType};

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
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
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
