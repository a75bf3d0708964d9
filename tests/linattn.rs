//! Causal linear attention: the references against each other and against finite differences,
//! and the fused recurrent forward / decode step on every backend and dtype against the
//! reference (outputs, final state), with decode-loop equivalence, determinism and bad input.

mod common;

use common::{assert_close, devices_and_cpu};

use ffkern::ops::linattn::{cpu, FeatureMap, LinearAttention, Normalize};
use ffkern::{with_backend, Backend, DType, Error, HostTensor};

fn desc(b: usize, t: usize, h: usize, k: usize, v: usize, fm: FeatureMap, n: Normalize) -> LinearAttention {
    LinearAttention { batch: b, seq: t, heads: h, k, v, feature_map: fm, scale: None, normalize: n }
}

fn modes() -> Vec<(FeatureMap, Normalize)> {
    vec![
        (FeatureMap::Identity, Normalize::None),
        (FeatureMap::Elu1, Normalize::Normalizer { eps: 1e-6 }),
        (FeatureMap::Relu, Normalize::Count),
        (FeatureMap::Elu1, Normalize::None),
        (FeatureMap::Relu, Normalize::Normalizer { eps: 1e-6 }),
    ]
}

fn inputs(d: &LinearAttention, dtype: DType, seed: u64) -> (HostTensor, HostTensor, HostTensor, HostTensor, HostTensor) {
    let q = HostTensor::random(dtype, vec![d.qk_len()], seed);
    let k = HostTensor::random(dtype, vec![d.qk_len()], seed + 1);
    let v = HostTensor::random(dtype, vec![d.vo_len()], seed + 2);
    // A positive initial normalizer keeps q̃·z away from zero, as after a prefix would.
    let s0 = HostTensor::random(DType::F32, vec![d.state_len()], seed + 3);
    let z0 = HostTensor::new(DType::F32, vec![d.z_len()], HostTensor::random(DType::F32, vec![d.z_len()], seed + 4).data.iter().map(|x| x.abs() + 0.5).collect()).expect("z0");
    (q, k, v, s0, z0)
}

#[test]
fn recurrent_and_quadratic_references_agree() {
    for (fm, n) in modes() {
        let d = desc(2, 9, 3, 5, 4, fm, n);
        let (q, k, v, s0, z0) = inputs(&d, DType::F32, 1);
        for init in [false, true] {
            let (s, z) = if init { (Some(&s0.data[..]), Some(&z0.data[..])) } else { (None, None) };
            if !init && matches!(n, Normalize::Normalizer { .. }) && fm == FeatureMap::Identity {
                continue;
            }
            let (o, ..) = cpu::forward(&d, &q.data, &k.data, &v.data, s, z, 0);
            let oq = cpu::forward_quadratic(&d, &q.data, &k.data, &v.data, s, z);
            let worst = o.iter().zip(&oq).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-10, "{fm:?} {n:?} init={init}: forms differ by {worst:e}");
        }
    }
}

#[test]
fn reference_backward_matches_finite_differences() {
    for (fm, n) in modes() {
        let d = desc(1, 5, 2, 3, 4, fm, n);
        let (q, k, v, s0, z0) = inputs(&d, DType::F32, 7);
        let dout = HostTensor::random(DType::F32, vec![d.vo_len()], 8);
        let dst = HostTensor::random(DType::F32, vec![d.state_len()], 9);
        let loss = |q: &[f32], k: &[f32], v: &[f32], s: &[f32]| -> f64 {
            let (o, sf, _) = cpu::forward(&d, q, k, v, Some(s), Some(&z0.data), 0);
            o.iter().zip(&dout.data).map(|(a, &b)| a * b as f64).sum::<f64>() + sf.iter().zip(&dst.data).map(|(a, &b)| a * b as f64).sum::<f64>()
        };
        let (dq, dk, dv, ds0) = cpu::backward(&d, &q.data, &k.data, &v.data, Some(&s0.data), Some(&z0.data), &dout.data, Some(&dst.data));
        let h = 1e-3f32;
        let check = |name: &str, base: &HostTensor, grad: &[f64], which: usize| {
            for i in 0..base.len() {
                let (mut p, mut m) = (base.data.clone(), base.data.clone());
                p[i] += h;
                m[i] -= h;
                let args = |x: &[f32]| -> f64 {
                    match which {
                        0 => loss(x, &k.data, &v.data, &s0.data),
                        1 => loss(&q.data, x, &v.data, &s0.data),
                        2 => loss(&q.data, &k.data, x, &s0.data),
                        _ => loss(&q.data, &k.data, &v.data, x),
                    }
                };
                let num = (args(&p) - args(&m)) / (2.0 * h as f64);
                assert!((num - grad[i]).abs() < 2e-3 * (1.0 + num.abs()), "{fm:?} {n:?} {name}[{i}]: numeric {num} analytic {}", grad[i]);
            }
        };
        check("dq", &q, &dq, 0);
        check("dk", &k, &dk, 1);
        check("dv", &v, &dv, 2);
        check("dS0", &s0, &ds0, 3);
    }
}

fn run_device<Be: Backend>(be: &Be, d: &LinearAttention, q: &HostTensor, k: &HostTensor, v: &HostTensor, s0: &HostTensor, z0: &HostTensor) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let up = |t: &HostTensor| be.upload(t).expect("upload");
    let (mut s, mut z) = (up(s0), up(z0));
    let n = d.vo_len();
    let mut o = up(&HostTensor::new(q.dtype, vec![n], vec![f32::NAN; n]).expect("o"));
    d.recurrent(be, &up(q), &up(k), &up(v), &mut s, &mut z, 0, &mut o).expect("recurrent");
    (be.download(&o).expect("o").data, be.download(&s).expect("s").data, be.download(&z).expect("z").data)
}

