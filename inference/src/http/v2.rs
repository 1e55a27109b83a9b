//! Open Inference Protocol v2 (KServe / Triton REST): health, model metadata and infer, with
//! Triton's classification extension (`"classification": k` → `"score:index:label"` strings).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::request::{self, RequestScope};
use super::state::{AppState, Phase};
use crate::model::labels;
use crate::model::{INPUT_LEN, INPUT_SIZE};

const OUTPUT_NAME: &str = "logits";

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct InputTensor {
    #[allow(dead_code)] // any name is accepted: the datatype says what the input holds
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Value,
    #[serde(default)]
    #[allow(dead_code)] // accepted for protocol compatibility; nothing in it applies here
    parameters: Option<Map<String, Value>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

fn check_model(state: &AppState, name: &str) -> Result<(), ApiError> {
    if name == state.args.model_name {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_model",
            format!(
                "unknown model `{name}`; this server serves `{}`",
                state.args.model_name
            ),
        ))
    }
}

pub async fn server_metadata() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "name": "inference-server",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["classification"],
    }))
}

pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "live": true }))
}

pub async fn server_ready(state: web::Data<AppState>) -> HttpResponse {
    ready_response(state.phase())
}

fn ready_response(phase: Phase) -> HttpResponse {
    let ready = phase == Phase::Ready;
    let mut r = if ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    r.json(json!({ "ready": ready }))
}

pub async fn model_ready(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_model(&state, &path)?;
    Ok(ready_response(state.phase()))
}

pub async fn model_metadata(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_model(&state, &path)?;
    let s = INPUT_SIZE as i64;
    Ok(HttpResponse::Ok().json(json!({
        "name": state.args.model_name,
        "versions": [state.args.model_version],
        "platform": "candle",
        "inputs": [
            { "name": "image", "datatype": "BYTES", "shape": [-1],
              "parameters": { "content": "base64-encoded image file (JPEG, PNG, WebP, GIF, BMP, TIFF)" } },
            { "name": "input", "datatype": "FP32", "shape": [-1, 3, s, s],
              "parameters": { "content": "images already resized, cropped and normalised with ImageNet mean/std" } }
        ],
        "outputs": [ { "name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, labels::count()] } ],
    })))
}

/// Flattens nested JSON arrays (v2 allows both flat and nested `data`).
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn classification_k(req: &InferRequest) -> Result<Option<usize>, ApiError> {
    let mut params: Vec<(&str, &Map<String, Value>)> = Vec::new();
    if let Some(p) = &req.parameters {
        params.push(("parameters", p));
    }
    for (i, o) in req.outputs.iter().flatten().enumerate() {
        if o.name != OUTPUT_NAME {
            return Err(ApiError::bad_request(
                "bad_output",
                format!(
                    "outputs[{i}].name: unknown output `{}`; this model has `{OUTPUT_NAME}`",
                    o.name
                ),
            ));
        }
        if let Some(p) = &o.parameters {
            params.push(("outputs[].parameters", p));
        }
    }
    let mut k = None;
    for (where_, p) in params {
        if let Some(v) = p.get("classification") {
            match v.as_u64() {
                Some(n) if (1..=labels::count() as u64).contains(&n) => k = Some(n as usize),
                _ => {
                    return Err(ApiError::bad_request(
                        "bad_classification",
                        format!(
                            "{where_}.classification must be an integer from 1 to {}, got {v}",
                            labels::count()
                        ),
                    ));
                }
            }
        }
    }
    Ok(k)
}

/// The images of a BYTES input: one base64 string per image.
fn bytes_input(t: &InputTensor, max: usize) -> Result<Vec<Vec<u8>>, ApiError> {
    let mut items = Vec::new();
    flatten(&t.data, &mut items);
    let n = batch_dim(t, max)?;
    let shape_ok = matches!(t.shape.as_slice(), [_] | [_, 1]);
    if !shape_ok || items.len() != n {
        return Err(ApiError::bad_request(
            "bad_shape",
            format!(
                "inputs[0]: a BYTES input has shape [N] or [N, 1] and N strings; got shape {:?} with {} values",
                t.shape,
                items.len()
            ),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let s = v.as_str().ok_or_else(|| {
                ApiError::bad_request(
                    "bad_data",
                    format!(
                        "inputs[0].data[{i}]: expected a base64 string, got {}",
                        kind(v)
                    ),
                )
            })?;
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|e| {
                    ApiError::bad_request(
                        "bad_base64",
                        format!("inputs[0].data[{i}]: not valid base64: {e}"),
                    )
                })
        })
        .collect()
}

/// A preprocessed FP32 batch, (N, 3, 224, 224).
fn fp32_input(t: &InputTensor, max: usize) -> Result<(Vec<f32>, usize), ApiError> {
    let s = INPUT_SIZE as i64;
    if t.shape.len() != 4 || t.shape[1..] != [3, s, s] {
        return Err(ApiError::bad_request(
            "bad_shape",
            format!(
                "inputs[0].shape: an FP32 input must be [N, 3, {s}, {s}], got {:?}",
                t.shape
            ),
        ));
    }
    let n = batch_dim(t, max)?;
    let mut items = Vec::new();
    flatten(&t.data, &mut items);
    if items.len() != n * INPUT_LEN {
        return Err(ApiError::bad_request(
            "bad_data",
            format!(
                "inputs[0].data: shape {:?} needs {} values, got {}",
                t.shape,
                n * INPUT_LEN,
                items.len()
            ),
        ));
    }
    let data = items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_f64().map(|f| f as f32).ok_or_else(|| {
                ApiError::bad_request(
                    "bad_data",
                    format!("inputs[0].data[{i}]: expected a number, got {}", kind(v)),
                )
            })
        })
        .collect::<Result<Vec<f32>, _>>()?;
    Ok((data, n))
}

