//! Graph primitives: the CSR build (checked indices, stable order), the references against
//! each other and finite differences, and gather / segment_reduce / spmm / sddmm / segment
//! softmax with their backward on every backend and dtype against the reference, with
//! determinism and bad input.

mod common;

use common::{assert_close, devices_and_cpu};

use ffkern::ops::graph::{self, cpu, DeviceGraph, Graph, Reduce};
use ffkern::{with_backend, Backend, DType, Error, HostTensor};

/// A seeded random graph with empty rows (node n-1 never receives), self-loops and multi-edges.
fn random_graph(n: usize, e: usize, seed: u64) -> Graph {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = |m: usize| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) as usize % m) as i64
    };
    let mut src = Vec::new();
    let mut dst = Vec::new();
    for k in 0..e {
        let d = next(n - 1);
        src.push(if k % 7 == 0 { d } else { next(n) });
        dst.push(d);
    }
    // A multi-edge.
    src.push(src[0]);
    dst.push(dst[0]);
    Graph::from_coo(n, &src, &dst).expect("graph")
}

#[test]
fn csr_build_is_stable_and_checked() {
    let g = Graph::from_coo(4, &[3, 0, 1, 2, 0], &[1, 1, 0, 1, 3]).expect("graph");
    assert_eq!(g.row_ptr, vec![0, 1, 4, 4, 5]);
    assert_eq!(g.perm, vec![2, 0, 1, 3, 4], "edges of one destination keep their COO order");
    assert_eq!(g.src, vec![1, 3, 0, 2, 0]);
    assert_eq!(g.transposed().transposed(), g);
    let e = Graph::from_coo(3, &[0, 1, 5], &[1, 2, 0]).expect_err("src 5 of 3 nodes");
    assert!(matches!(e, Error::Index(ref m) if m.contains("edge 2") && m.contains("src = 5")), "{e}");
    let e = Graph::from_coo(3, &[0, 1], &[-1, 2]).expect_err("dst -1");
    assert!(matches!(e, Error::Index(ref m) if m.contains("edge 0") && m.contains("dst = -1")), "{e}");
    assert!(Graph::from_coo(3, &[0], &[1, 2]).is_err());
    let empty = Graph::from_coo(1, &[], &[]).expect("no edges");
    assert_eq!(empty.row_ptr, vec![0, 0]);
}

#[test]
fn references_agree_with_each_other() {
    let g = random_graph(13, 40, 3);
    let dim = 5;
    let x = HostTensor::random(DType::F32, vec![13 * dim], 1).data;
    let w = HostTensor::random(DType::F32, vec![g.num_edges()], 2).data;
    // spmm = segment sum of weighted gathered rows.
    let gathered = cpu::gather_rows(&g, &x, dim);
    let weighted: Vec<f32> = gathered.iter().enumerate().map(|(i, v)| (v * w[i / dim] as f64) as f32).collect();
    let (sum, _) = cpu::segment_reduce(&g, &weighted, dim, Reduce::Sum);
    let y = cpu::spmm(&g, &x, Some(&w), 1, dim);
    let worst = y.iter().zip(&sum).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-5, "spmm vs gather+sum: {worst:e}");
    // Mean = sum / degree; max ≥ mean ≥ min; empty row (node 12) gives 0 and arg E.
    let (mean, _) = cpu::segment_reduce(&g, &weighted, dim, Reduce::Mean);
    let (max, amax) = cpu::segment_reduce(&g, &weighted, dim, Reduce::Max);
    let (min, _) = cpu::segment_reduce(&g, &weighted, dim, Reduce::Min);
    for i in 0..13 {
        let deg = (g.row_ptr[i + 1] - g.row_ptr[i]) as f64;
        for d in 0..dim {
            let k = i * dim + d;
            if deg == 0.0 {
                assert_eq!((sum[k], max[k], amax[k]), (0.0, 0.0, g.num_edges() as u32));
            } else {
                assert!((mean[k] * deg - sum[k]).abs() < 1e-9 && max[k] >= mean[k] - 1e-9 && mean[k] >= min[k] - 1e-9);
                assert_eq!(weighted[amax[k] as usize * dim + d] as f64, max[k]);
            }
        }
    }
    // Ties go to the first edge in COO order.
    let t = Graph::from_coo(2, &[0, 1, 0], &[1, 1, 1]).expect("graph");
    let (_, a) = cpu::segment_reduce(&t, &[1.0, 2.0, 2.0], 1, Reduce::Max);
    assert_eq!(a, vec![3, 1]);
}

fn words(buf: &[f32]) -> Vec<u32> {
    buf.iter().map(|x| x.to_bits()).collect()
}

