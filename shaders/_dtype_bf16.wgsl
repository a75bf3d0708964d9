// Storage snippet for bf16: two elements per u32 word (element 2w in the low half), widened to
// f32 in the shader; rounding to bf16 is round-to-nearest-even.
const ELEM_SHIFT: u32 = 1u;

fn unpack_elem(word: u32, half: u32) -> f32 {
    return bitcast<f32>(select(word << 16u, word & 0xffff0000u, half == 1u));
}

fn pack_elem(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return 0x7fc0u;
    }
    return (x + 0x7fffu + ((x >> 16u) & 1u)) >> 16u;
}

fn pack_pair(lo: f32, hi: f32) -> u32 {
    return pack_elem(lo) | (pack_elem(hi) << 16u);
}