#[test]
fn recurrent_forward_matches_the_reference_on_every_backend() {
    let shapes = [(2usize, 1usize, 4usize, 16usize, 16usize), (1, 63, 1, 60, 64), (1, 65, 4, 64, 60), (2, 64, 2, 128, 128), (1, 200, 1, 16, 20)];
    for dev in devices_and_cpu() {
        for (i, &(b, t, h, k, v)) in shapes.iter().enumerate() {
            for (j, (fm, n)) in modes().into_iter().enumerate() {
                if (i + j) % 2 == 1 && dev.name() == "cpu" {
                    continue; // the CPU backend is the reference itself: a sample is enough
                }
                let dtype = DType::ALL[(i + j) % 3];
                let d = desc(b, t, h, k, v, fm, n);
                let (q, kk, vv, s0, z0) = inputs(&d, dtype, 100 + i as u64);
                let (o_ref, s_ref, z_ref) = cpu::forward(&d, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), 0);
                let (o, s, z) = with_backend!(dev, be => run_device(be, &d, &q, &kk, &vv, &s0, &z0));
                let what = format!("{} {dtype} B{b} T{t} H{h} K{k} V{v} {fm:?} {n:?}", dev.name());
                assert_close(&format!("{what} o"), &o, &o_ref, dtype);
                assert_close(&format!("{what} final S"), &s, &s_ref, DType::F32);
                assert_close(&format!("{what} final z"), &z, &z_ref, DType::F32);
            }
        }
    }
}

/// The decode step (one token per call, state updated in place) reproduces the recurrent
/// forward bitwise, and two runs are bitwise identical. In f32 too, where the output is not
/// rounded to 16 bits: a change in the order of the sums over K shows there.
#[test]
fn decode_steps_equal_the_recurrent_forward() {
    // The decode kernel's widths: V a multiple of 4 (16-byte state rows), V over one 128-column
    // pass with K over 128, and V = 7.
    for dtype in [DType::BF16, DType::F32] {
        for d in [
            desc(3, 12, 2, 32, 24, FeatureMap::Relu, Normalize::Count),
            desc(2, 5, 1, 160, 130, FeatureMap::Elu1, Normalize::Normalizer { eps: 1e-6 }),
            desc(2, 4, 3, 16, 7, FeatureMap::Identity, Normalize::None),
        ] {
            decode_loop_equals_recurrent(&d, dtype);
        }
    }
}

fn decode_loop_equals_recurrent(d: &LinearAttention, dtype: DType) {
    let d = *d;
    let (q, k, v, s0, z0) = inputs(&d, dtype, 5);
    for dev in common::device_backends() {
        with_backend!(dev, be => {
            let (o_full, s_full, _) = run_device(be, &d, &q, &k, &v, &s0, &z0);
            let (o_again, ..) = run_device(be, &d, &q, &k, &v, &s0, &z0);
            assert_eq!(o_full.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), o_again.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "{}: two runs differ", dev.name());
            let step = LinearAttention { batch: d.batch, seq: 1, ..d };
            let (mut s, mut z) = (be.upload(&s0).expect("s"), be.upload(&z0).expect("z"));
            let mut o_steps = vec![0.0f32; d.vo_len()];
            for t in 0..d.seq {
                // Token t of every sequence: [B, 1, H, ·] slices of [B, T, H, ·].
                let slice = |x: &HostTensor, w: usize| {
                    let data: Vec<f32> = (0..d.batch).flat_map(|b| x.data[((b * d.seq + t) * d.heads) * w..((b * d.seq + t) * d.heads + d.heads) * w].to_vec()).collect();
                    be.upload(&HostTensor::new(x.dtype, vec![data.len()], data).expect("slice")).expect("upload")
                };
                let mut o = be.alloc(dtype, d.batch * d.heads * d.v).expect("o");
                step.recurrent(be, &slice(&q, d.k), &slice(&k, d.k), &slice(&v, d.v), &mut s, &mut z, t as u32, &mut o).expect("step");
                let o = be.download(&o).expect("o").data;
                for b in 0..d.batch {
                    let dst = ((b * d.seq + t) * d.heads) * d.v;
                    o_steps[dst..dst + d.heads * d.v].copy_from_slice(&o[b * d.heads * d.v..(b + 1) * d.heads * d.v]);
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&o_steps), bits(&o_full), "{} {dtype}: decode loop differs from the recurrent forward", dev.name());
            assert_eq!(bits(&be.download(&s).expect("s").data), bits(&s_full), "{}: final states differ", dev.name());
        });
    }
}

#[test]
fn bad_input_gives_typed_errors() {
    let be = ffkern::Cpu;
    let d = desc(1, 4, 1, 300, 8, FeatureMap::Identity, Normalize::None);
    let t = |n: usize, dt: DType| be.upload(&HostTensor::random(dt, vec![n], n as u64)).expect("t");
    let (mut s, mut z, mut o) = (t(d.state_len(), DType::F32), t(d.z_len(), DType::F32), t(d.vo_len(), DType::F32));
    let r = d.recurrent(&be, &t(d.qk_len(), DType::F32), &t(d.qk_len(), DType::F32), &t(d.vo_len(), DType::F32), &mut s, &mut z, 0, &mut o);
    assert!(matches!(r, Err(Error::Unsupported(_))), "K over the maximum");
    let d = desc(1, 4, 1, 8, 8, FeatureMap::Identity, Normalize::None);
    let (mut s, mut z, mut o) = (t(d.state_len(), DType::F32), t(d.z_len(), DType::F32), t(d.vo_len(), DType::F32));
    let r = d.recurrent(&be, &t(d.qk_len() - 1, DType::F32), &t(d.qk_len(), DType::F32), &t(d.vo_len(), DType::F32), &mut s, &mut z, 0, &mut o);
    assert!(matches!(r, Err(Error::Shape { .. })), "short q");
    let r = d.recurrent(&be, &t(d.qk_len(), DType::F32), &t(d.qk_len(), DType::BF16), &t(d.vo_len(), DType::F32), &mut s, &mut z, 0, &mut o);
    assert!(matches!(r, Err(Error::Dtype { .. })), "dtype mix");
}

