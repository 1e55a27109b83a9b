//! `inference-server fetch`: the weights from where users keep them, for an init container that
//! runs before the server (the server itself only reads a local file).
//!
//! Sources: `https://host/path`, `hf://org/repo[@revision]/path/in/repo` (Hugging Face's
//! `resolve` URL; `HF_ENDPOINT` points elsewhere, `HF_TOKEN` is sent as a bearer token) and
//! `s3://bucket/key` (object_store's S3 client with the standard AWS credential chain: see
//! [`s3`]). The body streams to
//! `<out>.part` beside the output (constant memory) while its sha256 is computed; then the
//! length (`Content-Length`), the sha256 (when given) and the file itself (ResNet50 safetensors
//! with every tensor in place, as the server loads it) are checked, and only then is it renamed
//! to `<out>`: a half-written or wrong file never sits where the server looks.
//!
//! Network errors, timeouts, a cut-off body and 5xx/429 answers are retried with doubling pauses;
//! any other 4xx, a TLS failure, a wrong checksum or a file that is not the model fail at once. A
//! failure is one line naming the URI, with its query string and any user:password removed (a
//! pre-signed URL's signature lives there); the token is never printed.

mod s3;
mod sink;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::config::FetchArgs;
use sink::{Failure, Sink};

/// Where the file is.
#[derive(Debug, PartialEq)]
pub enum Source {
    /// GET this URL, with this bearer token.
    Http { url: String, token: Option<String> },
    /// This object of this bucket.
    S3 { bucket: String, key: String },
}

/// `uri` → where to fetch it. `hf_token` goes with `hf://` only.
pub fn resolve(uri: &str, hf_endpoint: &str, hf_token: Option<&str>) -> Result<Source, String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| "not a URI (expected https://…, hf://… or s3://…)".to_string())?;
    match scheme {
        "https" => Ok(Source::Http {
            url: uri.to_string(),
            token: None,
        }),
        "http" => Err(
            "plain http is refused: the weights decide every answer the server gives; use https"
                .into(),
        ),
        "hf" => {
            // org/repo[@revision]/path…
            let mut parts = rest.splitn(3, '/');
            let (org, repo, path) = match (parts.next(), parts.next(), parts.next()) {
                (Some(o), Some(r), Some(p)) if !o.is_empty() && !r.is_empty() && !p.is_empty() => {
                    (o, r, p)
                }
                _ => {
                    return Err(
                        "hf:// needs org/repo/file (hf://org/repo[@revision]/file.safetensors)"
                            .into(),
                    );
                }
            };
            let (repo, revision) = match repo.split_once('@') {
                Some((r, rev)) if !r.is_empty() && !rev.is_empty() => (r, rev),
                Some(_) => return Err("hf:// revision after @ is empty".into()),
                None => (repo, "main"),
            };
            Ok(Source::Http {
                url: format!(
                    "{}/{org}/{repo}/resolve/{revision}/{path}",
                    hf_endpoint.trim_end_matches('/')
                ),
                token: hf_token.filter(|t| !t.is_empty()).map(str::to_string),
            })
        }
        "s3" => match rest.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() && !key.ends_with('/') => {
                Ok(Source::S3 {
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                })
            }
            _ => Err(
                "s3:// needs a bucket and an object key (s3://bucket/path/model.safetensors)"
                    .into(),
            ),
        },
        other => Err(format!(
            "unknown scheme {other}:// (https://, hf://, s3://)"
        )),
    }
}

/// `uri` without what must not be logged: `user:password@` and the query string.
pub fn redact(uri: &str) -> String {
    let no_query = uri.split(['?', '#']).next().unwrap_or(uri);
    match no_query.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => no_query.to_string(),
    }
}

fn agent(args: &FetchArgs) -> Result<ureq::Agent, String> {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        let certs = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--ca-file {}: no certificate in it",
                path.display()
            ));
        }
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.001));
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(secs(args.connect_timeout_seconds)))
        .timeout_recv_response(Some(secs(args.connect_timeout_seconds)))
        .timeout_recv_body(Some(secs(args.transfer_timeout_seconds)))
        .tls_config(tls.build())
        .build()
        .into())
}

/// One GET into `part`: (bytes, sha256).
fn try_once(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    part: &Path,
) -> Result<(u64, [u8; 32]), Failure> {
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let resp = req.call().map_err(|e| match e {
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::BadUri(_) => {
            Failure::Fatal(format!("{e}"))
        }
        // rustls reports a certificate it cannot verify as invalid data: the same next time.
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            Failure::Fatal(format!("TLS: {io}"))
        }
        e => Failure::Retry(format!("{e}")),
    })?;
    let status = resp.status().as_u16();
    match status {
        200 => {}
        429 | 500..=599 => return Err(Failure::Retry(format!("HTTP {status}"))),
        401 | 403 => {
            return Err(Failure::Fatal(format!(
                "HTTP {status}: access denied (check the credentials: HF_TOKEN for hf://, the URL's signature for https://)"
            )));
        }
        404 => return Err(Failure::Fatal("HTTP 404: not found".into())),
        s => return Err(Failure::Fatal(format!("HTTP {s}"))),
    }
    let expected: Option<u64> = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut body = resp.into_body().into_reader();
    let mut sink = Sink::create(part)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(sink.broke_off(e)),
        };
        sink.write(&buf[..n])?;
    }
    sink.finish(expected)
}

