//! GCN, GraphSAGE-mean and GAT layers: the composed backward (CPU backend, f32) against central
//! differences of the f64 references, and forward and backward on every backend and dtype
//! against the references, with determinism.

mod common;

use common::{assert_close, devices_and_cpu, GnnLayers};

use ffkern::ops::graph::{cpu, DeviceGraph, GatLayer, GatParams, GcnLayer, Graph, SageLayer};
use ffkern::{with_backend, Activation, Backend, Cpu, DType, HostTensor};

/// A seeded random graph with an empty row (the last node), self-loops and a multi-edge.
fn graph(n: usize, e: usize, seed: u64) -> Graph {
    let mut s = seed;
    let mut next = |m: usize| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) as usize % m) as i64
    };
    let (mut src, mut dst): (Vec<i64>, Vec<i64>) = (0..e).map(|k| (if k % 9 == 0 { -1 } else { next(n) }, next(n - 1))).unzip();
    for (s, d) in src.iter_mut().zip(&dst) {
        if *s < 0 {
            *s = *d;
        }
    }
    src.push(src[1]);
    dst.push(dst[1]);
    Graph::from_coo(n, &src, &dst).expect("graph")
}

fn tensor(dtype: DType, len: usize, scale: f32, seed: u64) -> HostTensor {
    let r = HostTensor::random(DType::F32, vec![len], seed);
    HostTensor::new(dtype, vec![len], r.data.iter().map(|v| dtype.round(v * scale)).collect()).expect("tensor")
}

fn f64s(t: &HostTensor) -> Vec<f64> {
    t.data.iter().map(|&v| v as f64).collect()
}

fn f32_tensor(v: Vec<f32>) -> HostTensor {
    HostTensor::new(DType::F32, vec![v.len()], v).expect("f32")
}

/// For every input k: the derivative of `loss` along a random direction by central differences
/// against `Σ grad_k·direction`.
fn directional_check(layer: &str, inputs: &[(&str, Vec<f64>)], grads: &[&HostTensor], loss: &dyn Fn(usize, &[f64]) -> f64) {
    let eps = 1e-4;
    for (k, ((name, x), grad)) in inputs.iter().zip(grads).enumerate() {
        let dir = HostTensor::random(DType::F32, vec![x.len()], 500 + k as u64).data;
        let moved = |sign: f64| -> Vec<f64> { x.iter().zip(&dir).map(|(v, u)| v + sign * eps * *u as f64).collect() };
        let fd = (loss(k, &moved(1.0)) - loss(k, &moved(-1.0))) / (2.0 * eps);
        let analytic: f64 = grad.data.iter().zip(&dir).map(|(g, u)| *g as f64 * *u as f64).sum();
        assert!((fd - analytic).abs() <= 1e-3 * (1.0 + fd.abs()), "{layer} d{name}: finite differences {fd:.6e}, backward {analytic:.6e}");
    }
}