/// Packed variable-length sequences (B = 1, cu_seqlens) equal one call per sequence, and the
/// reference; bad cu_seqlens are rejected.
#[test]
fn varlen_equals_a_loop_over_sequences() {
    let lens = [5usize, 0, 17, 1, 9];
    let cu: Vec<u32> = std::iter::once(0).chain(lens.iter().scan(0u32, |a, &l| {
        *a += l as u32;
        Some(*a)
    })).collect();
    let total = *cu.last().expect("cu") as usize;
    let (h, k, v) = (2usize, 20usize, 24usize);
    let packed = desc(1, total, h, k, v, FeatureMap::Elu1, Normalize::Normalizer { eps: 1e-6 });
    let n_seq = lens.len();
    let dtype = DType::F16;
    let q = HostTensor::random(dtype, vec![total * h * k], 1);
    let kk = HostTensor::random(dtype, vec![total * h * k], 2);
    let vv = HostTensor::random(dtype, vec![total * h * v], 3);
    let s0 = HostTensor::random(DType::F32, vec![n_seq * h * k * v], 4);
    let z0 = HostTensor::new(DType::F32, vec![n_seq * h * k], vec![0.75; n_seq * h * k]).expect("z0");
    let starts: Vec<usize> = cu.iter().map(|&c| c as usize).collect();
    let (o_ref, s_ref, _) = cpu::forward_varlen(&packed, &starts, None, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), 0);
    for dev in devices_and_cpu() {
        with_backend!(dev, be => {
            let up = |t: &HostTensor| be.upload(t).expect("upload");
            let (mut s, mut z) = (up(&s0), up(&z0));
            let mut o = be.alloc(dtype, total * h * v).expect("o");
            packed.recurrent_varlen(be, &up(&q), &up(&kk), &up(&vv), &cu, &mut s, &mut z, &mut o).expect("varlen");
            let what = format!("{} varlen", dev.name());
            assert_close(&format!("{what} o"), &be.download(&o).expect("o").data, &o_ref, dtype);
            assert_close(&format!("{what} final S"), &be.download(&s).expect("s").data, &s_ref, DType::F32);
            // One call per sequence gives the same bits.
            let got_o = be.download(&o).expect("o").data;
            for (n, w) in cu.windows(2).enumerate() {
                let (a, len) = (w[0] as usize, (w[1] - w[0]) as usize);
                if len == 0 {
                    continue;
                }
                let one = desc(1, len, h, k, v, FeatureMap::Elu1, Normalize::Normalizer { eps: 1e-6 });
                let slice = |t: &HostTensor, width: usize| up(&HostTensor::new(t.dtype, vec![len * h * width], t.data[a * h * width..(a + len) * h * width].to_vec()).expect("slice"));
                let st = |t: &HostTensor, width: usize| up(&HostTensor::new(DType::F32, vec![h * width], t.data[n * h * width..(n + 1) * h * width].to_vec()).expect("state"));
                let (mut s1, mut z1) = (st(&s0, k * v), st(&z0, k));
                let mut o1 = be.alloc(dtype, len * h * v).expect("o1");
                one.recurrent(be, &slice(&q, k), &slice(&kk, k), &slice(&vv, v), &mut s1, &mut z1, 0, &mut o1).expect("one");
                let o1 = be.download(&o1).expect("o1").data;
                let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&o1), bits(&got_o[a * h * v..(a + len) * h * v]), "{what}: sequence {n} differs from its own call");
            }
            // cu_seqlens that do not start at 0, decrease or miss T are errors.
            for bad in [vec![1u32, total as u32], vec![0, 10, 5, total as u32], vec![0, 3]] {
                let r = packed.recurrent_varlen(be, &up(&q), &up(&kk), &up(&vv), &bad, &mut s, &mut z, &mut o);
                assert!(matches!(r, Err(Error::Invalid(_))), "{what}: cu_seqlens {bad:?} accepted");
            }
        });
    }
}

