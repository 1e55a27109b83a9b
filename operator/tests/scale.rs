//! Benchmark (ignored in `make test`; run by `make bench-operator`): the operator with many
//! InferenceServices on a private control plane (no node: pods stay Pending).
//!
//! Prints, for the operator binary under test and, when `BASELINE_OPERATOR_BIN` is set, for a
//! baseline binary in the same run (each on a fresh namespace of the same cluster):
//! - time from the first create until every object has its children and a status,
//! - the operator's API requests per second at rest, counted from the API server's audit log
//!   (the operator runs as its own ServiceAccount),
//! - its RSS at rest,
//! - the latency of a spec change on one object (patch → new Deployment template and
//!   `status.observedGeneration`), while the others sit idle.
//!
//! `SCALE_OBJECTS` (default 1000) sets the count. Goals (issue 13): < 60 s, < 1 request/s,
//! < 150 MiB, < 1 s.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use futures::{StreamExt, stream};
use inference_operator::crd::InferenceService;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use serde_json::{Value, json};

fn objects() -> usize {
    std::env::var("SCALE_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn audit_log() -> PathBuf {
    tmp_dir().join("scale-audit.log")
}

/// Starts this binary's cluster with an audit log of every request's metadata.
fn audited_cluster() -> &'static test_cluster::Cluster {
    let policy = tmp_dir().join("scale-audit-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
    )
    .unwrap();
    test_cluster::Cluster::shared(|| {
        let _ = std::fs::remove_file(audit_log());
        test_cluster::Options {
            state_root: Some(tmp_dir()),
            apiserver_args: vec![
                format!("--audit-policy-file={}", policy.display()),
                format!("--audit-log-path={}", audit_log().display()),
            ],
            ..Default::default()
        }
    })
}