/// Every reduction of `segment_reduce` on `be` against the reference: the values within the
/// dtype's budget and, for max/min, the first args exactly.
fn every_reduction_matches<Be: Backend>(be: &Be, dg: &DeviceGraph<Be::Buf>, mb: &Be::Buf, g: &Graph, m: &HostTensor, dim: usize, what: &str) {
    for reduce in [Reduce::Sum, Reduce::Mean, Reduce::Max, Reduce::Min] {
        let (y, arg) = graph::segment_reduce(be, dg, mb, dim, reduce).expect("segment_reduce");
        let (r, ra) = cpu::segment_reduce(g, &m.data, dim, reduce);
        assert_close(&format!("{what} segment {reduce:?}"), &be.download(&y).expect("download").data, &r, m.dtype);
        if let Some(arg) = arg {
            assert_eq!(words(&be.download(&arg).expect("download").data), ra, "{what} segment {reduce:?} arg");
        }
    }
}

#[test]
fn primitives_match_the_reference_on_every_backend() {
    for dev in devices_and_cpu() {
        for dtype in DType::ALL {
            // D 264: rows wider than one warp's 32 16-byte pieces (CUDA gives such a row several warps).
            for (n, e, dim) in [(1, 0, 3), (37, 150, 7), (300, 2000, 64), (40, 200, 264)] {
                let g = if e == 0 { Graph::from_coo(n, &[], &[]).expect("graph") } else { random_graph(n, e, n as u64) };
                let gt = g.transposed();
                let ec = g.num_edges();
                let x = HostTensor::random(dtype, vec![n * dim], 10 + n as u64);
                let m = HostTensor::random(dtype, vec![ec.max(1) * dim], 20 + n as u64);
                let w = HostTensor::random(DType::F32, vec![ec.max(1)], 30 + n as u64);
                let what = format!("{} {dtype} N{n} E{ec} D{dim}", dev.name());
                with_backend!(dev, be => {
                    let up = |t: &HostTensor| be.upload(t).expect("upload");
                    let down = |b: &_| be.download(b).expect("download").data;
                    let dg = DeviceGraph::upload(be, &g).expect("graph upload");
                    let dgt = DeviceGraph::upload(be, &gt).expect("graph upload");
                    let (xb, mb, wb) = (up(&x), up(&m), up(&w));
                    let out = graph::gather_rows(be, &dg, &xb, dim).expect("gather");
                    assert_close(&format!("{what} gather"), &down(&out), &cpu::gather_rows(&g, &x.data, dim), dtype);
                    for weighted in [false, true] {
                        let y = graph::spmm(be, &dg, &xb, weighted.then_some(&wb), dim).expect("spmm");
                        let r = cpu::spmm(&g, &x.data, weighted.then_some(&w.data[..]), 1, dim);
                        assert_close(&format!("{what} spmm w={weighted}"), &down(&y), &r, dtype);
                    }
                    every_reduction_matches(be, &dg, &mb, &g, &m, dim, &what);
                    // Backward: the adjoints, over the transposed graph.
                    let dx = graph::gather_rows_backward(be, &dgt, &mb, dim).expect("gather backward");
                    assert_close(&format!("{what} gather backward"), &down(&dx), &cpu::segment_reduce(&gt, &m.data, dim, Reduce::Sum).0, dtype);
                    let dm = graph::segment_sum_backward(be, &dgt, &xb, dim).expect("segment backward");
                    assert_close(&format!("{what} segment-sum backward"), &down(&dm), &cpu::gather_rows(&gt, &x.data, dim), dtype);
                    // Deterministic: a second run gives the same bits.
                    let again = graph::spmm(be, &dg, &xb, Some(&wb), dim).expect("spmm");
                    let first = graph::spmm(be, &dg, &xb, Some(&wb), dim).expect("spmm");
                    assert_eq!(words(&down(&again)), words(&down(&first)), "{what}: two runs differ");
                });
            }
        }
    }
}

#[test]
fn adjoint_identities_hold_in_the_reference() {
    // <gather(X), G> = <X, gather_backward(G)> and <segsum(M), H> = <M, segsum_backward(H)>.
    let g = random_graph(29, 120, 9);
    let gt = g.transposed();
    let dim = 4;
    let x = HostTensor::random(DType::F32, vec![29 * dim], 1).data;
    let m = HostTensor::random(DType::F32, vec![g.num_edges() * dim], 2).data;
    let dot = |a: &[f64], b: &[f32]| a.iter().zip(b).map(|(p, q)| p * *q as f64).sum::<f64>();
    let lhs = dot(&cpu::gather_rows(&g, &x, dim), &m);
    let rhs = dot(&cpu::segment_reduce(&gt, &m, dim, Reduce::Sum).0, &x);
    assert!((lhs - rhs).abs() < 1e-9 * lhs.abs().max(1.0), "gather adjoint {lhs} vs {rhs}");
    let lhs = dot(&cpu::segment_reduce(&g, &m, dim, Reduce::Sum).0, &x);
    let rhs = dot(&cpu::gather_rows(&gt, &x, dim), &m);
    assert!((lhs - rhs).abs() < 1e-9 * lhs.abs().max(1.0), "segment-sum adjoint {lhs} vs {rhs}");
}