/// The fused recurrent and the chunked backward on every backend against the f64 reference: dq,
/// dk, dv, dS0 and dz0 from do, dS_T and dz_T, in every mode, with partial value tiles (V not a
/// multiple of 16), K and V over one 64-wide tile and T over several chunks; `o` comes from the
/// device's own forward, as in training. Packed sequences against the reference over the same
/// packing, and a second run bitwise equal.
#[test]
fn backward_matches_the_reference_on_every_backend() {
    let shapes = [(2usize, 65usize, 2usize, 60usize, 20usize), (1, 64, 1, 128, 128), (3, 1, 2, 16, 16), (1, 200, 1, 17, 33), (1, 130, 1, 100, 72)];
    for dev in devices_and_cpu() {
        for (i, &(b, t, h, k, v)) in shapes.iter().enumerate() {
            for (j, (fm, n)) in modes().into_iter().enumerate() {
                let dtype = DType::ALL[(i + j) % 3];
                let d = desc(b, t, h, k, v, fm, n);
                let (q, kk, vv, s0, z0) = inputs(&d, dtype, 300 + i as u64);
                let d_o = HostTensor::random(dtype, vec![d.vo_len()], 310 + j as u64);
                let d_s = HostTensor::random(DType::F32, vec![d.state_len()], 320);
                let d_z = HostTensor::random(DType::F32, vec![d.z_len()], 330);
                let starts: Vec<usize> = (0..=b).map(|x| x * t).collect();
                let r = cpu::backward_varlen(&d, &starts, None, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), None, &d_o.data, [Some(&d_s.data), Some(&d_z.data)], 0);
                with_backend!(dev, be => {
                    let up = |x: &HostTensor| be.upload(x).expect("upload");
                    let down = |x: &_| be.download(x).expect("download").data;
                    let (qb, kb, vb, s0b, z0b, dsb, dzb) = (up(&q), up(&kk), up(&vv), up(&s0), up(&z0), up(&d_s), up(&d_z));
                    let (mut s, mut z, mut o) = (up(&s0), up(&z0), be.alloc(dtype, d.vo_len()).expect("o"));
                    d.recurrent(be, &qb, &kb, &vb, &mut s, &mut z, 0, &mut o).expect("forward");
                    let dob = up(&d_o);
                    for chunked in [false, true] {
                        let what = format!("{} {dtype} B{b} T{t} H{h} K{k} V{v} {fm:?} {n:?} {}", dev.name(), if chunked { "chunked backward" } else { "backward" });
                        let run = || if chunked {
                            d.chunk_backward(be, &qb, &kb, &vb, &o, &dob, &s0b, &z0b, [Some(&dsb), Some(&dzb)], 0).expect("chunk backward")
                        } else {
                            d.backward(be, &qb, &kb, &vb, &o, &dob, &s0b, &z0b, [Some(&dsb), Some(&dzb)], 0).expect("backward")
                        };
                        let g = run();
                        assert_close(&format!("{what} dq"), &down(&g.dq), &r.dq, dtype);
                        assert_close(&format!("{what} dk"), &down(&g.dk), &r.dk, dtype);
                        assert_close(&format!("{what} dv"), &down(&g.dv), &r.dv, dtype);
                        assert_close(&format!("{what} dS0"), &down(&g.d_state), &r.ds0, DType::F32);
                        if matches!(n, Normalize::Normalizer { .. }) {
                            // dz0 reads the forward's output o, stored in the inputs' dtype.
                            assert_close(&format!("{what} dz0"), &down(&g.d_z), &r.dz0, dtype);
                        }
                        let again = run();
                        assert_eq!(down(&again.dk).iter().map(|x| x.to_bits()).collect::<Vec<_>>(), down(&g.dk).iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "{what}: two runs differ");
                    }
                });
            }
        }
    }
    // Packed sequences (one empty, one over several chunks) against the reference over the same packing.
    let cu = [0u32, 30, 30, 95, 230];
    for dev in devices_and_cpu() {
        for (fm, n) in [(FeatureMap::Elu1, Normalize::Normalizer { eps: 1e-6 }), (FeatureMap::Relu, Normalize::Count)] {
            let d = desc(1, 230, 2, 24, 40, fm, n);
            let seqs = desc(4, 1, 2, 24, 40, fm, n);
            let (q, kk, vv, _, _) = inputs(&d, DType::F32, 400);
            let (_, _, _, s0, z0) = inputs(&seqs, DType::F32, 410);
            let d_o = HostTensor::random(DType::F32, vec![d.vo_len()], 420);
            let starts: Vec<usize> = cu.iter().map(|&c| c as usize).collect();
            let r = cpu::backward_varlen(&d, &starts, None, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), None, &d_o.data, [None, None], 0);
            with_backend!(dev, be => {
                let up = |x: &HostTensor| be.upload(x).expect("upload");
                let down = |x: &_| be.download(x).expect("download").data;
                let (qb, kb, vb) = (up(&q), up(&kk), up(&vv));
                let (mut s, mut z, mut o) = (up(&s0), up(&z0), be.alloc(DType::F32, d.vo_len()).expect("o"));
                d.recurrent_varlen(be, &qb, &kb, &vb, &cu, &mut s, &mut z, &mut o).expect("forward");
                for chunked in [false, true] {
                    let what = format!("{} {fm:?} {n:?} varlen {}", dev.name(), if chunked { "chunked backward" } else { "backward" });
                    let g = if chunked {
                        d.chunk_backward_varlen(be, &qb, &kb, &vb, &o, &up(&d_o), &cu, &up(&s0), &up(&z0), [None, None]).expect("backward")
                    } else {
                        d.backward_varlen(be, &qb, &kb, &vb, &o, &up(&d_o), &cu, &up(&s0), &up(&z0), [None, None]).expect("backward")
                    };
                    assert_close(&format!("{what} dq"), &down(&g.dq), &r.dq, DType::F32);
                    assert_close(&format!("{what} dk"), &down(&g.dk), &r.dk, DType::F32);
                    assert_close(&format!("{what} dv"), &down(&g.dv), &r.dv, DType::F32);
                    assert_close(&format!("{what} dS0"), &down(&g.d_state), &r.ds0, DType::F32);
                }
            });
        }
    }
}

/// The reference's dz0 (and its use of dz_T) against central differences in z0 of
/// `L = Σ o·c + Σ S_T·a + Σ z_T·b`.
#[test]
fn reference_normalizer_gradient_matches_finite_differences() {
    let d = desc(1, 6, 2, 3, 4, FeatureMap::Elu1, Normalize::Normalizer { eps: 1e-6 });
    let (q, k, v, s0, z0) = inputs(&d, DType::F32, 17);
    let c = HostTensor::random(DType::F32, vec![d.vo_len()], 18).data;
    let a = HostTensor::random(DType::F32, vec![d.state_len()], 19).data;
    let bz = HostTensor::random(DType::F32, vec![d.z_len()], 20).data;
    let loss = |z: &[f32]| -> f64 {
        let (o, sf, zf) = cpu::forward(&d, &q.data, &k.data, &v.data, Some(&s0.data), Some(z), 0);
        let dot = |x: &[f64], y: &[f32]| x.iter().zip(y).map(|(p, r)| p * *r as f64).sum::<f64>();
        dot(&o, &c) + dot(&sf, &a) + dot(&zf, &bz)
    };
    let starts = [0usize, d.seq];
    let g = cpu::backward_varlen(&d, &starts, None, &q.data, &k.data, &v.data, Some(&s0.data), Some(&z0.data), None, &c, [Some(&a), Some(&bz)], 0);
    let h = 1e-3f32;
    for i in 0..d.z_len() {
        let (mut zp, mut zm) = (z0.data.clone(), z0.data.clone());
        zp[i] += h;
        zm[i] -= h;
        let fd = (loss(&zp) - loss(&zm)) / (2.0 * h as f64);
        assert!((fd - g.dz0[i]).abs() < 2e-3 * (1.0 + fd.abs()), "dz0[{i}]: numeric {fd} analytic {}", g.dz0[i]);
    }
}

