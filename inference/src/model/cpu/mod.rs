//! Our ResNet50 for CPUs: NHWC activations, BatchNorm folded and weights packed at load.
//!
//! [`network`] is the forward pass (stem, 16 bottleneck blocks, pooling, classifier) and the
//! buffers it keeps between calls; it runs each 1×1 and strided convolution as a GEMM over
//! im2col rows with [`packed_gemm`], and each 3×3 stride-1 convolution with [`winograd`], whose
//! per-position products are also [`packed_gemm`] calls. [`isa`] picks the vector instructions
//! both compile for; [`buffers`] holds the scratch helpers they share.

pub mod buffers;
pub mod isa;
pub mod network;
pub mod packed_gemm;
pub mod winograd;

pub use network::CpuResNet50;