#[test]
fn bad_input_is_an_error() {
    let g = random_graph(10, 30, 1);
    for dev in devices_and_cpu() {
        with_backend!(dev, be => {
            let dg = DeviceGraph::upload(be, &g).expect("graph upload");
            let short = be.upload(&HostTensor::random(DType::F32, vec![10 * 4 - 1], 1)).expect("x");
            assert!(matches!(graph::gather_rows(be, &dg, &short, 4), Err(Error::Shape { .. })), "{}: short X", dev.name());
            assert!(matches!(graph::spmm(be, &dg, &short, None, 4), Err(Error::Shape { .. })), "{}: short X", dev.name());
            let x = be.upload(&HostTensor::random(DType::F32, vec![10 * 4], 1)).expect("x");
            let w = be.upload(&HostTensor::random(DType::F32, vec![3], 1)).expect("w");
            assert!(matches!(graph::spmm(be, &dg, &x, Some(&w), 4), Err(Error::Shape { .. })), "{}: short w", dev.name());
            assert!(graph::segment_reduce(be, &dg, &x, 4, Reduce::Max).is_err(), "{}: M shorter than E·D", dev.name());
            assert!(matches!(graph::sddmm(be, &dg, &x, &x, 3, 4), Err(Error::Shape { .. })), "{}: dim not a multiple of heads", dev.name());
            let s16 = be.upload(&HostTensor::random(DType::F16, vec![g.num_edges()], 1)).expect("s");
            assert!(matches!(graph::segment_softmax(be, &dg, &s16, 1), Err(Error::Dtype { .. })), "{}: f16 scores", dev.name());
        });
    }
    assert!("median".parse::<Reduce>().is_err());
}

/// The attention path (GAT, OneForecast): scores by sddmm, segment softmax, weighted multi-head
/// spmm, and the backward of each, on every backend and dtype.
#[test]
fn attention_primitives_match_the_reference_on_every_backend() {
    for dev in devices_and_cpu() {
        for dtype in DType::ALL {
            // Heads of 16 and 520 columns take CUDA's 16-byte lane groups (520 bf16: 65 pieces, more
            // than a warp's lanes); 5 the one-thread form.
            for (n, e, heads, dh) in [(23usize, 90usize, 3usize, 5usize), (300, 2400, 4, 16), (40, 200, 1, 520)] {
                let g = random_graph(n, e, 5 + n as u64);
                let gt = g.transposed();
                let (ec, dim) = (g.num_edges(), heads * dh);
                let a = HostTensor::random(dtype, vec![n * dim], 40);
                let b = HostTensor::random(dtype, vec![n * dim], 41);
                let s = HostTensor::random(DType::F32, vec![ec * heads], 42);
                let da = HostTensor::random(DType::F32, vec![ec * heads], 43);
                let what = format!("{} {dtype} N{n} E{ec} H{heads} Dh{dh}", dev.name());
                let alpha_ref = cpu::segment_softmax(&g, &s.data, heads);
                let alpha_host: Vec<f32> = alpha_ref.iter().map(|&v| v as f32).collect();
                with_backend!(dev, be => {
                    let up = |t: &HostTensor| be.upload(t).expect("upload");
                    let down = |b: &_| be.download(b).expect("download").data;
                    let dg = DeviceGraph::upload(be, &g).expect("graph upload");
                    let dgt = DeviceGraph::upload(be, &gt).expect("graph upload");
                    let (ab, bb, sb, dab) = (up(&a), up(&b), up(&s), up(&da));
                    // Scores are f32 whatever the features' dtype; the budget is the inputs'.
                    let sc = graph::sddmm(be, &dg, &ab, &bb, heads, dim).expect("sddmm");
                    assert_close(&format!("{what} sddmm"), &down(&sc), &cpu::sddmm(&g, &a.data, &b.data, heads, dim), dtype);
                    let alpha = graph::segment_softmax(be, &dg, &sb, heads).expect("softmax");
                    assert_close(&format!("{what} softmax"), &down(&alpha), &alpha_ref, DType::F32);
                    let alpha_b = be.upload(&HostTensor::new(DType::F32, vec![ec * heads], alpha_host.clone()).expect("alpha")).expect("alpha");
                    let ds = graph::segment_softmax_backward(be, &dg, &alpha_b, &dab, heads).expect("softmax backward");
                    assert_close(&format!("{what} softmax backward"), &down(&ds), &cpu::segment_softmax_backward(&g, &alpha_host, &da.data, heads), DType::F32);
                    let y = graph::spmm_heads(be, &dg, &bb, Some(&alpha_b), heads, dim).expect("spmm heads");
                    assert_close(&format!("{what} spmm heads"), &down(&y), &cpu::spmm(&g, &b.data, Some(&alpha_host), heads, dim), dtype);
                    // spmm backward with dY = A: dX over the transposed graph, dw = sddmm(dY, X).
                    let (dx, dw) = graph::spmm_backward(be, &dg, &dgt, &bb, Some(&alpha_b), &ab, heads, dim).expect("spmm backward");
                    assert_close(&format!("{what} spmm backward dX"), &down(&dx), &cpu::spmm(&gt, &a.data, Some(&alpha_host), heads, dim), dtype);
                    assert_close(&format!("{what} spmm backward dw"), &down(&dw.expect("dw")), &cpu::sddmm(&g, &a.data, &b.data, heads, dim), dtype);
                    // sddmm backward with ds = dα.
                    let (d_a, d_b) = graph::sddmm_backward(be, &dg, &dgt, &ab, &bb, &dab, heads, dim).expect("sddmm backward");
                    assert_close(&format!("{what} sddmm backward dA"), &down(&d_a), &cpu::spmm(&g, &b.data, Some(&da.data), heads, dim), dtype);
                    assert_close(&format!("{what} sddmm backward dB"), &down(&d_b), &cpu::spmm(&gt, &a.data, Some(&da.data), heads, dim), dtype);
                });
            }
        }
    }
}

