//! f64 references of the graph primitives, straight from the definitions (COO loops).

use super::{Graph, Reduce};

/// `out[e] = x[src e]` for every edge in COO order (`[E, dim]`).
pub fn gather_rows(g: &Graph, x: &[f32], dim: usize) -> Vec<f64> {
    g.src_coo.iter().flat_map(|&s| (0..dim).map(move |d| x[s as usize * dim + d] as f64)).collect()
}

/// `(out, arg)`; `arg` is the COO id of the first max/min edge (E for empty rows).
pub fn segment_reduce(g: &Graph, m: &[f32], dim: usize, reduce: Reduce) -> (Vec<f64>, Vec<u32>) {
    let (n, e_count) = (g.num_nodes, g.num_edges());
    let mut out = vec![0.0; n * dim];
    let mut arg = vec![e_count as u32; n * dim];
    let dst = dst_of(g);
    let mut by_dst: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (e, &i) in dst.iter().enumerate() {
        by_dst[i].push(e); // COO order
    }
    for (i, edges) in by_dst.iter().enumerate() {
        for d in 0..dim {
            if edges.is_empty() {
                continue;
            }
            let vals = edges.iter().map(|&e| m[e * dim + d] as f64);
            out[i * dim + d] = match reduce {
                Reduce::Sum => vals.sum(),
                Reduce::Mean => vals.sum::<f64>() / edges.len() as f64,
                Reduce::Max | Reduce::Min => {
                    let mut best = edges[0];
                    for &e in &edges[1..] {
                        let (v, b) = (m[e * dim + d], m[best * dim + d]);
                        if (reduce == Reduce::Max && v > b) || (reduce == Reduce::Min && v < b) {
                            best = e;
                        }
                    }
                    arg[i * dim + d] = best as u32;
                    m[best * dim + d] as f64
                }
            };
        }
    }
    (out, arg)
}

/// `Y[i, h, :] = Σ_{e ∈ row i} w[e, h]·X[src e, h, :]`, `dim = heads·Dh`, `w [E, heads]`.
pub fn spmm(g: &Graph, x: &[f32], w: Option<&[f32]>, heads: usize, dim: usize) -> Vec<f64> {
    let dh = dim / heads;
    let dst = dst_of(g);
    let mut y = vec![0.0; g.num_nodes * dim];
    for (e, &s) in g.src_coo.iter().enumerate() {
        let i = dst[e];
        for d in 0..dim {
            let wv = w.map_or(1.0, |w| w[e * heads + d / dh] as f64);
            y[i * dim + d] += wv * x[s as usize * dim + d] as f64;
        }
    }
    y
}

/// The destination of every COO edge, as indices.
fn dst_of(g: &Graph) -> Vec<usize> {
    g.dst_coo.iter().map(|&d| d as usize).collect()
}

/// `s[e, h] = ⟨A[dst e, h, :], B[src e, h, :]⟩` (`dim = heads·Dh`).
pub fn sddmm(g: &Graph, a: &[f32], b: &[f32], heads: usize, dim: usize) -> Vec<f64> {
    let dh = dim / heads;
    let dst = dst_of(g);
    let mut s = vec![0.0; g.num_edges() * heads];
    for (e, &j) in g.src_coo.iter().enumerate() {
        for h in 0..heads {
            s[e * heads + h] = (0..dh).map(|k| a[dst[e] * dim + h * dh + k] as f64 * b[j as usize * dim + h * dh + k] as f64).sum();
        }
    }
    s
}

/// `α[e, h] = exp(s[e, h] − max) / Σ exp(s[e', h] − max)` over the edges `e'` into `dst e`.
pub fn segment_softmax(g: &Graph, s: &[f32], heads: usize) -> Vec<f64> {
    let dst = dst_of(g);
    let mut max = vec![f64::NEG_INFINITY; g.num_nodes * heads];
    for (e, &i) in dst.iter().enumerate() {
        for h in 0..heads {
            max[i * heads + h] = max[i * heads + h].max(s[e * heads + h] as f64);
        }
    }
    let mut sum = vec![0.0; g.num_nodes * heads];
    for (e, &i) in dst.iter().enumerate() {
        for h in 0..heads {
            sum[i * heads + h] += (s[e * heads + h] as f64 - max[i * heads + h]).exp();
        }
    }
    (0..g.num_edges() * heads).map(|k| (s[k] as f64 - max[dst[k / heads] * heads + k % heads]).exp() / sum[dst[k / heads] * heads + k % heads]).collect()
}

