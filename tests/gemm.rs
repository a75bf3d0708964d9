//! GEMM with fused epilogue: every backend × dtype × registry shape against the CPU reference
//! (SPEC budgets), NaN-poisoned outputs, run-twice determinism, the backward helpers, and bad input.

mod common;

use ffkern::ops::gemm::{backward_host, cpu, run_host, GemmInputs};
use ffkern::registry::{gemm_backward_cases, gemm_check_cases};
use ffkern::{with_backend, Activation, Backend, Compare, DType, Error, Gemm, HostTensor};

fn assert_close(what: &str, out: &[f32], reference: &[f64], dtype: DType) {
    let c = Compare::new(out, reference, dtype);
    assert!(
        c.passes(dtype.budget()),
        "{what}: rms_ratio {:.3e} max_abs {:.3e} over the {dtype} budget {:.0e}",
        c.rms_ratio,
        c.max_abs,
        dtype.budget()
    );
}

#[test]
fn forward_matches_reference_on_every_backend() {
    for dev in common::device_backends() {
        for dtype in DType::ALL {
            for (i, case) in gemm_check_cases().into_iter().enumerate() {
                let x = GemmInputs::random(&case.desc, dtype, 100 + i as u64);
                let (c_ref, z_ref) = x.reference(&case.desc);
                let out = with_backend!(dev, be => run_host(be, &case.desc, &x, true))
                    .unwrap_or_else(|e| panic!("{} {dtype} {}: {e}", dev.name(), case.name));
                let what = format!("{} {dtype} {}", dev.name(), case.name);
                assert_close(&format!("{what} C"), &out.c, &c_ref, dtype);
                assert_close(&format!("{what} Z"), out.z.as_deref().unwrap_or_default(), &z_ref, dtype);
                // Elements of the C buffer outside C (ldc > N gaps) keep the poison.
                let co = case.desc.c();
                let inside: std::collections::HashSet<usize> = (0..case.desc.batch)
                    .flat_map(|b| (0..case.desc.m).flat_map(move |i| (0..case.desc.n).map(move |j| co.index(b, i, j))))
                    .collect();
                for (idx, v) in out.c_buffer.iter().enumerate() {
                    assert!(inside.contains(&idx) || v.is_nan(), "{what}: element {idx} outside C was written");
                }
            }
        }
    }
}

#[test]
fn cpu_backend_equals_reference() {
    let case = &gemm_check_cases()[4];
    let x = GemmInputs::random(&case.desc, DType::F32, 7);
    let out = run_host(&ffkern::Cpu, &case.desc, &x, false).expect("cpu gemm");
    let (c_ref, _) = x.reference(&case.desc);
    assert_close("cpu", &out.c, &c_ref, DType::F32);
}

#[test]
fn reference_matches_hand_computed_values() {
    // C = gelu_erf(A·Bᵀ + bias) on the first column only, + 2·R.
    let desc = Gemm::new(1, 2, 2).bias(true).act(Activation::Relu).act_cols(1).residual(None).beta(2.0);
    let (c, z) = cpu::forward(&desc, &[1.0, 2.0], &[3.0, -4.0, -1.0, 0.5], Some(&[0.5, 1.0]), Some(&[0.25, -0.5]));
    // z0 = 3 - 8 + 0.5 = -4.5 → relu 0 → + 0.5 = 0.5; z1 = -1 + 1 + 1 = 1 (no activation) → 1 - 1 = 0.
    assert_eq!(z, vec![-4.5, 1.0]);
    assert_eq!(c, vec![0.5, 0.0]);
}

#[test]
fn run_twice_is_bitwise_identical() {
    let desc = Gemm::new(1000, 257, 300).bias(true).act(Activation::GeluErf);
    for dev in common::device_backends() {
        for dtype in DType::ALL {
            let x = GemmInputs::random(&desc, dtype, 5);
            let first = with_backend!(dev, be => run_host(be, &desc, &x, false)).expect("first run");
            let second = with_backend!(dev, be => run_host(be, &desc, &x, false)).expect("second run");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&first.c), bits(&second.c), "{} {dtype}: results differ between runs", dev.name());
        }
    }
}

