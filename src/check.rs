//! `ffkern check`: every op × dtype × registry shape on one backend against the CPU reference,
//! with the SPEC's budgets. The same comparisons the test suite makes, as records.

use crate::ops::gemm::{backward_host, run_host, GemmInputs};
use crate::ops::optim::{self, Clip, ClipOrder, NoiseSchedule, NoisyOptimizer, Rule, TensorList};
use crate::registry::{gemm_backward_cases, gemm_check_cases};
use crate::{Activation, Backend, Compare, DType, HostTensor};

/// One checked output.
#[derive(Clone, Debug)]
pub struct CheckRecord {
    /// The op.
    pub op: String,
    /// The backend checked.
    pub backend: String,
    /// The dtype checked.
    pub dtype: DType,
    /// The case.
    pub shape: String,
    /// RMS error over the reference's RMS (see [`crate::Compare`]).
    pub rms_ratio: f64,
    /// The largest absolute error.
    pub max_abs: f64,
    /// The SPEC budget of the dtype for `rms_ratio`.
    pub budget: f64,
    /// Whether the case is within its budget.
    pub pass: bool,
    /// The error, when the op could not run at all (a failure).
    pub error: Option<String>,
}

/// The op names `check` knows.
pub const OPS: &[&str] = &["gemm", "gemm_backward", "ffn", "repavit", "structured", "linear_attn", "graph", "philox_normal", "noisy_optimizer"];

fn record(op: &str, be: &str, dtype: DType, shape: String, out: &[f32], reference: &[f64]) -> CheckRecord {
    let c = Compare::new(out, reference, dtype);
    CheckRecord {
        op: op.into(),
        backend: be.into(),
        dtype,
        shape,
        rms_ratio: c.rms_ratio,
        max_abs: c.max_abs,
        budget: dtype.budget(),
        pass: c.passes(dtype.budget()),
        error: None,
    }
}

fn failed(op: &str, be: &str, dtype: DType, shape: String, e: crate::Error) -> CheckRecord {
    CheckRecord {
        op: op.into(),
        backend: be.into(),
        dtype,
        shape,
        rms_ratio: f64::INFINITY,
        max_abs: f64::INFINITY,
        budget: dtype.budget(),
        pass: false,
        error: Some(e.to_string()),
    }
}

