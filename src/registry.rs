//! The shape registry shared by tests, `ffkern check`, `ffkern bench` and the criterion benches.

use crate::ops::gemm::{ALayout, Activation, BLayout, Gemm};

/// A named GEMM case.
#[derive(Clone, Debug)]
pub struct GemmCase {
    /// The case's name in `ffkern check` / `bench` output.
    pub name: String,
    /// The descriptor.
    pub desc: Gemm,
}

fn case(name: &str, desc: Gemm) -> GemmCase {
    GemmCase { name: name.to_string(), desc }
}

/// Correctness cases: shapes that miss every tile, both layouts, batches, every epilogue feature.
pub fn gemm_check_cases() -> Vec<GemmCase> {
    vec![
        case("1x1x1", Gemm::new(1, 1, 1)),
        case("7x13x5 bias gelu_erf", Gemm::new(7, 13, 5).bias(true).act(Activation::GeluErf)),
        case("63x65x127 kn relu", Gemm::new(63, 65, 127).b_layout(BLayout::KN).act(Activation::Relu).bias(true)),
        case("1000x257x300 bias gelu_tanh", Gemm::new(1000, 257, 300).bias(true).act(Activation::GeluTanh)),
        case("65x130x64 silu act_cols=33 residual", Gemm::new(65, 130, 64).bias(true).act(Activation::Silu).act_cols(33).residual(None).alpha(0.5).beta(-1.25)),
        case("33x40x70 km residual-slice ldr=97", Gemm::new(33, 40, 70).a_layout(ALayout::KM).residual(Some(97)).beta(0.75)),
        case("batch 3 of 17x24x31 kn", Gemm::new(17, 24, 31).batch(3).b_layout(BLayout::KN).bias(true).act(Activation::GeluErf)),
        case("batch 4 of 8x9x10 shared B (stride 0)", Gemm::new(8, 9, 10).batch(4).strides(8 * 10, 0, 8 * 9)),
        case("31x23x19 lda=40 ldc=29", Gemm::new(31, 23, 19).lda(40).ldc(29).bias(true).act(Activation::Relu)),
        // Both operands' rows padded to 16 bytes (wgpu stages both by 16-byte loads): the K tail
        // (19 of a 24-element row) is read as zeros from each operand, whatever the padding holds.
        case("37x29x19 lda=24 ldb=32", Gemm::new(37, 29, 19).lda(24).ldb(32).bias(true)),
        case("257x520x512 bias gelu_erf (several tiles each way)", Gemm::new(257, 520, 512).bias(true).act(Activation::GeluErf)),
        case("interleaved: A inner 3, C inner 2, batches 1 apart (BlockShuffle's gather/store)",
            Gemm::new(9, 11, 6).batch(2).inner_strides(3, 1, 2).lda(3 * 6 + 1).strides(1, 11 * 6, 1).ldc(2 * 11 + 1).bias(true).act(Activation::Silu)),
        case(
            "batches side by side in C's rows, interleaved bias",
            Gemm::new(6, 5, 4).batch(3).inner_strides(1, 1, 3).ldc(15).strides(24, 20, 1).bias(true).bias_strides(1, 3).act(Activation::GeluErf),
        ),
        case("128x128x256 all options", Gemm::new(128, 128, 256).bias(true).act(Activation::GeluErf).act_cols(64).residual(None).alpha(1.5).beta(0.5)),
        // On Hopper the wgmma epilogue instantiates each activation on its own (16-bit, K % 8 == 0).
        case("130x264x64 bias gelu_tanh act_cols=200", Gemm::new(130, 264, 64).bias(true).act(Activation::GeluTanh).act_cols(200)),
        case("72x80x32 relu residual", Gemm::new(72, 80, 32).act(Activation::Relu).residual(None).beta(0.5)),
        case("40x48x16 bias leaky_relu", Gemm::new(40, 48, 16).bias(true).act(Activation::LeakyRelu)),
        // K-major operands with 16-byte rows (16-byte copies on CUDA unless FFKERN_GEMM_KERNEL=kgen): dA = dC·W's and
        // dW = dCᵀ·X's layouts, partial tiles, and one long enough for split-K.
        case("200x136x96 kn bias gelu_erf", Gemm::new(200, 136, 96).b_layout(BLayout::KN).bias(true).act(Activation::GeluErf)),
        case("96x136x200 km kn residual", Gemm::new(96, 136, 200).a_layout(ALayout::KM).b_layout(BLayout::KN).residual(None).beta(0.5)),
        case("64x72x4096 km kn split-K", Gemm::new(64, 72, 4096).a_layout(ALayout::KM).b_layout(BLayout::KN).bias(true)),
        // A by element loads beside B's 16-byte copies on CUDA: A stored K-major against B [N,K],
        // and A rows that are not 16-byte aligned (lda 41).
        case("136x72x40 km nk bias relu", Gemm::new(136, 72, 40).a_layout(ALayout::KM).bias(true).act(Activation::Relu)),
        case("70x72x40 lda 41 gelu_erf", Gemm::new(70, 72, 40).lda(41).bias(true).act(Activation::GeluErf)),
        // Few tiles and a long K: CUDA splits K over the blocks (16-byte and element-wise loads).
        case("100x70x5000 split-K, all options", Gemm::new(100, 70, 5000).bias(true).act(Activation::GeluErf).act_cols(40).residual(None).alpha(0.75).beta(0.5)),
        case("150x130x4099 km split-K relu", Gemm::new(150, 130, 4099).a_layout(ALayout::KM).bias(true).act(Activation::Relu)),
        // Several tiles a block for the persistent Hopper kernels (512 of 128×256, 1024 of 64×256
        // over a GPU's ~132 blocks): their stage ring and the ping-pong order barriers go round
        // more than once. K 16 keeps the reference cheap.
        case("8192x2048x16 bias gelu_erf (several tiles a block)", Gemm::new(8192, 2048, 16).bias(true).act(Activation::GeluErf)),
        // The same with a residual and act_cols inside a 64-column chunk, through the epilogue
        // paths that read R (and, with FFKERN_GEMM_KERNEL=epiwarp, the staged tile's hand-back).
        case(
            "8192x2048x16 bias gelu_tanh act_cols=700 residual (several tiles a block)",
            Gemm::new(8192, 2048, 16).bias(true).act(Activation::GeluTanh).act_cols(700).residual(None).beta(0.5),
        ),
        // Enough 128×128 tiles for wgpu's wide kernel (8×8 a thread), with partial edge tiles.
        case("1030x1100x40 bias gelu_erf residual", Gemm::new(1030, 1100, 40).bias(true).act(Activation::GeluErf).residual(None).beta(0.5)),
        case("batch 2 of 520x1030x24 km kn relu", Gemm::new(520, 1030, 24).batch(2).a_layout(ALayout::KM).b_layout(BLayout::KN).bias(true).act(Activation::Relu)),
        // BlockShuffle's interleaved store: batch l's column n at n·4 + l (wgpu writes 16-bit
        // batches in pairs of whole words), partial tiles, with the bias interleaved the same way;
        // then an odd batch count, which takes the one-batch form.
        case(
            "batch 4 of 70x37x24 interleaved C and bias, gelu_erf",
            Gemm::new(70, 37, 24).batch(4).inner_strides(4, 1, 4).lda(96).ldc(148).strides(1, 37 * 24, 1).bias(true).bias_strides(1, 4).act(Activation::GeluErf),
        ),
        case("batch 3 of 20x9x8 interleaved C", Gemm::new(20, 9, 8).batch(3).inner_strides(1, 1, 3).ldc(28).strides(20 * 8, 9 * 8, 1).act(Activation::Relu)),
        // BlockShuffle's second product as the forward runs it: A the gathered blocks z_l side by
        // side (contiguous rows, 16-byte aligned), C and bias interleaved. On Hopper the wgmma
        // kernel with its strided-column writer, partial 128×256 tiles, act_cols inside a chunk.
        case(
            "batch 4 of 300x264x32 gathered A, interleaved C and bias, gelu_erf act_cols=100",
            Gemm::new(300, 264, 32).batch(4).inner_strides(1, 1, 4).lda(128).ldc(4 * 264).strides(32, 264 * 32, 1).bias(true).bias_strides(1, 4).act(Activation::GeluErf).act_cols(100),
        ),
        // Its first product as the gathered form runs it: C stored transposed (rows 1 apart,
        // columns 2·100 apart, the batches side by side), through the row-walking writer on Hopper.
        case("batch 2 of 100x300x64, C transposed, bias relu", Gemm::new(100, 300, 64).batch(2).ldc(1).inner_strides(1, 1, 200).strides(100 * 64, 300 * 64, 100).bias(true).act(Activation::Relu)),
        // The strided writers with a residual (Hopper: each walks rows of one column, or, with
        // columns an odd stride apart, columns of one row) and act_cols inside a chunk.
        case(
            "batch 4 of 300x264x32 gathered A, interleaved C, silu act_cols=70, residual",
            Gemm::new(300, 264, 32).batch(4).inner_strides(1, 1, 4).lda(128).ldc(4 * 264).strides(32, 264 * 32, 1).act(Activation::Silu).act_cols(70).residual(None).beta(0.5),
        ),
        case(
            "batch 2 of 100x300x64, C transposed at an odd stride, bias gelu_erf act_cols=150, residual",
            Gemm::new(100, 300, 64).batch(2).ldc(1).inner_strides(1, 1, 201).strides(100 * 64, 300 * 64, 100).bias(true).act(Activation::GeluErf).act_cols(150).residual(None).beta(0.5),
        ),
    ]
}

