//! FFN family: the dense FFN forward/backward and the RePaViT reparameterization and merged
//! inference, on every backend and dtype, against the f64 references.

mod common;

use ffkern::ops::ffn::{self, active_channels, reparameterize, BatchNorm, DenseFfn, FfnWeights, RepavitWeights};
use ffkern::{with_backend, Activation, Backend, Compare, DType, Device, Error, HostTensor, SplitMix64};

fn assert_close(what: &str, out: &[f32], reference: &[f64], dtype: DType) {
    let c = Compare::new(out, reference, dtype);
    assert!(c.passes(dtype.budget()), "{what}: rms_ratio {:.3e} max_abs {:.3e} over the {dtype} budget", c.rms_ratio, c.max_abs);
}

fn dl<Be: Backend>(be: &Be, b: &Be::Buf) -> Vec<f32> {
    be.download(b).expect("download").data
}

fn devices_and_cpu() -> Vec<&'static Device> {
    static CPU: Device = Device::Cpu(ffkern::Cpu);
    let mut d = common::device_backends();
    d.push(&CPU);
    d
}

fn scaled(dtype: DType, n: usize, scale: f32, seed: u64) -> HostTensor {
    let t = HostTensor::random(DType::F32, vec![n], seed);
    HostTensor::new(dtype, vec![n], t.data.iter().map(|v| v * scale).collect()).expect("tensor")
}

#[test]
fn dense_ffn_forward_and_backward_match_the_reference() {
    let cases = [
        DenseFfn { tokens: 5, dim: 7, hidden: 28, act: Activation::GeluErf, residual: true },
        DenseFfn { tokens: 65, dim: 63, hidden: 130, act: Activation::Relu, residual: false },
        DenseFfn { tokens: 33, dim: 64, hidden: 256, act: Activation::GeluTanh, residual: true },
    ];
    for dev in devices_and_cpu() {
        for dtype in DType::ALL {
            for (i, f) in cases.iter().enumerate() {
                let (t, c, h) = (f.tokens, f.dim, f.hidden);
                let s = 100 * i as u64;
                let x = scaled(dtype, t * c, 1.0, s + 1);
                let (w1, b1) = (scaled(dtype, h * c, 1.0 / (c as f32).sqrt(), s + 2), scaled(dtype, h, 0.5, s + 3));
                let (w2, b2) = (scaled(dtype, c * h, 1.0 / (h as f32).sqrt(), s + 4), scaled(dtype, c, 0.5, s + 5));
                let dy = scaled(dtype, t * c, 1.0, s + 6);
                let (y_ref, _, _) = ffn::cpu::dense_forward(f, dtype, &x.data, &w1.data, &b1.data, &w2.data, &b2.data);
                let g_ref = ffn::cpu::dense_backward(f, dtype, &x.data, &w1.data, &b1.data, &w2.data, &b2.data, &dy.data);
                with_backend!(dev, be => {
                    let up = |t: &HostTensor| be.upload(t).expect("upload");
                    let w = FfnWeights { w1: up(&w1), b1: up(&b1), w2: up(&w2), b2: up(&b2) };
                    let (xb, dyb) = (up(&x), up(&dy));
                    let (y, saved) = f.forward(be, &xb, &w, true).expect("forward");
                    let what = format!("{} {dtype} case {i}", dev.name());
                    assert_close(&format!("{what} y"), &be.download(&y).expect("y").data, &y_ref, dtype);
                    for (label, saved) in [("saved", saved.as_ref()), ("recomputed", None)] {
                        let g = f.backward(be, &xb, &w, saved, &dyb).expect("backward");
                        assert_close(&format!("{what} {label} dx"), &dl(be, &g.dx), &g_ref.0, dtype);
                        assert_close(&format!("{what} {label} dw1"), &dl(be, &g.dw1), &g_ref.1, dtype);
                        assert_close(&format!("{what} {label} db1"), &dl(be, &g.db1), &g_ref.2, dtype);
                        assert_close(&format!("{what} {label} dw2"), &dl(be, &g.dw2), &g_ref.3, dtype);
                        assert_close(&format!("{what} {label} db2"), &dl(be, &g.db2), &g_ref.4, dtype);
                    }
                });
            }
        }
    }
}

