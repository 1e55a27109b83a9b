//! The real server over real HTTP: every endpoint, every kind of bad input, shutdown, overload.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Server, image};
use serde_json::{Value, json};

fn assert_prediction(v: &Value, k: usize) {
    let preds = v["predictions"]
        .as_array()
        .unwrap_or_else(|| panic!("no predictions in {v}"));
    assert_eq!(preds.len(), k);
    let mut last = f64::INFINITY;
    for p in preds {
        let id = p["class_id"].as_u64().unwrap() as usize;
        assert!(id < 1000);
        assert!(!p["class"].as_str().unwrap().is_empty());
        let c = p["confidence"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&c) && c <= last,
            "confidences not sorted: {v}"
        );
        last = c;
    }
    assert!(v["latency_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["model_version"], "1.0");
}

#[test]
fn predict_multipart_and_raw_body_agree() {
    let s = Server::start(&[]);
    let cat = image("cat.jpg");
    let a = s.predict_multipart("file", "cat.jpg", &cat);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_prediction(&a.json(), 5);
    let b = s.post("/predict", "image/jpeg", &cat);
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(
        a.json()["predictions"],
        b.json()["predictions"],
        "same image, different answers"
    );
    // top_k and labels from the 1000-class list.
    let c = s.post("/predict?top_k=1000", "image/jpeg", &cat).json();
    assert_prediction(&c, 1000);
    let sum: f64 = c["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["confidence"].as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 0.05, "softmax sums to {sum}"); // 1000 values rounded to 4 decimals
    let first = &c["predictions"][0];
    let labels: Vec<&str> = include_str!("../assets/imagenet-classes.txt")
        .lines()
        .collect();
    assert_eq!(
        first["class"],
        labels[first["class_id"].as_u64().unwrap() as usize]
    );
    // Every format the seed's PIL handles here: grayscale PNG, RGBA PNG, a 2048² JPEG.
    for name in ["camera-gray.png", "logo-rgba.png", "astronaut-2048.jpg"] {
        let r = s.predict_multipart("file", name, &image(name));
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        assert_prediction(&r.json(), 5);
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_loses_nothing() {
    let s = Server::start(&[
        ("MAX_BODY_BYTES", "1048576"),
        ("MAX_IMAGE_PIXELS", "1000000"),
    ]);
    let cat = image("cat.jpg");
    let good = s.predict_multipart("file", "cat.jpg", &cat).json()["predictions"].clone();

    let mut truncated = image("coffee.jpg");
    truncated.truncate(truncated.len() / 2);
    let gif_header_only = b"GIF89a\x01\x00\x01\x00".to_vec();
    // A decompression bomb: 4 Mpx of black compress to a few KB (the server's limit here is 1 Mpx).
    let bomb = black_png(2000, 2000);
    type Send<'a> = Box<dyn Fn() -> common::Reply + 'a>;
    let cases: Vec<(&str, Send, u16, &str)> = vec![
        (
            "missing field",
            Box::new(|| s.predict_multipart("image", "cat.jpg", &cat)),
            400,
            "No file provided",
        ),
        (
            "empty filename",
            Box::new(|| s.predict_multipart("file", "", &cat)),
            400,
            "Empty filename",
        ),
        (
            "empty file",
            Box::new(|| s.predict_multipart("file", "x.jpg", b"")),
            400,
            "empty",
        ),
        (
            "not an image",
            Box::new(|| s.predict_multipart("file", "x.txt", b"just some text, not pixels")),
            400,
            "not an image",
        ),
        (
            "truncated jpeg",
            Box::new(|| s.post("/predict", "image/jpeg", &truncated)),
            400,
            "truncated",
        ),
        (
            "corrupt gif",
            Box::new(|| s.post("/predict", "image/gif", &gif_header_only)),
            400,
            "decode",
        ),
        (
            "unsupported format",
            Box::new(|| s.post("/predict", "image/x-icon", &ico())),
            415,
            "unsupported",
        ),
        (
            "decompression bomb",
            Box::new(|| s.post("/predict", "image/png", &bomb)),
            413,
            "pixels",
        ),
        (
            "body too large",
            Box::new(|| s.post("/predict", "image/jpeg", &vec![0xFF; 2 * 1048576])),
            413,
            "limit",
        ),
        (
            "wrong content type",
            Box::new(|| s.post("/predict", "text/plain", &cat)),
            415,
            "Content-Type",
        ),
        (
            "bad top_k",
            Box::new(|| s.post("/predict?top_k=0", "image/jpeg", &cat)),
            400,
            "top_k",
        ),
        (
            "bad multipart",
            Box::new(|| s.post("/predict", "multipart/form-data; boundary=zzz", b"garbage")),
            400,
            "multipart",
        ),
    ];
    for (what, send, status, needle) in cases {
        let r = send();
        assert_eq!(r.status, status, "{what}: {}", r.body);
        let err = r.error();
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "{what}: `{err}` lacks `{needle}`"
        );
        // After each one the server still answers, and answers the same.
        let again = s.predict_multipart("file", "cat.jpg", &cat);
        assert_eq!(again.status, 200, "after {what}: {}", again.body);
        assert_eq!(
            again.json()["predictions"],
            good,
            "after {what} the answer changed"
        );
    }
    // Wrong method and unknown path are JSON too.
    let r = s.agent.get(s.url("/predict")).call().unwrap();
    assert_eq!(r.status(), 405);
    let (status, body) = s.get("/nope");
    assert_eq!(status, 404);
    assert!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("/nope")
    );
    // Errors are counted in the seed's error counter.
    let (_, metrics) = s.get("/metrics");
    let errors = metric(&metrics, "ml_inference_errors_total");
    assert!(errors >= 12.0, "ml_inference_errors_total = {errors}");
}

#[test]
fn health_ready_version_and_metrics() {
    let s = Server::start(&[]);
    let (status, body) = s.get("/health");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({"status": "healthy", "model": "resnet50", "device": "cpu"})
    );
    let (status, body) = s.get("/ready");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    let (status, body) = s.get("/version");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["weights"]["random"], true);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    // On a CPU the server runs the optimised network, not the candle reference.
    assert_eq!(v["implementation"], "cpu-nhwc");
    // The weights' SHA-256 (what sha256sum prints), and not where the file lives.
    let sha: String = {
        use sha2::Digest;
        let bytes = std::fs::read(common::weights()).unwrap();
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(v["weights"]["sha256"], sha.as_str());
    assert!(
        !body.contains(".safetensors"),
        "/version reveals the path: {body}"
    );
    assert!(["avx512", "avx2", "portable"].contains(&v["isa"].as_str().unwrap()));
    assert!(v["max_queue"].as_u64().unwrap() >= 1);
    assert!(
        s.logs().iter().any(|l| l.contains("RANDOM weights")),
        "no warning about random weights"
    );

    s.post("/predict", "image/jpeg", &image("cat.jpg"));
    let (status, m) = s.get("/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&m, "ml_inference_requests_total"), 1.0);
    assert_eq!(metric(&m, "ml_inference_latency_seconds_count"), 1.0);
    assert_eq!(metric(&m, "ml_inference_errors_total"), 0.0);
    assert_eq!(metric(&m, "ml_inference_preprocess_seconds_count"), 1.0);
    assert!(metric(&m, "ml_inference_model_seconds_count") >= 1.0);
    assert!(metric(&m, "ml_inference_model_load_seconds") > 0.0);
    // Nothing admitted now: the depth is back to zero (it never reads -1).
    assert_eq!(metric(&m, "ml_inference_queue_depth"), 0.0);
    assert!(metric(&m, "process_resident_memory_bytes") > 50e6);
    let info = m
        .lines()
        .find(|l| l.starts_with("ml_inference_build_info{"))
        .expect("build_info in /metrics");
    assert!(
        info.contains(r#"device="cpu""#)
            && info.contains(r#"implementation="cpu-nhwc""#)
            && info.ends_with(" 1"),
        "{info}"
    );
    // Preprocess buckets resolve a 1 ms decode; batch buckets reach MAX_BATCH_SIZE's maximum.
    assert!(m.contains(r#"ml_inference_preprocess_seconds_bucket{le="0.001"}"#));
    assert!(m.contains(r#"ml_inference_batch_size_bucket{le="256"}"#));
    for name in [
        "ml_inference_in_flight_requests",
        "ml_inference_queue_depth",
        "ml_inference_batch_size_bucket",
        "ml_inference_queue_seconds_bucket",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
}

#[test]
fn open_inference_protocol_v2() {
    let s = Server::start(&[]);
    assert_eq!(s.get("/v2/health/live").0, 200);
    assert_eq!(s.get("/v2/health/ready").0, 200);
    assert_eq!(s.get("/v2/models/resnet50/ready").0, 200);
    let (status, meta) = s.get("/v2/models/resnet50");
    assert_eq!(status, 200);
    let meta: Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 1000]));
    // One input per model, so a generic client can fill a request from the metadata alone.
    assert_eq!(meta["inputs"].as_array().unwrap().len(), 1);
    assert_eq!(meta["inputs"][0]["datatype"], "BYTES");
    let (_, meta) = s.get("/v2/models/resnet50-preprocessed");
    let meta: Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 3, 224, 224]));
    assert_eq!(s.get("/v2/models/resnet50/versions/1.0/ready").0, 200);
    assert_eq!(s.get("/v2/models/resnet50/versions/7/ready").0, 404);
    assert_eq!(s.get("/v2/models/resnet50/config").0, 200);
    assert_eq!(s.get("/v2/models/other").0, 404);

    let cat = image("cat.jpg");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&cat);
    let seed_top = s.post("/predict", "image/jpeg", &cat).json()["predictions"][0]["class_id"]
        .as_u64()
        .unwrap();

    // BYTES input, two images, raw logits.
    let req = json!({"id": "r1", "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [b64, b64]}]});
    let r = s.post(
        "/v2/models/resnet50/infer",
        "application/json",
        req.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["id"], "r1");
    assert_eq!(v["outputs"][0]["shape"], json!([2, 1000]));
    let logits: Vec<f64> = v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(logits.len(), 2000);
    assert_eq!(
        logits[..1000],
        logits[1000..],
        "same image twice in one batch, different logits"
    );
    let argmax = (0..1000)
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap();
    assert_eq!(argmax as u64, seed_top, "v2 and /predict disagree");

    // Classification extension, as Triton: "score:index:label".
    let req = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}],
                     "outputs": [{"name": "logits", "parameters": {"classification": 3}}]});
    let v = s
        .post(
            "/v2/models/resnet50/infer",
            "application/json",
            req.to_string().as_bytes(),
        )
        .json();
    assert_eq!(v["outputs"][0]["datatype"], "BYTES");
    assert_eq!(v["outputs"][0]["shape"], json!([1, 3]));
    let first = v["outputs"][0]["data"][0].as_str().unwrap();
    let parts: Vec<&str> = first.splitn(3, ':').collect();
    assert_eq!(parts[1].parse::<u64>().unwrap(), seed_top, "{first}");
    assert!(
        (parts[0].parse::<f64>().unwrap() - logits[argmax]).abs() < 1e-3,
        "{first}"
    );

    // FP32 tensor input, to the preprocessed model: zeros, nested data.
    let zeros = json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                   "data": vec![vec![vec![vec![0.0; 224]; 224]; 3]; 1]}]});
    let r = s.post(
        "/v2/models/resnet50-preprocessed/infer",
        "application/json",
        zeros.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["outputs"][0]["shape"], json!([1, 1000]));
    assert_eq!(r.json()["model_name"], "resnet50-preprocessed");
    // The images model says where tensors go.
    let r = s.post(
        "/v2/models/resnet50/infer",
        "application/json",
        zeros.to_string().as_bytes(),
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("-preprocessed"), "{}", r.error());

    // Malformed requests name the field at fault.
    let bad: Vec<(Value, &str, u16)> = vec![
        (json!({"input": []}), "inputs", 400),
        (
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES"}]}),
            "data",
            400,
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1]}]}),
            "datatype",
            400,
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}),
            "inputs[0].data[0]",
            400,
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": [b64]}]}),
            "shape",
            400,
        ),
        (
            json!({"model": "resnet50-preprocessed", "inputs": [{"name": "x", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [1.0, 2.0]}]}),
            "inputs[0].data",
            400,
        ),
        (
            json!({"model": "resnet50-preprocessed", "inputs": [{"name": "x", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": []}]}),
            "inputs[0].shape",
            400,
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1000], "datatype": "BYTES", "data": []}]}),
            "MAX_CLIENT_BATCH",
            413,
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [b64]}], "outputs": [{"name": "probs"}]}),
            "outputs[0].name",
            400,
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [b64]}], "parameters": {"classification": 0}}),
            "classification",
            400,
        ),
    ];
    for (mut req, needle, status) in bad {
        // `model` picks the endpoint (the images model unless said); it is not sent.
        let model = req
            .as_object_mut()
            .unwrap()
            .remove("model")
            .map_or("resnet50".to_owned(), |m| m.as_str().unwrap().to_owned());
        let r = s.post(
            &format!("/v2/models/{model}/infer"),
            "application/json",
            req.to_string().as_bytes(),
        );
        assert_eq!(r.status, status, "{req}: {}", r.body);
        assert!(
            r.error().contains(needle),
            "{req}: `{}` lacks `{needle}`",
            r.error()
        );
    }
    let r = s.post(
        "/v2/models/resnet50/infer",
        "application/json",
        b"{not json",
    );
    assert_eq!(r.status, 400);
    assert!(
        r.error().contains("invalid inference request"),
        "{}",
        r.body
    );
    // A bad image inside v2 is the same clear 400 as on /predict.
    let req = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [base64::engine::general_purpose::STANDARD.encode(b"nope")]}]});
    assert_eq!(
        s.post(
            "/v2/models/resnet50/infer",
            "application/json",
            req.to_string().as_bytes()
        )
        .status,
        400
    );
}