#[test]
fn backward_matches_finite_differences_of_the_references() {
    let g = graph(9, 30, 3);
    let gt = g.transposed();
    let (n, i, o) = (9, 5, 4);
    let be = &Cpu;
    let x = tensor(DType::F32, n * i, 1.0, 1);
    let dy = tensor(DType::F32, n * o, 1.0, 2);
    let dot = |y: &[f64], dy: &HostTensor| -> f64 { y.iter().zip(&dy.data).map(|(a, b)| a * *b as f64).sum() };

    // GCN.
    let gcn = GcnLayer { in_dim: i, out_dim: o, act: Activation::Silu };
    let (gl, ew) = GcnLayer::normalize(&g).expect("normalize");
    let (dg, dgt, ew) = (DeviceGraph::upload(be, &gl).expect("g"), DeviceGraph::upload(be, &gl.transposed()).expect("gt"), f32_tensor(ew));
    let (w, b) = (tensor(DType::F32, o * i, 0.6, 3), tensor(DType::F32, o, 0.5, 4));
    let st = gcn.forward(be, &dg, &ew, &x, &w, &b).expect("gcn forward");
    assert_close("gcn forward", &st.out.data, &cpu::gcn_layer(&g, &f64s(&x), &f64s(&w), &f64s(&b), gcn.act), DType::F32);
    let gr = gcn.backward(be, &dgt, &ew, &w, &st, &dy).expect("gcn backward");
    let inputs = [("x", f64s(&x)), ("w", f64s(&w)), ("b", f64s(&b))];
    let loss = |k: usize, v: &[f64]| {
        let mut a: Vec<Vec<f64>> = inputs.iter().map(|t| t.1.clone()).collect();
        a[k] = v.to_vec();
        dot(&cpu::gcn_layer(&g, &a[0], &a[1], &a[2], gcn.act), &dy)
    };
    directional_check("gcn", &inputs, &[&gr.dx, &gr.w, &gr.b], &loss);

    // GraphSAGE-mean.
    let sage = SageLayer { in_dim: i, out_dim: o, act: Activation::Silu };
    let (dg, dgt) = (DeviceGraph::upload(be, &g).expect("g"), DeviceGraph::upload(be, &gt).expect("gt"));
    let mw = f32_tensor(SageLayer::mean_weights(&g));
    let (wn, ws) = (tensor(DType::F32, o * i, 0.6, 5), tensor(DType::F32, o * i, 0.6, 6));
    let st = sage.forward(be, &dg, &mw, &x, &wn, &ws, &b).expect("sage forward");
    assert_close("sage forward", &st.out.data, &cpu::sage_layer(&g, &f64s(&x), &f64s(&wn), &f64s(&ws), &f64s(&b), sage.act), DType::F32);
    let gr = sage.backward(be, &dgt, &mw, &x, &wn, &ws, &st, &dy).expect("sage backward");
    let inputs = [("x", f64s(&x)), ("w_neigh", f64s(&wn)), ("w_self", f64s(&ws)), ("b", f64s(&b))];
    let loss = |k: usize, v: &[f64]| {
        let mut a: Vec<Vec<f64>> = inputs.iter().map(|t| t.1.clone()).collect();
        a[k] = v.to_vec();
        dot(&cpu::sage_layer(&g, &a[0], &a[1], &a[2], &a[3], sage.act), &dy)
    };
    directional_check("sage", &inputs, &[&gr.dx, &gr.w_neigh, &gr.w_self, &gr.b], &loss);

    // GAT, 2 heads of 2.
    let gat = GatLayer { in_dim: i, heads: 2, head_dim: 2, act: Activation::Silu };
    let p = GatParams { w: tensor(DType::F32, 4 * i, 0.6, 7), a_src: tensor(DType::F32, 4, 1.0, 8), a_dst: tensor(DType::F32, 4, 1.0, 9), b: tensor(DType::F32, 4, 0.5, 10) };
    let st = gat.forward(be, &dg, &x, &p).expect("gat forward");
    let gat_ref = |a: &[Vec<f64>]| cpu::gat_layer(&g, &a[0], &a[1], &a[2], &a[3], &a[4], 2, gat.act);
    let inputs = [("x", f64s(&x)), ("w", f64s(&p.w)), ("a_src", f64s(&p.a_src)), ("a_dst", f64s(&p.a_dst)), ("b", f64s(&p.b))];
    let base: Vec<Vec<f64>> = inputs.iter().map(|t| t.1.clone()).collect();
    assert_close("gat forward", &st.out.data, &gat_ref(&base), DType::F32);
    let dy4 = tensor(DType::F32, n * 4, 1.0, 11);
    let gr = gat.backward(be, &dg, &dgt, &x, &p, &st, &dy4).expect("gat backward");
    let loss = |k: usize, v: &[f64]| {
        let mut a = base.clone();
        a[k] = v.to_vec();
        dot(&gat_ref(&a), &dy4)
    };
    directional_check("gat", &inputs, &[&gr.dx, &gr.params.w, &gr.params.a_src, &gr.params.a_dst, &gr.params.b], &loss);
}

fn words(t: &HostTensor) -> Vec<u32> {
    t.data.iter().map(|x| x.to_bits()).collect()
}