/// The bench's bandwidth probe (`Backend::copy_kernel`, where a backend has one): every whole
/// 16-byte piece of the source lands in the destination bit for bit, and the tail under 16 bytes
/// is left alone.
#[test]
fn copy_kernel_copies_whole_pieces() {
    let n = 4 * 1000 + 3;
    let (src, dst0) = (HostTensor::random(DType::F32, vec![n], 31), HostTensor::random(DType::F32, vec![n], 32));
    for dev in common::device_backends() {
        with_backend!(dev, be => {
            let src_b = be.upload(&src).expect("upload");
            let mut dst = be.upload(&dst0).expect("upload");
            if !be.copy_kernel(&src_b, &mut dst).expect("copy kernel") {
                continue;
            }
            let out = be.download(&dst).expect("download").data;
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out[..n - 3]), bits(&src.data[..n - 3]), "{}: the copied pieces", dev.name());
            assert_eq!(bits(&out[n - 3..]), bits(&dst0.data[n - 3..]), "{}: the tail", dev.name());
        });
    }
}

#[test]
fn backward_matches_reference_on_every_backend() {
    let cpu = ffkern::Device::Cpu(ffkern::Cpu);
    let mut devices = common::device_backends();
    devices.push(&cpu);
    for dev in devices {
        for dtype in DType::ALL {
            for (i, case) in gemm_backward_cases().into_iter().enumerate() {
                let d = &case.desc;
                let x = GemmInputs::random(d, dtype, 200 + i as u64);
                let dc = HostTensor::random(dtype, vec![d.c().required_len(d.batch)], 300 + i as u64);
                // The reference backward starts from the device dtype's rounded Z, like the device.
                let (da_ref, db_ref, dbias_ref) = x.reference_backward(d, &dc);
                let (da, db, dbias) = with_backend!(dev, be => backward_host(be, d, &x, &dc))
                    .unwrap_or_else(|e| panic!("{} {dtype} {}: {e}", dev.name(), case.name));
                let what = format!("{} {dtype} {}", dev.name(), case.name);
                assert_close(&format!("{what} dA"), &da, &da_ref, dtype);
                assert_close(&format!("{what} dB"), &db, &db_ref, dtype);
                match (dbias, d.bias) {
                    (Some(v), true) => assert_close(&format!("{what} dbias"), &v, &dbias_ref, dtype),
                    (None, false) => {}
                    _ => panic!("{what}: dbias presence does not follow the descriptor"),
                }
            }
        }
    }
}

#[test]
fn backward_reference_matches_finite_differences() {
    // d/dA of L = Σ dC ⊙ C, checked numerically on a tiny problem in f64 through the reference.
    let desc = Gemm::new(3, 4, 5).bias(true).act(Activation::GeluTanh).act_cols(3).alpha(0.7);
    let x = GemmInputs::random(&desc, DType::F32, 11);
    let dc = HostTensor::random(DType::F32, vec![12], 12);
    let dc64: Vec<f64> = dc.data.iter().map(|&v| v as f64).collect();
    let (_, z) = x.reference(&desc);
    let (da, db, dbias) = cpu::backward(&desc, &x.a.data, &x.b.data, &z, &dc64);
    let loss = |a: &[f32], b: &[f32], bias: &[f32]| -> f64 {
        let (c, _) = cpu::forward(&desc, a, b, Some(bias), None);
        c.iter().zip(&dc64).map(|(c, g)| c * g).sum()
    };
    let bias = x.bias.clone().expect("bias").data;
    let h = 1e-3f32;
    for i in 0..x.a.len() {
        let (mut p, mut m) = (x.a.data.clone(), x.a.data.clone());
        p[i] += h;
        m[i] -= h;
        let num = (loss(&p, &x.b.data, &bias) - loss(&m, &x.b.data, &bias)) / (2.0 * h as f64);
        assert!((num - da[i]).abs() < 1e-3, "dA[{i}]: numeric {num} analytic {}", da[i]);
    }
    for i in 0..x.b.len() {
        let (mut p, mut m) = (x.b.data.clone(), x.b.data.clone());
        p[i] += h;
        m[i] -= h;
        let num = (loss(&x.a.data, &p, &bias) - loss(&x.a.data, &m, &bias)) / (2.0 * h as f64);
        assert!((num - db[i]).abs() < 1e-3, "dB[{i}]: numeric {num} analytic {}", db[i]);
    }
    for i in 0..bias.len() {
        let (mut p, mut m) = (bias.clone(), bias.clone());
        p[i] += h;
        m[i] -= h;
        let num = (loss(&x.a.data, &x.b.data, &p) - loss(&x.a.data, &x.b.data, &m)) / (2.0 * h as f64);
        assert!((num - dbias[i]).abs() < 1e-3, "dbias[{i}]: numeric {num} analytic {}", dbias[i]);
    }
}

