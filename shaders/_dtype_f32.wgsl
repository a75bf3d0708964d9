// Storage snippet for f32: one element per u32 word. A shader is built as
// `_dtype_<dtype>.wgsl + _common.wgsl + <family>.wgsl` (the runtime and build.rs both do this).
const ELEM_SHIFT: u32 = 0u;

fn unpack_elem(word: u32, half: u32) -> f32 {
    return bitcast<f32>(word);
}

fn pack_elem(v: f32) -> u32 {
    return bitcast<u32>(v);
}

fn pack_pair(lo: f32, hi: f32) -> u32 {
    return bitcast<u32>(lo);
}