/// Checks `op` (one of [`OPS`]) in `dtype` on `be`; `progress` is called once per case.
pub fn check_op<Be: Backend>(be: &Be, op: &str, dtype: DType, progress: &mut dyn FnMut()) -> Vec<CheckRecord> {
    let name = be.name();
    let mut out = Vec::new();
    match op {
        "gemm" => {
            for (i, case) in gemm_check_cases().into_iter().enumerate() {
                let x = GemmInputs::random(&case.desc, dtype, 1000 + i as u64);
                let (c_ref, _) = x.reference(&case.desc);
                match run_host(be, &case.desc, &x, false) {
                    Ok(o) => out.push(record(op, name, dtype, case.name.clone(), &o.c, &c_ref)),
                    Err(e) => out.push(failed(op, name, dtype, case.name.clone(), e)),
                }
                progress();
            }
        }
        "gemm_backward" => {
            for (i, case) in gemm_backward_cases().into_iter().enumerate() {
                let d = &case.desc;
                let x = GemmInputs::random(d, dtype, 2000 + i as u64);
                let dc = HostTensor::random(dtype, vec![d.c().required_len(d.batch)], 3000 + i as u64);
                let (da_ref, db_ref, dbias_ref) = x.reference_backward(d, &dc);
                match backward_host(be, d, &x, &dc) {
                    Ok((da, db, dbias)) => {
                        out.push(record(op, name, dtype, format!("{} dA", case.name), &da, &da_ref));
                        out.push(record(op, name, dtype, format!("{} dB", case.name), &db, &db_ref));
                        if let Some(dbias) = dbias {
                            out.push(record(op, name, dtype, format!("{} dbias", case.name), &dbias, &dbias_ref));
                        }
                    }
                    Err(e) => out.push(failed(op, name, dtype, case.name.clone(), e)),
                }
                progress();
            }
        }
        "philox_normal" => {
            // Normals must agree with the f64 reference to 1e-6 absolute (SPEC §7); the dtype
            // loop does not apply (they are f32), so only the f32 pass records them.
            if dtype == DType::F32 {
                for (n, seed, t) in [(1usize, 1u64, 0u32), (1001, 7, 3), (1 << 20, 0xdead_beef, 1000)] {
                    let shape = format!("n={n} seed={seed} t={t}");
                    let reference = optim::reference_normals(seed, t, n);
                    match optim::philox_normal_host(be, n, seed, t) {
                        Ok(z) => {
                            let mut r = record(op, name, dtype, shape, &z.data, &reference);
                            r.budget = 1e-6;
                            r.pass = r.max_abs <= 1e-6;
                            out.push(r);
                        }
                        Err(e) => out.push(failed(op, name, dtype, shape, e)),
                    }
                }
            }
            progress();
        }
        "noisy_optimizer" => {
            // Gradients in `dtype`, f32 master weights and state, three steps over a list of
            // odd-sized tensors; budget: f32.
            let list = TensorList::new(vec![1, 7, 1000, 4097, 63]);
            for (label, opt) in check_optimizers() {
                let shape = format!("{label}, {} tensors, {} elements", list.lens.len(), list.total());
                let reference = optimizer_run(&crate::Cpu, &opt, &list, dtype);
                let got = optimizer_run(be, &opt, &list, dtype);
                match (reference, got) {
                    (Ok(r), Ok(g)) => {
                        // Outputs are f32 whatever the gradient dtype: compare as f32.
                        let r64: Vec<f64> = r.iter().map(|&x| x as f64).collect();
                        let mut rec = record(op, name, DType::F32, shape, &g, &r64);
                        rec.dtype = dtype;
                        out.push(rec);
                    }
                    (Err(e), _) | (_, Err(e)) => out.push(failed(op, name, dtype, shape, e)),
                }
            }
            progress();
        }
        "ffn" => {
            use crate::ops::ffn::{cpu as fcpu, DenseFfn, FfnWeights};
            for (i, f) in [
                DenseFfn { tokens: 5, dim: 7, hidden: 28, act: Activation::GeluErf, residual: true },
                DenseFfn { tokens: 65, dim: 63, hidden: 130, act: Activation::Relu, residual: false },
            ]
            .into_iter()
            .enumerate()
            {
                let (t, c, h) = (f.tokens, f.dim, f.hidden);
                let shape = format!("T{t} C{c} H{h} {}{}", f.act.name(), if f.residual { " +x" } else { "" });
                let r = |n: usize, sc: f32, s: u64| scaled(dtype, n, sc, 50 * i as u64 + s);
                let (x, w1, b1) = (r(t * c, 1.0, 1), r(h * c, 1.0 / (c as f32).sqrt(), 2), r(h, 0.5, 3));
                let (w2, b2, dy) = (r(c * h, 1.0 / (h as f32).sqrt(), 4), r(c, 0.5, 5), r(t * c, 1.0, 6));
                let (y_ref, ..) = fcpu::dense_forward(&f, dtype, &x.data, &w1.data, &b1.data, &w2.data, &b2.data);
                let g_ref = fcpu::dense_backward(&f, dtype, &x.data, &w1.data, &b1.data, &w2.data, &b2.data, &dy.data);
                let res = (|| -> crate::Result<(Vec<f32>, Vec<f32>)> {
                    let w = FfnWeights { w1: be.upload(&w1)?, b1: be.upload(&b1)?, w2: be.upload(&w2)?, b2: be.upload(&b2)? };
                    let xb = be.upload(&x)?;
                    let (y, saved) = f.forward(be, &xb, &w, true)?;
                    let g = f.backward(be, &xb, &w, saved.as_ref(), &be.upload(&dy)?)?;
                    Ok((be.download(&y)?.data, be.download(&g.dx)?.data))
                })();
                match res {
                    Ok((y, dx)) => {
                        out.push(record(op, name, dtype, format!("{shape} y"), &y, &y_ref));
                        out.push(record(op, name, dtype, format!("{shape} dx"), &dx, &g_ref.0));
                    }
                    Err(e) => out.push(failed(op, name, dtype, shape, e)),
                }
            }
            progress();
        }
        "repavit" => {
            use crate::ops::ffn::{cpu as fcpu, reparameterize};
            for (c, h, tokens, theta) in [(7usize, 28usize, 5usize, 0.0), (7, 28, 5, 0.5), (7, 28, 5, 1.0), (64, 256, 50, 0.75)] {
                let w = repavit_weights(c, h);
                let shape = format!("merged C{c} H{h} T{tokens} θ={theta}");
                let res = (|| -> crate::Result<(Vec<f32>, Vec<f64>)> {
                    let m = reparameterize(&w, theta, dtype)?;
                    let x = scaled(dtype, tokens * c, 1.0, 7);
                    let reference = fcpu::repavit_eval(&w, m.active, tokens, &x.data);
                    let y = m.forward(be, tokens, &be.upload(&x)?, (&be.upload(&m.wu)?, &be.upload(&m.bu)?, &be.upload(&m.wo)?))?;
                    Ok((be.download(&y)?.data, reference))
                })();
                match res {
                    Ok((y, r)) => out.push(record(op, name, dtype, shape, &y, &r)),
                    Err(e) => out.push(failed(op, name, dtype, shape, e)),
                }
            }
            // The training form in training mode (batch statistics; 300 tokens span two of the
            // GPU BatchNorm's row chunks): y and the gradients against the reference, which
            // sees the weights rounded to the dtype like the device.
            for (c, h, tokens, theta) in [(7usize, 28usize, 5usize, 0.75), (16, 64, 300, 0.5)] {
                use crate::ops::ffn::{active_channels, RepavitFfn, RepavitTrain};
                let mut w = repavit_weights(c, h);
                for t in [&mut w.w1, &mut w.b1, &mut w.w2, &mut w.b2] {
                    t.data.iter_mut().for_each(|v| *v = dtype.round(*v));
                }
                let shape = format!("train C{c} H{h} T{tokens} θ={theta}");
                let (x, dy) = (scaled(dtype, tokens * c, 1.0, 8), scaled(dtype, tokens * c, 1.0, 9));
                let f = match active_channels(h, theta) {
                    Ok(active) => RepavitFfn { tokens, dim: c, hidden: h, active, eps: 1e-5, momentum: 0.1 },
                    Err(e) => {
                        out.push(failed(op, name, dtype, shape, e));
                        continue;
                    }
                };
                let res = (|| -> crate::Result<Vec<Vec<f32>>> {
                    let mut tw = RepavitTrain::upload(be, &w, dtype)?;
                    let xb = be.upload(&x)?;
                    let (y, saved) = f.forward(be, &xb, &mut tw, true)?;
                    let g = f.backward(be, &xb, &mut tw, &saved, &be.upload(&dy)?)?;
                    let (s1, s2) = (be.download(&tw.bn1.stats)?.data, be.download(&tw.bn2.stats)?.data);
                    let mut got = vec![be.download(&y)?.data];
                    for t in [&g.dx, &g.dw1, &g.dw2] {
                        got.push(be.download(t)?.data);
                    }
                    got.push(s1[4 * c..5 * c].to_vec());
                    got.push(s2[5 * h..6 * h].to_vec());
                    Ok(got)
                })();
                match res {
                    Ok(got) => {
                        let (y_ref, g_ref) = fcpu::repavit_train(&f, dtype, &w, &x.data, &dy.data);
                        let refs = [&y_ref, &g_ref[0], &g_ref[1], &g_ref[3], &g_ref[5], &g_ref[8]];
                        for ((label, got), r) in ["y", "dx", "dW1", "dW2", "dγ1", "dβ2"].iter().zip(&got).zip(refs) {
                            out.push(record(op, name, dtype, format!("{shape} {label}"), got, r));
                        }
                    }
                    Err(e) => out.push(failed(op, name, dtype, shape, e)),
                }
            }
            progress();
        }
        "structured" => {
            use crate::ops::structured::{cpu as scpu, Structured};
            let tokens = 13;
            for layer in [
                Structured::LowRank { inp: 37, out: 29, rank: 11 },
                Structured::BlockDense { inp: 48, out: 20, rank: 16, blocks: 4 },
                Structured::BlockShuffle { inp: 48, out: 32, blocks: 4, inner: 6 },
                Structured::BlockShuffle { inp: 21, out: 15, blocks: 3, inner: 5 },
            ] {
                let (l1, l2) = layer.factor_lens();
                let (x, f1, f2) = (scaled(dtype, tokens * layer.inp(), 1.0, 1), scaled(dtype, l1, 0.5, 2), scaled(dtype, l2, 0.5, 3));
                let dy = scaled(dtype, tokens * layer.out(), 1.0, 4);
                let y_ref = scpu::forward(&layer, tokens, &x.data, &f1.data, &f2.data);
                let (dx_ref, ..) = scpu::backward(&layer, tokens, &x.data, &f1.data, &f2.data, &dy.data);
                let shape = format!("{layer:?}");
                let res = (|| -> crate::Result<(Vec<f32>, Vec<f32>)> {
                    let (xb, f1b, f2b) = (be.upload(&x)?, be.upload(&f1)?, be.upload(&f2)?);
                    let (y, hb) = layer.forward(be, tokens, &xb, &f1b, &f2b, 1.0)?;
                    let (dx, ..) = layer.backward(be, tokens, &xb, &f1b, &f2b, &hb, &be.upload(&dy)?, 1.0, None)?;
                    Ok((be.download(&y)?.data, be.download(&dx)?.data))
                })();
                match res {
                    Ok((y, dx)) => {
                        out.push(record(op, name, dtype, format!("{shape} y"), &y, &y_ref));
                        out.push(record(op, name, dtype, format!("{shape} dx"), &dx, &dx_ref));
                    }
                    Err(e) => out.push(failed(op, name, dtype, shape, e)),
                }
            }
            progress();
        }
        "linear_attn" => {
            use crate::ops::linattn::{cpu as lcpu, FeatureMap, LinearAttention, Normalize};
            for (b, t, h, k, v, fm, n) in [
                (2usize, 65usize, 2usize, 64usize, 60usize, FeatureMap::Identity, Normalize::None),
                (1, 100, 4, 16, 16, FeatureMap::Elu1, Normalize::Normalizer { eps: 1e-6 }),
                (3, 1, 2, 128, 128, FeatureMap::Relu, Normalize::Count),
            ] {
                let d = LinearAttention { batch: b, seq: t, heads: h, k, v, feature_map: fm, scale: None, normalize: n };
                let dims = format!("B{b} T{t} H{h} K{k} V{v} {fm:?} {n:?}");
                let (q, kk, vv) = (scaled(dtype, d.qk_len(), 1.0, 1), scaled(dtype, d.qk_len(), 1.0, 2), scaled(dtype, d.vo_len(), 1.0, 3));
                let s0 = scaled(DType::F32, d.state_len(), 1.0, 4);
                let z0 = HostTensor { dtype: DType::F32, shape: vec![d.z_len()], data: vec![0.75; d.z_len()] };
                let d_o = scaled(dtype, d.vo_len(), 1.0, 5);
                let (o_ref, ..) = lcpu::forward(&d, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), 0);
                let (dq, dk, dv, _) = lcpu::backward(&d, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), &d_o.data, None);
                let grads_ref: Vec<f64> = dq.into_iter().chain(dk).chain(dv).collect();
                for mode in ["recurrent", "chunk", "backward", "chunk backward"] {
                    let res = (|| -> crate::Result<Vec<f32>> {
                        let (qb, kb, vb) = (be.upload(&q)?, be.upload(&kk)?, be.upload(&vv)?);
                        let (mut s, mut z, mut o) = (be.upload(&s0)?, be.upload(&z0)?, be.alloc(dtype, d.vo_len())?);
                        if mode == "chunk" {
                            d.chunk(be, &qb, &kb, &vb, &mut s, &mut z, 0, &mut o)?;
                        } else {
                            d.recurrent(be, &qb, &kb, &vb, &mut s, &mut z, 0, &mut o)?;
                        }
                        if !mode.ends_with("backward") {
                            return Ok(be.download(&o)?.data);
                        }
                        let (d_ob, s0b, z0b) = (be.upload(&d_o)?, be.upload(&s0)?, be.upload(&z0)?);
                        let g = if mode == "backward" {
                            d.backward(be, &qb, &kb, &vb, &o, &d_ob, &s0b, &z0b, [None, None], 0)?
                        } else {
                            d.chunk_backward(be, &qb, &kb, &vb, &o, &d_ob, &s0b, &z0b, [None, None], 0)?
                        };
                        Ok([&g.dq, &g.dk, &g.dv].into_iter().map(|t| be.download(t).map(|h| h.data)).collect::<crate::Result<Vec<_>>>()?.concat())
                    })();
                    let backward = mode.ends_with("backward");
                    let shape = format!("{mode} {dims}{}", if backward { " (dq, dk, dv)" } else { "" });
                    match res {
                        Ok(o) => out.push(record(op, name, dtype, shape, &o, if backward { &grads_ref } else { &o_ref })),
                        Err(e) => out.push(failed(op, name, dtype, shape, e)),
                    }
                }
            }
            progress();
        }
        "graph" => {
            use crate::ops::graph::{self, cpu as gcpu, DeviceGraph, Graph, Reduce};
            let graphs = [("deg 4..36", Graph::random(1000, 4, 36, 7), 64usize), ("deg 0..9", Graph::random(257, 0, 9, 7), 33), ("power law", Graph::power_law(3000, 30_000, 7), 33)];
            for (label, g, dim) in graphs {
                let g = match g {
                    Ok(g) => g,
                    Err(e) => {
                        out.push(failed(op, name, dtype, label.into(), e));
                        continue;
                    }
                };
                let (n, e) = (g.num_nodes, g.num_edges());
                let x = scaled(dtype, n * dim, 1.0, 1);
                let m = scaled(dtype, e * dim, 1.0, 2);
                let w = scaled(DType::F32, e, 1.0, 3);
                let heads = if dim % 4 == 0 { 4 } else { 1 };
                let s = scaled(DType::F32, e * heads, 2.0, 4);
                let affine = scaled(DType::F32, 2 * dim, 1.0, 5);
                let (gamma, beta) = affine.data.split_at(dim);
                let cases: [(&str, Vec<f64>); 7] = [
                    ("gather", gcpu::gather_rows(&g, &x.data, dim)),
                    ("spmm", gcpu::spmm(&g, &x.data, Some(&w.data), 1, dim)),
                    ("segment_mean", gcpu::segment_reduce(&g, &m.data, dim, Reduce::Mean).0),
                    ("segment_max", gcpu::segment_reduce(&g, &m.data, dim, Reduce::Max).0),
                    ("sddmm", gcpu::sddmm(&g, &x.data, &x.data, heads, dim)),
                    ("segment_softmax", gcpu::segment_softmax(&g, &s.data, heads)),
                    ("layer_norm", gcpu::layer_norm(&x.data, gamma, beta, dim, 1e-5).0),
                ];
                for (kind, reference) in cases {
                    let shape = format!("{kind} N{n} E{e} D{dim} H{heads} {label}");
                    let res = (|| -> crate::Result<Vec<f32>> {
                        let dg = DeviceGraph::upload(be, &g)?;
                        let y = match kind {
                            "gather" => graph::gather_rows(be, &dg, &be.upload(&x)?, dim)?,
                            "spmm" => graph::spmm(be, &dg, &be.upload(&x)?, Some(&be.upload(&w)?), dim)?,
                            "segment_mean" => graph::segment_reduce(be, &dg, &be.upload(&m)?, dim, Reduce::Mean)?.0,
                            "sddmm" => {
                                let xb = be.upload(&x)?;
                                graph::sddmm(be, &dg, &xb, &xb, heads, dim)?
                            }
                            "segment_softmax" => graph::segment_softmax(be, &dg, &be.upload(&s)?, heads)?,
                            "layer_norm" => graph::layer_norm(be, &be.upload(&x)?, &be.upload(&affine)?, n, dim, 1e-5)?.0,
                            _ => graph::segment_reduce(be, &dg, &be.upload(&m)?, dim, Reduce::Max)?.0,
                        };
                        Ok(be.download(&y)?.data)
                    })();
                    match res {
                        Ok(o) => out.push(record(op, name, dtype, shape, &o, &reference)),
                        Err(e) => out.push(failed(op, name, dtype, shape, e)),
                    }
                }
            }
            // The edge MLP (concat trick) against the concatenation, SiLU as in OneForecast.
            let (n, de, dh, dout) = (300usize, 24usize, 32usize, 40usize);
            let res = (|| -> crate::Result<(String, Vec<f32>, Vec<f64>)> {
                let g = Graph::random(n, 4, 36, 9)?;
                let e = g.num_edges();
                let t = |len: usize, seed: u64| scaled(dtype, len, 0.5, seed);
                let (ef, h, w_e, w_s, w_d, b) = (t(e * de, 11), t(n * dh, 12), t(dout * de, 13), t(dout * dh, 14), t(dout * dh, 15), t(dout, 16));
                let (m_ref, _) = gcpu::edge_mlp(&g, &ef.data, &h.data, &w_e.data, &w_s.data, &w_d.data, &b.data, de, dh, Activation::Silu);
                let mlp = graph::EdgeMlp { edge_dim: de, node_dim: dh, out_dim: dout, act: Activation::Silu };
                let w = graph::EdgeMlpWeights { w_e: be.upload(&w_e)?, w_s: be.upload(&w_s)?, w_d: be.upload(&w_d)?, b: be.upload(&b)? };
                let m = mlp.forward(be, &DeviceGraph::upload(be, &g)?, &be.upload(&ef)?, &be.upload(&h)?, &w)?;
                Ok((format!("edge_mlp N{n} E{e} De{de} Dh{dh} D{dout} silu"), be.download(&m)?.data, m_ref))
            })();
            match res {
                Ok((shape, o, r)) => out.push(record(op, name, dtype, shape, &o, &r)),
                Err(e) => out.push(failed(op, name, dtype, "edge_mlp".into(), e)),
            }
            // The layers on an icosahedral mesh against their f64 references (forward).
            for layer in ["oneforecast_layer", "gcn", "sage", "gat"] {
                let res = check_graph_layer(be, layer, dtype);
                match res {
                    Ok((shape, o, r)) => out.push(record(op, name, dtype, shape, &o, &r)),
                    Err(e) => out.push(failed(op, name, dtype, layer.into(), e)),
                }
            }
            progress();
        }
        _ => {}
    }
    out
}