/// The chunked form against the reference on every backend: lengths around the chunk size,
/// every mode, with a prefix (count0) for Count mode; packed sequences, one of them empty and one
/// longer than several chunks.
#[test]
fn chunked_forward_matches_the_reference_on_every_backend() {
    use ffkern::ops::linattn::CHUNK;
    let lengths = [1usize, CHUNK - 1, CHUNK, CHUNK + 1, 500, 1000];
    for dev in devices_and_cpu() {
        for (i, &t) in lengths.iter().enumerate() {
            for (j, (fm, n)) in modes().into_iter().enumerate() {
                if (i + j) % 2 == 1 {
                    continue; // half the pairs keep the run short; every length and mode is still covered
                }
                let dtype = DType::ALL[(i + j) % 3];
                // K and V over one 64-wide tile (a partial second one) at T = CHUNK + 1.
                let (h, k, v) = if t >= 500 {
                    (1, 16, 20)
                } else if t == CHUNK + 1 {
                    (1, 100, 72)
                } else {
                    (2, 60, 33)
                };
                let d = desc(2, t, h, k, v, fm, n);
                let (q, kk, vv, s0, z0) = inputs(&d, dtype, 500 + i as u64);
                let count0 = if n == Normalize::Count { 7 } else { 0 };
                let (o_ref, s_ref, z_ref) = cpu::forward(&d, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), count0);
                let what = format!("{} {dtype} T{t} H{h} K{k} V{v} {fm:?} {n:?} chunked", dev.name());
                with_backend!(dev, be => {
                    let up = |x: &HostTensor| be.upload(x).expect("upload");
                    let down = |x: &_| be.download(x).expect("download").data;
                    let (mut s, mut z) = (up(&s0), up(&z0));
                    let mut o = up(&HostTensor::new(dtype, vec![d.vo_len()], vec![f32::NAN; d.vo_len()]).expect("o"));
                    d.chunk(be, &up(&q), &up(&kk), &up(&vv), &mut s, &mut z, count0 as u32, &mut o).expect("chunk");
                    assert_close(&format!("{what} o"), &down(&o), &o_ref, dtype);
                    assert_close(&format!("{what} final S"), &down(&s), &s_ref, DType::F32);
                    assert_close(&format!("{what} final z"), &down(&z), &z_ref, DType::F32);
                });
            }
        }
    }
    let cu = [0u32, 3, 3, 3 + 3 * CHUNK as u32 + 5, 3 + 3 * CHUNK as u32 + 70];
    let total = *cu.last().expect("cu") as usize;
    for dev in devices_and_cpu() {
        let (fm, n) = (FeatureMap::Elu1, Normalize::Normalizer { eps: 1e-6 });
        let d = desc(1, total, 2, 24, 40, fm, n);
        let seqs = desc(cu.len() - 1, 1, 2, 24, 40, fm, n);
        let (q, kk, vv, _, _) = inputs(&d, DType::BF16, 600);
        let (_, _, _, s0, z0) = inputs(&seqs, DType::F32, 610);
        let starts: Vec<usize> = cu.iter().map(|&c| c as usize).collect();
        let (o_ref, s_ref, z_ref) = cpu::forward_varlen(&d, &starts, None, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), 0);
        with_backend!(dev, be => {
            let up = |x: &HostTensor| be.upload(x).expect("upload");
            let down = |x: &_| be.download(x).expect("download").data;
            let (mut s, mut z, mut o) = (up(&s0), up(&z0), be.alloc(DType::BF16, d.vo_len()).expect("o"));
            d.chunk_varlen(be, &up(&q), &up(&kk), &up(&vv), &cu, &mut s, &mut z, &mut o).expect("chunk varlen");
            let what = format!("{} varlen chunked", dev.name());
            assert_close(&format!("{what} o"), &down(&o), &o_ref, DType::BF16);
            assert_close(&format!("{what} final S"), &down(&s), &s_ref, DType::F32);
            assert_close(&format!("{what} final z"), &down(&z), &z_ref, DType::F32);
        });
    }
}

/// A chunked forward whose two-pass form would need per-chunk states past one buffer binding
/// (here (C + N)·H·K·V f32 = 1,024 · 65,536 · 4 bytes = 256 MiB; lavapipe binds at most 128 MiB):
/// wgpu takes the one-pass kernel instead, whatever FFKERN_LINATTN_KERNEL says, and matches the
/// reference; CUDA runs either form. Device backends only (the CPU reference is the check).
#[test]
fn chunked_forward_past_the_binding_limit_takes_one_pass() {
    use ffkern::ops::linattn::{CHUNK, FUSED_STATES_MIN_BLOCKS, MAX_DIM};
    let (b, t, k, v) = (FUSED_STATES_MIN_BLOCKS, 2 * CHUNK + 1, MAX_DIM, MAX_DIM);
    let d = desc(b, t, 1, k, v, FeatureMap::Identity, Normalize::None);
    let (q, kk, vv, s0, z0) = inputs(&d, DType::BF16, 800);
    let (o_ref, s_ref, _) = cpu::forward(&d, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), 0);
    for dev in common::device_backends() {
        with_backend!(dev, be => {
            let up = |x: &HostTensor| be.upload(x).expect("upload");
            let (mut s, mut z, mut o) = (up(&s0), up(&z0), be.alloc(DType::BF16, d.vo_len()).expect("o"));
            d.chunk(be, &up(&q), &up(&kk), &up(&vv), &mut s, &mut z, 0, &mut o).expect("chunk");
            let what = format!("{} bf16 B{b} T{t} K{k} V{v} chunked past the binding limit", dev.name());
            assert_close(&format!("{what} o"), &be.download(&o).expect("o").data, &o_ref, DType::BF16);
            assert_close(&format!("{what} final S"), &be.download(&s).expect("s").data, &s_ref, DType::F32);
        });
    }
}

