//! Open Inference Protocol v2 (KServe / Triton REST), as `tritonclient` and KServe clients speak
//! it: health, server and model metadata, model config, and infer, with Triton's classification
//! extension (`"classification": k` → `"score:index:label"` strings) and the binary tensor data
//! extension ([`wire`]) in both directions.
//!
//! Two models, each with exactly one input, so a generic client can fill a request from the
//! metadata alone: `MODEL_NAME` takes images (`images`, BYTES: encoded files), and
//! `MODEL_NAME-preprocessed` takes tensors already resized, cropped and normalised (`input`,
//! FP32 [N, 3, 224, 224]). Both answer `logits` (FP32 [N, 1000]). Request bodies are parsed and
//! base64 decoded on the blocking pool, never on the HTTP workers.

pub mod wire;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::peer;
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
    #[allow(dead_code)] // any name is accepted: each model has one input
    name: String,
    shape: Vec<i64>,
    datatype: String,
    /// Absent when the tensor is in the binary part (`parameters.binary_data_size`).
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// Which of the two models a path names.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Served {
    /// `MODEL_NAME`: encoded image files.
    Images,
    /// `MODEL_NAME-preprocessed`: FP32 tensors.
    Preprocessed,
}

fn preprocessed_name(state: &AppState) -> String {
    format!("{}-preprocessed", state.args.model_name)
}

/// The model (and version, when the path has one) a request names; 404 for anything else.
fn resolve(state: &AppState, req: &HttpRequest) -> Result<(Served, String), ApiError> {
    let name = req.match_info().get("model").unwrap_or_default();
    let served = if name == state.args.model_name {
        Served::Images
    } else if name == preprocessed_name(state) {
        Served::Preprocessed
    } else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_model",
            format!(
                "unknown model `{name}`; this server serves `{}` (images) and `{}` (preprocessed tensors)",
                state.args.model_name,
                preprocessed_name(state)
            ),
        ));
    };
    if let Some(version) = req.match_info().get("version")
        && version != state.args.model_version
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_version",
            format!(
                "model `{name}` has no version `{version}`; it serves version `{}`",
                state.args.model_version
            ),
        ));
    }
    Ok((served, name.to_owned()))
}

pub async fn server_metadata() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "name": "inference-server",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["classification", "binary_tensor_data", "model_configuration"],
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
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    resolve(&state, &req)?;
    Ok(ready_response(state.phase()))
}

/// The one input of `served`: (name, datatype, shape, what it holds).
fn input_spec(served: Served) -> (&'static str, &'static str, Vec<i64>, &'static str) {
    let s = INPUT_SIZE as i64;
    match served {
        Served::Images => (
            "images",
            "BYTES",
            vec![-1],
            "image files (JPEG, PNG, WebP, GIF, BMP, TIFF): raw in the binary extension, base64 in JSON",
        ),
        Served::Preprocessed => (
            "input",
            "FP32",
            vec![-1, 3, s, s],
            "images already resized to 256, center-cropped to 224 and normalised with ImageNet mean/std, NCHW",
        ),
    }
}