/// `ds[e] = α[e]·(dα[e] − Σ_{e' → dst e} α[e']·dα[e'])`, per head.
pub fn segment_softmax_backward(g: &Graph, alpha: &[f32], d_alpha: &[f32], heads: usize) -> Vec<f64> {
    let dst = dst_of(g);
    let mut dot = vec![0.0; g.num_nodes * heads];
    for (e, &i) in dst.iter().enumerate() {
        for h in 0..heads {
            dot[i * heads + h] += alpha[e * heads + h] as f64 * d_alpha[e * heads + h] as f64;
        }
    }
    (0..g.num_edges() * heads).map(|k| alpha[k] as f64 * (d_alpha[k] as f64 - dot[dst[k / heads] * heads + k % heads])).collect()
}

/// LayerNorm over the rows of `x [rows, c]`: `(y, mean, rstd)`, `y = (x − μ)·rstd·γ + β`.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], c: usize, eps: f32) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows = x.len() / c;
    let (mut y, mut mean, mut rstd) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
    for r in 0..rows {
        let row = &x[r * c..(r + 1) * c];
        let mu = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = row.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / c as f64;
        let rs = 1.0 / (var + eps as f64).sqrt();
        for k in 0..c {
            y[r * c + k] = (row[k] as f64 - mu) * rs * gamma[k] as f64 + beta[k] as f64;
        }
        (mean[r], rstd[r]) = (mu, rs);
    }
    (y, mean, rstd)
}

/// LayerNorm backward: `(dx, dγ, dβ)`.
pub fn layer_norm_backward(x: &[f32], dy: &[f32], gamma: &[f32], c: usize, eps: f32) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (_, mean, rstd) = layer_norm(x, gamma, &vec![0.0; c], c, eps);
    let rows = x.len() / c;
    let (mut dx, mut dg, mut db) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
    for r in 0..rows {
        let xhat: Vec<f64> = (0..c).map(|k| (x[r * c + k] as f64 - mean[r]) * rstd[r]).collect();
        let g: Vec<f64> = (0..c).map(|k| dy[r * c + k] as f64 * gamma[k] as f64).collect();
        let mg = g.iter().sum::<f64>() / c as f64;
        let mgx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / c as f64;
        for k in 0..c {
            dx[r * c + k] = rstd[r] * (g[k] - mg - xhat[k] * mgx);
            dg[k] += dy[r * c + k] as f64 * xhat[k];
            db[k] += dy[r * c + k] as f64;
        }
    }
    (dx, dg, db)
}

/// `m[e] = act(W_e·e_e + W_s·h_src + W_d·h_dst + b)` straight from the concatenation
/// `[e_e; h_src; h_dst]` (what the fused path never materialises). Weights `[out, in]`.
#[allow(clippy::too_many_arguments)]
pub fn edge_mlp(g: &Graph, e_feat: &[f32], h: &[f32], w_e: &[f32], w_s: &[f32], w_d: &[f32], b: &[f32], de: usize, dh: usize, act: crate::Activation) -> (Vec<f64>, Vec<f64>) {
    let dout = b.len();
    let mut z = vec![0.0; g.num_edges() * dout];
    for e in 0..g.num_edges() {
        let cat: Vec<f64> = e_feat[e * de..(e + 1) * de]
            .iter()
            .chain(&h[g.src_coo[e] as usize * dh..(g.src_coo[e] as usize + 1) * dh])
            .chain(&h[g.dst_coo[e] as usize * dh..(g.dst_coo[e] as usize + 1) * dh])
            .map(|&v| v as f64)
            .collect();
        for o in 0..dout {
            let w_row = w_e[o * de..(o + 1) * de].iter().chain(&w_s[o * dh..(o + 1) * dh]).chain(&w_d[o * dh..(o + 1) * dh]);
            z[e * dout + o] = b[o] as f64 + w_row.zip(&cat).map(|(&w, x)| w as f64 * x).sum::<f64>();
        }
    }
    let m = z.iter().map(|&v| crate::ops::gemm::cpu::act_f64(act, v)).collect();
    (m, z)
}

