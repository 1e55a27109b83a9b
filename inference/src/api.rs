//! The seed-compatible HTTP API: /predict, /health, /ready, /version, /metrics, and the JSON error
//! type every endpoint answers with.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;

use crate::engine::{CpuTurns, Engine, EngineError};
use crate::labels;
use crate::preprocess::{self, PreprocessError};
use crate::state::{AppState, Phase};

/// Every failure is `{"error": "..."}` with a status that says whose fault it is.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Label for `ml_inference_request_errors_total{reason}`.
    pub reason: &'static str,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            reason,
            retry_after: None,
        }
    }
    pub fn bad_request(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason, message)
    }
    fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, reason, message)
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        if let Some(s) = self.retry_after {
            r.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        r.json(json!({ "error": self.message }))
    }
}

impl From<PreprocessError> for ApiError {
    fn from(e: PreprocessError) -> Self {
        let (status, reason) = match &e {
            PreprocessError::Empty => (StatusCode::BAD_REQUEST, "empty_image"),
            PreprocessError::UnknownFormat => (StatusCode::BAD_REQUEST, "not_an_image"),
            PreprocessError::Unsupported(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_format")
            }
            PreprocessError::TooManyPixels { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "image_too_large")
            }
            PreprocessError::Decode(_) => (StatusCode::BAD_REQUEST, "undecodable_image"),
        };
        Self::new(status, reason, e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::QueueFull(_) => Self::unavailable("queue_full", e.to_string()),
            EngineError::Expired(_) => Self::unavailable("queue_timeout", e.to_string()),
            EngineError::Stopped => Self::unavailable("stopped", e.to_string()),
            EngineError::Model(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "model_error",
                e.to_string(),
            ),
        }
    }
}

/// The engine when the model is serving; 503 while it loads.
pub fn engine(state: &AppState) -> Result<&Engine, ApiError> {
    state.engine.get().ok_or_else(|| {
        ApiError::unavailable("loading", "the model is still loading; retry shortly")
    })
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request body is larger than the limit of {limit} bytes"),
    )
}

/// Reads a body stream into memory, refusing it as soon as it passes `limit`.
pub async fn read_limited<S, E>(mut stream: S, limit: usize) -> Result<Vec<u8>, ApiError>
where
    S: futures_util::Stream<Item = Result<web::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("bad_body", format!("could not read the request body: {e}"))
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Refuses an announced oversized body before reading any of it.
pub fn check_content_length(req: &HttpRequest, limit: usize) -> Result<(), ApiError> {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(len) if len > limit as u64 => Err(too_large(limit)),
        _ => Ok(()),
    }
}

/// The image of a /predict request: multipart field `file` (as the seed), or a raw `image/*` body.
async fn image_bytes(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    check_content_length(req, limit)?;
    let mime = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if mime.starts_with("multipart/form-data") {
        return multipart_file(req, payload, limit).await;
    }
    if mime.starts_with("image/") || mime.starts_with("application/octet-stream") {
        return read_limited(payload, limit).await;
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "bad_content_type",
        format!(
            "Content-Type `{}` is not accepted: send multipart/form-data with the image in a field named `file`, or the raw image with Content-Type image/*",
            if mime.is_empty() { "(none)" } else { &mime }
        ),
    ))
}

async fn multipart_file(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let mut form = actix_multipart::Multipart::new(req.headers(), payload);
    let mut file = None;
    let mut total = 0usize;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(|e| {
            ApiError::bad_request("bad_multipart", format!("malformed multipart body: {e}"))
        })?;
        let is_file = field.name() == Some("file");
        let filename = field
            .content_disposition()
            .and_then(|cd| cd.get_filename())
            .map(str::to_owned);
        let mut data = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request("bad_multipart", format!("malformed multipart body: {e}"))
            })?;
            total += chunk.len();
            if total > limit {
                return Err(too_large(limit));
            }
            if is_file {
                data.extend_from_slice(&chunk);
            }
        }
        if is_file && file.is_none() {
            if filename.as_deref() == Some("") {
                return Err(ApiError::bad_request("empty_filename", "Empty filename"));
            }
            file = Some(data);
        }
    }
    file.ok_or_else(|| {
        ApiError::bad_request(
            "no_file",
            "No file provided: send the image in a multipart field named `file`",
        )
    })
}

fn parse_top_k(query: &str) -> Result<usize, ApiError> {
    let raw = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "top_k")
        .map(|(_, v)| v);
    match raw {
        None => Ok(5),
        Some(v) => match v.parse::<usize>() {
            Ok(k) if (1..=1000).contains(&k) => Ok(k),
            _ => Err(ApiError::bad_request(
                "bad_top_k",
                format!("top_k must be an integer from 1 to 1000, got `{v}`"),
            )),
        },
    }
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Prediction {
    pub class: &'static str,
    pub confidence: f64,
    pub class_id: usize,
}

