//! What the HTTP handlers share: settings, metrics, and the model once it has loaded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::gates::{BodyGate, DecodeGate};
use crate::config::{ServeArgs, num_cpus};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::preprocess::DecodeLimits;

pub struct WeightsInfo {
    /// SHA-256 of the weights file.
    pub sha256: String,
    pub random_seed: Option<String>,
    /// Which forward pass runs (`Model::implementation`).
    pub implementation: &'static str,
    /// The CPU network's kernels (`avx512`, `avx2`, `portable`); `None` on a GPU.
    pub isa: Option<&'static str>,
}

pub struct AppState {
    pub args: ServeArgs,
    pub metrics: Arc<Metrics>,
    pub decode_limits: DecodeLimits,
    pub decode_gate: DecodeGate,
    pub body_gate: BodyGate,
    /// Set once, after the weights loaded and a warm-up forward pass ran.
    pub engine: OnceLock<Engine>,
    pub weights_info: OnceLock<WeightsInfo>,
    pub device: OnceLock<String>,
    /// Set by SIGTERM: readiness fails so the endpoints drop this pod before it stops.
    pub draining: AtomicBool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Phase {
    Loading,
    Ready,
    Draining,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Loading => "loading",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
        }
    }
}

impl AppState {
    pub fn new(args: ServeArgs) -> Self {
        Self {
            decode_limits: DecodeLimits {
                max_pixels: args.max_image_pixels,
                jpeg_min_side: 0, // set by the server once the device is known
            },
            decode_gate: DecodeGate::new(
                match args.decode_threads {
                    0 => num_cpus(),
                    n => n,
                },
                args.decode_memory_mb << 20,
            ),
            body_gate: BodyGate::new(
                args.body_memory_mb << 20,
                std::time::Duration::from_secs_f64(args.body_timeout_seconds),
            ),
            args,
            metrics: Arc::new(Metrics::new()),
            engine: OnceLock::new(),
            weights_info: OnceLock::new(),
            device: OnceLock::new(),
            draining: AtomicBool::new(false),
        }
    }

    pub fn phase(&self) -> Phase {
        if self.draining.load(Ordering::SeqCst) {
            Phase::Draining
        } else if self.engine.get().is_some() {
            Phase::Ready
        } else {
            Phase::Loading
        }
    }

    pub fn device_name(&self) -> &str {
        self.device.get().map(String::as_str).unwrap_or("pending")
    }

    /// Whether the model runs on a GPU (its batch and queue defaults are larger).
    pub fn on_gpu(&self) -> bool {
        self.device.get().is_some_and(|d| d != "cpu")
    }
}