/// The combine step alone: `act(ee[e] + pn[src e, :D] + pn[dst e, D:])`.
pub fn edge_combine(g: &Graph, ee: &[f32], pn: &[f32], dim: usize, act: crate::Activation) -> Vec<f64> {
    (0..g.num_edges() * dim)
        .map(|i| {
            let (e, d) = (i / dim, i % dim);
            let z = ee[i] as f64 + pn[g.src_coo[e] as usize * 2 * dim + d] as f64 + pn[g.dst_coo[e] as usize * 2 * dim + dim + d] as f64;
            crate::ops::gemm::cpu::act_f64(act, z)
        })
        .collect()
}

/// `out[i, h, :] = Σ_{e → i} w[e, h]·M[e, h, :]`.
pub fn segment_sum_weighted(g: &Graph, m: &[f32], w: &[f32], heads: usize, dim: usize) -> Vec<f64> {
    let dh = dim / heads;
    let mut out = vec![0.0; g.num_nodes * dim];
    for (e, &i) in g.dst_coo.iter().enumerate() {
        for d in 0..dim {
            out[i as usize * dim + d] += w[e * heads + d / dh] as f64 * m[e * dim + d] as f64;
        }
    }
    out
}

/// `out[e, h] = ⟨x[e, h, :], y[e, h, :]⟩`.
pub fn edge_dot(x: &[f32], y: &[f32], edges: usize, heads: usize, dim: usize) -> Vec<f64> {
    let dh = dim / heads;
    (0..edges * heads).map(|t| (0..dh).map(|k| x[(t / heads) * dim + (t % heads) * dh + k] as f64 * y[(t / heads) * dim + (t % heads) * dh + k] as f64).sum()).collect()
}

/// `out[e, h, :] = w[e, h]·X[src e, h, :]`.
pub fn gather_weighted(g: &Graph, x: &[f32], w: &[f32], heads: usize, dim: usize) -> Vec<f64> {
    let dh = dim / heads;
    (0..g.num_edges() * dim).map(|i| w[(i / dim) * heads + (i % dim) / dh] as f64 * x[g.src_coo[i / dim] as usize * dim + i % dim] as f64).collect()
}