/// The normalizer's chunked backward past the binding limit (lavapipe's 128 MiB against 151 MB of
/// per-chunk states here: 1,152 sequences of two rows, a state each for the chunk and the total):
/// wgpu takes the one-pass kernels there too, after a first pass for every row's den and dd, where
/// it stopped with a limit error before; values and gradients against the reference on every
/// backend.
#[test]
fn chunked_backward_past_the_binding_limit_takes_one_pass() {
    one_pass_case_t(1152, 2, 1, 128, 128, FeatureMap::Elu1, Normalize::Normalizer { eps: 1e-6 }, DType::BF16, 810);
}

/// The recurrent backward where its 16-column value tiles' parts of dq and dk would not fit one
/// binding (lavapipe's 128 MiB against 157 MB here: 8 tiles of 16·300 rows·4 heads·128 features,
/// twice): wgpu runs the tiles one dispatch after another into one running part, where it stopped
/// with a limit error before. Gradients against the reference on every backend.
#[test]
fn recurrent_backward_past_the_binding_limit_runs_tile_by_tile() {
    let (b, t, h, k, v) = (16, 300, 4, 128, 128);
    let d = desc(b, t, h, k, v, FeatureMap::Elu1, Normalize::Normalizer { eps: 1e-6 });
    let (q, kk, vv, s0, z0) = inputs(&d, DType::BF16, 830);
    let d_o = HostTensor::random(DType::BF16, vec![d.vo_len()], 840);
    let (d_s, d_z) = (HostTensor::random(DType::F32, vec![d.state_len()], 850), HostTensor::random(DType::F32, vec![d.z_len()], 860));
    let starts: Vec<usize> = (0..=b).map(|i| i * t).collect();
    let g_ref = cpu::backward_varlen(&d, &starts, None, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), None, &d_o.data, [Some(&d_s.data), Some(&d_z.data)], 0);
    for dev in common::device_backends() {
        with_backend!(dev, be => {
            let up = |x: &HostTensor| be.upload(x).expect("upload");
            let down = |x: &_| be.download(x).expect("download").data;
            let (qb, kb, vb) = (up(&q), up(&kk), up(&vv));
            let (mut s, mut z, mut o) = (up(&s0), up(&z0), be.alloc(DType::BF16, d.vo_len()).expect("o"));
            d.recurrent(be, &qb, &kb, &vb, &mut s, &mut z, 0, &mut o).expect("recurrent");
            let g = d.backward(be, &qb, &kb, &vb, &o, &up(&d_o), &up(&s0), &up(&z0), [Some(&up(&d_s)), Some(&up(&d_z))], 0).expect("recurrent backward");
            let what = format!("{} bf16 B{b} T{t} H{h} K{k} V{v} recurrent backward past the binding limit", dev.name());
            assert_close(&format!("{what} dq"), &down(&g.dq), &g_ref.dq, DType::BF16);
            assert_close(&format!("{what} dk"), &down(&g.dk), &g_ref.dk, DType::BF16);
            assert_close(&format!("{what} dv"), &down(&g.dv), &g_ref.dv, DType::BF16);
            assert_close(&format!("{what} dS0"), &down(&g.d_state), &g_ref.ds0, DType::F32);
            assert_close(&format!("{what} dz0"), &down(&g.d_z), &g_ref.dz0, DType::BF16);
        });
    }
}

/// llvmpipe ends a shader invocation's loops once they have run 65,535 iterations in all: the
/// recurrent scans there (one loop iteration a step forward, two for the backward's two scans)
/// take sequences as long as `LLVMPIPE_LOOP_BUDGET` allows and match the reference, and one step
/// more is an unsupported error naming the chunked form instead of a silently cut scan. Other
/// adapters run both lengths.
#[cfg(feature = "wgpu")]
#[test]
fn recurrent_scans_stay_within_llvmpipes_loop_budget() {
    use ffkern::runtime::wgpu::LLVMPIPE_LOOP_BUDGET;
    let Some(be) = common::wgpu() else { return };
    let llvmpipe = be.info.name.contains("llvmpipe");
    let k = 64;
    let up = |x: &HostTensor| be.upload(x).expect("upload");
    let room = LLVMPIPE_LOOP_BUDGET as usize - 2 * k / 16;
    for t in [room, room + 1] {
        let d = desc(1, t, 1, k, k, FeatureMap::Elu1, Normalize::Normalizer { eps: 1e-6 });
        let (q, kk, vv, s0, z0) = inputs(&d, DType::F32, 870);
        let (mut s, mut z, mut o) = (up(&s0), up(&z0), be.alloc(DType::F32, d.vo_len()).expect("o"));
        match d.recurrent(&be, &up(&q), &up(&kk), &up(&vv), &mut s, &mut z, 0, &mut o) {
            Err(Error::Unsupported(m)) if llvmpipe && t > room => assert!(m.contains("chunked form"), "{m}"),
            Err(e) => panic!("recurrent forward T{t}: {e}"),
            Ok(()) => {
                assert!(!llvmpipe || t == room, "llvmpipe ran a scan past its loop budget");
                let (o_ref, _, _) = cpu::forward(&d, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), 0);
                assert_close(&format!("wgpu T{t} K{k} recurrent forward"), &be.download(&o).expect("o").data, &o_ref, DType::F32);
            }
        }
    }
    for t in [room / 2, room / 2 + 1] {
        let d = desc(1, t, 1, k, k, FeatureMap::Elu1, Normalize::Normalizer { eps: 1e-6 });
        let (q, kk, vv, s0, z0) = inputs(&d, DType::F32, 880);
        let d_o = HostTensor::random(DType::F32, vec![d.vo_len()], 890);
        let (o_ref, _, _) = cpu::forward(&d, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), 0);
        let o = HostTensor::new(DType::F32, vec![d.vo_len()], o_ref.iter().map(|&x| x as f32).collect()).expect("o");
        match d.backward(&be, &up(&q), &up(&kk), &up(&vv), &up(&o), &up(&d_o), &up(&s0), &up(&z0), [None, None], 0) {
            Err(Error::Unsupported(m)) if llvmpipe && t > room / 2 => assert!(m.contains("chunked form"), "{m}"),
            Err(e) => panic!("recurrent backward T{t}: {e}"),
            Ok(g) => {
                assert!(!llvmpipe || t == room / 2, "llvmpipe ran a scan past its loop budget");
                let g_ref = cpu::backward_varlen(&d, &[0, t], None, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), None, &d_o.data, [None, None], 0);
                let what = format!("wgpu T{t} K{k} recurrent backward");
                assert_close(&format!("{what} dq"), &be.download(&g.dq).expect("dq").data, &g_ref.dq, DType::F32);
                assert_close(&format!("{what} dk"), &be.download(&g.dk).expect("dk").data, &g_ref.dk, DType::F32);
                assert_close(&format!("{what} dv"), &be.download(&g.dv).expect("dv").data, &g_ref.dv, DType::F32);
            }
        }
    }
}