/// The attention references against central finite differences of
/// `L = Σ_e Σ_h c[e, h]·softmax(sddmm(A, B))[e, h]` in A and B, and of weighted spmm in w.
#[test]
fn attention_references_match_finite_differences() {
    let (n, heads, dh) = (9usize, 2usize, 3usize);
    let g = random_graph(n, 30, 77);
    let gt = g.transposed();
    let (ec, dim) = (g.num_edges(), heads * dh);
    let a = HostTensor::random(DType::F32, vec![n * dim], 1).data;
    let b = HostTensor::random(DType::F32, vec![n * dim], 2).data;
    let c = HostTensor::random(DType::F32, vec![ec * heads], 3).data;
    let loss = |a: &[f32], b: &[f32]| -> f64 {
        let s: Vec<f32> = cpu::sddmm(&g, a, b, heads, dim).iter().map(|&v| v as f32).collect();
        cpu::segment_softmax(&g, &s, heads).iter().zip(&c).map(|(p, q)| p * *q as f64).sum()
    };
    // Analytic: dα = c, ds = softmax backward, dA = spmm(g, B, ds), dB = spmm(gt, A, ds).
    let s: Vec<f32> = cpu::sddmm(&g, &a, &b, heads, dim).iter().map(|&v| v as f32).collect();
    let alpha: Vec<f32> = cpu::segment_softmax(&g, &s, heads).iter().map(|&v| v as f32).collect();
    let ds: Vec<f32> = cpu::segment_softmax_backward(&g, &alpha, &c, heads).iter().map(|&v| v as f32).collect();
    let da = cpu::spmm(&g, &b, Some(&ds), heads, dim);
    let db = cpu::spmm(&gt, &a, Some(&ds), heads, dim);
    let h = 1e-2f32;
    for k in [0, 7, 13, n * dim - 1] {
        for (which, grad) in [(0, &da), (1, &db)] {
            let (mut ap, mut am, mut bp, mut bm) = (a.clone(), a.clone(), b.clone(), b.clone());
            if which == 0 {
                ap[k] += h;
                am[k] -= h;
            } else {
                bp[k] += h;
                bm[k] -= h;
            }
            let fd = (loss(&ap, &bp) - loss(&am, &bm)) / (2.0 * h as f64);
            assert!((fd - grad[k]).abs() < 2e-3 * (1.0 + fd.abs()), "d{} [{k}]: fd {fd} vs analytic {}", ["A", "B"][which], grad[k]);
        }
    }
}

