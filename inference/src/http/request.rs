//! What every prediction request shares, whichever protocol it speaks: bodies read under a size
//! limit, the metrics scope that counts it, and decoding on the blocking pool, never on the
//! HTTP workers.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, web};
use futures_util::StreamExt;
use tokio::sync::OwnedSemaphorePermit;

use super::error::ApiError;
use super::gates::MemoryBudget;
use super::state::AppState;
use crate::engine::{CpuTurns, Engine};
use crate::preprocess::{self, INPUT_LEN, PreprocessError};

/// The engine when the model is serving; 503 while it loads.
pub fn engine(state: &AppState) -> Result<&Engine, ApiError> {
    state.engine.get().ok_or_else(|| {
        ApiError::unavailable("loading", "the model is still loading; retry shortly")
    })
}

pub fn too_large(limit: usize) -> ApiError {
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

/// Reads a request's body with `read` under the body budget and deadline. An announced
/// oversized body is refused before any of it is read. The returned permit holds the body's
/// share of the budget: keep it as long as the bytes are kept.
pub async fn receive<T>(
    state: &AppState,
    req: &HttpRequest,
    read: impl Future<Output = Result<T, ApiError>>,
) -> Result<(T, OwnedSemaphorePermit), ApiError> {
    let limit = state.args.max_body_bytes;
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > limit as u64) {
        return Err(too_large(limit));
    }
    let gate = &state.body_gate;
    let budget = &gate.budget;
    let kib = MemoryBudget::kib(announced.unwrap_or(limit as u64)).clamp(1, budget.total_kib);
    let permit = budget
        .semaphore
        .clone()
        .try_acquire_many_owned(kib)
        .map_err(|_| {
            ApiError::unavailable(
                "uploads_full",
                "too many request bodies are arriving at once (BODY_MEMORY_MB); retry shortly",
            )
        })?;
    match tokio::time::timeout(gate.timeout, read).await {
        Ok(body) => Ok((body?, permit)),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within BODY_TIMEOUT_SECONDS={}",
                gate.timeout.as_secs_f64()
            ),
        )),
    }
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

/// Decodes and preprocesses images off the async workers, one at a time, each holding a decode
/// slot, its memory and (on the CPU) a preprocessing turn only while it is decoded.
pub async fn preprocess_all(
    state: &Arc<AppState>,
    images: Vec<Vec<u8>>,
) -> Result<Vec<f32>, ApiError> {
    let limits = state.decode_limits;
    let gate = &state.decode_gate;
    let turns = state.engine.get().and_then(Engine::cpu_turns);
    let mut buf = vec![0f32; images.len() * INPUT_LEN];
    for (i, bytes) in images.into_iter().enumerate() {
        let probe = preprocess::probe(&bytes, &limits)?;
        let kib = MemoryBudget::kib(probe.decode_bytes);
        if kib > gate.memory.total_kib {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "image_too_large",
                format!(
                    "decoding this {}x{} {:?} image takes {} MiB, more than DECODE_MEMORY_MB={}",
                    probe.width,
                    probe.height,
                    probe.format,
                    kib.div_ceil(1024),
                    gate.memory.total_kib / 1024
                ),
            ));
        }
        let closed = |_| ApiError::unavailable("stopped", "the server is shutting down");
        let _memory = gate
            .memory
            .semaphore
            .acquire_many(kib)
            .await
            .map_err(closed)?;
        let _slot = gate.slots.acquire().await.map_err(closed)?;
        let metrics = state.metrics.clone();
        let turns = turns.clone();
        // The batch buffer travels to the blocking thread and back: the image is written into
        // its own slot, with no per-image buffer to copy from.
        buf = web::block(move || {
            let _turn = turns.as_deref().map(CpuTurns::preprocessing);
            let t = Instant::now();
            let slot = &mut buf[i * INPUT_LEN..(i + 1) * INPUT_LEN];
            preprocess::preprocess_probed(&bytes, &probe, slot)?;
            metrics
                .preprocess_seconds
                .observe(t.elapsed().as_secs_f64());
            Ok::<_, PreprocessError>(buf)
        })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("preprocessing task failed: {e}"),
            )
        })??;
    }
    Ok(buf)
}
