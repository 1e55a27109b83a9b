//! What every prediction request shares, whichever protocol it speaks: bodies read under a size
//! limit, the metrics scope that counts it, and decoding on the blocking pool, never on the
//! HTTP workers.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, web};
use futures_util::StreamExt;

use super::error::ApiError;
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
        let mut buf = vec![0f32; images.len() * INPUT_LEN];
        for (bytes, slot) in images.iter().zip(buf.chunks_exact_mut(INPUT_LEN)) {
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
