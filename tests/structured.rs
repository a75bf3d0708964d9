//! Structured layers (LowRank, BlockDense, BlockShuffle): forward, backward and pre-merge on every
//! backend and dtype against the f64 references (from SPEC §4's formulas), the structured FFN
//! block, self-guided training and the form choice.

mod common;

use common::{assert_close, devices_and_cpu, scaled};

use ffkern::ops::structured::{self, choose_form, guide_alpha, Form, SelfGuided, Structured, StructuredFfn};
use ffkern::{with_backend, Activation, Backend, DType, Error, Gemm, HostTensor};

fn dl<Be: Backend>(be: &Be, b: &Be::Buf) -> Vec<f32> {
    be.download(b).expect("download").data
}

fn layers() -> Vec<Structured> {
    let mut v = vec![Structured::LowRank { inp: 37, out: 29, rank: 11 }];
    for blocks in [1, 2, 4, 16] {
        v.push(Structured::BlockDense { inp: 48, out: 20, rank: 16, blocks });
        v.push(Structured::BlockShuffle { inp: 48, out: 32, blocks, inner: 6 });
    }
    v.push(Structured::BlockShuffle { inp: 21, out: 15, blocks: 3, inner: 5 });
    // Wide enough blocks (q/k = 64) for CUDA to keep the middle activation gathered by default.
    v.push(Structured::BlockShuffle { inp: 64, out: 48, blocks: 4, inner: 256 });
    v
}

#[test]
fn layers_forward_backward_and_premerge_match_the_reference() {
    let tokens = 13;
    for layer in layers() {
        let (l1, l2) = layer.factor_lens();
        for dtype in DType::ALL {
            let x = scaled(dtype, tokens * layer.inp(), 1.0, 1);
            let f1 = scaled(dtype, l1, 0.5, 2);
            let f2 = scaled(dtype, l2, 0.5, 3);
            let dy = scaled(dtype, tokens * layer.out(), 1.0, 4);
            let y_ref = structured::cpu::forward(&layer, tokens, &x.data, &f1.data, &f2.data);
            let (dx_ref, d1_ref, d2_ref) = structured::cpu::backward(&layer, tokens, &x.data, &f1.data, &f2.data, &dy.data);
            let dense = layer.to_dense(&f1.data, &f2.data, dtype).expect("to_dense");
            let w_ref = structured::cpu::dense_weight(&layer, &f1.data, &f2.data);
            for dev in devices_and_cpu() {
                let what = format!("{} {dtype} {layer:?}", dev.name());
                with_backend!(dev, be => {
                    let up = |t: &HostTensor| be.upload(t).expect("upload");
                    let (xb, f1b, f2b) = (up(&x), up(&f1), up(&f2));
                    let (y, h) = layer.forward(be, tokens, &xb, &f1b, &f2b, 1.0).expect("forward");
                    assert_close(&format!("{what} y"), &dl(be, &y), &y_ref, dtype);
                    let (dx, d1, d2) = layer.backward(be, tokens, &xb, &f1b, &f2b, &h, &up(&dy), 1.0, None).expect("backward");
                    assert_close(&format!("{what} dx"), &dl(be, &dx), &dx_ref, dtype);
                    assert_close(&format!("{what} dF1"), &dl(be, &d1), &d1_ref, dtype);
                    assert_close(&format!("{what} dF2"), &dl(be, &d2), &d2_ref, dtype);
                    // Pre-merged dense form: one GEMM with the dense weight gives the same output.
                    let mut yd = be.alloc(dtype, tokens * layer.out()).expect("alloc");
                    be.gemm(&Gemm::new(tokens, layer.out(), layer.inp()), &xb, &up(&dense), None, None, &mut yd, None).expect("dense");
                    assert_close(&format!("{what} pre-merged"), &dl(be, &yd), &y_ref, dtype);
                    // The same merge on the device.
                    let wd = layer.dense_on(be, &f1b, &f2b).expect("dense_on");
                    assert_close(&format!("{what} dense_on"), &dl(be, &wd), &w_ref, dtype);
                });
            }
        }
    }
}

