//! The CPU reference of GEMM: plain loops, f64 accumulation, from the same rounded inputs the
//! devices see. Obviously correct, never tiled.

use super::{Activation, ActGrad, Gemm};

/// `act(x)` in f64.
pub fn act_f64(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Identity => x,
        Activation::Relu => x.max(0.0),
        Activation::LeakyRelu => x.max(0.2 * x),
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::GeluErf => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Activation::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
    }
}

/// `act'(x)` in f64.
pub fn act_grad_f64(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Identity => 1.0,
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::LeakyRelu => {
            if x > 0.0 {
                1.0
            } else {
                0.2
            }
        }
        Activation::Silu => {
            let s = 1.0 / (1.0 + (-x).exp());
            s * (1.0 + x * (1.0 - s))
        }
        Activation::GeluErf => {
            let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            cdf + x * pdf
        }
        Activation::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let t = (c * (x + 0.044715 * x * x * x)).tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x)
        }
    }
}

/// The forward reference. Returns `(C, Z)` compact `[batch, M, N]`, where `Z` is the
/// pre-activation `α·A·B + bias` (what the forward saves for the backward).
pub fn forward(desc: &Gemm, a: &[f32], b: &[f32], bias: Option<&[f32]>, r: Option<&[f32]>) -> (Vec<f64>, Vec<f64>) {
    let (ao, bo, ro) = (desc.a(), desc.b(), desc.r());
    let act_cols = desc.act_cols_or_n();
    let mut c = vec![0.0f64; desc.batch * desc.m * desc.n];
    let mut z = vec![0.0f64; desc.batch * desc.m * desc.n];
    for bt in 0..desc.batch {
        for i in 0..desc.m {
            for j in 0..desc.n {
                let mut acc = 0.0f64;
                for p in 0..desc.k {
                    acc += a[ao.index(bt, i, p)] as f64 * b[bo.index(bt, j, p)] as f64;
                }
                let mut v = desc.alpha as f64 * acc;
                if let Some(bias) = bias {
                    v += bias[bt * desc.bias_batch_stride + j * desc.bias_inner] as f64;
                }
                let o = (bt * desc.m + i) * desc.n + j;
                z[o] = v;
                let mut y = if j < act_cols { act_f64(desc.act, v) } else { v };
                if let Some(r) = r {
                    y += desc.beta as f64 * r[ro.index(bt, i, j)] as f64;
                }
                c[o] = y;
            }
        }
    }
    (c, z)
}

/// `dC' = dC ⊙ act'(Z)` on columns `< act_cols`, compact `[rows, cols]`.
pub fn act_grad(d: &ActGrad, dc: &[f64], z: &[f64]) -> Vec<f64> {
    let mut out = dc.to_vec();
    for row in 0..d.rows {
        for col in 0..d.act_cols {
            let i = row * d.cols + col;
            out[i] = dc[i] * act_grad_f64(d.act, z[i]);
        }
    }
    out
}

/// The backward reference from compact `dC` and `Z`: `(dA, dB, dbias)`, with dA and dB in
/// exactly the layouts of A and B.
pub fn backward(desc: &Gemm, a: &[f32], b: &[f32], z: &[f64], dc: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (m, n, k, batch) = (desc.m, desc.n, desc.k, desc.batch);
    let dcp = act_grad(&ActGrad { rows: batch * m, cols: n, act: desc.act, act_cols: desc.act_cols_or_n() }, dc, z);
    let (ao, bo) = (desc.a(), desc.b());
    let alpha = desc.alpha as f64;
    // dA and dB in exactly the layouts of A and B (as the devices write them).
    let mut da = vec![0.0; ao.required_len(batch)];
    let mut db = vec![0.0; bo.required_len(batch)];
    // dbias in the bias's own layout (shared [N], or strided like an interleaved C).
    let mut dbias = vec![0.0; desc.bias_len().max(n)];
    let da_index = |bt: usize, i: usize, p: usize| ao.index(bt, i, p);
    let db_index = |bt: usize, j: usize, p: usize| bo.index(bt, j, p);
    for bt in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let g = dcp[(bt * m + i) * n + j];
                dbias[bt * desc.bias_batch_stride + j * desc.bias_inner] += g;
                for p in 0..k {
                    da[da_index(bt, i, p)] += alpha * g * b[bo.index(bt, j, p)] as f64;
                    db[db_index(bt, j, p)] += alpha * g * a[ao.index(bt, i, p)] as f64;
                }
            }
        }
    }
    (da, db, dbias)
}
