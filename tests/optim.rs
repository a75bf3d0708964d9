//! Noisy optimizers: Philox known answers, bitwise-identical words and matching normals on every
//! backend, noise statistics, every update rule against the CPU reference, seeds, clipping order,
//! save/restore continuation, and bad input.

mod common;

use ffkern::ops::optim::{self, philox4x32_10, Clip, ClipOrder, NoiseSchedule, NoisyOptimizer, Rule, TensorList};
use ffkern::{with_backend, Backend, Compare, DType, Error, HostTensor};

#[test]
fn philox_known_answers() {
    // Random123's kat_vectors for philox4x32-10.
    assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
    assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
    assert_eq!(
        philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

#[test]
fn philox_words_are_bitwise_identical_on_every_backend() {
    let (blocks, seed, t) = (10_007usize, 0x0123_4567_89ab_cdefu64, 42u32);
    let reference: Vec<u32> = (0..blocks as u64).flat_map(|j| optim::noise_words(seed, t, j)).collect();
    for dev in common::device_backends() {
        let words = with_backend!(dev, be => {
            let mut out = be.alloc(DType::F32, 4 * blocks).expect("alloc");
            be.philox_words(blocks, seed, t, &mut out).expect("philox_words");
            be.download(&out).expect("download")
        });
        let bits: Vec<u32> = words.data.iter().map(|f| f.to_bits()).collect();
        assert_eq!(bits, reference, "{}: Philox words differ from the reference", dev.name());
    }
}

/// Lengths that end inside a Philox block (four normals): the tail matches the reference, and
/// nothing is written past it (AddressSanitizer fails a write one element past the buffer on the
/// CUDA emulator, which CI runs this under).
#[test]
fn normals_of_lengths_inside_a_block_match_the_reference() {
    let cpu = ffkern::Device::Cpu(ffkern::Cpu);
    let mut devices = common::device_backends();
    devices.push(&cpu);
    for n in [1usize, 6, 1001] {
        let reference = optim::reference_normals(77, 3, n);
        for dev in &devices {
            let z = with_backend!(*dev, be => optim::philox_normal_host(be, n, 77, 3)).expect("normals");
            assert_eq!(z.data.len(), n, "{}", dev.name());
            let worst = z.data.iter().zip(&reference).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
            assert!(worst <= 1e-6, "{} n {n}: a normal is {worst:.2e} from the reference (budget 1e-6)", dev.name());
        }
    }
}

#[test]
fn normals_match_reference_and_have_the_right_statistics() {
    let n = 4 << 20; // 4M samples per step
    let seed = 2024u64;
    let schedule = NoiseSchedule { eta: 0.3, gamma: 0.55 };
    let mut seen = std::collections::HashSet::new();
    let cpu = ffkern::Device::Cpu(ffkern::Cpu);
    let mut devices = common::device_backends();
    devices.push(&cpu);
    for t in [0u32, 10, 1000] {
        let reference = optim::reference_normals(seed, t, n);
        // No Philox block repeats across steps.
        for j in 0..(n / 4) as u64 {
            let w = optim::noise_words(seed, t, j);
            assert!(seen.insert(w), "block {j} of step {t} repeats an earlier block");
        }
        for dev in &devices {
            let z = with_backend!(*dev, be => optim::philox_normal_host(be, n, seed, t)).expect("normals");
            let worst = z.data.iter().zip(&reference).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
            assert!(worst <= 1e-6, "{} step {t}: a normal is {worst:.2e} from the reference (budget 1e-6)", dev.name());
            assert!(z.data.iter().all(|x| x.is_finite()), "{} step {t}: non-finite normal", dev.name());
            // Statistics of the noise σ_t·z.
            let sigma = schedule.sigma(t as u64);
            let mean = z.data.iter().map(|&x| sigma * x as f64).sum::<f64>() / n as f64;
            let var = z.data.iter().map(|&x| (sigma * x as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let se = sigma / (n as f64).sqrt();
            assert!(mean.abs() < 4.0 * se, "{} step {t}: mean {mean:.3e} beyond 4 standard errors ({se:.3e})", dev.name());
            assert!((var / (sigma * sigma) - 1.0).abs() < 0.01, "{} step {t}: variance {var:.4e} vs σ² {:.4e}", dev.name(), sigma * sigma);
        }
    }
}

#[test]
fn schedule_follows_the_spec() {
    let s = NoiseSchedule { eta: 0.3, gamma: 0.55 };
    assert!((s.sigma(0) - 0.3f64.sqrt()).abs() < 1e-15);
    assert!((s.sigma(10) - (0.3 / 11f64.powf(0.55)).sqrt()).abs() < 1e-15);
}

/// Tensors of odd and unaligned sizes, 6,144 elements in all: exactly 3 chunks of the clipping
/// norm's partial sums (2,048 elements each on both device backends), so a partial count rounded
/// up once too often reads a partial that no workgroup wrote.
fn list() -> TensorList {
    TensorList::new(vec![1, 7, 1000, 4097, 63, 2, 974])
}

/// Runs `steps` steps of `opt` on `be` from seeded inputs; returns the final parameters and state.
fn run<Be: Backend>(be: &Be, opt: &NoisyOptimizer, grad_dtype: DType, steps: usize) -> (Vec<f32>, Vec<Vec<f32>>) {
    let list = list();
    let n = list.total();
    let mut opt = opt.clone();
    let mut param = be.upload(&HostTensor::random(DType::F32, vec![n], 1)).expect("param");
    let mut state: Vec<Be::Buf> =
        (0..opt.state_count()).map(|k| be.upload(&HostTensor::random(DType::F32, vec![n], 10 + k as u64)).expect("state")).collect();
    for s in 0..steps {
        // Keep Adam's second moment positive, as a real run would.
        if let (Rule::Adam { .. }, 0) = (opt.rule, s) {
            let v = HostTensor::new(DType::F32, vec![n], HostTensor::random(DType::F32, vec![n], 20).data.iter().map(|x| x.abs()).collect()).expect("v");
            state[1] = be.upload(&v).expect("v");
        }
        let grad = be.upload(&HostTensor::random(grad_dtype, vec![n], 100 + s as u64)).expect("grad");
        opt.step(be, &list, &mut param, &grad, &mut state).expect("step");
    }
    (be.download(&param).expect("param").data, state.iter().map(|s| be.download(s).expect("state").data).collect())
}

fn optimizers() -> Vec<(&'static str, NoisyOptimizer)> {
    let noise = NoiseSchedule { eta: 0.3, gamma: 0.55 };
    let mut v = Vec::new();
    let mut sgd = NoisyOptimizer::sgd(0.05, 0.0, 7);
    sgd.noise = noise;
    v.push(("sgd", sgd.clone()));
    let mut m = NoisyOptimizer::sgd(0.05, 0.9, 7);
    m.noise = noise;
    m.weight_decay = 0.01;
    v.push(("sgd momentum decoupled wd", m.clone()));
    let mut nest = m.clone();
    nest.rule = Rule::Sgd { momentum: 0.9, nesterov: true };
    nest.decoupled_weight_decay = false;
    v.push(("sgd nesterov l2", nest));
    let mut clip = m.clone();
    clip.clip = Some(Clip { max_norm: 1.0, order: ClipOrder::ClipThenNoise });
    v.push(("sgd momentum clip-then-noise", clip.clone()));
    clip.clip = Some(Clip { max_norm: 1.0, order: ClipOrder::NoiseThenClip });
    v.push(("sgd momentum noise-then-clip", clip));
    let mut adam = NoisyOptimizer::adam(1e-3, 7);
    adam.noise = noise;
    v.push(("adam", adam.clone()));
    adam.weight_decay = 0.1;
    v.push(("adamw", adam.clone()));
    adam.decoupled_weight_decay = false;
    adam.noise.eta = 0.0;
    v.push(("adam l2 without noise", adam));
    v
}

#[test]
fn every_rule_matches_the_reference_on_every_backend() {
    for (name, opt) in optimizers() {
        for gdt in DType::ALL {
            let (p_ref, s_ref) = run(&ffkern::Cpu, &opt, gdt, 3);
            let p64: Vec<f64> = p_ref.iter().map(|&x| x as f64).collect();
            for dev in common::device_backends() {
                let (p, s) = with_backend!(dev, be => run(be, &opt, gdt, 3));
                let c = Compare::new(&p, &p64, DType::F32);
                assert!(c.passes(1e-5), "{} {name} grad {gdt}: params rms_ratio {:.2e} max_abs {:.2e}", dev.name(), c.rms_ratio, c.max_abs);
                for (k, (a, b)) in s.iter().zip(&s_ref).enumerate() {
                    let b64: Vec<f64> = b.iter().map(|&x| x as f64).collect();
                    let c = Compare::new(a, &b64, DType::F32);
                    assert!(c.passes(1e-5), "{} {name} grad {gdt}: state {k} rms_ratio {:.2e}", dev.name(), c.rms_ratio);
                }
            }
        }
    }
}

#[test]
fn reference_step_by_hand() {
    // One plain SGD step without noise: p - lr·g; with momentum 0.5 and m = 2: m' = 0.5·2 + g.
    let mut opt = NoisyOptimizer::sgd(0.1, 0.5, 1);
    opt.noise.eta = 0.0;
    let list = TensorList::new(vec![2]);
    let mut p = HostTensor::new(DType::F32, vec![2], vec![1.0, -1.0]).expect("p");
    let g = HostTensor::new(DType::F32, vec![2], vec![0.5, 2.0]).expect("g");
    let mut st = vec![HostTensor::new(DType::F32, vec![2], vec![2.0, 0.0]).expect("m")];
    opt.step(&ffkern::Cpu, &list, &mut p, &g, &mut st).expect("step");
    assert_eq!(st[0].data, vec![1.5, 2.0]);
    assert_eq!(p.data, vec![1.0 - 0.1 * 1.5, -1.0 - 0.1 * 2.0]);
    assert_eq!(opt.step, 1);
}

#[test]
fn seeds_and_clipping_order_change_the_result() {
    let cpu = ffkern::Device::Cpu(ffkern::Cpu);
    let mut devices = common::device_backends();
    devices.push(&cpu);
    let base = optimizers()[1].1.clone();
    for dev in devices {
        let a = with_backend!(dev, be => run(be, &base, DType::F32, 2)).0;
        let b = with_backend!(dev, be => run(be, &base, DType::F32, 2)).0;
        assert_eq!(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), b.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "{}: same seed, different result", dev.name());
        let mut other = base.clone();
        other.seed = 8;
        let c = with_backend!(dev, be => run(be, &other, DType::F32, 2)).0;
        assert!(a.iter().zip(&c).filter(|(x, y)| x != y).count() > a.len() / 2, "{}: another seed changed too little", dev.name());
        let mut c1 = base.clone();
        c1.clip = Some(Clip { max_norm: 0.5, order: ClipOrder::ClipThenNoise });
        let mut c2 = c1.clone();
        c2.clip = Some(Clip { max_norm: 0.5, order: ClipOrder::NoiseThenClip });
        let r1 = with_backend!(dev, be => run(be, &c1, DType::F32, 1)).0;
        let r2 = with_backend!(dev, be => run(be, &c2, DType::F32, 1)).0;
        assert!(r1.iter().zip(&r2).any(|(x, y)| (x - y).abs() > 1e-4), "{}: clipping order made no difference", dev.name());
        // A clip bound far above the norm changes nothing.
        let mut loose = base.clone();
        loose.clip = Some(Clip { max_norm: 1e9, order: ClipOrder::ClipThenNoise });
        let r3 = with_backend!(dev, be => run(be, &loose, DType::F32, 2)).0;
        let worst = a.iter().zip(&r3).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "{}: a loose clip moved parameters by {worst}", dev.name());
    }
}

#[test]
fn save_and_restore_continue_bitwise() {
    let cpu = ffkern::Device::Cpu(ffkern::Cpu);
    let mut devices = common::device_backends();
    devices.push(&cpu);
    for dev in devices {
        for (name, opt) in optimizers() {
            with_backend!(dev, be => {
                let list = list();
                let n = list.total();
                let grads: Vec<HostTensor> = (0..5).map(|s| HostTensor::random(DType::BF16, vec![n], 500 + s)).collect();
                let init_p = HostTensor::random(DType::F32, vec![n], 1);
                let init_s: Vec<HostTensor> = (0..opt.state_count()).map(|_| HostTensor::new(DType::F32, vec![n], vec![0.0; n]).expect("zeros")).collect();
                // Uninterrupted: 5 steps.
                let mut o = opt.clone();
                let mut p = be.upload(&init_p).expect("p");
                let mut s: Vec<_> = init_s.iter().map(|t| be.upload(t).expect("s")).collect();
                for g in &grads {
                    o.step(be, &list, &mut p, &be.upload(g).expect("g"), &mut s).expect("step");
                }
                let straight = be.download(&p).expect("p").data;
                // Interrupted after 2: save everything to the host, restore into new buffers.
                let mut o1 = opt.clone();
                let mut p1 = be.upload(&init_p).expect("p");
                let mut s1: Vec<_> = init_s.iter().map(|t| be.upload(t).expect("s")).collect();
                for g in &grads[..2] {
                    o1.step(be, &list, &mut p1, &be.upload(g).expect("g"), &mut s1).expect("step");
                }
                let saved = (o1.state(), be.download(&p1).expect("p"), s1.iter().map(|t| be.download(t).expect("s")).collect::<Vec<_>>());
                drop((p1, s1));
                let mut o2 = saved.0;
                let mut p2 = be.upload(&saved.1).expect("p");
                let mut s2: Vec<_> = saved.2.iter().map(|t| be.upload(t).expect("s")).collect();
                for g in &grads[2..] {
                    o2.step(be, &list, &mut p2, &be.upload(g).expect("g"), &mut s2).expect("step");
                }
                let resumed = be.download(&p2).expect("p").data;
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&straight), bits(&resumed), "{} {name}: resumed run differs", dev.name());
            });
        }
    }
}