fn expect_shape<T>(r: ffkern::Result<T>, what: &str) {
    match r {
        Err(Error::Shape { .. }) => {}
        Err(e) => panic!("{what}: expected a shape error, got {e}"),
        Ok(_) => panic!("{what}: expected a shape error, got Ok"),
    }
}

fn bad_input_checks<Be: Backend>(be: &Be) {
    let desc = Gemm::new(8, 8, 8).bias(true);
    let t = |n: usize, dtype: DType| be.upload(&HostTensor::random(dtype, vec![n], n as u64)).expect("upload");
    let (a, b, bias) = (t(64, DType::F32), t(64, DType::F32), t(8, DType::F32));
    let mut c = be.alloc(DType::F32, 64).expect("alloc");
    // A too small for the descriptor.
    let short = t(63, DType::F32);
    expect_shape(be.gemm(&desc, &short, &b, Some(&bias), None, &mut c, None), "short A");
    // C too small.
    let mut short_c = be.alloc(DType::F32, 10).expect("alloc");
    expect_shape(be.gemm(&desc, &a, &b, Some(&bias), None, &mut short_c, None), "short C");
    // Bias missing although the descriptor has one.
    expect_shape(be.gemm(&desc, &a, &b, None, None, &mut c, None), "missing bias");
    // act_cols beyond N.
    expect_shape(be.gemm(&desc.clone().act_cols(9), &a, &b, Some(&bias), None, &mut c, None), "act_cols > N");
    // ldc less than N.
    expect_shape(be.gemm(&desc.clone().ldc(4), &a, &b, Some(&bias), None, &mut c, None), "ldc < N");
    // A C stored transposed is legal only where no two elements share an address.
    expect_shape(be.gemm(&desc.clone().ldc(1).inner_strides(1, 1, 4), &a, &b, Some(&bias), None, &mut c, None), "overlapping transposed C");
    // A backward whose dA layout describes another shape.
    let dc = t(64, DType::F32);
    expect_shape(ffkern::ops::gemm::gemm_backward_da_in(be, &desc, &Gemm::new(8, 8, 4).bias(true), &a, &b, None, &dc, None).map(|_| ()), "dA layout of another shape");
    // Mixed dtypes.
    let b16 = t(64, DType::BF16);
    match be.gemm(&desc, &a, &b16, Some(&bias), None, &mut c, None) {
        Err(Error::Dtype { .. }) => {}
        other => panic!("mixed dtypes: expected a dtype error, got {:?}", other.err()),
    }
    // Non-finite alpha.
    match be.gemm(&desc.clone().alpha(f32::NAN), &a, &b, Some(&bias), None, &mut c, None) {
        Err(Error::Invalid(_)) => {}
        other => panic!("NaN alpha: expected an invalid-argument error, got {:?}", other.err()),
    }
}

#[test]
fn bad_input_gives_typed_errors() {
    bad_input_checks(&ffkern::Cpu);
    for dev in common::device_backends() {
        with_backend!(dev, be => bad_input_checks(be));
    }
}

