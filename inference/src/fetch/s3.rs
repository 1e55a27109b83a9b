//! `s3://bucket/key` through object_store's S3 client, with the standard AWS credential chain
//! (what `AmazonS3Builder::from_env` reads): `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
//! `AWS_SESSION_TOKEN`; IAM roles for service accounts on EKS (`AWS_ROLE_ARN` +
//! `AWS_WEB_IDENTITY_TOKEN_FILE`, injected by EKS's webhook); EKS Pod Identity and ECS task roles
//! (`AWS_CONTAINER_CREDENTIALS_FULL_URI` / `_RELATIVE_URI`); else the instance profile. Region
//! from `AWS_REGION` / `AWS_DEFAULT_REGION`; an S3-compatible store (MinIO, a test server) from
//! `AWS_ENDPOINT_URL` (`AWS_ALLOW_HTTP=true` for plain http). Signing is object_store's; its
//! own retries are off: the caller's loop retries, with its back-off and its messages. TLS roots:
//! `--ca-file`'s, else the built-in Mozilla roots, in addition to the system's.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::ObjectStoreExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{Certificate, ClientOptions, RetryConfig};

use super::sink::{Failure, Sink};
use crate::config::FetchArgs;

pub(super) struct Store {
    rt: tokio::runtime::Runtime,
    s3: AmazonS3,
}

impl Store {
    pub(super) fn new(bucket: &str, args: &FetchArgs) -> Result<Store, String> {
        // reqwest's rustls takes the process-wide provider: ring, as the rest of the binary.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // The roots to trust: --ca-file's, else the Mozilla roots built in (as for https://),
        // added to the system's. Built in because a distroless image may carry no CA bundle,
        // and the verifier refuses to start with no root at all.
        let roots = match &args.ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
                let certs = Certificate::from_pem_bundle(&pem)
                    .map_err(|e| format!("--ca-file {}: {}", path.display(), chain(&e)))?;
                if certs.is_empty() {
                    return Err(format!(
                        "--ca-file {}: no certificate in it",
                        path.display()
                    ));
                }
                certs
            }
            None => webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("S3 client: {}", chain(&e)))?,
        };
        let secs = |s: f64| Duration::from_secs_f64(s.max(0.001));
        // Client options replace the ones from_env read: AWS_ALLOW_HTTP is carried over here.
        let allow_http =
            std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        let mut client = ClientOptions::new()
            .with_allow_http(allow_http)
            .with_connect_timeout(secs(args.connect_timeout_seconds))
            .with_timeout(secs(args.transfer_timeout_seconds));
        for c in roots {
            client = client.with_root_certificate(c);
        }
        let s3 = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_client_options(client)
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
                let chunk = chunk.map_err(|e| sink.broke_off(chain(&e)))?;
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
