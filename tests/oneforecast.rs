//! The OneForecast gated processor layer: the f64 reference (built with explicit
//! concatenations) against finite differences of the composed backward, and the layer's forward
//! and backward on every backend and dtype on an icosahedral mesh (also as the unfused
//! composition), with determinism and bad input.

mod common;

use common::{assert_close, devices_and_cpu};

use ffkern::ops::graph::{cpu, DeviceGraph, EdgeMlpForm, Graph, OneForecastLayer, OneForecastParams};
use ffkern::{with_backend, Backend, Cpu, DType, Error, HostTensor};

/// Small enough for finite differences, with every size distinct.
const TINY: OneForecastLayer = OneForecastLayer { dim: 8, heads: 2, gate_hidden: 4, attn_hidden: 3, eps: 1e-5 };

fn f64s(t: &HostTensor) -> Vec<f64> {
    t.data.iter().map(|&v| v as f64).collect()
}

/// The composed backward (on the f32 CPU backend) against central differences of the f64
/// reference: for every parameter tensor and both inputs, the directional derivative along a
/// random direction.
#[test]
fn backward_matches_finite_differences_of_the_reference() {
    let l = TINY;
    // Every node receives; multi-edges and a self-loop included.
    let src = [0i64, 1, 2, 3, 4, 5, 6, 0, 2, 4, 6, 1, 3, 5, 5, 2, 0, 3];
    let dst = [1i64, 2, 3, 4, 5, 6, 0, 3, 5, 0, 2, 4, 6, 1, 1, 2, 6, 5];
    let g = Graph::from_coo(7, &src, &dst).expect("graph");
    let (ne, n, d) = (g.num_edges(), 7, l.dim);
    let e_feat = HostTensor::random(DType::F32, vec![ne * d], 1);
    let h = HostTensor::random(DType::F32, vec![n * d], 2);
    let p = l.seeded_params(DType::F32, 10);
    let de = HostTensor::random(DType::F32, vec![ne * d], 3);
    let dh = HostTensor::random(DType::F32, vec![n * d], 4);
    let be = &Cpu;
    let dg = DeviceGraph::upload(be, &g).expect("graph");
    let dgt = DeviceGraph::upload(be, &g.transposed()).expect("graph");
    let pb = OneForecastParams::from_tensors(p.clone()).expect("params");
    let st = l.forward(be, &dg, &e_feat, &h, &pb).expect("forward");
    let p64: Vec<Vec<f64>> = p.iter().map(f64s).collect();
    let (e_ref, h_ref) = cpu::oneforecast_layer(&g, &l, &f64s(&e_feat), &f64s(&h), &p64);
    assert_close("e'", &st.e_out.data, &e_ref, DType::F32);
    assert_close("h'", &st.h_out.data, &h_ref, DType::F32);
    let grads = l.backward(be, &dg, &dgt, &e_feat, &h, &pb, &st, &de, &dh).expect("backward");
    let loss = |e: &[f64], hh: &[f64], p: &[Vec<f64>]| -> f64 {
        let (eo, ho) = cpu::oneforecast_layer(&g, &l, e, hh, p);
        eo.iter().zip(&de.data).chain(ho.iter().zip(&dh.data)).map(|(a, b)| a * *b as f64).sum()
    };
    let mut inputs: Vec<(String, Vec<f64>, &HostTensor)> = vec![("e".into(), f64s(&e_feat), &grads.d_edge), ("h".into(), f64s(&h), &grads.d_node)];
    for ((name, _, _), (t, gt)) in l.param_shapes().into_iter().zip(p.iter().zip(grads.params.tensors())) {
        inputs.push((name.to_string(), f64s(t), gt));
    }
    let eps = 1e-4;
    for (k, (name, x, grad)) in inputs.iter().enumerate() {
        let dir = HostTensor::random(DType::F32, vec![x.len()], 100 + k as u64);
        let shifted = |sign: f64| -> f64 {
            let moved: Vec<f64> = x.iter().zip(&dir.data).map(|(v, u)| v + sign * eps * *u as f64).collect();
            match k {
                0 => loss(&moved, &f64s(&h), &p64),
                1 => loss(&f64s(&e_feat), &moved, &p64),
                _ => {
                    let mut q = p64.clone();
                    q[k - 2] = moved;
                    loss(&f64s(&e_feat), &f64s(&h), &q)
                }
            }
        };
        let fd = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps);
        let analytic: f64 = grad.data.iter().zip(&dir.data).map(|(g, u)| *g as f64 * *u as f64).sum();
        assert!((fd - analytic).abs() <= 1e-3 * (1.0 + fd.abs()), "d{name}: finite differences {fd:.6e}, backward {analytic:.6e}");
    }
}

fn words(t: &HostTensor) -> Vec<u32> {
    t.data.iter().map(|x| x.to_bits()).collect()
}