/// f16 is stored packed in u32 words and widened in the shader, so it needs no SHADER_F16: on a
/// device created without that feature it still runs and meets the f16 budget.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_f16_without_shader_f16_feature() {
    if common::wgpu().is_none() {
        return;
    }
    let opts = ffkern::WgpuOptions { without_shader_f16: true, ..ffkern::WgpuOptions::from_env().expect("options") };
    let ctx = ffkern::WgpuContext::with_options(&opts).expect("wgpu without SHADER_F16");
    assert!(!ctx.device.features().contains(wgpu::Features::SHADER_F16));
    let desc = Gemm::new(37, 29, 41).bias(true).act(Activation::GeluErf);
    let x = GemmInputs::random(&desc, DType::F16, 9);
    let out = run_host(&ctx, &desc, &x, false).expect("f16 gemm");
    assert_close("wgpu f16 without SHADER_F16", &out.c, &x.reference(&desc).0, DType::F16);
}

/// Low-level API: the caller's buffers with element offsets (C written into a column slice of a
/// wider matrix, A read from an offset), no copies.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_low_level_offsets() {
    use ffkern::runtime::wgpu::BufferRef;
    let Some(ctx) = common::wgpu() else { return };
    let (m, n, k, wide) = (19, 11, 23, 30);
    let desc = Gemm::new(m, n, k).ldc(wide).bias(true).act(Activation::Silu);
    let x = GemmInputs::random(&desc, DType::BF16, 21);
    let pad = 5usize;
    let mut a_data = vec![7.0f32; pad];
    a_data.extend_from_slice(&x.a.data);
    let a = ctx.upload(&HostTensor::new(DType::BF16, vec![a_data.len()], a_data).expect("a")).expect("upload a");
    let b = ctx.upload(&x.b).expect("b");
    let bias = ctx.upload(x.bias.as_ref().expect("bias")).expect("bias");
    let c_len = 3 + m * wide;
    let c = ctx.upload(&HostTensor::new(DType::BF16, vec![c_len], vec![f32::NAN; c_len]).expect("c")).expect("c");
    ffkern::ops::gemm::wgpu::gemm(
        &ctx,
        &desc,
        DType::BF16,
        BufferRef::new(&a.buffer, pad as u64),
        BufferRef::new(&b.buffer, 0),
        Some(BufferRef::new(&bias.buffer, 0)),
        None,
        BufferRef::new(&c.buffer, 3),
        None,
    )
    .expect("low-level gemm");
    let got = ctx.download(&c).expect("download").data;
    let (c_ref, _) = x.reference(&desc);
    let mut out = Vec::new();
    for i in 0..m {
        for j in 0..wide {
            let v = got[3 + i * wide + j];
            if j < n {
                out.push(v);
            } else {
                assert!(v.is_nan(), "column {j} of row {i} is outside C but was written");
            }
        }
    }
    assert_close("wgpu low-level offsets", &out, &c_ref, DType::BF16);
}

/// A framework's own wgpu buffers adopted as owned buffers (`WgpuContext::adopt`): the Backend
/// GEMM runs on them, the meter counts them, and a buffer too small or without STORAGE usage is a
/// typed error.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_adopted_buffers() {
    let Some(ctx) = common::wgpu() else { return };
    let desc = Gemm::new(13, 21, 17).bias(true).act(Activation::Relu);
    let x = GemmInputs::random(&desc, DType::F32, 31);
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let raw = |bytes: u64, usage| ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some("framework"), size: bytes, usage, mapped_at_creation: false });
    let own = |t: &HostTensor| {
        let b = raw(4 * t.len() as u64, usage);
        ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(&t.data));
        ctx.adopt(b, DType::F32, t.len()).expect("adopt")
    };
    let before = ctx.memory_use().expect("wgpu counts").current;
    let (a, b, bias) = (own(&x.a), own(&x.b), own(x.bias.as_ref().expect("bias")));
    let mut c = ctx.adopt(raw(4 * 13 * 21, usage), DType::F32, 13 * 21).expect("adopt c");
    assert_eq!(ctx.memory_use().expect("wgpu counts").current - before, 4 * (x.a.len() + x.b.len() + 21 + 13 * 21) as u64);
    ctx.gemm(&desc, &a, &b, Some(&bias), None, &mut c, None).expect("gemm on adopted buffers");
    assert_close("wgpu adopted buffers", &ctx.download(&c).expect("download").data, &x.reference(&desc).0, DType::F32);
    assert!(matches!(ctx.adopt(raw(16, usage), DType::F32, 5), Err(Error::Shape { .. })));
    assert!(matches!(ctx.adopt(raw(16, wgpu::BufferUsages::COPY_DST), DType::F32, 4), Err(Error::Invalid(_))));
}

