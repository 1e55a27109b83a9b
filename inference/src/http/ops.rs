//! Endpoints for whoever runs the server: liveness, readiness, version, Prometheus metrics, and
//! the JSON 404 / 405 answers for everything else.

use actix_web::http::header::ContentType;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::state::{AppState, Phase};

/// Liveness: 200 while loading and serving; 503 once the model thread has died or the last
/// `UNHEALTHY_AFTER_FAILED_PASSES` forward passes all failed, so the kubelet restarts the pod.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let max_failures = state.args.unhealthy_after_failed_passes;
    if let Some(Err(reason)) = state.engine.get().map(|e| e.health().check(max_failures)) {
        return HttpResponse::ServiceUnavailable().json(json!({
            "status": "unhealthy",
            "reason": reason,
            "model": state.args.model_name,
            "device": state.device_name(),
        }));
    }
    HttpResponse::Ok().json(json!({
        "status": "healthy",
        "model": state.args.model_name,
        "device": state.device_name(),
    }))
}

pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    match state.phase() {
        Phase::Ready => HttpResponse::Ok().json(json!({ "status": "ready" })),
        phase => HttpResponse::ServiceUnavailable().json(json!({ "status": phase.as_str() })),
    }
}

pub async fn version(state: web::Data<AppState>) -> HttpResponse {
    let weights = state.weights_info.get();
    HttpResponse::Ok().json(json!({
        "server": "inference-server",
        "version": env!("CARGO_PKG_VERSION"),
        "model": state.args.model_name,
        "model_version": state.args.model_version,
        "device": state.device_name(),
        "cuda_build": cfg!(feature = "cuda"),
        "implementation": weights.map(|w| w.implementation),
        "isa": weights.and_then(|w| w.isa),
        "max_batch_size": state.args.max_batch(state.on_gpu()),
        "max_queue": state.args.max_queue(state.on_gpu()),
        "weights": weights.map(|w| json!({
            "sha256": w.sha256,
            "random": w.random_seed.is_some(),
        })),
    }))
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType(
            prometheus::TEXT_FORMAT.parse().expect("valid mime"),
        ))
        .body(state.metrics.render())
}

pub async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound()
        .json(json!({ "error": format!("no such endpoint: {} {}", req.method(), req.path()) }))
}

pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    HttpResponse::MethodNotAllowed().json(
        json!({ "error": format!("method {} is not allowed on {}", req.method(), req.path()) }),
    )
}
