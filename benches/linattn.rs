//! Criterion bench of linear attention on the best backend present: the decode step and the
//! chunked forward (bf16, registry shapes, the inputs `ffkern bench` uses). Device times (CUDA
//! events / wgpu timestamp queries) through `iter_custom`; `ffkern bench` reports the same rows
//! with roofline fractions and peers.

mod common;

use common::{device_timed, group};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ffkern::bench::{linattn_decode_desc, linattn_desc, LinattnBench};
use ffkern::registry::linattn_bench_seqs;
use ffkern::{with_backend, Device};

fn linattn(c: &mut Criterion) {
    let dev = Device::best().expect("FFKERN_* settings");
    let small = dev.is_cpu_like();
    let mut g = group(c, "linattn", &dev);
    with_backend!(&dev, be => {
        // The decode step reads and writes the f32 state once.
        let mut dec = LinattnBench::new(be, linattn_decode_desc(small)).expect("set-up");
        let d = dec.desc;
        g.throughput(Throughput::Bytes(8 * d.state_len() as u64));
        device_timed(&mut g, format!("decode step B{} H{} K{} bf16", d.batch, d.heads, d.k), be, &mut || dec.recurrent(be));
        // The chunked form reads q, k, v and writes o.
        let seq = linattn_bench_seqs(small)[1];
        let mut ch = LinattnBench::new(be, linattn_desc(1, seq, 4, 64)).expect("set-up");
        let d = ch.desc;
        g.throughput(Throughput::Bytes(2 * (2 * d.qk_len() + 2 * d.vo_len()) as u64));
        device_timed(&mut g, format!("chunk forward B1 T{seq} H4 D64 bf16"), be, &mut || ch.chunk(be));
    });
    g.finish();
}

criterion_group!(benches, linattn);
criterion_main!(benches);