/// More output tiles than a GPU has multiprocessors, in several batches: the persistent kernels
/// walk many tiles per block (and every ring stage is reused across tiles).
#[test]
fn many_tiles_and_batches() {
    let desc = Gemm::new(2000, 2050, 64).batch(2).bias(true).act(Activation::GeluTanh);
    for dev in common::device_backends() {
        for dtype in [DType::BF16, DType::F16] {
            let x = GemmInputs::random(&desc, dtype, 77);
            let (c_ref, _) = x.reference(&desc);
            let out = with_backend!(dev, be => run_host(be, &desc, &x, false)).expect("gemm");
            assert_close(&format!("{} {dtype} many tiles", dev.name()), &out.c, &c_ref, dtype);
        }
    }
}

/// Operands inside larger owned buffers (Backend API offsets): every backend reads and writes
/// exactly the described elements.
#[test]
fn operands_at_offsets_in_owned_buffers() {
    use ffkern::ops::gemm::GemmOffsets;
    let offsets = GemmOffsets { a: 3, b: 5, bias: 2, r: 7, c: 4 };
    let desc = Gemm::new(21, 10, 17).bias(true).act(Activation::GeluErf).act_cols(6).residual(Some(13)).ldc(12).offsets(offsets);
    let cpu = ffkern::Device::Cpu(ffkern::Cpu);
    let mut devices = common::device_backends();
    devices.push(&cpu);
    for dev in devices {
        for dtype in DType::ALL {
            let x = GemmInputs::random(&desc, dtype, 31);
            let (c_ref, _) = x.reference(&desc);
            let pad = |t: &HostTensor, off: usize| {
                let mut v = vec![9.0f32; off];
                v.extend_from_slice(&t.data);
                HostTensor::new(dtype, vec![v.len()], v).expect("pad")
            };
            let bias = x.bias.as_ref().expect("bias");
            let r = x.r.as_ref().expect("r");
            let c_len = offsets.c + desc.c().required_len(1);
            let got = with_backend!(dev, be => {
                let (a, b) = (be.upload(&pad(&x.a, offsets.a)).expect("a"), be.upload(&pad(&x.b, offsets.b)).expect("b"));
                let (bi, rr) = (be.upload(&pad(bias, offsets.bias)).expect("bias"), be.upload(&pad(r, offsets.r)).expect("r"));
                let mut c = be.upload(&HostTensor::new(dtype, vec![c_len], vec![f32::NAN; c_len]).expect("c")).expect("c");
                be.gemm(&desc, &a, &b, Some(&bi), Some(&rr), &mut c, None).expect("gemm");
                be.download(&c).expect("download").data
            });
            let co = desc.c();
            let mut out = Vec::new();
            for i in 0..desc.m {
                for j in 0..desc.n {
                    out.push(got[offsets.c + co.index(0, i, j)]);
                }
            }
            assert!(got[..offsets.c].iter().all(|v| v.is_nan()), "{} {dtype}: elements before C's offset were written", dev.name());
            assert_close(&format!("{} {dtype} offsets", dev.name()), &out, &c_ref, dtype);
        }
    }
    // An offset beyond the buffer is a shape error.
    let be = ffkern::Cpu;
    let small = be.upload(&HostTensor::random(DType::F32, vec![4], 1)).expect("small");
    let mut c = be.alloc(DType::F32, 4).expect("c");
    let d = Gemm::new(1, 1, 1).offsets(GemmOffsets { a: 9, ..Default::default() });
    assert!(matches!(be.gemm(&d, &small, &small, None, None, &mut c, None), Err(Error::Shape { .. })));
}

