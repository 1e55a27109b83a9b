//! `inference-operator`: a Kubernetes operator that serves image classification models
//! (ResNet50) described by `InferenceService` objects (`serving.inference-server.dev/v1alpha1`).
//!
//! Pipeline per object (after Stackable's operators): [`validate`] (pure) → [`builders`]
//! (pure) → apply (server-side apply, [`controller`]) → [`status`] (pure).

pub mod builders;
pub mod controller;
pub mod crd;
pub mod diff;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod quantity;
pub mod rbac;
pub mod smoke;
pub mod status;
pub mod validate;