/// Audit events by `user` at or after `since` (RFC 3339 compares as text at equal precision).
fn requests_by(user: &str, since: &str, until: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(audit_log()).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["user"]["username"] == user)
        .filter(|e| {
            let t = e["stageTimestamp"].as_str().unwrap_or("");
            t >= since && t < until
        })
        .map(|e| {
            (
                e["verb"].as_str().unwrap_or("").to_string(),
                e["objectRef"]["resource"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

fn rss_mib(pid: i32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Figures {
    create_all: String,
    rest_requests_per_s: f64,
    rest_requests: usize,
    rss_mib: f64,
    peak_rss_mib: f64,
    change_ms: Vec<f64>,
}

/// Watches the InferenceServices and the Deployments' metadata until `n` of each exist and every
/// InferenceService has a current status, or `limit` passes; returns how many had a status.
async fn watch_until_reconciled(
    isvcs: &Api<InferenceService>,
    deployments: &Api<PartialObjectMeta<Deployment>>,
    n: usize,
    limit: Duration,
) -> usize {
    use kube::runtime::watcher::{self, Event};
    use std::collections::{HashMap, HashSet};
    enum Seen {
        Isvc(Box<Event<InferenceService>>),
        Dep(Box<Event<PartialObjectMeta<Deployment>>>),
    }
    let a = watcher::watcher(isvcs.clone(), Default::default())
        .map(|e| e.map(|e| Seen::Isvc(Box::new(e))));
    let b = watcher::watcher(deployments.clone(), Default::default())
        .map(|e| e.map(|e| Seen::Dep(Box::new(e))));
    let mut events = std::pin::pin!(futures::stream::select(a, b));
    let mut current: HashMap<String, bool> = HashMap::new();
    let mut deps: HashSet<String> = HashSet::new();
    let deadline = tokio::time::Instant::now() + limit;
    let done = |current: &HashMap<String, bool>| current.values().filter(|c| **c).count();
    loop {
        if done(&current) == n && deps.len() == n {
            return n;
        }
        let next = match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(next)) => next,
            _ => return done(&current),
        };
        match next {
            Ok(Seen::Isvc(e)) => match *e {
                Event::Apply(i) | Event::InitApply(i) => {
                    current.insert(i.name_any(), observed_current(&i));
                }
                Event::Delete(i) => {
                    current.remove(&i.name_any());
                }
                _ => {}
            },
            Ok(Seen::Dep(e)) => match *e {
                Event::Apply(d) | Event::InitApply(d) => {
                    deps.insert(d.name_any());
                }
                Event::Delete(d) => {
                    deps.remove(&d.name_any());
                }
                _ => {}
            },
            _ => {}
        }
    }
}

async fn measure(label: &str, bin: Option<PathBuf>, n: usize) -> Figures {
    let mut env = Env::new(audited_cluster(), "scale").await;
    let ns = env.ns.clone();
    let kubeconfig = service_account_kubeconfig(&env).await;
    grant_cluster_wide(&env, &format!("scale-{ns}")).await;
    let user = format!("system:serviceaccount:{ns}:operator");
    // SCALE_OPERATOR_ARGS: extra flags for both operators (e.g. `--concurrency 16`).
    let extra = std::env::var("SCALE_OPERATOR_ARGS").unwrap_or_default();
    let mut flags = vec!["--leader-election", "false"];
    flags.extend(extra.split_whitespace());
    let op = Operator::start_bin(bin, kubeconfig, label, Some(&ns), &flags);
    env.logs.push(op.log.clone());
    env.wait("the operator ready", Duration::from_secs(60), || async {
        (op.http_get("/readyz")?.0 == 200).then_some(())
    })
    .await;

    // Create n objects, 16 requests in flight (a `kubectl apply -f dir/` is slower).
    let t0 = Instant::now();
    let spec = |i: usize| {
        json!({
            "model": {"name": "resnet50", "version": format!("{}", i % 7)},
            "replicas": 1,
        })
    };
    stream::iter(0..n)
        .map(|i| {
            let env = &env;
            let spec = spec(i);
            async move { env.apply_isvc(&format!("m{i:04}"), spec).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let created_s = t0.elapsed().as_secs_f64();
    let isvcs = env.isvcs();
    let deployments: Api<Deployment> = env.api();
    // Watched, not polled: listing 1000 objects twice a second loads the API server the
    // operator is measured on. A baseline that never gets there is a figure, not a panic.
    let limit = Duration::from_secs(600);
    let metas: Api<PartialObjectMeta<Deployment>> = Api::namespaced(env.client.clone(), &ns);
    let done = watch_until_reconciled(&isvcs, &metas, n, limit.saturating_sub(t0.elapsed())).await;
    let create_all_s = t0.elapsed().as_secs_f64();
    let create_all = if done == n {
        format!("{create_all_s:.1} s")
    } else {
        format!("> {} s ({done} of {n})", limit.as_secs())
    };
    eprintln!("[{label}] {n} created in {created_s:.1}s; all reconciled with status: {create_all}");
    // SCALE_CREATE_ONLY=1: stop here (a quick look at the creation figure alone).
    if std::env::var_os("SCALE_CREATE_ONLY").is_some() {
        drop(op);
        let _ = isvcs
            .delete_collection(&Default::default(), &ListParams::default())
            .await;
        env.finish().await;
        return Figures {
            create_all,
            rest_requests_per_s: f64::NAN,
            rest_requests: 0,
            rss_mib: f64::NAN,
            peak_rss_mib: f64::NAN,
            change_ms: vec![f64::NAN],
        };
    }

    // At rest: once the Deployment controller has made every pod (each pod changes the status
    // the operator reports) and a little after, count the operator's requests.
    env.wait(
        "every Deployment with its pod",
        Duration::from_secs(900),
        || async {
            let list = deployments.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .all(|d| {
                    d.status.as_ref().is_some_and(|s| {
                        s.replicas == Some(1) && s.observed_generation == d.metadata.generation
                    })
                })
                .then_some(())
        },
    )
    .await;
    let settled_s = t0.elapsed().as_secs_f64();
    eprintln!("[{label}] every pod made by {settled_s:.0}s");
    tokio::time::sleep(Duration::from_secs(15)).await;
    let rest = Duration::from_secs(60);
    let from = now_rfc3339();
    tokio::time::sleep(rest).await;
    let until = now_rfc3339();
    tokio::time::sleep(Duration::from_secs(2)).await; // the audit backend flushes
    let at_rest = requests_by(&user, &from, &until);
    let (rss, peak) = rss_mib(op.pid());
    // Watches stay open (one request each); everything else counts.
    let rest_requests = at_rest.iter().filter(|(verb, _)| verb != "watch").count();
    eprintln!(
        "[{label}] at rest for {}s: {rest_requests} requests ({:?}); RSS {rss:.0} MiB (peak {peak:.0})",
        rest.as_secs(),
        at_rest.iter().take(10).collect::<Vec<_>>()
    );

    // One spec change at a time on one object while the others sit idle.
    let mut change_ms = Vec::new();
    for round in 0..5 {
        let name = format!("m{:04}", (round * 197) % n);
        let t = Instant::now();
        let updated = isvcs
            .patch(
                &name,
                &PatchParams::apply("cluster-test").force(),
                &Patch::Apply(json!({
                    "apiVersion": "serving.inference-server.dev/v1alpha1",
                    "kind": "InferenceService",
                    "spec": {"model": {"name": "resnet50"}, "replicas": 1, "server": {"maxBatchSize": 8 + round}},
                })),
            )
            .await
            .unwrap();
        let generation = updated.metadata.generation;
        let want = (8 + round).to_string();
        loop {
            let i = isvcs.get(&name).await.unwrap();
            let d = deployments.get(&name).await.unwrap();
            if i.status.as_ref().and_then(|s| s.observed_generation) == generation
                && env_map(&d).get("MAX_BATCH_SIZE") == Some(&want)
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "change not reconciled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        change_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    eprintln!("[{label}] one spec change reconciled in {change_ms:.0?} ms");

    // Clean up this namespace's objects before the next run (the cluster is shared).
    drop(op);
    let _ = isvcs
        .delete_collection(&Default::default(), &ListParams::default())
        .await;
    env.finish().await;
    Figures {
        create_all,
        rest_requests_per_s: rest_requests as f64 / rest.as_secs_f64(),
        rest_requests,
        rss_mib: rss,
        peak_rss_mib: peak,
        change_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: make bench-operator"]
async fn operator_at_scale() {
    let n = objects();
    let mut runs = vec![("this operator", measure("this", None, n).await)];
    if let Some(base) = std::env::var_os("BASELINE_OPERATOR_BIN") {
        runs.push((
            "baseline",
            measure("baseline", Some(PathBuf::from(base)), n).await,
        ));
    }
    println!("\noperator at {n} InferenceServices (no node), same control plane, same run:");
    println!(
        "| | create → all children + status | requests at rest | RSS at rest (peak) | one spec change (median, max) |"
    );
    println!("|---|---|---|---|---|");
    for (label, f) in &runs {
        let mut c = f.change_ms.clone();
        c.sort_by(f64::total_cmp);
        println!(
            "| {label} | {} | {:.2}/s ({} in 60 s) | {:.0} MiB ({:.0}) | {:.0} ms, {:.0} ms |",
            f.create_all,
            f.rest_requests_per_s,
            f.rest_requests,
            f.rss_mib,
            f.peak_rss_mib,
            c[c.len() / 2],
            c[c.len() - 1]
        );
    }
    println!("| goal | < 60 s | < 1/s | < 150 MiB | < 1000 ms |");
}
