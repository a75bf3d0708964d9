//! FFN family: the dense FFN forward/backward and the RePaViT reparameterization and merged
//! inference, on every backend and dtype, against the f64 references.

mod common;

use common::{batchnorm, repavit_weights, scaled};

use ffkern::ops::ffn::{self, active_channels, reparameterize, DenseFfn, FfnWeights, RepavitWeights};
use ffkern::{with_backend, Activation, Backend, Compare, DType, Device, Error, HostTensor, SplitMix64};

fn assert_close(what: &str, out: &[f32], reference: &[f64], dtype: DType) {
    let c = Compare::new(out, reference, dtype);
    assert!(c.passes(dtype.budget()), "{what}: rms_ratio {:.3e} max_abs {:.3e} over the {dtype} budget", c.rms_ratio, c.max_abs);
}

/// Like `assert_close`, except for gradients that vanish by construction (a sum over tokens of a
/// BatchNorm's input gradient is exactly zero, e.g. db1 and dβ1 when no channel is active):
/// there only rounding noise is left, and it must stay small.
fn close_or_vanishing(what: &str, out: &[f32], reference: &[f64], dtype: DType) {
    let rms = (reference.iter().map(|v| v * v).sum::<f64>() / reference.len().max(1) as f64).sqrt();
    if rms < dtype.budget() {
        let worst = out.iter().map(|v| v.abs()).fold(0.0f32, f32::max) as f64;
        assert!(worst < 10.0 * dtype.budget(), "{what}: should vanish, max {worst:.2e}");
    } else {
        assert_close(what, out, reference, dtype);
    }
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

/// Training form, training mode: forward and every gradient (weights, biases, both
/// BatchNorms' γ and β, and dx through BN1 plus the shortcut) against the reference; the running
/// statistics move by the momentum rule.
#[test]
fn repavit_training_form_forward_and_backward() {
    for (c, h, tokens, theta) in [(7usize, 28usize, 5usize, 0.75), (16, 64, 37, 0.5), (12, 48, 9, 1.0), (12, 48, 9, 0.0)] {
        let w0 = repavit_weights(c, h, c as u64);
        for dev in devices_and_cpu() {
            for dtype in DType::ALL {
                // The reference sees the weights rounded to the dtype, like the device.
                let mut w = w0.clone();
                for t in [&mut w.w1, &mut w.b1, &mut w.w2, &mut w.b2] {
                    *t = HostTensor::new(dtype, t.shape.clone(), t.data.clone()).expect("round");
                }
                let f = ffn::RepavitFfn { tokens, dim: c, hidden: h, active: active_channels(h, theta).expect("a"), eps: 1e-5, momentum: 0.1 };
                let x = scaled(dtype, tokens * c, 1.0, 5);
                let dy = scaled(dtype, tokens * c, 1.0, 6);
                let (y_ref, g_ref) = ffn::cpu::repavit_train(&f, dtype, &w, &x.data, &dy.data);
                let what = format!("{} {dtype} C={c} H={h} T={tokens} θ={theta}", dev.name());
                with_backend!(dev, be => {
                    let mut tw = ffn::RepavitTrain::upload(be, &w, dtype).expect("weights");
                    let (xb, dyb) = (be.upload(&x).expect("x"), be.upload(&dy).expect("dy"));
                    let (y, saved) = f.forward(be, &xb, &mut tw, true).expect("forward");
                    assert_close(&format!("{what} y"), &dl(be, &y), &y_ref, dtype);
                    let g = f.backward(be, &xb, &mut tw, &saved, &dyb).expect("backward");
                    for (name, got, k) in [("dx", &g.dx, 0), ("dw1", &g.dw1, 1), ("db1", &g.db1, 2), ("dw2", &g.dw2, 3), ("db2", &g.db2, 4)] {
                        close_or_vanishing(&format!("{what} {name}"), &dl(be, got), &g_ref[k], dtype);
                    }
                    let s1 = dl(be, &tw.bn1.stats);
                    let s2 = dl(be, &tw.bn2.stats);
                    // BN parameter gradients are f32 sums: the f32 budget unless the inputs were rounded.
                    close_or_vanishing(&format!("{what} dγ1"), &s1[4 * c..5 * c], &g_ref[5], dtype);
                    close_or_vanishing(&format!("{what} dβ1"), &s1[5 * c..6 * c], &g_ref[6], dtype);
                    close_or_vanishing(&format!("{what} dγ2"), &s2[4 * h..5 * h], &g_ref[7], dtype);
                    close_or_vanishing(&format!("{what} dβ2"), &s2[5 * h..6 * h], &g_ref[8], dtype);
                    // Running statistics: (1 − m)·old + m·batch.
                    let (_, mean, var, rm, rv) = ffn::cpu::batchnorm_forward(&f.bn1(), true, &x.data, &w.bn1);
                    let _ = (mean, var);
                    let rm_dev = dl(be, &tw.bn1.running_mean);
                    let rv_dev = dl(be, &tw.bn1.running_var);
                    let worst_m = rm_dev.iter().zip(&rm).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
                    let worst_v = rv_dev.iter().zip(&rv).map(|(a, b)| (*a as f64 - b).abs() / b.abs().max(1e-3)).fold(0.0, f64::max);
                    assert!(worst_m < 1e-5 && worst_v < 1e-4, "{what}: running statistics off by {worst_m:.2e} / {worst_v:.2e}");
                });
            }
        }
    }
}

/// The training form in eval mode on the device equals the merged inference form on the device.
#[test]
fn repavit_eval_form_equals_merged_on_device() {
    let (c, h, tokens, theta) = (16usize, 64usize, 21usize, 0.75);
    let w = repavit_weights(c, h, 9);
    let a = active_channels(h, theta).expect("a");
    let f = ffn::RepavitFfn { tokens, dim: c, hidden: h, active: a, eps: w.bn1.eps, momentum: 0.1 };
    let reference = ffn::cpu::repavit_eval(&w, a, tokens, &scaled(DType::F32, tokens * c, 1.0, 7).data);
    for dev in devices_and_cpu() {
        let x = scaled(DType::F32, tokens * c, 1.0, 7);
        let y = with_backend!(dev, be => {
            let mut tw = ffn::RepavitTrain::upload(be, &w, DType::F32).expect("weights");
            let (y, _) = f.forward(be, &be.upload(&x).expect("x"), &mut tw, false).expect("eval forward");
            dl(be, &y)
        });
        assert_close(&format!("{} eval-mode training form", dev.name()), &y, &reference, DType::F32);
    }
}

/// BatchNorm alone, train forward (y, batch and running statistics) and backward (dx with and
/// without an added tensor, dγ, dβ), on every backend and dtype, at row counts around the GPU
/// reductions' chunk of rows (`BN_CHUNK_ROWS`): one row, under one chunk, exactly one, one row
/// over, many chunks with a ragged last one, and more rows than llvmpipe's loop limit lets one
/// invocation walk. Activations drift along the rows on top of a per-channel offset, so chunks
/// have different means and combining them wrongly shows.
#[test]
fn batchnorm_matches_the_reference_across_row_chunks() {
    use ffn::BN_CHUNK_ROWS as CH;
    for (rows, channels) in [(1usize, 7usize), (CH - 1, 33), (CH, 64), (CH + 1, 33), (7 * CH + 13, 40), (70_001, 3)] {
        let bn = batchnorm(channels, &mut SplitMix64::new(rows as u64));
        let d = ffn::BatchNormDesc { rows, channels, eps: bn.eps, momentum: 0.1 };
        let noise = scaled(DType::F32, rows * channels, 1.0, 40);
        let drift: Vec<f32> = noise.data.iter().enumerate().map(|(i, v)| v + 3.0 + (i % channels) as f32 + ((i / channels) % 997) as f32 / 300.0).collect();
        for dtype in DType::ALL {
            let x = HostTensor::new(dtype, vec![rows * channels], drift.clone()).expect("x");
            let dy = scaled(dtype, rows * channels, 1.0, 41);
            let extra = scaled(dtype, rows * channels, 0.5, 42);
            let (y_ref, mean, var, rm, rv) = ffn::cpu::batchnorm_forward(&d, true, &x.data, &bn);
            let (dx_ref, dg_ref, db_ref) = ffn::cpu::batchnorm_backward(&d, &x.data, &dy.data, &bn);
            let dxe_ref: Vec<f64> = dx_ref.iter().zip(&extra.data).map(|(a, &e)| a + e as f64).collect();
            let rstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + bn.eps as f64).sqrt()).collect();
            for dev in devices_and_cpu() {
                let what = format!("{} {dtype} BatchNorm rows {rows} C {channels}", dev.name());
                with_backend!(dev, be => {
                    let mut state = ffn::BatchNormState::upload(be, &bn).expect("bn");
                    let xb = be.upload(&x).expect("x");
                    let y = state.forward(be, &d, &xb, true).expect("forward");
                    assert_close(&format!("{what} y"), &dl(be, &y), &y_ref, dtype);
                    // Statistics and running updates are f32 from the (rounded) input: the f32 budget.
                    let st = dl(be, &state.stats);
                    assert_close(&format!("{what} mean"), &st[..channels], &mean, DType::F32);
                    assert_close(&format!("{what} rstd"), &st[channels..2 * channels], &rstd, DType::F32);
                    assert_close(&format!("{what} running mean"), &dl(be, &state.running_mean), &rm, DType::F32);
                    assert_close(&format!("{what} running var"), &dl(be, &state.running_var), &rv, DType::F32);
                    let dyb = be.upload(&dy).expect("dy");
                    let dx = state.backward(be, &d, &xb, &dyb, None).expect("backward");
                    assert_close(&format!("{what} dx"), &dl(be, &dx), &dx_ref, dtype);
                    let st = dl(be, &state.stats);
                    assert_close(&format!("{what} dγ"), &st[4 * channels..5 * channels], &dg_ref, DType::F32);
                    assert_close(&format!("{what} dβ"), &st[5 * channels..6 * channels], &db_ref, DType::F32);
                    let dx = state.backward(be, &d, &xb, &dyb, Some(&be.upload(&extra).expect("extra"))).expect("backward + extra");
                    assert_close(&format!("{what} dx + extra"), &dl(be, &dx), &dxe_ref, dtype);
                });
            }
        }
    }
}

