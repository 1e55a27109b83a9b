//! ResNet50 image classification over HTTP: a drop-in replacement for the seed's Flask + PyTorch
//! app (same `/predict` API), plus the Open Inference Protocol v2.
//!
//! Dependencies point one way: [`http`] → [`engine`] → [`model`]. [`preprocess`] (bytes →
//! tensor), [`metrics`], [`config`] and [`probe`] (the container health check) stand alone;
//! [`fetch`] (weights from a URI, for an init container) uses [`config`] and [`model`]. A test
//! (`tests/layout.rs`) keeps the module graph free of cycles.

pub mod config;
pub mod engine;
pub mod fetch;
pub mod http;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod probe;