#[test]
fn structured_ffn_block_matches_the_dense_reference() {
    let tokens = 9;
    let pairs = [
        (Structured::LowRank { inp: 24, out: 64, rank: 10 }, Structured::LowRank { inp: 64, out: 24, rank: 10 }),
        (Structured::BlockDense { inp: 24, out: 64, rank: 16, blocks: 4 }, Structured::BlockDense { inp: 64, out: 24, rank: 16, blocks: 4 }),
        (Structured::LowRank { inp: 24, out: 64, rank: 12 }, Structured::BlockDense { inp: 64, out: 24, rank: 8, blocks: 2 }),
        (Structured::BlockShuffle { inp: 24, out: 64, blocks: 4, inner: 5 }, Structured::BlockShuffle { inp: 64, out: 24, blocks: 4, inner: 6 }),
        (Structured::BlockShuffle { inp: 24, out: 64, blocks: 2, inner: 8 }, Structured::LowRank { inp: 64, out: 24, rank: 10 }),
        // Gathered on CUDA (q/k = 64): the second product stores its interleaved output with the
        // bias, the activation and the saved pre-activation from contiguous rows.
        (Structured::BlockShuffle { inp: 64, out: 256, blocks: 4, inner: 256 }, Structured::LowRank { inp: 256, out: 64, rank: 16 }),
    ];
    for ((s1, s2), dtype) in pairs.into_iter().flat_map(|p| DType::ALL.map(move |d| (p, d))) {
        let f = StructuredFfn { tokens, s1, s2, act: Activation::GeluErf };
        let fac = |l: &Structured, seed: u64| {
            let (a, b) = l.factor_lens();
            (scaled(dtype, a, 0.5, seed), scaled(dtype, b, 0.5, seed + 1))
        };
        let ((a1, b1), (a2, b2)) = (fac(&s1, 10), fac(&s2, 20));
        let (bias1, bias2) = (scaled(dtype, s1.out(), 0.3, 30), scaled(dtype, s2.out(), 0.3, 31));
        let x = scaled(dtype, tokens * s1.inp(), 1.0, 32);
        let dy = scaled(dtype, tokens * s2.out(), 1.0, 33);
        let w1 = s1.to_dense(&a1.data, &b1.data, dtype).expect("dense 1");
        let w2 = s2.to_dense(&a2.data, &b2.data, dtype).expect("dense 2");
        let dense = ffkern::ops::ffn::DenseFfn { tokens, dim: s1.inp(), hidden: s1.out(), act: Activation::GeluErf, residual: false };
        let (y_ref, ..) = ffkern::ops::ffn::cpu::dense_forward(&dense, dtype, &x.data, &w1.data, &bias1.data, &w2.data, &bias2.data);
        let g_ref = ffkern::ops::ffn::cpu::dense_backward(&dense, dtype, &x.data, &w1.data, &bias1.data, &w2.data, &bias2.data, &dy.data);
        for dev in devices_and_cpu() {
            with_backend!(dev, be => {
                let up = |t: &HostTensor| be.upload(t).expect("upload");
                let fs = [up(&a1), up(&b1), up(&a2), up(&b2)];
                let fr = [&fs[0], &fs[1], &fs[2], &fs[3]];
                let (xb, bb1, bb2) = (up(&x), up(&bias1), up(&bias2));
                let (y, saved) = f.forward(be, &xb, fr, &bb1, &bb2).expect("forward");
                let what = format!("{} {dtype} {s1:?} → {s2:?}", dev.name());
                assert_close(&format!("{what} y"), &dl(be, &y), &y_ref, dtype);
                // Inference (no saved pre-activation) computes the same y, bit for bit.
                let y_inf = f.infer(be, &xb, fr, &bb1, &bb2).expect("infer");
                let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(dl(be, &y_inf)), bits(dl(be, &y)), "{what}: infer differs from forward");
                let g = f.backward(be, &xb, fr, &saved, &up(&dy)).expect("backward");
                assert_close(&format!("{what} dx"), &dl(be, &g[0]), &g_ref.0, dtype);
                assert_close(&format!("{what} db1"), &dl(be, &g[5]), &g_ref.2, dtype);
                assert_close(&format!("{what} db2"), &dl(be, &g[6]), &g_ref.4, dtype);
            });
        }
    }
}

