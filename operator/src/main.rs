//! The operator process: connect (KUBECONFIG or in-cluster), serve /healthz /readyz /metrics,
//! wait for the CRD, take the leader lease, run the controller until SIGTERM, release the lease.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use inference_operator::builders::{self, Config};
use inference_operator::controller::{self, RunOptions, Settings};
use inference_operator::crd::InferenceService;
use inference_operator::http::{self, Health};
use inference_operator::leader::{self, LeaderConfig, LeaderElector, Stop};
use inference_operator::metrics::Metrics;
use inference_operator::validate::Policy;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// Kubernetes operator for InferenceService (serving.inference-server.dev/v1alpha1).
#[derive(Parser, Debug)]
#[command(name = "inference-operator", version, about)]
struct Args {
    /// Inference server image for InferenceServices without spec.image.
    #[arg(long, env = "DEFAULT_INFERENCE_IMAGE", default_value_t = builders::default_image())]
    default_image: String,

    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,

    /// Address of the /healthz, /readyz and /metrics server.
    #[arg(long, env = "OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,

    /// Cluster DNS domain used in status.url.
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,

    /// Elect a leader through a coordination.k8s.io Lease, so that several replicas are safe.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,

    /// Name of the leader Lease.
    #[arg(
        long,
        env = "LEADER_ELECTION_LEASE",
        default_value = "inference-operator"
    )]
    lease_name: String,

    /// Namespace of the leader Lease (default: the operator's own namespace, else the
    /// kubeconfig's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,

    /// Identity base for the lease and events (default: $POD_NAME, else the hostname).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// InferenceServices reconciled at the same time.
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,

    /// Image prefixes that `spec.image` must start with, comma-separated (e.g.
    /// `123456789012.dkr.ecr.us-east-1.amazonaws.com/`). Empty: any image.
    #[arg(long, env = "ALLOWED_IMAGE_PREFIXES", value_delimiter = ',')]
    allowed_image_prefixes: Vec<String>,

    /// ServiceAccounts that `spec.serviceAccountName` may name, comma-separated (`default` is
    /// always allowed). Empty: any.
    #[arg(long, env = "ALLOWED_SERVICE_ACCOUNTS", value_delimiter = ',')]
    allowed_service_accounts: Vec<String>,

    /// Move InferenceServices without spec.image to this operator's default image now. Off:
    /// each keeps the default image it runs until its pod template changes, so that an operator
    /// upgrade does not roll out every InferenceService at once.
    #[arg(long, env = "UPGRADE_DEFAULT_IMAGE", default_value_t = false, action = clap::ArgAction::Set)]
    upgrade_default_image: bool,

    /// Log format; the filter comes from RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            // The reconcile span: namespace, name and generation of the object.
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

/// The list without empty entries (an empty env var means "no list").
fn non_empty(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// A `Send + Sync` future that completes once a stop is requested.
fn stopped(
    mut rx: watch::Receiver<Option<Stop>>,
) -> impl Future<Output = ()> + Send + Sync + 'static {
    let handle = tokio::spawn(async move {
        let _ = rx.wait_for(|s| s.is_some()).await;
    });
    async move {
        let _ = handle.await;
    }
}