/// Backward cases (the activation derivative, dbias, both layouts, batches).
pub fn gemm_backward_cases() -> Vec<GemmCase> {
    vec![
        case("bwd 7x13x5 gelu_erf", Gemm::new(7, 13, 5).bias(true).act(Activation::GeluErf)),
        case("bwd 3000x40x24 gelu_erf (dB over 3000 rows: split-K on CUDA)", Gemm::new(3000, 40, 24).bias(true).act(Activation::GeluErf)),
        case("bwd 63x65x127 kn silu act_cols=40", Gemm::new(63, 65, 127).b_layout(BLayout::KN).bias(true).act(Activation::Silu).act_cols(40)),
        case("bwd 40x33x70 km relu alpha 0.5", Gemm::new(40, 33, 70).a_layout(ALayout::KM).act(Activation::Relu).alpha(0.5)),
        case("bwd batch 2 of 30x20x50 gelu_tanh", Gemm::new(30, 20, 50).batch(2).bias(true).act(Activation::GeluTanh)),
        case("bwd interleaved A and B (inner 2 and 3), batches 1 apart", Gemm::new(7, 5, 6).batch(2).inner_strides(2, 3, 1).lda(13).ldb(17).strides(1, 1, 35).act(Activation::Relu)),
        case("bwd interleaved C (inner 2), batches 1 apart, no activation", Gemm::new(6, 5, 4).batch(2).inner_strides(1, 1, 2).ldc(11).strides(4 * 6, 5 * 4, 1)),
        case(
            "bwd batches side by side in C's rows, interleaved bias, gelu_erf",
            Gemm::new(6, 5, 4).batch(3).inner_strides(1, 1, 3).ldc(15).strides(24, 20, 1).bias(true).bias_strides(1, 3).act(Activation::GeluErf),
        ),
    ]
}