#[test]
fn self_guided_mix_and_schedule() {
    assert_eq!(guide_alpha(0, 100), 1.0);
    assert!((guide_alpha(50, 100) - 0.5).abs() < 1e-6);
    assert_eq!(guide_alpha(100, 100), 0.0);
    assert_eq!(guide_alpha(101, 100), 0.0);
    let layer = Structured::BlockDense { inp: 32, out: 24, rank: 8, blocks: 4 };
    let tokens = 11;
    let sg = SelfGuided { tokens, layer };
    let (l1, l2) = layer.factor_lens();
    let dtype = DType::F32;
    let (x, wg, f1, f2) = (scaled(dtype, tokens * 32, 1.0, 1), scaled(dtype, 24 * 32, 0.3, 2), scaled(dtype, l1, 0.5, 3), scaled(dtype, l2, 0.5, 4));
    let dy = scaled(dtype, tokens * 24, 1.0, 5);
    let s_ref = structured::cpu::forward(&layer, tokens, &x.data, &f1.data, &f2.data);
    let (dxs, d1s, d2s) = structured::cpu::backward(&layer, tokens, &x.data, &f1.data, &f2.data, &dy.data);
    for alpha in [1.0f32, 0.3, 0.0] {
        let a = alpha as f64;
        let mut o_ref = s_ref.clone();
        let mut dx_ref = dxs.clone();
        let mut dwg_ref = vec![0.0; 24 * 32];
        for t in 0..tokens {
            for o in 0..24 {
                let dense: f64 = (0..32).map(|i| wg.data[o * 32 + i] as f64 * x.data[t * 32 + i] as f64).sum();
                o_ref[t * 24 + o] = a * dense + (1.0 - a) * s_ref[t * 24 + o];
                for i in 0..32 {
                    dwg_ref[o * 32 + i] += a * dy.data[t * 24 + o] as f64 * x.data[t * 32 + i] as f64;
                }
            }
            for i in 0..32 {
                dx_ref[t * 32 + i] = (1.0 - a) * dxs[t * 32 + i] + a * (0..24).map(|o| dy.data[t * 24 + o] as f64 * wg.data[o * 32 + i] as f64).sum::<f64>();
            }
        }
        let scale = |v: &[f64]| v.iter().map(|x| x * (1.0 - a)).collect::<Vec<_>>();
        for dev in devices_and_cpu() {
            with_backend!(dev, be => {
                let up = |t: &HostTensor| be.upload(t).expect("upload");
                let (xb, wgb, f1b, f2b) = (up(&x), up(&wg), up(&f1), up(&f2));
                let (o, h) = sg.forward(be, &xb, &wgb, &f1b, &f2b, alpha).expect("forward");
                let what = format!("{} α={alpha}", dev.name());
                assert_close(&format!("{what} o"), &dl(be, &o), &o_ref, dtype);
                let (dx, dwg, d1, d2) = sg.backward(be, &xb, &wgb, &f1b, &f2b, &h, &up(&dy), alpha).expect("backward");
                assert_close(&format!("{what} dx"), &dl(be, &dx), &dx_ref, dtype);
                match dwg {
                    Some(d) => assert_close(&format!("{what} dW_g"), &dl(be, &d), &dwg_ref, dtype),
                    None => assert_eq!(alpha, 0.0, "{what}: the dense branch must run while α > 0"),
                }
                if alpha < 1.0 {
                    assert_close(&format!("{what} dF1"), &dl(be, &d1), &scale(&d1s), dtype);
                    assert_close(&format!("{what} dF2"), &dl(be, &d2), &scale(&d2s), dtype);
                }
            });
        }
    }
    assert!(matches!(sg.forward(&ffkern::Cpu, &x, &wg, &f1, &f2, 1.5), Err(Error::Invalid(_))));
}

#[test]
fn form_choice_and_crossover_measurement() {
    assert_eq!(choose_form(1, 64), Form::Dense);
    assert_eq!(choose_form(64, 64), Form::Structured);
    assert_eq!(structured::default_crossover(&ffkern::Cpu), structured::DEFAULT_CROSSOVER);
    let layer = Structured::LowRank { inp: 64, out: 64, rank: 8 };
    for dev in common::device_backends() {
        let c = with_backend!(dev, be => structured::measure_crossover(be, &layer, DType::F32, 256, 3)).expect("crossover");
        assert!((1..=257).contains(&c), "{}: crossover {c}", dev.name());
    }
}

#[test]
fn bad_shapes_are_rejected() {
    let be = ffkern::Cpu;
    let x = be.upload(&HostTensor::random(DType::F32, vec![30], 1)).expect("x");
    for bad in [Structured::BlockDense { inp: 30, out: 8, rank: 8, blocks: 4 }, Structured::BlockShuffle { inp: 30, out: 9, blocks: 2, inner: 3 }] {
        assert!(matches!(bad.forward(&be, 1, &x, &x, &x, 1.0), Err(Error::Shape { .. })), "{bad:?}");
    }
}

/// Both forms of a pre-merged layer give the reference output; the form follows the crossover.
#[test]
fn premerged_layer_switches_form_by_token_count() {
    let layer = Structured::BlockShuffle { inp: 32, out: 16, blocks: 4, inner: 6 };
    let (l1, l2) = layer.factor_lens();
    let (f1, f2) = (scaled(DType::F32, l1, 0.5, 1), scaled(DType::F32, l2, 0.5, 2));
    for dev in devices_and_cpu() {
        with_backend!(dev, be => {
            let mut pm = structured::PreMerged::new(be, layer, &f1, &f2).expect("premerge");
            pm.crossover = 8;
            for (tokens, form) in [(3usize, Form::Dense), (8, Form::Structured), (20, Form::Structured)] {
                let x = scaled(DType::F32, tokens * 32, 1.0, tokens as u64);
                let reference = structured::cpu::forward(&layer, tokens, &x.data, &f1.data, &f2.data);
                let (y, used) = pm.forward(be, tokens, &be.upload(&x).expect("x")).expect("forward");
                assert_eq!(used, form);
                assert_close(&format!("{} pre-merged {tokens} tokens", dev.name()), &dl(be, &y), &reference, DType::F32);
            }
        });
    }
}
