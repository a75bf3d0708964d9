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
    let mut dst = vec![0usize; e_count];
    for i in 0..n {
        for p in g.row_ptr[i]..g.row_ptr[i + 1] {
            dst[g.perm[p as usize] as usize] = i;
        }
    }
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

pub fn spmm(g: &Graph, x: &[f32], w: Option<&[f32]>, dim: usize) -> Vec<f64> {
    let mut y = vec![0.0; g.num_nodes * dim];
    for i in 0..g.num_nodes {
        for p in g.row_ptr[i]..g.row_ptr[i + 1] {
            let e = g.perm[p as usize] as usize;
            let s = g.src[p as usize] as usize;
            let wv = w.map_or(1.0, |w| w[e] as f64);
            for d in 0..dim {
                y[i * dim + d] += wv * x[s * dim + d] as f64;
            }
        }
    }
    y
}