/// A decode step for more sequence·heads than one grid dimension holds (65535): the grid folds
/// into y·z and every sequence is updated.
#[test]
fn decode_serves_more_sequences_than_one_grid_dimension() {
    let d = desc(33_000, 1, 2, 16, 16, FeatureMap::Elu1, Normalize::Normalizer { eps: 1e-6 });
    let (q, k, v, s0, z0) = inputs(&d, DType::BF16, 700);
    let (o_ref, s_ref, z_ref) = cpu::forward(&d, &q.data, &k.data, &v.data, Some(&s0.data), Some(&z0.data), 0);
    for dev in common::device_backends() {
        let (o, s, z) = with_backend!(dev, be => run_device(be, &d, &q, &k, &v, &s0, &z0));
        let what = format!("{} B33000 H2 decode", dev.name());
        assert_close(&format!("{what} o"), &o, &o_ref, DType::BF16);
        assert_close(&format!("{what} S"), &s, &s_ref, DType::F32);
        assert_close(&format!("{what} z"), &z, &z_ref, DType::F32);
    }
}

/// One fixed-length case of the one-pass chunked forms (T = 2·CHUNK + 3: three chunks, the last
/// partial): the forward's output and final state and the backward's gradients against the
/// reference, on every backend.
#[allow(clippy::too_many_arguments)]
fn one_pass_case(b: usize, h: usize, k: usize, v: usize, fm: FeatureMap, n: Normalize, dtype: DType, seed: u64) {
    one_pass_case_t(b, 2 * ffkern::ops::linattn::CHUNK + 3, h, k, v, fm, n, dtype, seed);
}

/// [`one_pass_case`] with sequences of `t` positions.
#[allow(clippy::too_many_arguments)]
fn one_pass_case_t(b: usize, t: usize, h: usize, k: usize, v: usize, fm: FeatureMap, n: Normalize, dtype: DType, seed: u64) {
    use ffkern::ops::linattn::FUSED_STATES_MIN_BLOCKS;
    assert!(b * h >= FUSED_STATES_MIN_BLOCKS, "the case must take the one-pass form");
    let d = desc(b, t, h, k, v, fm, n);
    let (q, kk, vv, s0, z0) = inputs(&d, dtype, seed);
    let d_o = HostTensor::random(dtype, vec![d.vo_len()], seed + 10);
    // A prefix (count0) for Count mode.
    let count0 = if n == Normalize::Count { 5 } else { 0 };
    let (o_ref, s_ref, z_ref) = cpu::forward(&d, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), count0);
    let starts: Vec<usize> = (0..=b).map(|x| x * t).collect();
    let (d_s, d_z) = (HostTensor::random(DType::F32, vec![d.state_len()], seed + 40), HostTensor::random(DType::F32, vec![d.z_len()], seed + 50));
    let g_ref = cpu::backward_varlen(&d, &starts, None, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), None, &d_o.data, [Some(&d_s.data), Some(&d_z.data)], count0);
    for dev in devices_and_cpu() {
        let what = format!("{} {dtype} B{b} T{t} H{h} K{k} V{v} {fm:?} {n:?} one-pass chunked", dev.name());
        with_backend!(dev, be => {
            let up = |x: &HostTensor| be.upload(x).expect("upload");
            let down = |x: &_| be.download(x).expect("download").data;
            let (qb, kb, vb) = (up(&q), up(&kk), up(&vv));
            let (mut s, mut z, mut o) = (up(&s0), up(&z0), be.alloc(dtype, d.vo_len()).expect("o"));
            d.chunk(be, &qb, &kb, &vb, &mut s, &mut z, count0 as u32, &mut o).expect("chunk");
            assert_close(&format!("{what} o"), &down(&o), &o_ref, dtype);
            assert_close(&format!("{what} final S"), &down(&s), &s_ref, DType::F32);
            assert_close(&format!("{what} final z"), &down(&z), &z_ref, DType::F32);
            let (dsb, dzb) = (up(&d_s), up(&d_z));
            let g = d.chunk_backward(be, &qb, &kb, &vb, &o, &up(&d_o), &up(&s0), &up(&z0), [Some(&dsb), Some(&dzb)], count0 as u32).expect("chunk backward");
            assert_close(&format!("{what} dq"), &down(&g.dq), &g_ref.dq, dtype);
            assert_close(&format!("{what} dk"), &down(&g.dk), &g_ref.dk, dtype);
            assert_close(&format!("{what} dv"), &down(&g.dv), &g_ref.dv, dtype);
            assert_close(&format!("{what} dS0"), &down(&g.d_state), &g_ref.ds0, DType::F32);
            if n != Normalize::Count {
                // dz0 reads the forward's output o, stored in the inputs' dtype.
                assert_close(&format!("{what} dz0"), &down(&g.d_z), &g_ref.dz0, dtype);
            }
        });
    }
}