/// `out[r, d] = act(s_r·x[r, d] + y[r, d])` (scale and addend optional).
pub fn scale_add(x: &[f32], scale: Option<&[f32]>, add: Option<&[f32]>, rows: usize, dim: usize, act: crate::Activation) -> Vec<f64> {
    (0..rows * dim)
        .map(|i| {
            let z = scale.map_or(1.0, |s| s[i / dim] as f64) * x[i] as f64 + add.map_or(0.0, |y| y[i] as f64);
            crate::ops::gemm::cpu::act_f64(act, z)
        })
        .collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `g[r] = (1/k)·Σ_j σ(x[r, j])`.
pub fn gate_mean(x: &[f32], rows: usize, k: usize) -> Vec<f64> {
    (0..rows).map(|r| x[r * k..(r + 1) * k].iter().map(|&v| sigmoid(v as f64)).sum::<f64>() / k as f64).collect()
}

/// `dx[r, j] = dg[r]/k·σ(x)·(1 − σ(x))`.
pub fn gate_mean_backward(x: &[f32], dg: &[f32], rows: usize, k: usize) -> Vec<f64> {
    (0..rows * k)
        .map(|i| {
            let s = sigmoid(x[i] as f64);
            dg[i / k] as f64 / k as f64 * s * (1.0 - s)
        })
        .collect()
}

/// The OneForecast gated processor layer (SPEC §6) in f64 straight from its definition, with
/// the concatenations `[e_e; h_src; h_dst]` and `[a_j; h_j]` built explicitly: `(e', h')`.
/// `p` holds the parameters in [`super::ONEFORECAST_PARAMS`] order.
pub fn oneforecast_layer(g: &Graph, l: &super::OneForecastLayer, e_feat: &[f64], h: &[f64], p: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let [w_e, w_s, w_d, b, w_b, b_b, ln_e, wg_e, wg_s, wg_d, b_g1, w_g2, b_g2, w_a1, b_a1, w_a2, b_a2, w_n1a, w_n1h, b_n1, w_n2, b_n2, ln_n] = p else {
        panic!("oneforecast_layer reference: 23 parameter tensors expected, got {}", p.len());
    };
    let (ne, n, d, heads) = (g.num_edges(), g.num_nodes, l.dim, l.heads);
    let dh = d / heads;
    let silu = |v: f64| v * sigmoid(v);
    // y = W·x + b for W [out, in] given as column blocks of the concatenated input.
    let linear = |blocks: &[&[f64]], x: &[f64], bias: &[f64]| -> Vec<f64> {
        let out = bias.len();
        (0..out)
            .map(|o| {
                let row = blocks.iter().flat_map(|w| &w[o * (w.len() / out)..(o + 1) * (w.len() / out)]);
                bias[o] + row.zip(x).map(|(w, x)| w * x).sum::<f64>()
            })
            .collect()
    };
    let ln = |x: &[f64], aff: &[f64]| -> Vec<f64> {
        let c = x.len() as f64;
        let mu = x.iter().sum::<f64>() / c;
        let rs = 1.0 / (x.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / c + l.eps as f64).sqrt();
        x.iter().enumerate().map(|(k, v)| (v - mu) * rs * aff[k] + aff[x.len() + k]).collect()
    };
    let mut e_out = vec![0.0; ne * d];
    let mut scores = vec![0.0; ne * heads];
    for e in 0..ne {
        let (s, t) = (g.src_coo[e] as usize, g.dst_coo[e] as usize);
        let cat: Vec<f64> = e_feat[e * d..(e + 1) * d].iter().chain(&h[s * d..(s + 1) * d]).chain(&h[t * d..(t + 1) * d]).copied().collect();
        let u: Vec<f64> = linear(&[w_e, w_s, w_d], &cat, b).into_iter().map(silu).collect();
        let m = ln(&linear(&[w_b], &u, b_b), ln_e);
        let q: Vec<f64> = linear(&[wg_e, wg_s, wg_d], &cat, b_g1).into_iter().map(silu).collect();
        let gates = linear(&[w_g2], &q, b_g2);
        let gate = gates.iter().map(|&v| sigmoid(v)).sum::<f64>() / gates.len() as f64;
        for k in 0..d {
            e_out[e * d + k] = gate * m[k] + e_feat[e * d + k];
        }
        let r: Vec<f64> = linear(&[w_a1], &e_out[e * d..(e + 1) * d], b_a1).into_iter().map(silu).collect();
        scores[e * heads..(e + 1) * heads].copy_from_slice(&linear(&[w_a2], &r, b_a2));
    }
    // Softmax over the edges into each node, per head.
    let (mut mx, mut sum) = (vec![f64::NEG_INFINITY; n * heads], vec![0.0; n * heads]);
    for e in 0..ne {
        for k in 0..heads {
            let i = g.dst_coo[e] as usize * heads + k;
            mx[i] = mx[i].max(scores[e * heads + k]);
        }
    }
    for e in 0..ne {
        for k in 0..heads {
            let i = g.dst_coo[e] as usize * heads + k;
            sum[i] += (scores[e * heads + k] - mx[i]).exp();
        }
    }
    let mut agg = vec![0.0; n * d];
    for e in 0..ne {
        let t = g.dst_coo[e] as usize;
        for k in 0..d {
            let i = t * heads + k / dh;
            agg[t * d + k] += (scores[e * heads + k / dh] - mx[i]).exp() / sum[i] * e_out[e * d + k];
        }
    }
    let mut h_out = vec![0.0; n * d];
    for j in 0..n {
        let cat: Vec<f64> = agg[j * d..(j + 1) * d].iter().chain(&h[j * d..(j + 1) * d]).copied().collect();
        let t1: Vec<f64> = linear(&[w_n1a, w_n1h], &cat, b_n1).into_iter().map(silu).collect();
        let y = ln(&linear(&[w_n2], &t1, b_n2), ln_n);
        for k in 0..d {
            h_out[j * d + k] = y[k] + h[j * d + k];
        }
    }
    (e_out, h_out)
}

/// `y[r, o] = Σ_i w[o, i]·x[r, i] (+ b[o])` in f64 (`w [out, in]`).
fn linear_rows(x: &[f64], w: &[f64], b: Option<&[f64]>, rows: usize, out: usize) -> Vec<f64> {
    let inp = w.len() / out;
    (0..rows * out).map(|k| b.map_or(0.0, |b| b[k % out]) + (0..inp).map(|i| w[(k % out) * inp + i] * x[(k / out) * inp + i]).sum::<f64>()).collect()
}

/// GCN from its definition: `act(D^-½ (A + I) D^-½ · X · Wᵀ + b)` on the graph `g` without
/// self-loops (they are added here), degrees counted at the destination.
pub fn gcn_layer(g: &Graph, x: &[f64], w: &[f64], b: &[f64], act: crate::Activation) -> Vec<f64> {
    let (n, out) = (g.num_nodes, b.len());
    let xw = linear_rows(x, w, None, n, out);
    let deg: Vec<f64> = (0..n).map(|i| 1.0 + g.dst_coo.iter().filter(|&&d| d as usize == i).count() as f64).collect();
    let mut y: Vec<f64> = (0..n * out).map(|k| xw[k] / deg[k / out]).collect(); // the self-loops
    for (&s, &d) in g.src_coo.iter().zip(&g.dst_coo) {
        let (s, d) = (s as usize, d as usize);
        for o in 0..out {
            y[d * out + o] += xw[s * out + o] / (deg[s] * deg[d]).sqrt();
        }
    }
    y.iter().enumerate().map(|(k, v)| crate::ops::gemm::cpu::act_f64(act, v + b[k % out])).collect()
}

/// GraphSAGE-mean from its definition: `act(W_n·mean_{j→i} h_j + W_s·h_i + b)`.
pub fn sage_layer(g: &Graph, x: &[f64], w_neigh: &[f64], w_self: &[f64], b: &[f64], act: crate::Activation) -> Vec<f64> {
    let (n, out) = (g.num_nodes, b.len());
    let inp = x.len() / n;
    let mut mean = vec![0.0; n * inp];
    for i in 0..n {
        let srcs: Vec<usize> = g.src_coo.iter().zip(&g.dst_coo).filter(|(_, &d)| d as usize == i).map(|(&s, _)| s as usize).collect();
        for k in 0..inp {
            if !srcs.is_empty() {
                mean[i * inp + k] = srcs.iter().map(|&s| x[s * inp + k]).sum::<f64>() / srcs.len() as f64;
            }
        }
    }
    let (a, r) = (linear_rows(&mean, w_neigh, Some(b), n, out), linear_rows(x, w_self, None, n, out));
    a.iter().zip(&r).map(|(a, r)| crate::ops::gemm::cpu::act_f64(act, a + r)).collect()
}

/// Multi-head GAT from its definition (heads concatenated, LeakyReLU slope 0.2).
#[allow(clippy::too_many_arguments)]
pub fn gat_layer(g: &Graph, x: &[f64], w: &[f64], a_src: &[f64], a_dst: &[f64], b: &[f64], heads: usize, act: crate::Activation) -> Vec<f64> {
    let (n, hf) = (g.num_nodes, b.len());
    let f = hf / heads;
    let z = linear_rows(x, w, None, n, hf);
    let dot = |node: usize, h: usize, a: &[f64]| (0..f).map(|k| z[node * hf + h * f + k] * a[h * f + k]).sum::<f64>();
    let mut out = vec![0.0; n * hf];
    for i in 0..n {
        let edges: Vec<usize> = (0..g.num_edges()).filter(|&e| g.dst_coo[e] as usize == i).collect();
        for h in 0..heads {
            let logits: Vec<f64> = edges.iter().map(|&e| { let v = dot(g.src_coo[e] as usize, h, a_src) + dot(i, h, a_dst); v.max(0.2 * v) }).collect();
            let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = logits.iter().map(|l| (l - mx).exp()).sum();
            for (&e, l) in edges.iter().zip(&logits) {
                let alpha = (l - mx).exp() / sum;
                for k in 0..f {
                    out[i * hf + h * f + k] += alpha * z[g.src_coo[e] as usize * hf + h * f + k];
                }
            }
        }
    }
    out.iter().enumerate().map(|(k, v)| crate::ops::gemm::cpu::act_f64(act, v + b[k % hf])).collect()
}