#[test]
fn bad_input_gives_typed_errors() {
    let be = ffkern::Cpu;
    let list = list();
    let n = list.total();
    let mut p = be.upload(&HostTensor::random(DType::F32, vec![n], 1)).expect("p");
    let g = be.upload(&HostTensor::random(DType::F32, vec![n], 2)).expect("g");
    let short = be.upload(&HostTensor::random(DType::F32, vec![n - 1], 3)).expect("short");
    let mut m = vec![be.upload(&HostTensor::random(DType::F32, vec![n], 4)).expect("m")];
    let opt = NoisyOptimizer::sgd(0.1, 0.9, 1);
    assert!(matches!(opt.clone().step(&be, &list, &mut p, &short, &mut m), Err(Error::Shape { .. })), "short gradient");
    assert!(matches!(opt.clone().step(&be, &list, &mut p, &g, &mut []), Err(Error::Shape { .. })), "missing momentum arena");
    let invalid = |f: &dyn Fn(&mut NoisyOptimizer)| {
        let mut o = opt.clone();
        f(&mut o);
        let mut m = vec![be.upload(&HostTensor::random(DType::F32, vec![n], 4)).expect("m")];
        let mut p = be.upload(&HostTensor::random(DType::F32, vec![n], 1)).expect("p");
        matches!(o.step(&be, &list, &mut p, &g, &mut m), Err(Error::Invalid(_)))
    };
    assert!(invalid(&|o| o.noise.eta = -0.1), "η < 0");
    assert!(invalid(&|o| o.noise.gamma = -1.0), "γ < 0");
    assert!(invalid(&|o| o.lr = f32::NAN), "NaN learning rate");
    assert!(invalid(&|o| o.lr = f32::INFINITY), "infinite learning rate");
    assert!(invalid(&|o| o.rule = Rule::Sgd { momentum: 1.5, nesterov: false }), "momentum ≥ 1");
    let mut f16p = be.upload(&HostTensor::random(DType::F16, vec![n], 1)).expect("p");
    assert!(matches!(opt.clone().step(&be, &list, &mut f16p, &g, &mut m), Err(Error::Dtype { .. })), "f16 master weights");
}