/// Forward against the f64 reference and backward against the composition on the CPU backend,
/// on an icosahedral mesh (162 nodes, 960 edges), every backend and dtype; two runs
/// give the same bits.
#[test]
fn layer_matches_the_reference_on_every_backend() {
    let l = OneForecastLayer { dim: 32, heads: 4, gate_hidden: 16, attn_hidden: 8, eps: 1e-5 };
    let g = Graph::icosphere(2).expect("mesh");
    assert_eq!((g.num_nodes, g.num_edges()), (162, 960));
    let gt = g.transposed();
    let (ne, n, d) = (g.num_edges(), g.num_nodes, l.dim);
    for dtype in DType::ALL {
        let e_feat = HostTensor::random(dtype, vec![ne * d], 1);
        let h = HostTensor::random(dtype, vec![n * d], 2);
        let p = l.seeded_params(dtype, 10);
        let de = HostTensor::random(dtype, vec![ne * d], 3);
        let dh = HostTensor::random(dtype, vec![n * d], 4);
        let (e_ref, h_ref) = cpu::oneforecast_layer(&g, &l, &f64s(&e_feat), &f64s(&h), &p.iter().map(f64s).collect::<Vec<_>>());
        // The gradient reference: the composition on the CPU backend, whose every step is the
        // f64 reference rounded to the dtype where the kernels store it (the backward itself
        // is checked against finite differences above).
        let grads_ref = {
            let be = &Cpu;
            let pb = OneForecastParams::from_tensors(p.clone()).expect("params");
            let (dg, dgt) = (DeviceGraph::upload(be, &g).expect("g"), DeviceGraph::upload(be, &gt).expect("gt"));
            let st = l.forward(be, &dg, &e_feat, &h, &pb).expect("forward");
            let gr = l.backward(be, &dg, &dgt, &e_feat, &h, &pb, &st, &de, &dh).expect("backward");
            let mut all = vec![("d_edge".to_string(), f64s(&gr.d_edge)), ("d_node".to_string(), f64s(&gr.d_node))];
            all.extend(ffkern::ops::graph::ONEFORECAST_PARAMS.iter().zip(gr.params.tensors()).map(|(name, t)| (format!("d{name}"), f64s(t))));
            all
        };
        for dev in devices_and_cpu() {
            let what = format!("{} {dtype}", dev.name());
            with_backend!(dev, be => {
                let up = |t: &HostTensor| be.upload(t).expect("upload");
                let down = |b: &_| be.download(b).expect("download");
                let (dg, dgt) = (DeviceGraph::upload(be, &g).expect("g"), DeviceGraph::upload(be, &gt).expect("gt"));
                let pb = OneForecastParams::from_tensors(p.iter().map(up).collect()).expect("params");
                let (eb, hb) = (up(&e_feat), up(&h));
                let st = l.forward(be, &dg, &eb, &hb, &pb).expect("forward");
                assert_close(&format!("{what} e'"), &down(&st.e_out).data, &e_ref, dtype);
                assert_close(&format!("{what} h'"), &down(&st.h_out).data, &h_ref, dtype);
                let gr = l.backward(be, &dg, &dgt, &eb, &hb, &pb, &st, &up(&de), &up(&dh)).expect("backward");
                let mut got = vec![down(&gr.d_edge), down(&gr.d_node)];
                got.extend(gr.params.tensors().into_iter().map(down));
                for ((name, want), t) in grads_ref.iter().zip(&got) {
                    if name == "db_a2" {
                        // A per-head shift of the scores leaves the softmax unchanged, so this is 0
                        // up to the rounding of the summed score gradients (well under dW_a2).
                        let max = |t: &HostTensor| t.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        let bound = if dtype == DType::F32 { 1e-5 } else { 0.1 * max(&got[2 + 15]) };
                        assert!(max(t) <= bound, "{what} db_a2 should vanish, has {:e} (bound {bound:e})", max(t));
                        continue;
                    }
                    assert_close(&format!("{what} {name}"), &t.data, want, dtype);
                }
                // The unfused composition (gathered endpoints, [E, ·] GEMMs) gives the same layer.
                // Checked in f32: in 16 bits it stores three rounded partial sums where the fused
                // layer rounds once, and its gate-bias gradient drifts past the f16 budget.
                if dtype == DType::F32 {
                    let stu = l.forward_as(EdgeMlpForm::Materialized, be, &dg, &dgt, &eb, &hb, &pb).expect("unfused forward");
                    assert_close(&format!("{what} unfused e'"), &down(&stu.e_out).data, &e_ref, dtype);
                    assert_close(&format!("{what} unfused h'"), &down(&stu.h_out).data, &h_ref, dtype);
                    let gru = l.backward_as(EdgeMlpForm::Materialized, be, &dg, &dgt, &eb, &hb, &pb, &stu, &up(&de), &up(&dh)).expect("unfused backward");
                    let mut got_u = vec![down(&gru.d_edge), down(&gru.d_node)];
                    got_u.extend(gru.params.tensors().into_iter().map(down));
                    for ((name, want), t) in grads_ref.iter().zip(&got_u) {
                        if name != "db_a2" {
                            assert_close(&format!("{what} unfused {name}"), &t.data, want, dtype);
                        }
                    }
                }
                // Deterministic: a second forward and backward give the same bits.
                let st2 = l.forward(be, &dg, &eb, &hb, &pb).expect("forward");
                let gr2 = l.backward(be, &dg, &dgt, &eb, &hb, &pb, &st2, &up(&de), &up(&dh)).expect("backward");
                assert_eq!(words(&down(&st2.h_out)), words(&down(&st.h_out)), "{what}: h' differs between runs");
                assert_eq!(words(&down(&gr2.d_node)), words(&got[1]), "{what}: dh differs between runs");
                assert_eq!(words(&down(&gr2.params.edge.w_e)), words(&got[2]), "{what}: dW_e differs between runs");
            });
        }
    }
}