#[test]
fn sigterm_drains_then_exits_zero() {
    let mut s = Server::start(&[("SHUTDOWN_GRACE_SECONDS", "2")]);
    let cat = image("cat.jpg");
    // A request in flight when SIGTERM lands still completes.
    let url = s.url("/predict");
    let agent = s.agent.clone();
    let body = cat.clone();
    let in_flight = std::thread::spawn(move || {
        agent
            .post(url)
            .header("Content-Type", "image/jpeg")
            .send(&body[..])
            .unwrap()
            .status()
            .as_u16()
    });
    std::thread::sleep(Duration::from_millis(20));
    let t0 = Instant::now();
    s.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = s.get("/ready");
    assert_eq!((status, body.as_str()), (503, r#"{"status":"draining"}"#));
    // Answers while draining close their connection, so keep-alive clients move elsewhere.
    let r = s.agent.get(s.url("/health")).call().unwrap();
    assert_eq!(
        r.headers().get("connection").map(|v| v.to_str().unwrap()),
        Some("close")
    );
    // Still serving during the grace period.
    assert_eq!(s.post("/predict", "image/jpeg", &cat).status, 200);
    assert_eq!(in_flight.join().unwrap(), 200);
    let code = loop {
        if let Some(code) = s.child.try_wait().unwrap() {
            break code;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "server did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "exit status {code}");
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "listener closed before the grace period"
    );
}

#[test]
fn overload_is_refused_fast_with_retry_after() {
    let s = Server::start(&[("MAX_QUEUE", "1"), ("MAX_BATCH_SIZE", "1")]);
    let cat = image("cat.jpg");
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (agent, url, body) = (s.agent.clone(), s.url("/predict"), cat.clone());
            std::thread::spawn(move || {
                let t = Instant::now();
                let mut r = agent
                    .post(url)
                    .header("Content-Type", "image/jpeg")
                    .send(&body[..])
                    .unwrap();
                let retry = r.headers().get("retry-after").is_some();
                (
                    r.status().as_u16(),
                    retry,
                    t.elapsed(),
                    r.body_mut().read_to_string().unwrap(),
                )
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    assert!(ok >= 1, "{results:?}");
    assert!(
        !refused.is_empty(),
        "8 concurrent requests with MAX_QUEUE=1 and none refused: {results:?}"
    );
    for r in &refused {
        assert!(r.1, "503 without Retry-After");
        assert!(r.3.contains("capacity"), "{}", r.3);
    }
    assert_eq!(ok + refused.len(), 8, "{results:?}");
    let (_, m) = s.get("/metrics");
    assert_eq!(
        metric(&m, "ml_inference_rejected_total"),
        refused.len() as f64
    );
}

#[test]
fn weights_problems_exit_nonzero_with_one_line() {
    use safetensors::tensor::{Dtype, TensorView};
    let tmp = common::TempDir::new("bad-weights");
    let dir = &tmp.0;
    let good = std::fs::read(common::weights()).unwrap();
    let st = safetensors::SafeTensors::deserialize(&good).unwrap();
    // Rewrites the good weights without `drop` and with `reshape` given a new (zero) shape.
    let rewrite = |path: &std::path::Path, drop: &str, reshape: (&str, Vec<usize>)| {
        let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .filter(|(name, _)| name != drop)
            .map(|(name, view)| {
                if name == reshape.0 {
                    let n: usize = reshape.1.iter().product();
                    (name, reshape.1.clone(), vec![0u8; n * 4])
                } else {
                    (name, view.shape().to_vec(), view.data().to_vec())
                }
            })
            .collect();
        let views: Vec<_> = tensors
            .iter()
            .map(|(n, s, d)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    };
    let missing_tensor = dir.join("missing.safetensors");
    rewrite(&missing_tensor, "fc.bias", ("", vec![]));
    let wrong_shape = dir.join("shape.safetensors");
    rewrite(
        &wrong_shape,
        "",
        ("layer3.2.conv2.weight", vec![256, 256, 1, 1]),
    );
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, &good[..good.len() / 3]).unwrap();
    let absent = dir.join("absent.safetensors");

    let cases = [
        (absent, "cannot read weights"),
        (corrupt, "not a valid safetensors file"),
        (missing_tensor, "tensor `fc.bias`: missing"),
        (
            wrong_shape,
            "tensor `layer3.2.conv2.weight`: expected shape [256, 256, 3, 3], found [256, 256, 1, 1]",
        ),
    ];
    for (path, needle) in cases {
        let out = std::process::Command::new(common::BIN)
            .env("MODEL_PATH", &path)
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("LOG_FORMAT", "text")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", path.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
        assert!(
            lines[0].contains(&path.display().to_string()) && lines[0].contains(needle),
            "{}",
            lines[0]
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
}

/// A metric's value in Prometheus text (the first sample with that exact name).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

fn black_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(w, h)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    assert!(
        out.get_ref().len() < 100_000,
        "the bomb should be small on the wire"
    );
    out.into_inner()
}

/// A minimal Windows icon header: a real image format this server does not decode.
fn ico() -> Vec<u8> {
    let mut v = vec![0, 0, 1, 0, 1, 0, 16, 16, 0, 0, 1, 0, 32, 0];
    v.extend_from_slice(&[0; 64]);
    v
}