/// Downloads, checks and places the file; `Err` is the one-line reason (without the URI).
pub fn fetch(args: &FetchArgs, hf_token: Option<&str>) -> Result<String, String> {
    let src = resolve(&args.uri, &args.hf_endpoint, hf_token)?;
    let want = args
        .sha256
        .as_deref()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty());
    if let Some(w) = &want
        && (w.len() != 64 || !w.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(format!("--sha256 {w:?} is not 64 hex digits"));
    }
    let dir = match args.out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "the output directory {} does not exist",
            dir.display()
        ));
    }
    let mut part = args.out.clone().into_os_string();
    part.push(".part");
    let part = PathBuf::from(part);
    // One client for every try: the HTTP agent, or the S3 store with its credentials.
    enum Client {
        Http(ureq::Agent, String, Option<String>),
        S3(s3::Store, String),
    }
    let client = match src {
        Source::Http { url, token } => Client::Http(agent(args)?, url, token),
        Source::S3 { bucket, key } => Client::S3(s3::Store::new(&bucket, args)?, key),
    };
    let mut pause = Duration::from_secs_f64(args.backoff_seconds.max(0.0));
    let mut attempt = 1;
    let (bytes, digest) = loop {
        let tried = match &client {
            Client::Http(agent, url, token) => try_once(agent, url, token.as_deref(), &part),
            Client::S3(store, key) => store.get(key, &part),
        };
        match tried {
            Ok(done) => break done,
            Err(Failure::Fatal(why)) => {
                let _ = std::fs::remove_file(&part);
                return Err(why);
            }
            Err(Failure::Retry(why)) if attempt < args.attempts => {
                eprintln!(
                    "inference-server fetch: {}: try {attempt} of {} failed ({why}); again in {:.1} s",
                    redact(&args.uri),
                    args.attempts,
                    pause.as_secs_f64()
                );
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(60));
                attempt += 1;
            }
            Err(Failure::Retry(why)) => {
                let _ = std::fs::remove_file(&part);
                return Err(format!("{why} (gave up after {attempt} tries)"));
            }
        }
    };
    let got = crate::model::weights::hex(&digest);
    let checked = (|| {
        if let Some(w) = &want
            && *w != got
        {
            return Err(format!("sha256 {got}, expected {w}"));
        }
        // The file the server will load, checked as it will load it.
        crate::model::weights::load(&part, &candle_core::Device::Cpu)
            .map_err(|e| format!("not ResNet50 safetensors: {e}"))?;
        std::fs::rename(&part, &args.out)
            .map_err(|e| format!("cannot move it to {}: {e}", args.out.display()))
    })();
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    Ok(format!(
        "fetched {} to {} ({bytes} bytes, sha256 {got})",
        redact(&args.uri),
        args.out.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_the_schemes() {
        let hf = "https://huggingface.co";
        assert_eq!(
            resolve(
                "https://m.example/w.safetensors?X-Amz-Signature=1",
                hf,
                Some("t")
            )
            .unwrap(),
            Source::Http {
                url: "https://m.example/w.safetensors?X-Amz-Signature=1".into(),
                token: None
            }
        );
        assert_eq!(
            resolve(
                "hf://timm/resnet50.tv_in1k/model.safetensors",
                hf,
                Some("t")
            )
            .unwrap(),
            Source::Http {
                url: "https://huggingface.co/timm/resnet50.tv_in1k/resolve/main/model.safetensors"
                    .into(),
                token: Some("t".into())
            }
        );
        assert_eq!(
            resolve(
                "hf://org/repo@v1.0/sub/dir/f.safetensors",
                "http://127.0.0.1:9/",
                None
            )
            .unwrap(),
            Source::Http {
                url: "http://127.0.0.1:9/org/repo/resolve/v1.0/sub/dir/f.safetensors".into(),
                token: None
            }
        );
        assert_eq!(
            resolve("s3://models/resnet50/v1/model.safetensors", hf, Some("t")).unwrap(),
            Source::S3 {
                bucket: "models".into(),
                key: "resnet50/v1/model.safetensors".into()
            }
        );
        for (bad, why) in [
            ("http://m.example/w", "plain http"),
            ("s3://bucket", "bucket and an object key"),
            ("s3:///key", "bucket and an object key"),
            ("s3://bucket/dir/", "bucket and an object key"),
            ("ftp://x/y", "unknown scheme ftp"),
            ("/models/w.safetensors", "not a URI"),
            ("hf://org/repo", "org/repo/file"),
            ("hf://org/repo@/f", "revision"),
        ] {
            let e = resolve(bad, hf, None).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn redacts_credentials_and_signatures() {
        assert_eq!(
            redact("https://user:secret@m.example/a/b.safetensors?X-Amz-Signature=abc"),
            "https://m.example/a/b.safetensors"
        );
        assert_eq!(redact("hf://org/repo@rev/f#frag"), "hf://org/repo@rev/f");
        assert_eq!(redact("https://m.example"), "https://m.example");
    }
}