/// One graph layer's forward on the level-2 icosphere (162 nodes, 960 edges): `(shape, output,
/// f64 reference)`.
fn check_graph_layer<Be: Backend>(be: &Be, layer: &str, dtype: DType) -> crate::Result<(String, Vec<f32>, Vec<f64>)> {
    use crate::ops::graph::{cpu as gcpu, DeviceGraph, GatLayer, GatParams, GcnLayer, Graph, OneForecastLayer, OneForecastParams, SageLayer};
    let g = Graph::icosphere(2)?;
    let (n, e) = (g.num_nodes, g.num_edges());
    let f64s = |t: &HostTensor| t.data.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let (i, o) = (32usize, 24usize);
    let x = scaled(dtype, n * i, 1.0, 21);
    let dg = DeviceGraph::upload(be, &g)?;
    let shape = format!("{layer} icosphere N{n} E{e}");
    match layer {
        "oneforecast_layer" => {
            let l = OneForecastLayer { dim: 32, heads: 4, gate_hidden: 16, attn_hidden: 8, eps: 1e-5 };
            let ef = scaled(dtype, e * l.dim, 1.0, 22);
            let params = l.seeded_params(dtype, 30);
            let (e_ref, h_ref) = gcpu::oneforecast_layer(&g, &l, &f64s(&ef), &f64s(&x), &params.iter().map(f64s).collect::<Vec<_>>());
            let p = OneForecastParams::from_tensors(params.iter().map(|t| be.upload(t)).collect::<crate::Result<_>>()?)?;
            let st = l.forward(be, &dg, &be.upload(&ef)?, &be.upload(&x)?, &p)?;
            let mut got = be.download(&st.e_out)?.data;
            got.extend(be.download(&st.h_out)?.data);
            Ok((format!("{shape} D32 H4 (e', h')"), got, e_ref.into_iter().chain(h_ref).collect()))
        }
        "gcn" => {
            let l = GcnLayer { in_dim: i, out_dim: o, act: Activation::Relu };
            let (w, b) = (scaled(dtype, o * i, 0.3, 23), scaled(dtype, o, 0.5, 24));
            let (gl, ew) = GcnLayer::normalize(&g)?;
            let ew = be.upload(&HostTensor { dtype: DType::F32, shape: vec![ew.len()], data: ew })?;
            let st = l.forward(be, &DeviceGraph::upload(be, &gl)?, &ew, &be.upload(&x)?, &be.upload(&w)?, &be.upload(&b)?)?;
            Ok((format!("{shape} {i}→{o} relu"), be.download(&st.out)?.data, gcpu::gcn_layer(&g, &f64s(&x), &f64s(&w), &f64s(&b), l.act)))
        }
        "sage" => {
            let l = SageLayer { in_dim: i, out_dim: o, act: Activation::Silu };
            let (wn, ws, b) = (scaled(dtype, o * i, 0.3, 25), scaled(dtype, o * i, 0.3, 26), scaled(dtype, o, 0.5, 27));
            let mw = SageLayer::mean_weights(&g);
            let mw = be.upload(&HostTensor { dtype: DType::F32, shape: vec![mw.len()], data: mw })?;
            let st = l.forward(be, &dg, &mw, &be.upload(&x)?, &be.upload(&wn)?, &be.upload(&ws)?, &be.upload(&b)?)?;
            Ok((format!("{shape} {i}→{o} silu"), be.download(&st.out)?.data, gcpu::sage_layer(&g, &f64s(&x), &f64s(&wn), &f64s(&ws), &f64s(&b), l.act)))
        }
        _ => {
            let l = GatLayer { in_dim: i, heads: 4, head_dim: 6, act: Activation::Identity };
            let t = [scaled(dtype, 24 * i, 0.3, 28), scaled(dtype, 24, 1.0, 29), scaled(dtype, 24, 1.0, 30), scaled(dtype, 24, 0.5, 31)];
            let p = GatParams { w: be.upload(&t[0])?, a_src: be.upload(&t[1])?, a_dst: be.upload(&t[2])?, b: be.upload(&t[3])? };
            let st = l.forward(be, &dg, &be.upload(&x)?, &p)?;
            let r = gcpu::gat_layer(&g, &f64s(&x), &f64s(&t[0]), &f64s(&t[1]), &f64s(&t[2]), &f64s(&t[3]), 4, l.act);
            Ok((format!("{shape} {i}→4×6"), be.download(&st.out)?.data, r))
        }
    }
}

