//! f64 references of the graph primitives, straight from the definitions (COO loops).

use super::{Graph, Reduce};

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

/// The destination of every COO edge.
pub fn dst_of(g: &Graph) -> Vec<usize> {
    let mut dst = vec![0usize; g.num_edges()];
    for i in 0..g.num_nodes {
        for p in g.row_ptr[i]..g.row_ptr[i + 1] {
            dst[g.perm[p as usize] as usize] = i;
        }
    }
    dst
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