/// LayerNorm over rows: forward (output and saved stats) and backward (dx, dγ, dβ) on every
/// backend and dtype, with rows wider than a workgroup and an odd width; the reference's
/// backward against finite differences.
#[test]
fn layer_norm_matches_the_reference_on_every_backend() {
    let eps = 1e-5;
    for dev in devices_and_cpu() {
        for dtype in DType::ALL {
            // 700 rows: three chunks of the parameter gradients' first pass, the last one partial.
            // Widths 264 and 512 take CUDA's warp-per-row form (whole 16-byte pieces, ≤ 512).
            for (rows, c) in [(1usize, 7usize), (37, 33), (5, 600), (700, 9), (67, 264), (9, 512)] {
                // An offset mean, so a one-pass variance would lose digits.
                let x = HostTensor::new(dtype, vec![rows * c], HostTensor::random(DType::F32, vec![rows * c], 50).data.iter().map(|v| dtype.round(3.0 + v)).collect()).expect("x");
                let dy = HostTensor::random(dtype, vec![rows * c], 51);
                let gamma = HostTensor::new(DType::F32, vec![c], HostTensor::random(DType::F32, vec![c], 52).data.iter().map(|v| 1.0 + 0.5 * v).collect()).expect("gamma");
                let beta = HostTensor::random(DType::F32, vec![c], 53);
                let (y_ref, mean, rstd) = cpu::layer_norm(&x.data, &gamma.data, &beta.data, c, eps);
                let (dx_ref, dg_ref, db_ref) = cpu::layer_norm_backward(&x.data, &dy.data, &gamma.data, c, eps);
                let stats_ref: Vec<f64> = mean.iter().chain(&rstd).copied().collect();
                let params_ref: Vec<f64> = dg_ref.iter().chain(&db_ref).copied().collect();
                let what = format!("{} {dtype} rows{rows} c{c}", dev.name());
                with_backend!(dev, be => {
                    let up = |t: &HostTensor| be.upload(t).expect("upload");
                    let down = |b: &_| be.download(b).expect("download").data;
                    let affine = HostTensor::new(DType::F32, vec![2 * c], gamma.data.iter().chain(&beta.data).copied().collect()).expect("affine");
                    let (xb, gb) = (up(&x), up(&affine));
                    let (y, stats) = graph::layer_norm(be, &xb, &gb, rows, c, eps).expect("layer_norm");
                    assert_close(&format!("{what} y"), &down(&y), &y_ref, dtype);
                    assert_close(&format!("{what} stats"), &down(&stats), &stats_ref, DType::F32);
                    let (dx, dparams) = graph::layer_norm_backward(be, &xb, &up(&dy), &gb, &stats, rows, c, eps).expect("backward");
                    assert_close(&format!("{what} dx"), &down(&dx), &dx_ref, dtype);
                    assert_close(&format!("{what} dγ dβ"), &down(&dparams), &params_ref, dtype);
                });
            }
        }
    }
    // The reference backward against central differences of L = Σ c·LN(x).
    let (rows, c) = (3, 5);
    let x = HostTensor::random(DType::F32, vec![rows * c], 60).data;
    let w = HostTensor::random(DType::F32, vec![rows * c], 61).data;
    let gamma = HostTensor::random(DType::F32, vec![c], 62).data;
    let loss = |x: &[f32], g: &[f32]| -> f64 { cpu::layer_norm(x, g, &[0.0; 5], c, eps).0.iter().zip(&w).map(|(a, b)| a * *b as f64).sum() };
    let (dx, dg, _) = cpu::layer_norm_backward(&x, &w, &gamma, c, eps);
    let h = 1e-3f32;
    for k in [0, 6, 14] {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[k] += h;
        xm[k] -= h;
        let fd = (loss(&xp, &gamma) - loss(&xm, &gamma)) / (2.0 * h as f64);
        assert!((fd - dx[k]).abs() < 1e-2 * (1.0 + fd.abs()), "dx[{k}]: fd {fd} vs {}", dx[k]);
    }
    for k in [0, 4] {
        let (mut gp, mut gm) = (gamma.clone(), gamma.clone());
        gp[k] += h;
        gm[k] -= h;
        let fd = (loss(&x, &gp) - loss(&x, &gm)) / (2.0 * h as f64);
        assert!((fd - dg[k]).abs() < 1e-2 * (1.0 + fd.abs()), "dγ[{k}]: fd {fd} vs {}", dg[k]);
    }
}

