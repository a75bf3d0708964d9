//! CPU references of the structured layers, in f64, written from SPEC §4's formulas (not from
//! the GEMM stages the devices use).

use super::Structured;

/// `y = S(x)` for `x [tokens, in]`.
pub fn forward(layer: &Structured, tokens: usize, x: &[f32], f1: &[f32], f2: &[f32]) -> Vec<f64> {
    let w = dense_weight(layer, f1, f2);
    let (inp, out) = (layer.inp(), layer.out());
    let mut y = vec![0.0; tokens * out];
    for t in 0..tokens {
        for o in 0..out {
            y[t * out + o] = (0..inp).map(|i| w[o * inp + i] * x[t * inp + i] as f64).sum();
        }
    }
    y
}

/// The dense `[out, in]` matrix of the layer, straight from the definitions.
pub fn dense_weight(layer: &Structured, f1: &[f32], f2: &[f32]) -> Vec<f64> {
    let (inp, out) = (layer.inp(), layer.out());
    let mut w = vec![0.0; out * inp];
    match *layer {
        Structured::LowRank { rank, .. } => {
            // W = U·V, U [out, r], V [r, in]
            for o in 0..out {
                for i in 0..inp {
                    w[o * inp + i] = (0..rank).map(|r| f2[o * rank + r] as f64 * f1[r * inp + i] as f64).sum();
                }
            }
        }
        Structured::BlockDense { rank, blocks, .. } => {
            // h[b·(r/nb) + j] = Σ_i D[b, j, i]·x[b·(in/nb) + i]; y = L·h
            let (p, rb) = (inp / blocks, rank / blocks);
            for o in 0..out {
                for b in 0..blocks {
                    for j in 0..rb {
                        let l = f2[o * rank + b * rb + j] as f64;
                        for i in 0..p {
                            w[o * inp + b * p + i] += l * f1[(b * rb + j) * p + i] as f64;
                        }
                    }
                }
            }
        }
        Structured::BlockShuffle { blocks: k, inner: q, .. } => {
            // h[kk·q + j] = Σ_i D1[kk, j, i]·x[kk·p + i]; z_l[r] = h[r·k + l];
            // y[s'·k + l] = Σ_r D2[l, s', r]·z_l[r]
            let (p, s) = (inp / k, out / k);
            for l in 0..k {
                for sp in 0..s {
                    for r in 0..q {
                        let d2 = f2[(l * s + sp) * q + r] as f64;
                        let hidx = r * k + l;
                        let (kk, j) = (hidx / q, hidx % q);
                        for i in 0..p {
                            w[(sp * k + l) * inp + kk * p + i] += d2 * f1[(kk * q + j) * p + i] as f64;
                        }
                    }
                }
            }
        }
    }
    w
}

/// The backward reference: `(dx, d_factor1, d_factor2)` from `dy`. The layer is linear in each
/// factor, so the gradient of factor element k is ⟨dy, S(x) with that factor replaced by the k-th
/// unit tensor⟩; dx comes from the dense weight.
pub fn backward(layer: &Structured, tokens: usize, x: &[f32], f1: &[f32], f2: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (inp, out) = (layer.inp(), layer.out());
    let w = dense_weight(layer, f1, f2);
    let mut dx = vec![0.0; tokens * inp];
    for t in 0..tokens {
        for i in 0..inp {
            dx[t * inp + i] = (0..out).map(|o| dy[t * out + o] as f64 * w[o * inp + i]).sum();
        }
    }
    let (l1, l2) = layer.factor_lens();
    let dot = |y: Vec<f64>| y.iter().zip(dy).map(|(a, &b)| a * b as f64).sum::<f64>();
    let unit = |len: usize, k: usize| -> Vec<f32> { (0..len).map(|i| if i == k { 1.0 } else { 0.0 }).collect() };
    let d1 = (0..l1).map(|k| dot(forward(layer, tokens, x, &unit(l1, k), &f2[..l2]))).collect();
    let d2 = (0..l2).map(|k| dot(forward(layer, tokens, x, &f1[..l1], &unit(l2, k)))).collect();
    (dx, d1, d2)
}
