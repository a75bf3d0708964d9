//! One module per op family: the descriptor and its validation, the CPU reference (`cpu.rs`) and
//! the device launchers (`wgpu.rs`, `cuda.rs`) side by side. The kernels carry the same family
//! name in `kernels/` and `shaders/`.

pub mod ffn;
pub mod gemm;
pub mod graph;
pub mod linattn;
pub mod optim;
pub mod structured;