/// Each layer on every backend and dtype: forward against the f64 reference, gradients against
/// the composition on the CPU backend in the same dtype (checked above against finite
/// differences), a second run bitwise equal.
#[test]
fn layers_match_the_reference_on_every_backend() {
    let acts = [Activation::Relu, Activation::GeluErf, Activation::GeluTanh];
    for dtype in DType::ALL {
        let layers = GnnLayers::new(graph(150, 900, 7), 24, 20, 4, acts, dtype, 0);
        let refs = layers.references();
        let want = layers.run(&ffkern::Device::Cpu(Cpu)).expect("cpu");
        for dev in devices_and_cpu() {
            let got = layers.run(dev).expect("layers");
            for ((name, t), (_, r)) in got.iter().zip(&want) {
                let what = format!("{} {dtype} {name}", dev.name());
                match name.as_str() {
                    "gcn y" => assert_close(&what, &t.data, &refs[0], dtype),
                    "sage y" => assert_close(&what, &t.data, &refs[1], dtype),
                    "gat y" => assert_close(&what, &t.data, &refs[2], dtype),
                    _ => assert_close(&what, &t.data, &f64s(r), dtype),
                }
            }
            let again = layers.run(dev).expect("layers");
            for ((name, a), (_, b)) in got.iter().zip(&again) {
                assert_eq!(words(a), words(b), "{} {dtype} {name}: two runs differ", dev.name());
            }
        }
    }
}

/// A graph without edges: every layer runs forward and backward on every backend, matching the
/// references (GCN keeps the self-loops, SAGE the root term, GAT aggregates nothing).
#[test]
fn layers_run_on_a_graph_without_edges() {
    let g = Graph::from_coo(5, &[], &[]).expect("graph");
    let (n, i, o) = (5, 6, 4);
    let x = tensor(DType::F32, n * i, 1.0, 1);
    let dy = tensor(DType::F32, n * o, 1.0, 2);
    let (w, wn, b) = (tensor(DType::F32, o * i, 0.5, 3), tensor(DType::F32, o * i, 0.5, 4), tensor(DType::F32, o, 0.5, 5));
    let (gl, ew) = GcnLayer::normalize(&g).expect("normalize");
    let ew = f32_tensor(ew);
    let mw = f32_tensor(SageLayer::mean_weights(&g));
    let gcn = GcnLayer { in_dim: i, out_dim: o, act: Activation::Silu };
    let sage = SageLayer { in_dim: i, out_dim: o, act: Activation::Silu };
    let gat = GatLayer { in_dim: i, heads: 2, head_dim: 2, act: Activation::Identity };
    let pg = [tensor(DType::F32, o * i, 0.5, 6), tensor(DType::F32, o, 1.0, 7), tensor(DType::F32, o, 1.0, 8), tensor(DType::F32, o, 0.5, 9)];
    for dev in devices_and_cpu() {
        with_backend!(dev, be => {
            let up = |t: &HostTensor| be.upload(t).expect("upload");
            let down = |b: &_| be.download(b).expect("download").data;
            let (xb, dyb) = (up(&x), up(&dy));
            let (dgl, dg) = (DeviceGraph::upload(be, &gl).expect("g"), DeviceGraph::upload(be, &g).expect("g"));
            let (dglt, dgt) = (DeviceGraph::upload(be, &gl.transposed()).expect("gt"), DeviceGraph::upload(be, &g.transposed()).expect("gt"));
            let st = gcn.forward(be, &dgl, &up(&ew), &xb, &up(&w), &up(&b)).expect("gcn");
            assert_close(&format!("{} gcn", dev.name()), &down(&st.out), &cpu::gcn_layer(&g, &f64s(&x), &f64s(&w), &f64s(&b), gcn.act), DType::F32);
            gcn.backward(be, &dglt, &up(&ew), &up(&w), &st, &dyb).expect("gcn backward");
            let st = sage.forward(be, &dg, &up(&mw), &xb, &up(&wn), &up(&w), &up(&b)).expect("sage");
            assert_close(&format!("{} sage", dev.name()), &down(&st.out), &cpu::sage_layer(&g, &f64s(&x), &f64s(&wn), &f64s(&w), &f64s(&b), sage.act), DType::F32);
            sage.backward(be, &dgt, &up(&mw), &xb, &up(&wn), &up(&w), &st, &dyb).expect("sage backward");
            let p = GatParams { w: up(&pg[0]), a_src: up(&pg[1]), a_dst: up(&pg[2]), b: up(&pg[3]) };
            let st = gat.forward(be, &dg, &xb, &p).expect("gat");
            let r = cpu::gat_layer(&g, &f64s(&x), &f64s(&pg[0]), &f64s(&pg[1]), &f64s(&pg[2]), &f64s(&pg[3]), 2, gat.act);
            assert_close(&format!("{} gat", dev.name()), &down(&st.out), &r, DType::F32);
            gat.backward(be, &dg, &dgt, &xb, &p, &st, &dyb).expect("gat backward");
        });
    }
}