fn batchnorm(n: usize, rng: &mut SplitMix64) -> BatchNorm {
    let mut v = |lo: f32, hi: f32| (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect::<Vec<f32>>();
    BatchNorm { gamma: v(0.5, 1.5), beta: v(-0.5, 0.5), mean: v(-0.3, 0.3), var: v(0.5, 2.0), eps: 1e-5 }
}

fn repavit_weights(c: usize, h: usize, seed: u64) -> RepavitWeights {
    let mut rng = SplitMix64::new(seed);
    let f = |n: usize, scale: f32, s: u64| scaled(DType::F32, n, scale, seed * 10 + s);
    RepavitWeights {
        w1: f(h * c, 1.0 / (c as f32).sqrt(), 1),
        b1: f(h, 0.2, 2),
        w2: f(c * h, 1.0 / (h as f32).sqrt(), 3),
        b2: f(c, 0.2, 4),
        bn1: batchnorm(c, &mut rng),
        bn2: batchnorm(h, &mut rng),
    }
}

fn check_merged(dev: &Device, w: &RepavitWeights, theta: f64, tokens: usize, dtype: DType) {
    let (c, h) = w.dims().expect("dims");
    let a = active_channels(h, theta).expect("a");
    let merged = reparameterize(w, theta, dtype).expect("reparameterize");
    assert_eq!((merged.active, merged.wu.shape.clone(), merged.wo.shape.clone()), (a, vec![a + c, c], vec![c, a]));
    let x = scaled(dtype, tokens * c, 1.0, 77);
    let reference = ffn::cpu::repavit_eval(w, a, tokens, &x.data);
    let y = with_backend!(dev, be => {
        let up = |t: &HostTensor| be.upload(t).expect("upload");
        let y = merged.forward(be, tokens, &up(&x), (&up(&merged.wu), &up(&merged.bu), &up(&merged.wo))).expect("merged forward");
        be.download(&y).expect("y").data
    });
    assert_close(&format!("{} {dtype} C={c} H={h} θ={theta} (a={a})", dev.name()), &y, &reference, dtype);
}

#[test]
fn repavit_merged_inference_equals_the_eval_training_form() {
    let small = repavit_weights(7, 28, 1);
    for dev in devices_and_cpu() {
        for dtype in DType::ALL {
            for theta in [0.0, 0.5, 0.75, 1.0] {
                check_merged(dev, &small, theta, 5, dtype);
            }
        }
    }
    // ViT-S: C = 384, H = 1536, 4 images of 197 tokens, θ = 0.75 (a = 384).
    let vit_s = repavit_weights(384, 1536, 2);
    for dev in common::device_backends() {
        for dtype in DType::ALL {
            check_merged(dev, &vit_s, 0.75, 4 * 197, dtype);
        }
    }
}

#[test]
fn active_channel_count_follows_the_spec() {
    assert_eq!(active_channels(1536, 0.75).expect("a"), 384);
    assert_eq!(active_channels(28, 0.5).expect("a"), 14);
    assert_eq!(active_channels(30, 0.75).expect("a"), 8); // ceil(7.5)
    assert_eq!(active_channels(28, 0.0).expect("a"), 28);
    assert_eq!(active_channels(28, 1.0).expect("a"), 0);
    assert!(matches!(active_channels(28, 1.5), Err(Error::Invalid(_))));
}

#[test]
fn bad_input_gives_typed_errors() {
    let mut w = repavit_weights(7, 28, 3);
    w.b2 = HostTensor::random(DType::F32, vec![6], 1);
    assert!(matches!(reparameterize(&w, 0.75, DType::F32), Err(Error::Shape { .. })));
    let mut w = repavit_weights(7, 28, 3);
    w.bn2.var[0] = -1.0;
    assert!(matches!(reparameterize(&w, 0.75, DType::F32), Err(Error::Invalid(_))));
    let f = DenseFfn { tokens: 4, dim: 8, hidden: 16, act: Activation::Relu, residual: true };
    let be = ffkern::Cpu;
    let t = |n: usize, d: DType| be.upload(&HostTensor::random(d, vec![n], n as u64)).expect("t");
    let w = FfnWeights { w1: t(16 * 8, DType::F32), b1: t(16, DType::F32), w2: t(8 * 16, DType::F32), b2: t(8, DType::F32) };
    assert!(matches!(f.forward(&be, &t(31, DType::F32), &w, false), Err(Error::Shape { .. })), "short x");
    assert!(matches!(f.forward(&be, &t(32, DType::BF16), &w, false), Err(Error::Dtype { .. })), "dtype mix");
}