fn batch_dim(t: &InputTensor, max: usize) -> Result<usize, ApiError> {
    match t.shape.first() {
        Some(&n) if n >= 1 && n as usize <= max => Ok(n as usize),
        Some(&n) if n > max as i64 => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("inputs[0].shape: batch of {n} is over the limit of {max} (MAX_CLIENT_BATCH)"),
        )),
        _ => Err(ApiError::bad_request(
            "bad_shape",
            format!(
                "inputs[0].shape: the batch dimension must be at least 1, got {:?}",
                t.shape
            ),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub async fn infer(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_model(&state, &path)?;
    let state = state.into_inner();
    let scope = RequestScope::begin(&state);
    let result = async {
        let engine = request::engine(&state)?;
        // A full server refuses before reading the body; places are taken once it is in.
        engine.has_room(1)?;
        let limit = state.args.max_body_bytes;
        let (body, _body_permit) =
            request::receive(&state, &req, request::read_limited(payload, limit)).await?;
        let request: InferRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("bad_json", format!("invalid inference request: {e}")))?;
        let k = classification_k(&request)?;
        let [input] = request.inputs.as_slice() else {
            return Err(ApiError::bad_request(
                "bad_inputs",
                format!("inputs: this model takes exactly one input (`image` BYTES or `input` FP32), got {}", request.inputs.len()),
            ));
        };
        let max = state.args.max_client_batch;
        let n = batch_dim(input, max)?;
        let permit = engine.admit(n)?;
        let (batch, n) = match input.datatype.as_str() {
            "BYTES" => {
                let images = bytes_input(input, max)?;
                let n = images.len();
                (request::preprocess_all(&state, images).await?, n)
            }
            "FP32" => fp32_input(input, max)?,
            other => {
                return Err(ApiError::bad_request(
                    "bad_datatype",
                    format!("inputs[0].datatype: `{other}` is not accepted; use BYTES (base64 images) or FP32 (preprocessed)"),
                ));
            }
        };
        let out = engine.infer_admitted(permit, batch, n).await?;
        let classes = engine.classes();
        let output = match k {
            None => json!({ "name": OUTPUT_NAME, "datatype": "FP32", "shape": [n, classes], "data": out.logits }),
            Some(k) => {
                let data: Vec<String> = out
                    .logits
                    .chunks_exact(classes)
                    .flat_map(|row| labels::top_k_raw(row, k))
                    .map(|(id, score)| format!("{score:.6}:{id}:{}", labels::label(id)))
                    .collect();
                json!({ "name": OUTPUT_NAME, "datatype": "BYTES", "shape": [n, k], "data": data })
            }
        };
        let mut body = json!({
            "model_name": state.args.model_name,
            "model_version": state.args.model_version,
            "outputs": [output],
        });
        if let Some(id) = &request.id {
            body["id"] = json!(id);
        }
        Ok(body)
    }
    .await;
    scope
        .finish(result)
        .map(|body| HttpResponse::Ok().json(body))
}
