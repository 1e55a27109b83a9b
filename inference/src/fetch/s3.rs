//! `s3://bucket/key` through object_store's S3 client, with the standard AWS credential chain
//! (what `AmazonS3Builder::from_env` reads): `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
//! `AWS_SESSION_TOKEN`; IAM roles for service accounts on EKS (`AWS_ROLE_ARN` +
//! `AWS_WEB_IDENTITY_TOKEN_FILE`, injected by EKS's webhook); EKS Pod Identity and ECS task roles
//! (`AWS_CONTAINER_CREDENTIALS_FULL_URI` / `_RELATIVE_URI`); else the instance profile. Region
//! from `AWS_REGION` / `AWS_DEFAULT_REGION`; an S3-compatible store (MinIO, a test server) from
//! `AWS_ENDPOINT_URL` (`AWS_ALLOW_HTTP=true` for plain http). Signing is object_store's; its
//! own retries are off: the caller's loop retries, with its back-off and its messages.

use std::path::Path;

use futures_util::StreamExt;
use object_store::ObjectStoreExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{ClientConfigKey, RetryConfig};

use super::sink::Sink;
use super::{Failure, FetchArgs};

pub(super) struct Store {
    rt: tokio::runtime::Runtime,
    s3: AmazonS3,
}

impl Store {
    pub(super) fn new(bucket: &str, args: &FetchArgs) -> Result<Store, String> {
        // reqwest's rustls takes the process-wide provider: ring, as the rest of the binary.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if let Some(path) = &args.ca_file {
            let pem =
                std::fs::read(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(format!(
                    "--ca-file {}: no certificate in it",
                    path.display()
                ));
            }
            // The verifier reads the roots from SSL_CERT_FILE when it is set (instead of the
            // system's): the same "trust this CA instead" as for https://. Set here rather than
            // through object_store's client options, which would replace the ones it read from
            // the environment (AWS_ALLOW_HTTP, proxies).
            // SAFETY: `fetch` runs on the main thread before any other thread exists (its
            // runtime is made below), so nothing reads the environment concurrently.
            unsafe { std::env::set_var("SSL_CERT_FILE", path) };
        }
        let ms = |s: f64| format!("{}ms", (s.max(0.001) * 1000.0).round() as u64);
        let s3 = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                ms(args.connect_timeout_seconds),
            )
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                ms(args.transfer_timeout_seconds),
            )
            .with_retry(RetryConfig {
                max_retries: 0,
                ..Default::default()
            })
            .build()
            .map_err(|e| format!("S3 client: {}", chain(&e)))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("S3 client: {e}"))?;
        Ok(Store { rt, s3 })
    }

    /// One GET of `key` into `part`: (bytes, sha256).
    pub(super) fn get(&self, key: &str, part: &Path) -> Result<(u64, [u8; 32]), Failure> {
        self.rt.block_on(async {
            let got = self
                .s3
                .get(&object_store::path::Path::from(key))
                .await
                .map_err(classify)?;
            let size = got.meta.size;
            let mut stream = got.into_stream();
            let mut sink = Sink::create(part)?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| sink.broke_off(e))?;
                sink.write(&chunk)?;
            }
            sink.finish(Some(size))
        })
    }
}

/// object_store's error → give up or try again.
fn classify(e: object_store::Error) -> Failure {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => Failure::Fatal("S3 404: no such key".into()),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => Failure::Fatal(
            "S3 403: access denied (check the credentials: the IAM role of the ServiceAccount, \
             AWS_* variables or the instance profile, and the bucket policy)"
                .into(),
        ),
        // Network errors, timeouts, 5xx, throttling, and credentials that could not be had
        // yet (the token endpoint may answer later).
        other => Failure::Retry(chain(&other)),
    }
}

/// The error and its causes on one line (object_store's own text ends at "builder error").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