/// Benchmark shapes (SPEC: the ViT-L FFN GEMMs and the square 4096³ problem).
pub fn gemm_bench_cases() -> Vec<GemmCase> {
    vec![
        case("4096x4096x4096", Gemm::new(4096, 4096, 4096)),
        case("25216x4096x1024 bias gelu_erf", Gemm::new(25216, 4096, 1024).bias(true).act(Activation::GeluErf)),
        // cuBLASLt's GELU epilogue is the tanh form: this row is the like-for-like comparison.
        case("25216x4096x1024 bias gelu_tanh", Gemm::new(25216, 4096, 1024).bias(true).act(Activation::GeluTanh)),
        case("25216x1024x4096 bias residual", Gemm::new(25216, 1024, 4096).bias(true).residual(None)),
    ]
}

/// Small benchmark shapes for CPU-only adapters (lavapipe) and quick runs.
pub fn gemm_bench_cases_small() -> Vec<GemmCase> {
    vec![
        case("512x512x512", Gemm::new(512, 512, 512)),
        case("1024x1024x1024 bias gelu_erf", Gemm::new(1024, 1024, 1024).bias(true).act(Activation::GeluErf)),
    ]
}

/// The RePaViT bench (SPEC §3): `(tokens, C, H, θ)` — ViT-L (128 images × 197 tokens, C = 1024,
/// H = 4096, θ = 0.75), or ViT-S with 4 images on CPU adapters (`small`).
pub fn repavit_bench_shape(small: bool) -> (usize, usize, usize, f64) {
    if small {
        (4 * 197, 384, 1536, 0.75)
    } else {
        (128 * 197, 1024, 4096, 0.75)
    }
}

