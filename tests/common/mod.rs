//! Shared test setup: the device backends present, with `FFKERN_REQUIRE` (e.g. `wgpu` or
//! `wgpu,cuda`) turning a missing backend into a failure instead of a skip.

#![allow(dead_code)]

use ffkern::ops::ffn::{BatchNorm, RepavitWeights};
use ffkern::{Compare, DType, Device, HostTensor, SplitMix64};

pub fn required() -> Vec<String> {
    std::env::var("FFKERN_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The GPU backends to test (wgpu, cuda), opened once per test process and shared by every
/// test (as a framework shares one device). A missing one is reported on stderr and skipped,
/// unless `FFKERN_REQUIRE` names it, in which case this panics (the test fails).
pub fn device_backends() -> Vec<&'static Device> {
    static DEVICES: std::sync::OnceLock<Vec<(&'static str, Result<Device, String>)>> = std::sync::OnceLock::new();
    let devices = DEVICES.get_or_init(|| ["wgpu", "cuda"].into_iter().map(|n| (n, Device::open(n).map_err(|e| e.to_string()))).collect());
    let req = required();
    let mut out = Vec::new();
    for (name, dev) in devices {
        match dev {
            Ok(d) => out.push(d),
            Err(e) => {
                if req.iter().any(|r| r == name) {
                    panic!("FFKERN_REQUIRE names {name} but it is unavailable: {e}");
                }
                eprintln!("skipping backend {name}: {e}");
            }
        }
    }
    out
}

/// The wgpu context alone, or None (skipped unless required).
#[cfg(feature = "wgpu")]
pub fn wgpu() -> Option<ffkern::WgpuContext> {
    match ffkern::WgpuContext::new() {
        Ok(c) => Some(c),
        Err(e) => {
            if required().iter().any(|r| r == "wgpu") {
                panic!("FFKERN_REQUIRE names wgpu but it is unavailable: {e}");
            }
            eprintln!("skipping wgpu: {e}");
            None
        }
    }
}

/// The device backends plus the CPU reference backend.
pub fn devices_and_cpu() -> Vec<&'static Device> {
    static CPU: Device = Device::Cpu(ffkern::Cpu);
    let mut d = device_backends();
    d.push(&CPU);
    d
}

/// Asserts `out` is within the SPEC budget of `dtype` against the f64 reference.
pub fn assert_close(what: &str, out: &[f32], reference: &[f64], dtype: DType) {
    let c = Compare::new(out, reference, dtype);
    assert!(c.passes(dtype.budget()), "{what}: rms_ratio {:.3e} max_abs {:.3e} over the {dtype} budget", c.rms_ratio, c.max_abs);
}

/// Seeded values in [-scale, scale) (never zeros), rounded to `dtype`.
pub fn scaled(dtype: DType, n: usize, scale: f32, seed: u64) -> HostTensor {
    let t = HostTensor::random(DType::F32, vec![n], seed);
    HostTensor { dtype, shape: vec![n], data: t.data.iter().map(|v| dtype.round(v * scale)).collect() }
}

/// A BatchNorm over `n` channels with parameters and running statistics away from 0 and 1.
pub fn batchnorm(n: usize, rng: &mut SplitMix64) -> BatchNorm {
    let mut v = |lo: f32, hi: f32| (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect::<Vec<f32>>();
    BatchNorm { gamma: v(0.5, 1.5), beta: v(-0.5, 0.5), mean: v(-0.3, 0.3), var: v(0.5, 2.0), eps: 1e-5 }
}

/// Seeded f32 weights of a RePaViT FFN (C → H → C), scaled by fan-in, with both BatchNorms.
pub fn repavit_weights(c: usize, h: usize, seed: u64) -> RepavitWeights {
    let mut rng = SplitMix64::new(seed);
    let f = |n: usize, scale: f32, s: u64| scaled(DType::F32, n, scale, seed.wrapping_mul(10).wrapping_add(s));
    RepavitWeights {
        w1: f(h * c, 1.0 / (c as f32).sqrt(), 1),
        b1: f(h, 0.2, 2),
        w2: f(c * h, 1.0 / (h as f32).sqrt(), 3),
        b2: f(c, 0.2, 4),
        bn1: batchnorm(c, &mut rng),
        bn2: batchnorm(h, &mut rng),
    }
}