/// A list held in separate buffers, updated tensor by tensor (any offsets, not only multiples of
/// 4), equals the one-launch arena update bitwise on every backend.
#[test]
fn tensor_by_tensor_equals_the_arena() {
    let cpu = ffkern::Device::Cpu(ffkern::Cpu);
    let mut devices = common::device_backends();
    devices.push(&cpu);
    let list = list();
    let n = list.total();
    for dev in devices {
        for (name, opt) in optimizers().into_iter().filter(|(_, o)| o.clip.is_none()) {
            with_backend!(dev, be => {
                let p0 = HostTensor::random(DType::F32, vec![n], 1);
                let g = HostTensor::random(DType::F16, vec![n], 2);
                let s0: Vec<HostTensor> = (0..opt.state_count()).map(|k| {
                    let t = HostTensor::random(DType::F32, vec![n], 3 + k as u64);
                    HostTensor::new(DType::F32, vec![n], t.data.iter().map(|x| x.abs()).collect()).expect("state")
                }).collect();
                let mut whole = opt.clone();
                let mut p = be.upload(&p0).expect("p");
                let mut s: Vec<_> = s0.iter().map(|t| be.upload(t).expect("s")).collect();
                whole.step(be, &list, &mut p, &be.upload(&g).expect("g"), &mut s).expect("step");
                let expect = be.download(&p).expect("p").data;
                let mut parts = opt.clone();
                let mut got = Vec::new();
                for (off, len) in list.offsets().into_iter().zip(list.lens.iter().copied()) {
                    let slice = |t: &HostTensor| HostTensor::new(t.dtype, vec![len], t.data[off..off + len].to_vec()).expect("slice");
                    let mut pt = be.upload(&slice(&p0)).expect("p");
                    let mut st: Vec<_> = s0.iter().map(|t| be.upload(&slice(t)).expect("s")).collect();
                    parts.step_tensor(be, off, &mut pt, &be.upload(&slice(&g)).expect("g"), &mut st).expect("step_tensor");
                    got.extend(be.download(&pt).expect("p").data);
                }
                parts.advance();
                assert_eq!(parts.step, whole.step);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&expect), "{} {name}: tensor-by-tensor update differs from the arena update", dev.name());
            });
        }
    }
}
