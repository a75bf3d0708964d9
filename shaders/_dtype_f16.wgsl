// Storage snippet for f16: two elements per u32 word (element 2w in the low half), widened to f32
// in the shader. Rounding to f16 is round-to-nearest-even, done here so every adapter agrees.
const ELEM_SHIFT: u32 = 1u;

fn unpack_elem(word: u32, half: u32) -> f32 {
    return unpack2x16float(word)[half];
}

fn pack_elem(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    let sign = (x >> 16u) & 0x8000u;
    let ex = (x >> 23u) & 0xffu;
    let mant = x & 0x7fffffu;
    if (ex == 0xffu) {
        return sign | 0x7c00u | select(0u, 0x200u, mant != 0u);
    }
    let e = i32(ex) - 112;
    if (e >= 31) {
        return sign | 0x7c00u;
    }
    if (e <= 0) {
        if (e < -10) {
            return sign;
        }
        let full = mant | 0x800000u;
        let shift = u32(14 - e);
        var h = full >> shift;
        let rem = full & ((1u << shift) - 1u);
        let halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (h & 1u) == 1u)) {
            h = h + 1u;
        }
        return sign | h;
    }
    var h = (u32(e) << 10u) | (mant >> 13u);
    let rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) == 1u)) {
        h = h + 1u;
    }
    return sign | h;
}

fn pack_pair(lo: f32, hi: f32) -> u32 {
    return pack_elem(lo) | (pack_elem(hi) << 16u);
}