pub async fn model_metadata(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (served, name) = resolve(&state, &req)?;
    let (input, datatype, shape, content) = input_spec(served);
    Ok(HttpResponse::Ok().json(json!({
        "name": name,
        "versions": [state.args.model_version],
        "platform": "inference-server",
        "inputs": [ { "name": input, "datatype": datatype, "shape": shape,
                      "parameters": { "content": content } } ],
        "outputs": [ { "name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, labels::count()] } ],
    })))
}

/// Triton's model configuration, the fields clients read (`max_batch_size`, each input's
/// `format` and `dims` without the batch dimension).
pub async fn model_config(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (served, name) = resolve(&state, &req)?;
    let (input, _, shape, _) = input_spec(served);
    let (data_type, format) = match served {
        Served::Images => ("TYPE_STRING", "FORMAT_NONE"),
        Served::Preprocessed => ("TYPE_FP32", "FORMAT_NCHW"),
    };
    let dims: Vec<i64> = if shape.len() > 1 {
        shape[1..].to_vec()
    } else {
        vec![1]
    };
    Ok(HttpResponse::Ok().json(json!({
        "name": name,
        "platform": "inference-server",
        "max_batch_size": state.args.max_client_batch,
        "input": [ { "name": input, "data_type": data_type, "format": format, "dims": dims } ],
        "output": [ { "name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [labels::count()] } ],
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

/// Whether the answer's tensor goes in the binary part: the requested output's
/// `parameters.binary_data`, or with no outputs listed the request's `binary_data_output`.
fn binary_output(req: &InferRequest) -> Result<bool, ApiError> {
    let flag = |p: &Option<Map<String, Value>>, key: &str, where_: &str| match p
        .as_ref()
        .and_then(|p| p.get(key))
    {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ApiError::bad_request(
            "bad_parameter",
            format!("{where_}.{key} must be true or false, got {v}"),
        )),
    };
    match req.outputs.as_deref() {
        Some(outputs) if !outputs.is_empty() => {
            let mut any = false;
            for (i, o) in outputs.iter().enumerate() {
                any |= flag(
                    &o.parameters,
                    "binary_data",
                    &format!("outputs[{i}].parameters"),
                )?;
            }
            Ok(any)
        }
        _ => flag(&req.parameters, "binary_data_output", "parameters"),
    }
}

/// What an infer request asks for, parsed and checked.
struct Parsed {
    id: Option<String>,
    classification: Option<usize>,
    binary_output: bool,
    n: usize,
    input: Input,
}

enum Input {
    Images(Vec<Vec<u8>>),
    Tensor(Vec<f32>),
}

/// Parses a whole infer body (JSON header and binary part). CPU work proportional to the body:
/// runs on the blocking pool.
fn parse(
    body: &[u8],
    header_len: Option<usize>,
    served: Served,
    max: usize,
) -> Result<Parsed, ApiError> {
    let bad_binary = |e: String| ApiError::bad_request("bad_binary", format!("binary data: {e}"));
    let (json, binary) = wire::split(body, header_len).map_err(bad_binary)?;
    let request: InferRequest = serde_json::from_slice(json).map_err(|e| {
        ApiError::bad_request("bad_json", format!("invalid inference request: {e}"))
    })?;
    let classification = classification_k(&request)?;
    let binary_output = binary_output(&request)?;
    let [input] = request.inputs.as_slice() else {
        let (name, ..) = input_spec(served);
        return Err(ApiError::bad_request(
            "bad_inputs",
            format!(
                "inputs: this model takes exactly one input (`{name}`), got {}",
                request.inputs.len()
            ),
        ));
    };
    let mut blobs = wire::Blobs::new(binary);
    let blob = match input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
    {
        None => None,
        Some(v) => {
            let size = v.as_u64().ok_or_else(|| {
                ApiError::bad_request(
                    "bad_binary",
                    format!("inputs[0].parameters.binary_data_size must be a byte count, got {v}"),
                )
            })?;
            Some(blobs.take(size as usize).map_err(bad_binary)?)
        }
    };
    if blobs.left() > 0 {
        return Err(bad_binary(format!(
            "{} bytes after the last tensor",
            blobs.left()
        )));
    }
    let n = batch_dim(input, max)?;
    let input = match (served, input.datatype.as_str()) {
        (Served::Images, "BYTES") => Input::Images(bytes_input(input, blob, n)?),
        (Served::Preprocessed, "FP32") => Input::Tensor(fp32_input(input, blob, n)?),
        (Served::Images, "FP32") | (Served::Preprocessed, "BYTES") => {
            let (_, wanted, ..) = input_spec(served);
            return Err(ApiError::bad_request(
                "bad_datatype",
                format!(
                    "inputs[0].datatype: this model takes {wanted}; images (BYTES) go to the model without `-preprocessed`, preprocessed FP32 tensors to the one with it"
                ),
            ));
        }
        (_, other) => {
            return Err(ApiError::bad_request(
                "bad_datatype",
                format!(
                    "inputs[0].datatype: `{other}` is not accepted; use BYTES (images) or FP32 (preprocessed)"
                ),
            ));
        }
    };
    Ok(Parsed {
        id: request.id,
        classification,
        binary_output,
        n,
        input,
    })
}

/// An input's JSON `data`, flattened; an error when the tensor came with neither `data` nor
/// a binary part.
fn json_items(t: &InputTensor) -> Result<Vec<&Value>, ApiError> {
    let data = t.data.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            "bad_data",
            "inputs[0].data: missing (send `data`, or the tensor in the binary part with parameters.binary_data_size)",
        )
    })?;
    let mut items = Vec::new();
    flatten(data, &mut items);
    Ok(items)
}

/// The images of a BYTES input: raw files in the binary part, or one base64 string each in JSON.
fn bytes_input(t: &InputTensor, blob: Option<&[u8]>, n: usize) -> Result<Vec<Vec<u8>>, ApiError> {
    let shape_error = |count: usize| {
        ApiError::bad_request(
            "bad_shape",
            format!(
                "inputs[0]: a BYTES input has shape [N] or [N, 1] and N images; got shape {:?} with {count}",
                t.shape
            ),
        )
    };
    if !matches!(t.shape.as_slice(), [_] | [_, 1]) {
        return Err(shape_error(0));
    }
    if let Some(blob) = blob {
        let images = wire::bytes_elements(blob)
            .map_err(|e| ApiError::bad_request("bad_binary", format!("inputs[0]: {e}")))?;
        if images.len() != n {
            return Err(shape_error(images.len()));
        }
        return Ok(images.into_iter().map(<[u8]>::to_vec).collect());
    }
    let items = json_items(t)?;
    if items.len() != n {
        return Err(shape_error(items.len()));
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

/// A preprocessed FP32 batch, (N, 3, 224, 224): little-endian floats in the binary part, or
/// numbers (flat or nested) in JSON.
fn fp32_input(t: &InputTensor, blob: Option<&[u8]>, n: usize) -> Result<Vec<f32>, ApiError> {
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
    let count_error = |got: usize| {
        ApiError::bad_request(
            "bad_data",
            format!(
                "inputs[0].data: shape {:?} needs {} values, got {got}",
                t.shape,
                n * INPUT_LEN
            ),
        )
    };
    if let Some(blob) = blob {
        let values = wire::f32_elements(blob)
            .map_err(|e| ApiError::bad_request("bad_binary", format!("inputs[0]: {e}")))?;
        if values.len() != n * INPUT_LEN {
            return Err(count_error(values.len()));
        }
        return Ok(values);
    }
    let items = json_items(t)?;
    if items.len() != n * INPUT_LEN {
        return Err(count_error(items.len()));
    }
    items
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
        .collect()
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

/// A v2 answer: the JSON, and the binary part when the output goes there.
struct Answer {
    json: Value,
    binary: Option<Vec<u8>>,
}

impl Answer {
    fn into_response(self) -> HttpResponse {
        match self.binary {
            None => HttpResponse::Ok().json(self.json),
            Some(blob) => {
                let header = serde_json::to_vec(&self.json).expect("JSON values serialise");
                let len = header.len();
                let mut body = header;
                body.extend_from_slice(&blob);
                HttpResponse::Ok()
                    .insert_header((wire::HEADER_LENGTH, len.to_string()))
                    .content_type("application/octet-stream")
                    .body(body)
            }
        }
    }
}

pub async fn infer(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (served, name) = resolve(&state, &req)?;
    let state = state.into_inner();
    let scope = RequestScope::begin(&state);
    let work = async {
        let engine = request::engine(&state)?;
        // A full server refuses before reading the body; places are taken once it is in.
        engine.has_room(1)?;
        let header_len = match req.headers().get(wire::HEADER_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "bad_binary",
                            format!("{}: not a byte count", wire::HEADER_LENGTH),
                        )
                    })?,
            ),
        };
        let limit = state.args.max_body_bytes;
        // A gzip / deflate body is inflated as it arrives; the limit holds for what it inflates to.
        let payload = actix_web::dev::Decompress::from_headers(payload, req.headers());
        let (body, _body_permit) =
            request::receive(&state, &req, request::read_limited(payload, limit)).await?;
        let max = state.args.max_client_batch;
        let parsed = web::block(move || parse(&body, header_len, served, max))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("parsing task failed: {e}"),
                )
            })??;
        let n = parsed.n;
        let permit = engine.admit(n)?;
        let batch = match parsed.input {
            Input::Images(images) => request::preprocess_all(&state, images).await?,
            Input::Tensor(values) => values,
        };
        let out = engine.infer_admitted(permit, batch, n).await?;
        let classes = engine.classes();
        let (datatype, shape, data, blob) = match parsed.classification {
            None => {
                let blob = parsed.binary_output.then(|| wire::encode_f32(&out.logits));
                ("FP32", json!([n, classes]), json!(out.logits), blob)
            }
            Some(k) => {
                let strings: Vec<String> = out
                    .logits
                    .chunks_exact(classes)
                    .flat_map(|row| labels::top_k_raw(row, k))
                    .map(|(id, score)| format!("{score:.6}:{id}:{}", labels::label(id)))
                    .collect();
                let blob = parsed.binary_output.then(|| wire::encode_bytes(&strings));
                ("BYTES", json!([n, k]), json!(strings), blob)
            }
        };
        let mut output = json!({ "name": OUTPUT_NAME, "datatype": datatype, "shape": shape });
        match &blob {
            Some(b) => output["parameters"] = json!({ "binary_data_size": b.len() }),
            None => output["data"] = data,
        }
        let mut body = json!({
            "model_name": name,
            "model_version": state.args.model_version,
            "outputs": [output],
        });
        if let Some(id) = &parsed.id {
            body["id"] = json!(id);
        }
        Ok(Answer {
            json: body,
            binary: blob,
        })
    };
    let result = peer::unless_gone(&req, work).await;
    scope.finish(result).map(Answer::into_response)
}