/// A channel whose mean (60 to 120) is a thousand times its spread (0.05, f32): an f32 mean alone
/// leaves up to half an ulp of the mean (3.8e-6) in every deviation x − mean, about 1e-4 of the
/// spread and ten times the budget of y; the kernels centre on the mean and then on its remainder
/// (`stats[6C..7C]`), in one chunk of rows and across several.
#[test]
fn batchnorm_centres_past_the_means_rounding() {
    let c = 16;
    for rows in [5, 3 * ffn::BN_CHUNK_ROWS + 17] {
        let bn = batchnorm(c, &mut SplitMix64::new(5));
        let d = ffn::BatchNormDesc { rows, channels: c, eps: 1e-9, momentum: 0.1 };
        let x: Vec<f32> = scaled(DType::F32, rows * c, 0.05, 9).data.iter().enumerate().map(|(i, v)| v + 60.0 + 60.0 * (i % c) as f32 / c as f32).collect();
        let x = HostTensor::new(DType::F32, vec![rows * c], x).expect("x");
        let dy = scaled(DType::F32, rows * c, 1.0, 10);
        let (y_ref, mean, ..) = ffn::cpu::batchnorm_forward(&d, true, &x.data, &bn);
        let (dx_ref, ..) = ffn::cpu::batchnorm_backward(&d, &x.data, &dy.data, &bn);
        for dev in common::device_backends() {
            let what = format!("{} rows {rows}", dev.name());
            with_backend!(dev, be => {
                let mut state = ffn::BatchNormState::upload(be, &bn).expect("bn");
                let xb = be.upload(&x).expect("x");
                let y = state.forward(be, &d, &xb, true).expect("forward");
                assert_close(&format!("{what} y"), &dl(be, &y), &y_ref, DType::F32);
                let st = dl(be, &state.stats);
                let centre: Vec<f64> = (0..c).map(|ch| st[ch] as f64 + st[6 * c + ch] as f64).collect();
                for (ch, (&got, &exact)) in centre.iter().zip(&mean).enumerate() {
                    assert!((got - exact).abs() <= 1e-9 * exact.abs(), "{what}: channel {ch}'s mean + mean_lo is {got}, the mean {exact}");
                }
                let dx = state.backward(be, &d, &xb, &be.upload(&dy).expect("dy"), None).expect("backward");
                assert_close(&format!("{what} dx"), &dl(be, &dx), &dx_ref, DType::F32);
            });
        }
    }
}