/// The edge MLP (concat trick) against the reference that builds `[e_e; h_src; h_dst]`, forward
/// and backward (gradients of each block of the concatenated GEMM), on every backend and dtype.
#[test]
fn edge_mlp_matches_the_concatenation_on_every_backend() {
    use ffkern::ops::graph::{EdgeMlp, EdgeMlpForm, EdgeMlpWeights};
    use ffkern::Activation;
    let (n, de, dh, dout) = (17usize, 6usize, 5usize, 9usize);
    let g = random_graph(n, 50, 21);
    let gt = g.transposed();
    let e = g.num_edges();
    let mlp = EdgeMlp { edge_dim: de, node_dim: dh, out_dim: dout, act: Activation::Silu };
    for dev in devices_and_cpu() {
        for dtype in DType::ALL {
            let t = |len: usize, seed: u64| HostTensor::random(dtype, vec![len], seed);
            let (ef, h) = (t(e * de, 70), t(n * dh, 71));
            let (w_e, w_s, w_d, b) = (t(dout * de, 72), t(dout * dh, 73), t(dout * dh, 74), t(dout, 75));
            let dm = t(e * dout, 76);
            let (m_ref, z_ref) = cpu::edge_mlp(&g, &ef.data, &h.data, &w_e.data, &w_s.data, &w_d.data, &b.data, de, dh, mlp.act);
            // Reference gradients: dz = dm ⊙ act'(z), then each block of the concatenated GEMM.
            let dz: Vec<f64> = z_ref.iter().zip(&dm.data).map(|(&z, &d)| d as f64 * act_grad(z)).collect();
            let mut d_edge = vec![0.0; e * de];
            let mut d_node = vec![0.0; n * dh];
            let mut dw_s = vec![0.0; dout * dh];
            for k in 0..e {
                let (s, dd) = (g.src_coo[k] as usize, g.dst_coo[k] as usize);
                for o in 0..dout {
                    let gz = dz[k * dout + o];
                    for i in 0..de {
                        d_edge[k * de + i] += gz * w_e.data[o * de + i] as f64;
                    }
                    for i in 0..dh {
                        d_node[s * dh + i] += gz * w_s.data[o * dh + i] as f64;
                        d_node[dd * dh + i] += gz * w_d.data[o * dh + i] as f64;
                        dw_s[o * dh + i] += gz * h.data[s * dh + i] as f64;
                    }
                }
            }
            let db: Vec<f64> = (0..dout).map(|o| (0..e).map(|k| dz[k * dout + o]).sum()).collect();
            let what = format!("{} {dtype} edge_mlp", dev.name());
            with_backend!(dev, be => {
                let up = |t: &HostTensor| be.upload(t).expect("upload");
                let down = |b: &_| be.download(b).expect("download").data;
                let dg = DeviceGraph::upload(be, &g).expect("graph");
                let dgt = DeviceGraph::upload(be, &gt).expect("graph");
                let w = EdgeMlpWeights { w_e: up(&w_e), w_s: up(&w_s), w_d: up(&w_d), b: up(&b) };
                let (efb, hb) = (up(&ef), up(&h));
                let m = mlp.forward(be, &dg, &efb, &hb, &w).expect("forward");
                assert_close(&format!("{what} m"), &down(&m), &m_ref, dtype);
                let gr = mlp.backward(be, &dg, &dgt, &efb, &hb, &w, &up(&dm)).expect("backward");
                assert_close(&format!("{what} d_edge"), &down(&gr.d_edge), &d_edge, dtype);
                assert_close(&format!("{what} d_node"), &down(&gr.d_node), &d_node, dtype);
                assert_close(&format!("{what} dW_s"), &down(&gr.w_s), &dw_s, dtype);
                assert_close(&format!("{what} db"), &down(&gr.b), &db, dtype);
                // The unfused form (gathered endpoints, [E, ·] GEMMs) gives the same numbers.
                let m = mlp.forward_as(EdgeMlpForm::Materialized, be, &dg, &dgt, &efb, &hb, &w).expect("unfused forward");
                assert_close(&format!("{what} unfused m"), &down(&m), &m_ref, dtype);
                let gr = mlp.backward_as(EdgeMlpForm::Materialized, be, &dg, &dgt, &efb, &hb, &w, &up(&dm)).expect("unfused backward");
                assert_close(&format!("{what} unfused d_edge"), &down(&gr.d_edge), &d_edge, dtype);
                assert_close(&format!("{what} unfused d_node"), &down(&gr.d_node), &d_node, dtype);
                assert_close(&format!("{what} unfused dW_s"), &down(&gr.w_s), &dw_s, dtype);
                assert_close(&format!("{what} unfused db"), &down(&gr.b), &db, dtype);
            });
        }
    }
}

/// SiLU′ in f64.
fn act_grad(z: f64) -> f64 {
    let s = 1.0 / (1.0 + (-z).exp());
    s * (1.0 + z * (1.0 - s))
}

/// Attention-weighted aggregation of edge features and its backward on every backend and dtype;
/// the reference backward through the adjoint identity.
#[test]
fn weighted_segment_sum_matches_the_reference_on_every_backend() {
    let (n, heads, dh) = (41usize, 3usize, 6usize);
    let g = random_graph(n, 200, 31);
    let gt = g.transposed();
    let (e, dim) = (g.num_edges(), heads * dh);
    for dev in devices_and_cpu() {
        for dtype in DType::ALL {
            let m = HostTensor::random(dtype, vec![e * dim], 80);
            let w = HostTensor::random(DType::F32, vec![e * heads], 81);
            let d_out = HostTensor::random(dtype, vec![n * dim], 82);
            let y_ref = cpu::segment_sum_weighted(&g, &m.data, &w.data, heads, dim);
            let dm_ref = cpu::gather_weighted(&gt, &d_out.data, &w.data, heads, dim);
            let g_out: Vec<f32> = cpu::gather_rows(&gt, &d_out.data, dim).iter().map(|&v| v as f32).collect();
            let dw_ref = cpu::edge_dot(&g_out, &m.data, e, heads, dim);
            let what = format!("{} {dtype} weighted segment sum", dev.name());
            with_backend!(dev, be => {
                let up = |t: &HostTensor| be.upload(t).expect("upload");
                let down = |b: &_| be.download(b).expect("download").data;
                let dg = DeviceGraph::upload(be, &g).expect("graph");
                let dgt = DeviceGraph::upload(be, &gt).expect("graph");
                let (mb, wb) = (up(&m), up(&w));
                let y = graph::segment_sum_weighted(be, &dg, &mb, &wb, heads, dim).expect("forward");
                assert_close(&format!("{what} y"), &down(&y), &y_ref, dtype);
                let (dm, dw) = graph::segment_sum_weighted_backward(be, &dgt, &mb, &wb, &up(&d_out), heads, dim).expect("backward");
                assert_close(&format!("{what} dM"), &down(&dm), &dm_ref, dtype);
                assert_close(&format!("{what} dw"), &down(&dw), &dw_ref, dtype);
            });
        }
    }
    // <segment_sum_weighted(M, w), G> = <M, dM(G)> = Σ w·dw(G).
    let m = HostTensor::random(DType::F32, vec![e * dim], 90).data;
    let w = HostTensor::random(DType::F32, vec![e * heads], 91).data;
    let gr = HostTensor::random(DType::F32, vec![n * dim], 92).data;
    let lhs: f64 = cpu::segment_sum_weighted(&g, &m, &w, heads, dim).iter().zip(&gr).map(|(a, b)| a * *b as f64).sum();
    let via_m: f64 = cpu::gather_weighted(&gt, &gr, &w, heads, dim).iter().zip(&m).map(|(a, b)| a * *b as f64).sum();
    let g_out: Vec<f32> = cpu::gather_rows(&gt, &gr, dim).iter().map(|&v| v as f32).collect();
    let via_w: f64 = cpu::edge_dot(&g_out, &m, e, heads, dim).iter().zip(&w).map(|(a, b)| a * *b as f64).sum();
    assert!((lhs - via_m).abs() < 1e-6 * lhs.abs().max(1.0) && (lhs - via_w).abs() < 1e-5 * lhs.abs().max(1.0), "{lhs} {via_m} {via_w}");
}