/// Enough sequences·heads that the chunked forms carry each state through its sequence's chunks
/// in one pass (`FUSED_STATES_MIN_BLOCKS`): fixed-length and packed (with empty sequences).
#[test]
fn chunked_forms_carry_many_sequences_in_one_pass() {
    let (k, v) = (16usize, 20usize);
    one_pass_case(64, 4, k, v, FeatureMap::Elu1, Normalize::Normalizer { eps: 1e-6 }, DType::F32, 700);
    one_pass_case(64, 4, k, v, FeatureMap::Relu, Normalize::Count, DType::BF16, 701);
    // Two 64-column tiles of K: dq's and dk's running normalizer slices.
    one_pass_case(64, 4, 72, 24, FeatureMap::Relu, Normalize::Normalizer { eps: 1e-6 }, DType::BF16, 705);
    packed_one_pass_case(k, v, FeatureMap::Elu1, Normalize::Normalizer { eps: 1e-6 }, DType::F32, 720);
}

/// The one-pass chunked forward and backward over 256 packed sequences of lengths 0 .. 2·CHUNK + 2
/// (one head).
fn packed_one_pass_case(k: usize, v: usize, fm: FeatureMap, n: Normalize, dtype: DType, seed: u64) {
    use ffkern::ops::linattn::{CHUNK, FUSED_STATES_MIN_BLOCKS};
    let lens: Vec<u32> = (0..FUSED_STATES_MIN_BLOCKS as u32).map(|i| (i * 37) % (2 * CHUNK as u32 + 3)).collect();
    let cu: Vec<u32> = std::iter::once(0).chain(lens.iter().scan(0, |acc, l| {
        *acc += l;
        Some(*acc)
    })).collect();
    let total = *cu.last().expect("cu") as usize;
    let d = desc(1, total, 1, k, v, fm, n);
    let seqs = desc(lens.len(), 1, 1, k, v, fm, n);
    let (q, kk, vv, _, _) = inputs(&d, dtype, seed);
    let (_, _, _, s0, z0) = inputs(&seqs, dtype, seed + 10);
    let starts: Vec<usize> = cu.iter().map(|&c| c as usize).collect();
    let (o_ref, s_ref, _) = cpu::forward_varlen(&d, &starts, None, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), 0);
    let d_o = HostTensor::random(dtype, vec![d.vo_len()], seed + 20);
    let (d_s, d_z) = (HostTensor::random(DType::F32, vec![seqs.state_len()], seed + 30), HostTensor::random(DType::F32, vec![seqs.z_len()], seed + 40));
    let g_ref = cpu::backward_varlen(&d, &starts, None, &q.data, &kk.data, &vv.data, Some(&s0.data), Some(&z0.data), None, &d_o.data, [Some(&d_s.data), Some(&d_z.data)], 0);
    for dev in devices_and_cpu() {
        with_backend!(dev, be => {
            let up = |x: &HostTensor| be.upload(x).expect("upload");
            let down = |x: &_| be.download(x).expect("download").data;
            let (qb, kb, vb) = (up(&q), up(&kk), up(&vv));
            let (mut s, mut z, mut o) = (up(&s0), up(&z0), be.alloc(dtype, d.vo_len()).expect("o"));
            d.chunk_varlen(be, &qb, &kb, &vb, &cu, &mut s, &mut z, &mut o).expect("chunk varlen");
            let what = format!("{} {dtype} {fm:?} {n:?} packed one-pass chunked", dev.name());
            assert_close(&format!("{what} o"), &down(&o), &o_ref, dtype);
            assert_close(&format!("{what} final S"), &down(&s), &s_ref, DType::F32);
            let g = d.chunk_backward_varlen(be, &qb, &kb, &vb, &o, &up(&d_o), &cu, &up(&s0), &up(&z0), [Some(&up(&d_s)), Some(&up(&d_z))]).expect("chunk backward varlen");
            assert_close(&format!("{what} dq"), &down(&g.dq), &g_ref.dq, dtype);
            assert_close(&format!("{what} dk"), &down(&g.dk), &g_ref.dk, dtype);
            assert_close(&format!("{what} dv"), &down(&g.dv), &g_ref.dv, dtype);
            assert_close(&format!("{what} dS0"), &down(&g.d_state), &g_ref.ds0, DType::F32);
            // dz0 reads the forward's output o, stored in the inputs' dtype.
            assert_close(&format!("{what} dz0"), &down(&g.d_z), &g_ref.dz0, dtype);
        });
    }
}

/// The cases the CUDA 16-bit kernels take (by default; `FFKERN_LINATTN_KERNEL=mma` keeps TF32): the state sweeps for
/// f16/bf16 with φ identity or relu and normalize none, the chunk products for bf16 (the forward
/// output also with Count), K and V multiples of 8 (V 24 leaves most of a 64-column tile empty);
/// on every other backend the same cases through the default kernels. Ten chunks a sequence run
/// the sweeps' copy pipeline through every stage more than once (four stages, three chunks ahead).
/// On CUDA by default (`FFKERN_LINATTN_KERNEL=twopass` keeps the per-chunk states), and on wgpu
/// under `FFKERN_LINATTN_KERNEL=fused`, the forwards, and the backwards with normalize none (dq,
/// dk, dv), take the one-pass kernels: K 128 fills both row halves of the forward's and dv's state
/// slices, V 72 those of dq's and dk's (partly) and gives the forward and dv a second, mostly empty
/// output tile.
#[test]
fn sixteen_bit_kernels_match_the_reference() {
    one_pass_case(64, 4, 128, 72, FeatureMap::Relu, Normalize::None, DType::BF16, 790);
    one_pass_case(64, 4, 32, 24, FeatureMap::Identity, Normalize::None, DType::F16, 760);
    one_pass_case(64, 4, 32, 24, FeatureMap::Relu, Normalize::None, DType::BF16, 770);
    one_pass_case(64, 4, 32, 24, FeatureMap::Identity, Normalize::Count, DType::BF16, 775);
    one_pass_case_t(64, 9 * ffkern::ops::linattn::CHUNK + 5, 4, 32, 24, FeatureMap::Identity, Normalize::None, DType::BF16, 785);
    packed_one_pass_case(16, 24, FeatureMap::Identity, Normalize::None, DType::BF16, 780);
}