/// The batch mean is good to about half an ulp, though the channel's offset (40 to 80) dwarfs
/// its spread (0.58): within a chunk of rows the second sweep sums the deviations from the first
/// sweep's mean and corrects it (the f32 sum alone leaves 1.5–2 ulp, which y = (x − mean)·scale
/// carries times mean/spread), and the chunks' means combine as small differences from the
/// first one (a running weighted mean leaves 1.5–2 ulp again over 20 chunks).
#[test]
fn batchnorm_mean_is_good_to_an_ulp() {
    for (rows, bound) in [(ffn::BN_CHUNK_ROWS, 0.75), (20 * ffn::BN_CHUNK_ROWS - 77, 1.0)] {
        batchnorm_mean_within(rows, bound);
    }
}

fn batchnorm_mean_within(rows: usize, bound: f64) {
    let c = 64;
    let bn = batchnorm(c, &mut SplitMix64::new(3));
    let d = ffn::BatchNormDesc { rows, channels: c, eps: bn.eps, momentum: 0.1 };
    let x: Vec<f32> = scaled(DType::F32, rows * c, 1.0, 7).data.iter().enumerate().map(|(i, v)| v + 40.0 * (1.0 + (i % c) as f32 / c as f32)).collect();
    let x = HostTensor::new(DType::F32, vec![rows * c], x).expect("x");
    let (_, mean, ..) = ffn::cpu::batchnorm_forward(&d, true, &x.data, &bn);
    for dev in common::device_backends() {
        let got = with_backend!(dev, be => {
            let mut state = ffn::BatchNormState::upload(be, &bn).expect("bn");
            state.forward(be, &d, &be.upload(&x).expect("x"), true).expect("forward");
            dl(be, &state.stats)
        });
        for (ch, (&m, &exact)) in got.iter().zip(&mean).enumerate() {
            let ulp = (f32::from_bits((exact as f32).to_bits() + 1) - exact as f32) as f64;
            let err = (m as f64 - exact).abs() / ulp;
            assert!(err <= bound, "{} rows {rows}: channel {ch}'s mean is {err:.2} ulp off", dev.name());
        }
    }
}