/// The structured FFN benches (SPEC §4): the token count and each block's `(S1, S2, label)` —
/// d = 2048 and 16,384 tokens (d = 256, 1,024 tokens when `small`), hidden 4d, about a third of
/// the dense FFN's parameters: LowRank of rank d/4, BlockDense of 4 blocks, BlockShuffle of 4
/// blocks of inner width d/4.
pub fn structured_bench_layers(small: bool) -> (usize, Vec<(crate::ops::structured::Structured, crate::ops::structured::Structured, &'static str)>) {
    use crate::ops::structured::Structured;
    let (t, d) = if small { (1024, 256) } else { (16384, 2048) };
    let (h, r) = (4 * d, d / 4);
    let layers = vec![
        (Structured::LowRank { inp: d, out: h, rank: r }, Structured::LowRank { inp: h, out: d, rank: r }, "lowrank"),
        (Structured::BlockDense { inp: d, out: h, rank: 3 * d / 8, blocks: 4 }, Structured::BlockDense { inp: h, out: d, rank: 3 * d / 8, blocks: 4 }, "blockdense"),
        (Structured::BlockShuffle { inp: d, out: h, blocks: 4, inner: d / 4 }, Structured::BlockShuffle { inp: h, out: d, blocks: 4, inner: d / 4 }, "blockshuffle"),
    ];
    (t, layers)
}

/// The linear-attention decode bench (SPEC §5, issue 4): `(B, H, K = V)` — B 64, H 32, K 128, or
/// B 8, H 8, K 64 when `small`.
pub fn linattn_decode_shape(small: bool) -> (usize, usize, usize) {
    if small {
        (8, 8, 64)
    } else {
        (64, 32, 128)
    }
}

/// The sequence lengths of the linear-attention scaling rows (B1 H4 D64) unless `--seq` names
/// others.
pub fn linattn_bench_seqs(small: bool) -> &'static [usize] {
    if small {
        &[1024, 2048]
    } else {
        &[4096, 8192]
    }
}

/// The graph benches (SPEC §6): `(N, E, D)` — OneForecast's mesh (12,337 nodes, 98,296 edges,
/// D = 512), or N 2,000, E 16,000, D 128 when `small`.
pub fn graph_bench_shape(small: bool) -> (usize, usize, usize) {
    if small {
        (2_000, 16_000, 128)
    } else {
        (12_337, 98_296, 512)
    }
}

/// The noisy-optimizer bench's parameter count: 100 M, or 4 M when `small`.
pub fn optim_bench_params(small: bool) -> usize {
    if small {
        4_000_000
    } else {
        100_000_000
    }
}