#[test]
fn bad_input_is_an_error() {
    let l = TINY;
    let g = Graph::icosphere(0).expect("mesh");
    let be = &Cpu;
    let dg = DeviceGraph::upload(be, &g).expect("graph");
    let e_feat = HostTensor::random(DType::F32, vec![g.num_edges() * 8], 1);
    let h = HostTensor::random(DType::F32, vec![g.num_nodes * 8], 2);
    let good = l.seeded_params(DType::F32, 3);
    let run = |p: Vec<HostTensor>, e: &HostTensor, l: &OneForecastLayer| l.forward(be, &dg, e, &h, &OneForecastParams::from_tensors(p)?).map(|_| ());
    assert!(run(good.clone(), &e_feat, &l).is_ok());
    // W_b too small.
    let mut short = good.clone();
    short[4] = HostTensor::random(DType::F32, vec![8, 7], 4);
    assert!(matches!(run(short, &e_feat, &l), Err(Error::Shape { .. })));
    // A weight in another dtype.
    let mut mixed = good.clone();
    mixed[0] = HostTensor::random(DType::BF16, vec![8, 8], 5);
    assert!(matches!(run(mixed, &e_feat, &l), Err(Error::Dtype { .. })));
    // Too few edge features; heads not dividing D; 22 tensors.
    assert!(matches!(run(good.clone(), &HostTensor::random(DType::F32, vec![5], 6), &l), Err(Error::Shape { .. })));
    assert!(matches!(run(good.clone(), &e_feat, &OneForecastLayer { heads: 3, ..l }), Err(Error::Invalid(_))));
    assert!(OneForecastParams::from_tensors(good[..22].to_vec()).is_err());
}

/// A graph without edges: the edge block has nothing to do, each node aggregates nothing, and
/// the node block still runs: h' against the reference on every backend, and the backward
/// against the composition on the CPU backend (every edge-side weight gradient exactly 0).
#[test]
fn layer_runs_on_a_graph_without_edges() {
    let l = TINY;
    let (n, d) = (3, l.dim);
    let g = Graph::from_coo(n, &[], &[]).expect("graph");
    let gt = g.transposed();
    let e_feat = HostTensor::random(DType::F32, vec![d], 1);
    let h = HostTensor::random(DType::F32, vec![n * d], 2);
    let p = l.seeded_params(DType::F32, 3);
    let (de, dh) = (HostTensor::random(DType::F32, vec![d], 4), HostTensor::random(DType::F32, vec![n * d], 5));
    let (_, h_ref) = cpu::oneforecast_layer(&g, &l, &[], &f64s(&h), &p.iter().map(f64s).collect::<Vec<_>>());
    let run = |dev: &ffkern::Device| -> Vec<HostTensor> {
        with_backend!(dev, be => {
            let up = |t: &HostTensor| be.upload(t).expect("upload");
            let down = |b: &_| be.download(b).expect("download");
            let (dg, dgt) = (DeviceGraph::upload(be, &g).expect("g"), DeviceGraph::upload(be, &gt).expect("gt"));
            let pb = OneForecastParams::from_tensors(p.iter().map(up).collect()).expect("params");
            let (eb, hb) = (up(&e_feat), up(&h));
            let st = l.forward(be, &dg, &eb, &hb, &pb).expect("forward");
            let gr = l.backward(be, &dg, &dgt, &eb, &hb, &pb, &st, &up(&de), &up(&dh)).expect("backward");
            let mut out = vec![down(&st.h_out), down(&gr.d_node)];
            out.extend(gr.params.tensors().into_iter().map(down));
            out
        })
    };
    let want = run(&ffkern::Device::Cpu(Cpu));
    assert!(want[2..].iter().any(|t| t.data.iter().any(|&v| v != 0.0)), "the node block's weights get gradients");
    for dev in devices_and_cpu() {
        let got = run(dev);
        assert_close(&format!("{} h'", dev.name()), &got[0].data, &h_ref, DType::F32);
        let names = ["d_node".to_string()].into_iter().chain(ffkern::ops::graph::ONEFORECAST_PARAMS.iter().map(|p| format!("d{p}")));
        for ((name, a), b) in names.zip(&got[1..]).zip(&want[1..]) {
            assert_close(&format!("{} {name}", dev.name()), &a.data, &f64s(b), DType::F32);
        }
    }
}