/// First SIGTERM/Ctrl-C: graceful stop. Second: exit at once.
fn spawn_signal_handler(stop_tx: watch::Sender<Option<Stop>>) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        for n in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            if n == 0 {
                tracing::info!("shutdown requested: finishing in-flight reconciles");
                stop_tx.send_if_modified(|s| {
                    if s.is_none() {
                        *s = Some(Stop::Signal);
                        true
                    } else {
                        false
                    }
                });
            } else {
                tracing::warn!("second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
}

/// Waits until the CRD is served. Retries (with a hint in the log) instead of crash-looping.
/// Lists in the watched namespace only, so that a namespaced Role is enough.
async fn wait_for_crd(
    client: &Client,
    namespace: Option<&str>,
    health: &Health,
    stop: &watch::Receiver<Option<Stop>>,
) -> bool {
    let api: Api<InferenceService> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut delay = Duration::from_secs(1);
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return true,
            Err(kube::Error::Api(s)) if s.code == 404 => tracing::error!(
                "the InferenceService CRD is not installed: kubectl apply --server-side -f crds/ (retrying)"
            ),
            Err(kube::Error::Api(s)) if s.code == 403 => tracing::error!(
                error = %s.message,
                "not allowed to list InferenceServices: check the operator's RBAC (retrying)"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot list InferenceServices (retrying)"),
        }
        health.set_ready(false);
        let mut stop = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| s.is_some()) => return false,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let metrics = Arc::new(Metrics::default());
    let health = Health::new(metrics.clone());
    let (stop_tx, stop_rx) = watch::channel::<Option<Stop>>(None);
    spawn_signal_handler(stop_tx.clone());

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %args.listen, "serving /healthz, /readyz and /metrics");
    let http_task = tokio::spawn(http::serve(
        listener,
        health.clone(),
        stopped(stop_rx.clone()),
    ));

    let client = Client::try_default().await?;
    let namespace = args.namespace.clone().filter(|n| !n.is_empty());
    if !wait_for_crd(&client, namespace.as_deref(), &health, &stop_rx).await {
        return Ok(ExitCode::SUCCESS);
    }
    health.set_ready(true);

    let base = args
        .identity
        .clone()
        .or_else(hostname)
        .unwrap_or_else(|| builders::MANAGER.into());
    let identity = leader::identity(&base);
    let settings = Settings {
        config: Config {
            default_image: args.default_image.clone(),
            cluster_domain: args.cluster_domain.clone(),
        },
        policy: Policy {
            allowed_image_prefixes: non_empty(&args.allowed_image_prefixes),
            allowed_service_accounts: non_empty(&args.allowed_service_accounts),
        },
        upgrade_default_image: args.upgrade_default_image,
    };
    tracing::info!(%identity, default_image = %settings.config.default_image, namespace = ?namespace, policy = ?settings.policy, "starting");

    let holder = if args.leader_election {
        let ns = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let cfg = LeaderConfig::new(&args.lease_name, &ns, &identity);
        let mut elector = LeaderElector::new(Api::namespaced(client.clone(), &ns), cfg);
        tracing::info!(lease = %args.lease_name, namespace = %ns, "waiting for the leader lease");
        let Some(acquired_at) = elector.acquire(&mut stop_rx.clone()).await else {
            let _ = http_task.await;
            return Ok(ExitCode::SUCCESS);
        };
        metrics.set_leader(true);
        let tx = stop_tx.clone();
        // A lost lease ends the process at once, without waiting for in-flight reconciles: a
        // standby may lead as soon as the lease expires, and no write of ours may follow.
        let mut lost = stop_rx.clone();
        tokio::spawn(async move {
            if lost.wait_for(|s| *s == Some(Stop::LostLease)).await.is_ok() {
                tracing::error!(
                    "lost the leader lease: exiting now so that a fresh process can rejoin the election"
                );
                std::process::exit(1);
            }
        });
        Some(tokio::spawn(async move {
            let why = elector.hold(&tx, acquired_at).await;
            (elector, why)
        }))
    } else {
        metrics.set_leader(true);
        None
    };

    controller::run(
        client.clone(),
        settings,
        metrics.clone(),
        health.clone(),
        identity.clone(),
        RunOptions {
            namespace,
            concurrency: args.concurrency,
        },
        stopped(stop_rx.clone()),
    )
    .await;
    metrics.set_leader(false);
    health.set_ready(false);

    let why = *stop_rx.borrow();
    if why.is_none() {
        tracing::error!("the controller stopped unexpectedly");
        stop_tx.send_replace(Some(Stop::Signal));
    }
    if let Some(holder) = holder {
        let (mut elector, held) = holder.await?;
        if held == Stop::Signal {
            elector.release().await;
        }
    }
    let _ = http_task.await;
    Ok(match why {
        Some(Stop::Signal) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Some(Stop::LostLease) => {
            tracing::error!(
                "lost the leader lease: exiting so that a fresh process can rejoin the election"
            );
            ExitCode::FAILURE
        }
        None => ExitCode::FAILURE,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_format);
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "fatal");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
        let a = Args::try_parse_from([
            "inference-operator",
            "--leader-election",
            "false",
            "--namespace",
            "ml",
        ])
        .unwrap();
        assert!(!a.leader_election);
        assert_eq!(a.namespace.as_deref(), Some("ml"));
        assert!(a.default_image.contains("inference-server"));
        assert!(a.allowed_image_prefixes.is_empty() && !a.upgrade_default_image);
        let a = Args::try_parse_from([
            "inference-operator",
            "--allowed-image-prefixes",
            "ecr.example/ml/,ghcr.io/inference-server/",
            "--allowed-service-accounts",
            "inference",
        ])
        .unwrap();
        assert_eq!(
            a.allowed_image_prefixes,
            ["ecr.example/ml/", "ghcr.io/inference-server/"]
        );
        assert_eq!(a.allowed_service_accounts, ["inference"]);
    }
}
