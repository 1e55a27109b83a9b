//! ResNet50 image classification over HTTP: a drop-in replacement for the seed's Flask + PyTorch
//! app (same `/predict` API), plus the Open Inference Protocol v2.

pub mod api;
pub mod config;
pub mod cpu_model;
pub mod engine;
pub mod labels;
pub mod metrics;
pub mod model;
pub mod packed_gemm;
pub mod preprocess;
pub mod server;
pub mod state;
pub mod v2;
pub mod weights;
pub mod winograd;
