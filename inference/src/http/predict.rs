//! The seed's API: `POST /predict` with the image as multipart field `file` or a raw `image/*`
//! body, answering the top-k classes.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde_json::json;

use super::error::ApiError;
use super::peer;
use super::request::{self, RequestScope, preprocess_all, read_limited, too_large};
use super::state::AppState;
use crate::model::labels::top_k;

/// The image of a /predict request: multipart field `file` (as the seed), or a raw `image/*` body.
async fn image_bytes(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
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

pub async fn predict(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let scope = RequestScope::begin(&state);
    let work = async {
        let engine = request::engine(&state)?;
        let k = parse_top_k(req.query_string())?;
        // A full server refuses before reading the body; a place is taken only once it is in.
        engine.has_room(1)?;
        let limit = state.args.max_body_bytes;
        let (bytes, _body) =
            request::receive(&state, &req, image_bytes(&req, payload, limit)).await?;
        let permit = engine.admit(1)?;
        let input = preprocess_all(&state, vec![bytes]).await?;
        let out = engine.infer_admitted(permit, input, 1).await?;
        Ok(json!({
            "predictions": top_k(&out.logits, k),
            "latency_seconds": (scope.elapsed() * 1e4).round() / 1e4,
            "model_version": state.args.model_version,
        }))
    };
    let result = peer::unless_gone(&req, work).await;
    scope
        .finish(result)
        .map(|body| HttpResponse::Ok().json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

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
