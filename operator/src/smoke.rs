//! The blue/green smoke request: one real photo POSTed to `/predict` through the preview
//! Service before the Service moves to a new colour. Readiness only says the model loaded; this
//! says the new pods answer a prediction the way clients will ask for one.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A real photo (the project's test cat, 35 KB), so the new pods decode, resize and classify.
const PHOTO: &[u8] = include_bytes!("../assets/smoke-cat.jpg");
/// A prediction answer is a few hundred bytes; more is not ours.
const MAX_ANSWER: usize = 64 * 1024;

/// What a passing smoke request saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passed {
    /// The top class the new pods answered.
    pub top: String,
    /// The `model_version` they report.
    pub model_version: String,
}

/// POSTs the photo to `http://addr/predict` within `timeout`; `Err` is one line saying what
/// went wrong.
pub async fn predict(addr: SocketAddr, timeout: Duration) -> Result<Passed, String> {
    match tokio::time::timeout(timeout, send(addr)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "POST http://{addr}/predict: no answer within {}s",
            timeout.as_secs()
        )),
    }
}

async fn send(addr: SocketAddr) -> Result<Passed, String> {
    let url = format!("http://{addr}/predict");
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("POST {url}: connecting: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let conn = tokio::spawn(conn);
    let request = Request::post("/predict")
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "image/jpeg")
        .body(Full::new(Bytes::from_static(PHOTO)))
        .map_err(|e| format!("POST {url}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("POST {url}: {e}"));
    let result = match response {
        Ok(response) => {
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("POST {url}: reading the answer: {e}"));
            body.and_then(|body| judge(&url, status.as_u16(), &body))
        }
        Err(e) => Err(e),
    };
    conn.abort();
    result
}

/// A 200 with at least one prediction passes; anything else fails, quoting the answer.
fn judge(url: &str, status: u16, body: &[u8]) -> Result<Passed, String> {
    let text = String::from_utf8_lossy(body);
    let short: String = text.chars().take(200).collect();
    if status != 200 {
        return Err(format!("POST {url}: HTTP {status}: {short}"));
    }
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("POST {url}: the answer is not JSON ({e}): {short}"))?;
    let top = v["predictions"]
        .as_array()
        .and_then(|p| p.first())
        .and_then(|p| p["class"].as_str().or_else(|| p["label"].as_str()))
        .ok_or_else(|| format!("POST {url}: the answer has no predictions: {short}"))?;
    Ok(Passed {
        top: top.to_string(),
        model_version: v["model_version"].as_str().unwrap_or("").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_prediction_passes() {
        let ok = br#"{"predictions":[{"class":"tabby","probability":0.5}],"model_version":"2"}"#;
        assert_eq!(
            judge("u", 200, ok),
            Ok(Passed {
                top: "tabby".into(),
                model_version: "2".into()
            })
        );
        let e = judge("u", 503, br#"{"error":"model_loading"}"#).unwrap_err();
        assert!(e.contains("HTTP 503") && e.contains("model_loading"), "{e}");
        let e = judge("u", 200, b"<html>").unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        let e = judge("u", 200, br#"{"predictions":[]}"#).unwrap_err();
        assert!(e.contains("no predictions"), "{e}");
    }

    #[tokio::test]
    async fn nobody_listening_fails_in_one_line() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = predict(addr, Duration::from_secs(5)).await.unwrap_err();
        assert!(
            e.starts_with(&format!("POST http://{addr}/predict: connecting")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (_conn, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let e = predict(addr, Duration::from_millis(300)).await.unwrap_err();
        assert!(e.contains("no answer within"), "{e}");
        hold.abort();
    }
}