/// Seeded random descriptors (layouts, batches, row and inner strides, offsets, bias strides,
/// activations, partial activation, residual slices) on every backend against the reference.
#[test]
fn random_descriptors_match_the_reference() {
    use ffkern::ops::gemm::GemmOffsets;
    use ffkern::{ALayout, BLayout, SplitMix64};
    let mut rng = SplitMix64::new(2026);
    let mut pick = |n: u64| (rng.next_u64() % n) as usize;
    let cpu = ffkern::Device::Cpu(ffkern::Cpu);
    let mut devices = common::device_backends();
    devices.push(&cpu);
    for case in 0..40 {
        let (m, n, k, batch) = (1 + pick(40), 1 + pick(40), 1 + pick(40), 1 + pick(3));
        let (ia, ib) = (1 + pick(2), 1 + pick(2));
        let act = Activation::ALL[pick(Activation::ALL.len() as u64)];
        let mut d = Gemm::new(m, n, k).batch(batch).act(act).alpha(0.5 + pick(3) as f32 * 0.5);
        d.a_layout = if pick(2) == 0 { ALayout::MK } else { ALayout::KM };
        d.b_layout = if pick(2) == 0 { BLayout::NK } else { BLayout::KN };
        d.inner_a = ia;
        d.inner_b = ib;
        let a_row = if d.a_layout == ALayout::MK { k } else { m };
        let b_row = if d.b_layout == BLayout::NK { k } else { n };
        d.lda = Some((a_row - 1) * ia + 1 + pick(3));
        d.ldb = Some((b_row - 1) * ib + 1 + pick(3));
        d.ldc = Some(n + pick(3));
        if pick(2) == 0 {
            d = d.act_cols(pick(n as u64 + 1));
        }
        if pick(2) == 0 {
            d = d.bias(true);
            if batch > 1 && pick(2) == 0 {
                d = d.bias_strides(n, 1);
            }
        }
        if pick(2) == 0 {
            d = d.residual(Some(n + pick(4))).beta(-0.5);
        }
        if batch > 1 && pick(3) == 0 {
            d.stride_b = Some(0);
        }
        d.offsets = GemmOffsets { a: pick(5), b: pick(5), bias: pick(5), r: pick(5), c: pick(5) };
        for dtype in DType::ALL {
            let x = GemmInputs::random(&d, dtype, case);
            let (c_ref, _) = x.reference(&d);
            let o = d.offsets;
            let pad = |t: &HostTensor, off: usize| {
                let mut v = vec![0.25f32; off];
                v.extend_from_slice(&t.data);
                HostTensor::new(dtype, vec![v.len()], v).expect("pad")
            };
            let c_len = o.c + d.c().required_len(batch);
            for dev in &devices {
                let got = with_backend!(*dev, be => {
                    let up = |t: &HostTensor| be.upload(t).expect("upload");
                    let (a, b) = (up(&pad(&x.a, o.a)), up(&pad(&x.b, o.b)));
                    let bias = x.bias.as_ref().map(|t| up(&pad(t, o.bias)));
                    let r = x.r.as_ref().map(|t| up(&pad(t, o.r)));
                    let mut c = up(&HostTensor::new(dtype, vec![c_len], vec![f32::NAN; c_len]).expect("c"));
                    be.gemm(&d, &a, &b, bias.as_ref(), r.as_ref(), &mut c, None).unwrap_or_else(|e| panic!("case {case} {d:?}: {e}"));
                    be.download(&c).expect("c").data
                });
                let co = d.c();
                let out: Vec<f32> = (0..batch)
                    .flat_map(|bt| (0..m).flat_map(move |i| (0..n).map(move |j| (bt, i, j))))
                    .map(|(bt, i, j)| got[o.c + co.index(bt, i, j)])
                    .collect();
                assert_close(&format!("{} {dtype} random case {case} {d:?}", dev.name()), &out, &c_ref, dtype);
            }
        }
    }
}
