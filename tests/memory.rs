//! Device memory: the peak a call takes, as `Backend::memory_use` counts it. Its own test binary
//! (a process of its own), so that no other test's buffers share the counters.

mod common;

use ffkern::ops::linattn::{FeatureMap, LinearAttention, Normalize};
use ffkern::{with_backend, Backend, DType, HostTensor};

/// Every form's device memory is linear in T (no T×T matrix; at most one state per chunk), on
/// every device backend: the peak memory a call takes beyond what was held before it (scratch,
/// chunk states and tables; the backward also its gradients) at most doubles, within 5 %, when T
/// doubles from 1024 to 2048 and to 4096 (a T² term would make it grow up to 4×). The backward
/// allocates dq, dk and dv itself, so its peak is at least their bytes: the meter counts.
#[test]
fn every_form_takes_memory_linear_in_t() {
    for dev in common::device_backends() {
        with_backend!(dev, be => {
            let peak = |t: usize| -> [u64; 4] {
                let d = LinearAttention { batch: 1, seq: t, heads: 4, k: 64, v: 64, feature_map: FeatureMap::Elu1, scale: None, normalize: Normalize::Normalizer { eps: 1e-6 } };
                let x = |n: usize, dt: DType, seed: u64| HostTensor::random(dt, vec![n], seed);
                let (q, k, v, d_o) = (x(d.qk_len(), DType::BF16, 3), x(d.qk_len(), DType::BF16, 4), x(d.vo_len(), DType::BF16, 5), x(d.vo_len(), DType::BF16, 6));
                let (s0, z0) = (x(d.state_len(), DType::F32, 7), HostTensor::new(DType::F32, vec![d.z_len()], vec![0.75; d.z_len()]).expect("z0"));
                let up = |t: &HostTensor| be.upload(t).expect("upload");
                let (qb, kb, vb, dob, s0b, z0b) = (up(&q), up(&k), up(&v), up(&d_o), up(&s0), up(&z0));
                let (mut s, mut z, mut o) = (up(&s0), up(&z0), be.alloc(DType::BF16, d.vo_len()).expect("o"));
                let taken = |f: &mut dyn FnMut()| {
                    be.synchronize().expect("sync");
                    be.reset_peak_memory();
                    let before = be.memory_use().expect("a device backend counts its memory").current;
                    f();
                    be.synchronize().expect("sync");
                    be.memory_use().expect("memory").peak - before
                };
                let chunk = taken(&mut || d.chunk(be, &qb, &kb, &vb, &mut s, &mut z, 0, &mut o).expect("chunk"));
                let chunk_bwd = taken(&mut || drop(d.chunk_backward(be, &qb, &kb, &vb, &o, &dob, &s0b, &z0b, [None, None], 0).expect("chunk backward")));
                let rec = taken(&mut || d.recurrent(be, &qb, &kb, &vb, &mut s, &mut z, 0, &mut o).expect("recurrent"));
                let rec_bwd = taken(&mut || drop(d.backward(be, &qb, &kb, &vb, &o, &dob, &s0b, &z0b, [None, None], 0).expect("backward")));
                let grads = (2 * d.qk_len() + d.vo_len()) as u64 * 2;
                assert!(chunk_bwd >= grads && rec_bwd >= grads, "{}: backward peaks {chunk_bwd} / {rec_bwd} bytes, under the {grads} of dq, dk, dv", dev.name());
                [chunk, chunk_bwd, rec, rec_bwd]
            };
            let [p1, p2, p4] = [1024, 2048, 4096].map(peak);
            for (i, form) in ["chunk", "chunk backward", "recurrent", "recurrent backward"].iter().enumerate() {
                let (a, b, c) = (p1[i] as f64, p2[i] as f64, p4[i] as f64);
                assert!(b <= 2.05 * a && c <= 2.05 * b, "{} {form}: peaks {a}, {b}, {c} bytes at T = 1024, 2048, 4096", dev.name());
            }
        });
    }
}