/// Seeded values in [-scale, scale), rounded to `dtype`.
fn scaled(dtype: DType, n: usize, scale: f32, seed: u64) -> HostTensor {
    let t = HostTensor::random(DType::F32, vec![n], seed);
    HostTensor { dtype, shape: vec![n], data: t.data.iter().map(|v| dtype.round(v * scale)).collect() }
}

/// Seeded RePaViT weights with BatchNorm statistics in realistic ranges.
fn repavit_weights(c: usize, h: usize) -> crate::ops::ffn::RepavitWeights {
    use crate::ops::ffn::BatchNorm;
    let mut rng = crate::SplitMix64::new(c as u64 * 1000 + h as u64);
    let mut bn = |n: usize| {
        let mut v = |lo: f32, hi: f32| (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect::<Vec<f32>>();
        BatchNorm { gamma: v(0.5, 1.5), beta: v(-0.5, 0.5), mean: v(-0.3, 0.3), var: v(0.5, 2.0), eps: 1e-5 }
    };
    let (bn1, bn2) = (bn(c), bn(h));
    crate::ops::ffn::RepavitWeights {
        w1: scaled(DType::F32, h * c, 1.0 / (c as f32).sqrt(), 11),
        b1: scaled(DType::F32, h, 0.2, 12),
        w2: scaled(DType::F32, c * h, 1.0 / (h as f32).sqrt(), 13),
        b2: scaled(DType::F32, c, 0.2, 14),
        bn1,
        bn2,
    }
}

/// The optimizer configurations `check` runs.
pub fn check_optimizers() -> Vec<(&'static str, NoisyOptimizer)> {
    let noise = NoiseSchedule { eta: 0.3, gamma: 0.55 };
    let mut sgd = NoisyOptimizer::sgd(0.05, 0.9, 11);
    sgd.noise = noise;
    sgd.weight_decay = 0.01;
    let mut nesterov = sgd.clone();
    nesterov.rule = Rule::Sgd { momentum: 0.9, nesterov: true };
    nesterov.clip = Some(Clip { max_norm: 1.0, order: ClipOrder::NoiseThenClip });
    let mut adamw = NoisyOptimizer::adam(1e-3, 11);
    adamw.noise = noise;
    adamw.weight_decay = 0.1;
    adamw.clip = Some(Clip { max_norm: 1.0, order: ClipOrder::ClipThenNoise });
    vec![("sgd momentum", sgd), ("sgd nesterov noise-then-clip", nesterov), ("adamw clip-then-noise", adamw)]
}

/// Three steps of `opt` from seeded arenas; the final parameters followed by the state.
fn optimizer_run<Be: Backend>(be: &Be, opt: &NoisyOptimizer, list: &TensorList, grad_dtype: DType) -> crate::Result<Vec<f32>> {
    let n = list.total();
    let mut opt = opt.clone();
    let mut param = be.upload(&HostTensor::random(DType::F32, vec![n], 1))?;
    let mut state = Vec::new();
    for k in 0..opt.state_count() {
        let init = HostTensor::random(DType::F32, vec![n], 10 + k as u64);
        // Adam's second moment is non-negative.
        let init = if k == 1 { HostTensor::new(DType::F32, vec![n], init.data.iter().map(|x| x.abs()).collect())? } else { init };
        state.push(be.upload(&init)?);
    }
    for s in 0..3 {
        let grad = be.upload(&HostTensor::random(grad_dtype, vec![n], 100 + s))?;
        opt.step(be, list, &mut param, &grad, &mut state)?;
    }
    let mut out = be.download(&param)?.data;
    for st in &state {
        out.extend(be.download(st)?.data);
    }
    Ok(out)
}

/// How many progress steps [`check_op`] takes for `op`.
pub fn case_count(op: &str) -> usize {
    match op {
        "gemm" => gemm_check_cases().len(),
        "gemm_backward" => gemm_backward_cases().len(),
        "philox_normal" | "noisy_optimizer" | "ffn" | "repavit" | "structured" | "linear_attn" => 1,
        "graph" => 2,
        _ => 0,
    }
}
