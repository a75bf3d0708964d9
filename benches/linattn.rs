//! Criterion bench of linear attention on the best backend present: the decode step and the
//! chunked forward (bf16, shapes from `ffkern::registry`). Device times (CUDA events / wgpu
//! timestamp queries) through `iter_custom`; `ffkern bench` reports the same rows with roofline
//! fractions and peers.

mod common;

use common::{device_timed, group};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ffkern::ops::linattn::{FeatureMap, LinearAttention, Normalize};
use ffkern::registry::{linattn_bench_seqs, linattn_decode_shape};
use ffkern::{with_backend, Backend, DType, Device, HostTensor};

fn linattn(c: &mut Criterion) {
    let dev = Device::best();
    let small = dev.is_cpu_like();
    let mut g = group(c, "linattn", &dev);
    let (b, h, kd) = linattn_decode_shape(small);
    let decode = LinearAttention { batch: b, seq: 1, heads: h, k: kd, v: kd, feature_map: FeatureMap::Identity, scale: None, normalize: Normalize::None };
    let seq = linattn_bench_seqs(small)[1];
    let chunked = LinearAttention { batch: 1, seq, heads: 4, k: 64, v: 64, feature_map: FeatureMap::Identity, scale: None, normalize: Normalize::None };
    with_backend!(&dev, be => {
        for (d, what) in [(&decode, format!("decode step B{b} H{h} K{kd} bf16")), (&chunked, format!("chunk forward B1 T{seq} H4 D64 bf16"))] {
            let r = |n: usize, dt: DType, s: u64| be.upload(&HostTensor::random(dt, vec![n], s)).expect("upload");
            let (q, k, v) = (r(d.qk_len(), DType::BF16, 1), r(d.qk_len(), DType::BF16, 2), r(d.vo_len(), DType::BF16, 3));
            let (mut s, mut z, mut o) = (r(d.state_len(), DType::F32, 4), r(d.z_len(), DType::F32, 5), be.alloc(DType::BF16, d.vo_len()).expect("alloc"));
            let is_decode = d.seq == 1;
            // The decode step reads and writes the f32 state once; the chunked form reads q, k, v and writes o.
            g.throughput(Throughput::Bytes(if is_decode { 8 * d.state_len() as u64 } else { 2 * (2 * d.qk_len() + 2 * d.vo_len()) as u64 }));
            device_timed(&mut g, what, be, &mut || {
                if is_decode {
                    d.recurrent(be, &q, &k, &v, &mut s, &mut z, 0, &mut o)
                } else {
                    d.chunk(be, &q, &k, &v, &mut s, &mut z, 0, &mut o)
                }
            });
        }
    });
    g.finish();
}

criterion_group!(benches, linattn);
criterion_main!(benches);