/// A skewed graph: a hub with 10,000 in-edges, rows of exactly one segment, one edge more, and
/// several segments, an empty row, edges in shuffled COO order. Values are quantised so max/min
/// ties fall in different segments (the first edge must win). Every row-reducing primitive on
/// every backend and dtype against the reference, and twice for bitwise determinism.
#[test]
fn long_rows_split_into_segments_match_the_reference() {
    use ffkern::ops::graph::SEGMENT_EDGES as C;
    let n = 40;
    let mut s = 0x2545F4914F6CDD1Du64;
    let mut next = |m: usize| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % m as u64) as i64
    };
    let mut pairs: Vec<(i64, i64)> = Vec::new();
    for (node, deg) in [(0, 10_000), (1, C), (2, C + 1), (3, 3 * C + 5), (5, 2 * C)] {
        pairs.extend((0..deg).map(|_| (next(n), node)));
    }
    pairs.extend((0..300).map(|_| (next(n), 6 + next(n - 7))));
    // Shuffle (Fisher–Yates) so each row's COO order differs from its arrival order.
    for i in (1..pairs.len()).rev() {
        pairs.swap(i, next(i + 1) as usize);
    }
    let (src, dst): (Vec<i64>, Vec<i64>) = pairs.into_iter().unzip();
    let g = Graph::from_coo(n, &src, &dst).expect("graph");
    assert_eq!(g.row_ptr[n] - g.row_ptr[n - 1], 0, "node n-1 has no edges");
    let (long_rows, _, segs) = g.segments();
    assert_eq!(long_rows, vec![0, 2, 3, 5]);
    assert_eq!(segs.len(), 10_000usize.div_ceil(C) + 2 + 4 + 2);
    let gt = g.transposed();
    let ec = g.num_edges();
    for dev in devices_and_cpu() {
        for dtype in DType::ALL {
            // An odd width, so 16-bit words straddle rows (the element kernels); and rows of whole
            // 16-byte pieces (CUDA's warp form, its segments, combines and short rows in one
            // launch): 264 and 2 heads of 136 wide, two or three warps' pieces a row, and 24 and 2
            // heads of 12, a few pieces a row (groups of 4 or 8 lanes, several rows a warp).
            for (dim, dh) in [(5, 3), (264, 136), (24, 12)] {
                let what = format!("{} {dtype} D{dim} hub", dev.name());
                let quant = |t: HostTensor| HostTensor::new(t.dtype, t.shape.clone(), t.data.iter().map(|v| (v * 4.0).round() / 4.0).collect()).expect("quantised");
                let m = quant(HostTensor::random(dtype, vec![ec * dim], 1));
                let x = HostTensor::random(dtype, vec![n * dim], 2);
                let heads = 2;
                let a = HostTensor::random(dtype, vec![n * heads * dh], 3);
                let w = HostTensor::random(DType::F32, vec![ec * heads], 4);
                let sc = HostTensor::new(DType::F32, vec![ec * heads], HostTensor::random(DType::F32, vec![ec * heads], 5).data.iter().map(|v| 8.0 * v).collect()).expect("scores");
                let alpha_ref = cpu::segment_softmax(&g, &sc.data, heads);
                let alpha_host = HostTensor::new(DType::F32, vec![ec * heads], alpha_ref.iter().map(|&v| v as f32).collect()).expect("alpha");
                with_backend!(dev, be => {
                    let up = |t: &HostTensor| be.upload(t).expect("upload");
                    let down = |b: &_| be.download(b).expect("download").data;
                    let dg = DeviceGraph::upload(be, &g).expect("graph");
                    let dgt = DeviceGraph::upload(be, &gt).expect("graph");
                    let mb = up(&m);
                    every_reduction_matches(be, &dg, &mb, &g, &m, dim, &what);
                    let (xb, wb, ab) = (up(&x), up(&w), up(&a));
                    let y = graph::spmm(be, &dg, &xb, None, dim).expect("spmm");
                    assert_close(&format!("{what} spmm"), &down(&y), &cpu::spmm(&g, &x.data, None, 1, dim), dtype);
                    let y = graph::spmm_heads(be, &dg, &ab, Some(&wb), heads, heads * dh).expect("spmm heads");
                    let y_ref = cpu::spmm(&g, &a.data, Some(&w.data), heads, heads * dh);
                    assert_close(&format!("{what} spmm heads"), &down(&y), &y_ref, dtype);
                    let again = graph::spmm_heads(be, &dg, &ab, Some(&wb), heads, heads * dh).expect("spmm heads");
                    assert_eq!(words(&down(&again)), words(&down(&y)), "{what}: two runs differ");
                    let ma = HostTensor::random(dtype, vec![ec * heads * dh], 6);
                    let ys = graph::segment_sum_weighted(be, &dg, &up(&ma), &wb, heads, heads * dh).expect("weighted sum");
                    assert_close(&format!("{what} weighted segment sum"), &down(&ys), &cpu::segment_sum_weighted(&g, &ma.data, &w.data, heads, heads * dh), dtype);
                    let s = graph::sddmm(be, &dg, &ab, &ab, heads, heads * dh).expect("sddmm");
                    assert_close(&format!("{what} sddmm"), &down(&s), &cpu::sddmm(&g, &a.data, &a.data, heads, heads * dh), dtype);
                    let alpha = graph::segment_softmax(be, &dg, &up(&sc), heads).expect("softmax");
                    assert_close(&format!("{what} softmax"), &down(&alpha), &alpha_ref, DType::F32);
                    let ds = graph::segment_softmax_backward(be, &dg, &up(&alpha_host), &wb, heads).expect("softmax backward");
                    assert_close(&format!("{what} softmax backward"), &down(&ds), &cpu::segment_softmax_backward(&g, &alpha_host.data, &w.data, heads), DType::F32);
                    // The hub's sources are spread over the transposed graph's rows.
                    let dx = graph::gather_rows_backward(be, &dgt, &mb, dim).expect("gather backward");
                    assert_close(&format!("{what} gather backward"), &down(&dx), &cpu::segment_reduce(&gt, &m.data, dim, Reduce::Sum).0, dtype);
                });
            }
        }
    }
}