/// The `k` largest logits as (class id, logit), largest first; ties keep the lower id first.
pub fn top_k_raw(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut ids: Vec<usize> = (0..logits.len()).collect();
    ids.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    ids.into_iter().take(k).map(|id| (id, logits[id])).collect()
}

/// Softmax over one image's logits, the `k` most likely classes first.
pub fn top_k(logits: &[f32], k: usize) -> Vec<Prediction> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    top_k_raw(logits, k)
        .into_iter()
        .map(|(id, logit)| Prediction {
            class: labels::label(id),
            confidence: (((logit as f64 - max).exp() / sum) * 1e4).round() / 1e4,
            class_id: id,
        })
        .collect()
}

/// Counts a prediction request in the seed's metrics, whatever its outcome.
pub struct RequestScope<'a> {
    state: &'a AppState,
    started: Instant,
}

impl<'a> RequestScope<'a> {
    pub fn begin(state: &'a AppState) -> Self {
        state.metrics.requests.inc();
        state.metrics.in_flight.inc();
        Self {
            state,
            started: Instant::now(),
        }
    }
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
    pub fn finish<T>(self, result: Result<T, ApiError>) -> Result<T, ApiError> {
        match &result {
            Ok(_) => self.state.metrics.latency.observe(self.elapsed()),
            Err(e) => self.state.metrics.error(e.reason),
        }
        result
    }
}

impl Drop for RequestScope<'_> {
    fn drop(&mut self) {
        self.state.metrics.in_flight.dec();
    }
}

/// Decodes and preprocesses images off the async workers.
pub async fn preprocess_all(
    state: &Arc<AppState>,
    images: Vec<Vec<u8>>,
) -> Result<Vec<f32>, ApiError> {
    let limits = state.decode_limits;
    let metrics = state.metrics.clone();
    let turns = state.engine.get().and_then(Engine::cpu_turns);
    web::block(move || {
        let _turn = turns.as_deref().map(CpuTurns::preprocessing);
        let mut buf = vec![0f32; images.len() * crate::model::INPUT_LEN];
        for (bytes, slot) in images
            .iter()
            .zip(buf.chunks_exact_mut(crate::model::INPUT_LEN))
        {
            let t = Instant::now();
            preprocess::preprocess_into(bytes, &limits, slot)?;
            metrics
                .preprocess_seconds
                .observe(t.elapsed().as_secs_f64());
        }
        Ok::<_, PreprocessError>(buf)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("preprocessing task failed: {e}"),
        )
    })?
    .map_err(ApiError::from)
}

pub async fn predict(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let scope = RequestScope::begin(&state);
    let result = async {
        let engine = engine(&state)?;
        let k = parse_top_k(req.query_string())?;
        // Refuse before reading and decoding the image when the queue is full.
        let permit = engine.admit()?;
        let bytes = image_bytes(&req, payload, state.args.max_body_bytes).await?;
        let input = preprocess_all(&state, vec![bytes]).await?;
        let out = engine.infer_admitted(permit, input, 1).await?;
        Ok(json!({
            "predictions": top_k(&out.logits, k),
            "latency_seconds": (scope.elapsed() * 1e4).round() / 1e4,
            "model_version": state.args.model_version,
        }))
    }
    .await;
    scope
        .finish(result)
        .map(|body| HttpResponse::Ok().json(body))
}

pub async fn health(state: web::Data<AppState>) -> HttpResponse {
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
        "max_batch_size": state.args.max_batch_size,
        "max_queue": state.args.max_queue,
        "weights": weights.map(|w| json!({
            "path": state.args.model_path,
            "fingerprint": w.fingerprint,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_sorts_and_normalises() {
        let mut logits = vec![0f32; 1000];
        logits[281] = 5.0;
        logits[7] = 3.0;
        let p = top_k(&logits, 3);
        assert_eq!(
            p.iter().map(|p| p.class_id).collect::<Vec<_>>(),
            vec![281, 7, 0]
        );
        assert_eq!(p[0].class, "tabby");
        assert!(p[0].confidence > p[1].confidence && p[1].confidence > p[2].confidence);
        let all: f64 = top_k(&logits, 1000).iter().map(|p| p.confidence).sum();
        assert!((all - 1.0).abs() < 0.05, "sum {all}"); // each of 1000 values rounded to 4 decimals
    }

    #[test]
    fn top_k_parameter_is_bounded() {
        assert_eq!(parse_top_k("").unwrap(), 5);
        assert_eq!(parse_top_k("top_k=1000").unwrap(), 1000);
        for bad in ["top_k=0", "top_k=1001", "top_k=abc", "top_k=-1"] {
            assert_eq!(
                parse_top_k(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }
}
