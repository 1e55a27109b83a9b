//! `inference-server fetch`: the weights from where users keep them, for an init container that
//! runs before the server (the server itself only reads a local file).
//!
//! Sources: `https://host/path` and `hf://org/repo[@revision]/path/in/repo` (Hugging Face's
//! `resolve` URL; `HF_ENDPOINT` points elsewhere, `HF_TOKEN` is sent as a bearer token). `s3://`
//! is recognised and refused for now: it needs the AWS credential chain. The body streams to
//! `<out>.part` beside the output (constant memory) while its sha256 is computed; then the
//! length (`Content-Length`), the sha256 (when given) and the file itself (ResNet50 safetensors
//! with every tensor in place, as the server loads it) are checked, and only then is it renamed
//! to `<out>`: a half-written or wrong file never sits where the server looks.
//!
//! Network errors, timeouts, a cut-off body and 5xx/429 answers are retried with doubling pauses;
//! any other 4xx, a TLS failure, a wrong checksum or a file that is not the model fail at once. A
//! failure is one line naming the URI, with its query string and any user:password removed (a
//! pre-signed URL's signature lives there); the token is never printed.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use crate::config::FetchArgs;

/// Where to GET the file, and the bearer token to send.
#[derive(Debug, PartialEq)]
pub struct Source {
    pub url: String,
    pub token: Option<String>,
}

/// `uri` → the URL to fetch. `hf_token` goes with `hf://` only.
pub fn resolve(uri: &str, hf_endpoint: &str, hf_token: Option<&str>) -> Result<Source, String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| "not a URI (expected https://… or hf://…)".to_string())?;
    match scheme {
        "https" => Ok(Source {
            url: uri.to_string(),
            token: None,
        }),
        "http" => Err("plain http is refused: the weights decide every answer the server gives; use https".into()),
        "hf" => {
            // org/repo[@revision]/path…
            let mut parts = rest.splitn(3, '/');
            let (org, repo, path) = match (parts.next(), parts.next(), parts.next()) {
                (Some(o), Some(r), Some(p)) if !o.is_empty() && !r.is_empty() && !p.is_empty() => (o, r, p),
                _ => return Err("hf:// needs org/repo/file (hf://org/repo[@revision]/file.safetensors)".into()),
            };
            let (repo, revision) = match repo.split_once('@') {
                Some((r, rev)) if !r.is_empty() && !rev.is_empty() => (r, rev),
                Some(_) => return Err("hf:// revision after @ is empty".into()),
                None => (repo, "main"),
            };
            Ok(Source {
                url: format!(
                    "{}/{org}/{repo}/resolve/{revision}/{path}",
                    hf_endpoint.trim_end_matches('/')
                ),
                token: hf_token.filter(|t| !t.is_empty()).map(str::to_string),
            })
        }
        "s3" => Err("s3:// is not supported by this version yet (it needs the AWS credential chain); use a pre-signed https:// URL".into()),
        other => Err(format!("unknown scheme {other}:// (https://, hf://)")),
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

/// How a try ended badly.
#[derive(Debug)]
enum Failure {
    /// Worth another try (network, timeout, cut-off body, 5xx/429).
    Retry(String),
    /// Trying again would give the same answer.
    Fatal(String),
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
fn try_once(agent: &ureq::Agent, src: &Source, part: &Path) -> Result<(u64, [u8; 32]), Failure> {
    let mut req = agent.get(&src.url);
    if let Some(t) = &src.token {
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
    let file = std::fs::File::create(part)
        .map_err(|e| Failure::Fatal(format!("cannot write {}: {e}", part.display())))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                return Err(Failure::Retry(format!(
                    "transfer broke off after {total} bytes: {e}"
                )));
            }
        };
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Failure::Fatal(format!("cannot write {}: {e}", part.display())))?;
        total += n as u64;
    }
    if let Some(len) = expected
        && len != total
    {
        return Err(Failure::Retry(format!("truncated: {total} of {len} bytes")));
    }
    let file = out
        .into_inner()
        .map_err(|e| Failure::Fatal(format!("cannot write {}: {e}", part.display())))?;
    file.sync_all()
        .map_err(|e| Failure::Fatal(format!("cannot write {}: {e}", part.display())))?;
    Ok((total, hash.finalize().into()))
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
    let agent = agent(args)?;
    let mut pause = Duration::from_secs_f64(args.backoff_seconds.max(0.0));
    let mut attempt = 1;
    let (bytes, digest) = loop {
        match try_once(&agent, &src, &part) {
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
            Source {
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
            Source {
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
            .unwrap()
            .url,
            "http://127.0.0.1:9/org/repo/resolve/v1.0/sub/dir/f.safetensors"
        );
        for (bad, why) in [
            ("http://m.example/w", "plain http"),
            ("s3://bucket/key", "s3:// is not supported"),
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
