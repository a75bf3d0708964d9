// The bandwidth probe of `ffkern bench`: a plain copy through the shader cores, one 16-byte load
// and store per invocation. A graphics API's buffer copy may run on a copy engine that moves
// bytes slower than kernels can, so the bench takes the faster of the two as its ceiling.

struct Params {
    n: u32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(256)
fn copy16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i < p.n) {
        dst[i] = src[i];
    }
}