/// llvmpipe ends a shader invocation's loops once they have run 65,535 iterations in all, and a
/// long row's segments are combined in one invocation (the softmax statistics walk them twice):
/// there a softmax over a row of as many segments as `LLVMPIPE_LOOP_BUDGET` allows matches the
/// reference and one segment more is an unsupported error instead of a sum cut short, while spmm
/// (one walk) runs both. Other adapters run all of them.
#[cfg(feature = "wgpu")]
#[test]
fn long_row_combines_stay_within_llvmpipes_loop_budget() {
    use ffkern::ops::graph::SEGMENT_EDGES as C;
    use ffkern::runtime::wgpu::LLVMPIPE_LOOP_BUDGET;
    let Some(be) = common::wgpu() else { return };
    let llvmpipe = be.info.name.contains("llvmpipe");
    // The segments softmax may combine: two walks and the binary search's 32 steps.
    let room = (LLVMPIPE_LOOP_BUDGET as usize - 32) / 2;
    for segs in [room, room + 1] {
        let deg = segs * C;
        let src: Vec<i64> = (0..deg).map(|e| (e % 3) as i64).collect();
        let g = Graph::from_coo(3, &src, &vec![1; deg]).expect("hub");
        let dg = DeviceGraph::upload(&be, &g).expect("graph");
        let s = HostTensor::new(DType::F32, vec![deg], HostTensor::random(DType::F32, vec![deg], 7).data.iter().map(|v| 6.0 * v).collect()).expect("scores");
        let what = format!("wgpu hub of {segs} segments");
        match graph::segment_softmax(&be, &dg, &be.upload(&s).expect("s"), 1) {
            Err(Error::Unsupported(m)) if llvmpipe && segs > room => assert!(m.contains("segments"), "{m}"),
            Err(e) => panic!("{what} softmax: {e}"),
            Ok(alpha) => {
                assert!(!llvmpipe || segs == room, "llvmpipe combined {segs} segments past its loop budget");
                assert_close(&format!("{what} softmax"), &be.download(&alpha).expect("alpha").data, &cpu::segment_softmax(&g, &s.data, 1), DType::F32);
            }
        }
        // Values on a grid of quarters: every partial sum is exact in f32, so the long sum's order
        // costs nothing and the comparison sees only a cut-short walk.
        let x = HostTensor::new(DType::F32, vec![3 * 2], HostTensor::random(DType::F32, vec![3 * 2], 8).data.iter().map(|v| (4.0 * v).round() / 4.0 + 0.25).collect()).expect("x");
        let y = graph::spmm(&be, &dg, &be.upload(&x).expect("x"), None, 2).expect("spmm walks the segments once");
        assert_close(&format!("{what} spmm"), &be.download(&y).expect("y").data, &cpu::spmm(&g, &x.data, None, 1, 2), DType::F32);
    }
}
