//! Blue/green (`rollout.strategy: BlueGreen`) end to end on the real node, under steady load
//! through the Service's ClusterIP (kube-proxy): a promotion switches the answers' model version
//! once and loses no request; a broken new version is never promoted, traffic stays, the status
//! says why, and re-applying the previous spec rolls it back; so is a version that is ready but
//! fails the smoke prediction; with `autoPromote: false` the
//! documented annotation promotes; switching to RollingUpdate and back (with a new version: the
//! old pods alone serve until the promotion) keeps serving.
//!
//! The operator runs as a ServiceAccount bound to the shipped ClusterRole, so the RBAC rules
//! blue/green needs are checked too. Needs root, containerd and the demo image (make images);
//! without them the test says so and checks nothing, except under CI, where it fails.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::real::*;
use common::*;
use inference_operator::crd::InferenceService;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use test_cluster::Cluster;

const START: Duration = Duration::from_secs(180);
/// The old colour's scale-down delay in this test (the default is 30 s).
const DELAY: u64 = 5;
const NAME: &str = "resnet50";
const COLOR: &str = "serving.inference-server.dev/color";

fn demo() -> String {
    image("resnet50-demo")
}

/// A second tag of the demo image: the "new version" of the rollouts.
fn next() -> String {
    format!("{}-bluegreen", demo())
}

fn cluster() -> Option<&'static Cluster> {
    tag_image(&demo(), &next());
    real_cluster(vec![demo(), next()], true)
}

/// The InferenceService's spec: two pods, blue/green unless `rolling`.
fn spec(image: &str, version: &str, path: Option<&str>, rolling: bool, auto: bool) -> Value {
    let mut spec = two_pods(image, version, path);
    spec["rollout"] = if rolling {
        json!({"strategy": "RollingUpdate"})
    } else {
        json!({"strategy": "BlueGreen", "progressDeadlineSeconds": 30,
               "blueGreen": {"autoPromote": auto, "scaleDownDelaySeconds": DELAY}})
    };
    spec
}

fn bg(i: &InferenceService) -> Value {
    to_json(&i.status.as_ref().and_then(|s| s.blue_green.clone()))
}

fn active(i: &InferenceService) -> Option<String> {
    bg(i)["activeColor"].as_str().map(str::to_string)
}

/// The colour the Service selects (None: every pod, RollingUpdate).
async fn service_color(env: &Env, name: &str) -> Option<String> {
    let svc: Api<Service> = env.api();
    svc.get(name)
        .await
        .ok()?
        .spec?
        .selector?
        .get(COLOR)
        .cloned()
}

async fn replicas(env: &Env, name: &str) -> Option<i32> {
    let deps: Api<Deployment> = env.api();
    deps.get_opt(name).await.unwrap()?.spec?.replicas
}

/// Polls the InferenceService until `done`, collecting the Progressing reasons it showed.
async fn watch_until(
    env: &Env,
    what: &str,
    done: impl Fn(&InferenceService) -> bool,
) -> (InferenceService, BTreeSet<String>) {
    let api = env.isvcs();
    let mut seen = BTreeSet::new();
    let t0 = Instant::now();
    loop {
        if let Ok(i) = api.get(NAME).await {
            seen.insert(cond_of(&i, "Progressing").1);
            if done(&i) {
                return (i, seen);
            }
        }
        if t0.elapsed() > START {
            panic!(
                "timed out waiting for {what} (Progressing reasons seen: {seen:?})\n{}",
                env.dump().await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn check_load(what: &str, report: &LoadReport, versions: &[&str]) {
    eprintln!(
        "{what}: {} requests answered 200, {} failed; versions seen per client: {:?}",
        report.ok,
        report.failures.len(),
        report.versions
    );
    assert!(report.failures.is_empty(), "{what}: {:#?}", report.failures);
    assert!(report.ok > 0, "{what}: no request answered");
    for v in &report.versions {
        // Each client saw the old version, then the new one: once, never back.
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        assert!(
            v == versions || v == versions[versions.len() - 1..],
            "{what}: versions {v:?}, want {versions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_promotes_refuses_a_broken_version_and_switches_strategy_under_load() {
    let Some(cluster) = cluster() else {
        return;
    };
    let mut env = Env::new(cluster, "bluegreen").await;
    let kubeconfig = service_account_kubeconfig(&env).await;
    grant_cluster_wide(&env, &format!("bluegreen-{}", env.ns)).await;
    let op = Operator::start_as(
        kubeconfig,
        "op",
        Some(&env.ns),
        &["--leader-election", "false"],
    );
    env.logs.push(op.log.clone());
    let t0 = Instant::now();

    // A new blue/green object serves from blue at once; the preview Service waits on green.
    env.apply_isvc(NAME, spec(&demo(), "1", None, false, true))
        .await;
    let isvc = env
        .wait_isvc(NAME, "Ready on blue with 2 pods", START, |i| {
            observed_current(i)
                && cond_of(i, "Ready").0 == "True"
                && active(i).as_deref() == Some("blue")
                && bg(i)["active"]["readyReplicas"] == 2
        })
        .await;
    eprintln!("Ready on blue after {:.1}s", t0.elapsed().as_secs_f32());
    let st = isvc.status.clone().unwrap();
    assert_eq!(
        st.selector.as_deref(),
        Some(
            "serving.inference-server.dev/inferenceservice=resnet50,serving.inference-server.dev/color=blue"
        ),
        "the scale subresource (and so the HPA) reads the serving colour's pods"
    );
    assert_eq!(service_color(&env, NAME).await.as_deref(), Some("blue"));
    assert_eq!(
        service_color(&env, "resnet50-preview").await.as_deref(),
        Some("green")
    );
    assert_eq!(replicas(&env, "resnet50-blue").await, Some(2));
    assert_eq!(
        replicas(&env, NAME).await,
        None,
        "no RollingUpdate Deployment"
    );
    let svc: Api<Service> = env.api();
    let s = svc.get(NAME).await.unwrap().spec.unwrap();
    let url = format!(
        "http://{}:{}/predict",
        s.cluster_ip.unwrap(),
        s.ports.unwrap()[0].port
    );

    // Promotion under load: green rolls out behind the preview Service, answers the smoke
    // request, and the Service moves; every client sees version 1, then 2, and nothing fails.
    let load = Load::start(&url, 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t1 = Instant::now();
    env.apply_isvc(NAME, spec(&next(), "2", None, false, true))
        .await;
    let (isvc, reasons) = watch_until(&env, "promotion to green", |i| {
        observed_current(i) && active(i).as_deref() == Some("green")
    })
    .await;
    let promoted = t1.elapsed();
    assert!(reasons.contains("PreviewRollingOut"), "{reasons:?}");
    assert_eq!(cond_of(&isvc, "Ready").0, "True");
    assert_eq!(bg(&isvc)["active"]["image"], next());
    assert_eq!(service_color(&env, NAME).await.as_deref(), Some("green"));
    // The old colour runs out its delay, then goes to 0.
    env.wait("blue scaled to 0 after the delay", START, || async {
        (replicas(&env, "resnet50-blue").await == Some(0)).then_some(())
    })
    .await;
    let scaled_down = t1.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let report = load.stop();
    eprintln!(
        "promotion to green {:.1}s after the apply, blue at 0 at {:.1}s",
        promoted.as_secs_f32(),
        scaled_down.as_secs_f32()
    );
    check_load("blue → green", &report, &["1", "2"]);
    let events: Api<Event> = env.api();
    let list = events.list(&ListParams::default()).await.unwrap().items;
    let promoted_note = list
        .iter()
        .find(|e| e.reason.as_deref() == Some("Promoted"))
        .and_then(|e| e.note.clone())
        .expect("a Promoted event");
    assert!(
        promoted_note.contains("promoted green") && promoted_note.contains("model version 2"),
        "{promoted_note}"
    );

    // A broken version (weights missing): blue crash-loops, nothing is promoted, green serves;
    // Degraded says why, then Progressing says the deadline passed. Re-applying the previous
    // spec rolls back: blue goes to 0 at once.
    let load = Load::start(&url, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t2 = Instant::now();
    env.apply_isvc(
        NAME,
        spec(
            &next(),
            "3",
            Some("/nonexistent/resnet50.safetensors"),
            false,
            true,
        ),
    )
    .await;
    let isvc = env
        .wait_isvc(NAME, "Degraded by the crash-looping preview", START, |i| {
            observed_current(i)
                && cond_of(i, "Degraded") == ("True".into(), "CrashLoopBackOff".into())
        })
        .await;
    let degraded_after = t2.elapsed();
    assert_eq!(cond_of(&isvc, "Ready"), ("True".into(), "Serving".into()));
    assert_eq!(active(&isvc).as_deref(), Some("green"));
    let isvc = env
        .wait_isvc(
            NAME,
            "Progressing=False ProgressDeadlineExceeded",
            START,
            |i| cond_of(i, "Progressing") == ("False".into(), "ProgressDeadlineExceeded".into()),
        )
        .await;
    let stuck_after = t2.elapsed();
    let message = &cond(&isvc, "Progressing").unwrap().message;
    assert!(
        message.contains("blue did not become ready") && message.contains("traffic stays on green"),
        "{message}"
    );
    assert_eq!(cond_of(&isvc, "Ready").0, "True");
    assert_eq!(service_color(&env, NAME).await.as_deref(), Some("green"));
    let t3 = Instant::now();
    env.apply_isvc(NAME, spec(&next(), "2", None, false, true))
        .await;
    env.wait_isvc(NAME, "rolled back: not Degraded, blue at 0", START, |i| {
        observed_current(i)
            && cond_of(i, "Degraded").0 == "False"
            && cond_of(i, "Progressing").1 == "RolloutComplete"
            && bg(i)["preview"].is_null()
    })
    .await;
    let rolled_back = t3.elapsed();
    let report = load.stop();
    eprintln!(
        "broken version: Degraded after {:.1}s, ProgressDeadlineExceeded after {:.1}s; rolled back {:.1}s after re-applying the previous spec",
        degraded_after.as_secs_f32(),
        stuck_after.as_secs_f32(),
        rolled_back.as_secs_f32()
    );
    check_load("broken version and rollback", &report, &["2"]);

    // A version that is ready but cannot answer a prediction (a careless setting: a body limit
    // below the photo's size): readiness passes, the smoke request gets 413, nothing is
    // promoted, and the status and a Warning event say why.
    let load = Load::start(&url, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    let mut careless = spec(&demo(), "5", None, false, true);
    careless["server"] = json!({"maxBodyBytes": 4096});
    env.apply_isvc(NAME, careless).await;
    let isvc = env
        .wait_isvc(NAME, "Degraded=SmokeTestFailed", START, |i| {
            observed_current(i)
                && cond_of(i, "Degraded") == ("True".into(), "SmokeTestFailed".into())
        })
        .await;
    let smoke_failed_after = t.elapsed();
    let message = &cond(&isvc, "Degraded").unwrap().message;
    assert!(
        message.contains("blue is ready but its smoke request through resnet50-preview failed")
            && message.contains("HTTP 413")
            && message.contains("traffic stays on green"),
        "{message}"
    );
    assert_eq!(
        bg(&isvc)["preview"]["readyReplicas"],
        2,
        "ready, yet not promoted"
    );
    assert_eq!(cond_of(&isvc, "Ready").0, "True");
    assert_eq!(active(&isvc).as_deref(), Some("green"));
    let list = events.list(&ListParams::default()).await.unwrap().items;
    assert!(
        list.iter()
            .any(|e| e.reason.as_deref() == Some("SmokeTestFailed")
                && e.type_.as_deref() == Some("Warning")),
        "a SmokeTestFailed Warning event"
    );
    env.apply_isvc(NAME, spec(&next(), "2", None, false, true))
        .await;
    env.wait_isvc(NAME, "rolled back: not Degraded, no preview", START, |i| {
        observed_current(i) && cond_of(i, "Degraded").0 == "False" && bg(i)["preview"].is_null()
    })
    .await;
    let report = load.stop();
    eprintln!(
        "ready but failing its smoke request: SmokeTestFailed {:.1}s after the apply, never promoted",
        smoke_failed_after.as_secs_f32()
    );
    check_load("smoke request failing, and rollback", &report, &["2"]);

    // autoPromote false: the preview waits; the annotation the status names promotes it.
    let load = Load::start(&url, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.apply_isvc(NAME, spec(&demo(), "4", None, false, false))
        .await;
    let isvc = env
        .wait_isvc(NAME, "AwaitingPromotion", START, |i| {
            observed_current(i) && cond_of(i, "Progressing").1 == "AwaitingPromotion"
        })
        .await;
    let revision = bg(&isvc)["preview"]["revision"]
        .as_str()
        .expect("the preview's revision")
        .to_string();
    let message = &cond(&isvc, "Progressing").unwrap().message;
    let command = format!(
        "kubectl -n {} annotate infsvc {NAME} serving.inference-server.dev/promote={revision} --overwrite",
        env.ns
    );
    assert!(message.contains(&command), "{message}");
    assert_eq!(
        active(&isvc).as_deref(),
        Some("green"),
        "not promoted by itself"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(service_color(&env, NAME).await.as_deref(), Some("green"));
    // What `kubectl annotate` sends.
    let t4 = Instant::now();
    env.isvcs()
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "serving.inference-server.dev/promote": revision}}})),
        )
        .await
        .unwrap();
    env.wait_isvc(NAME, "promoted to blue by the annotation", START, |i| {
        active(i).as_deref() == Some("blue")
    })
    .await;
    eprintln!(
        "manual promotion {:.1}s after the annotation",
        t4.elapsed().as_secs_f32()
    );
    tokio::time::sleep(Duration::from_secs(DELAY + 4)).await;
    let report = load.stop();
    check_load("manual promotion", &report, &["2", "4"]);

    // Switching to RollingUpdate and back, under load, each request on a new connection (kept-alive
    // ones would stay on the old pods whatever the Service selects).
    let load = Load::start_with(&url, 2, true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t5 = Instant::now();
    env.apply_isvc(NAME, spec(&demo(), "4", None, true, true))
        .await;
    env.wait("the colours retired", START, || async {
        let no_colors = replicas(&env, "resnet50-blue").await.is_none()
            && replicas(&env, "resnet50-green").await.is_none();
        let plain = service_color(&env, NAME).await.is_none();
        let preview_gone = svc.get_opt("resnet50-preview").await.unwrap().is_none();
        (no_colors && plain && preview_gone).then_some(())
    })
    .await;
    let isvc = env
        .wait_isvc(NAME, "Ready as RollingUpdate", START, |i| {
            observed_current(i) && cond_of(i, "Ready").0 == "True" && bg(i).is_null()
        })
        .await;
    assert_eq!(
        isvc.status.unwrap().selector.as_deref(),
        Some("serving.inference-server.dev/inferenceservice=resnet50")
    );
    let to_rolling = t5.elapsed();
    // Back to BlueGreen with a new version at once: until blue is promoted only the old pods
    // serve (the Service's selector is pinned to their pod-template-hash), so every client sees
    // "4" then "5", never a mix while both run.
    let t6 = Instant::now();
    env.apply_isvc(NAME, spec(&demo(), "5", None, false, true))
        .await;
    let pinned = std::cell::Cell::new(false);
    let isvcs: Api<InferenceService> = env.api();
    env.wait("blue/green again, promoted to blue", START, || async {
        let selector = svc.get(NAME).await.ok()?.spec?.selector.unwrap_or_default();
        if selector.contains_key("pod-template-hash") {
            pinned.set(true);
        }
        let i = isvcs.get(NAME).await.ok()?;
        (observed_current(&i) && active(&i).as_deref() == Some("blue")).then_some(())
    })
    .await;
    assert!(
        pinned.get(),
        "before the promotion the Service selected the old pods by their pod-template-hash"
    );
    env.wait(
        "the RollingUpdate Deployment gone after the delay",
        START,
        || async { replicas(&env, NAME).await.is_none().then_some(()) },
    )
    .await;
    let to_bluegreen = t6.elapsed();
    // Kept-alive connections stay on the old pods until they drain and close them.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = env.api();
    let old_pods = ListParams::default().labels(&format!(
        "serving.inference-server.dev/inferenceservice={NAME},!{COLOR}"
    ));
    env.wait("the old pods gone", START, || async {
        pods.list(&old_pods)
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.stop();
    eprintln!(
        "to RollingUpdate in {:.1}s, back to BlueGreen in {:.1}s",
        to_rolling.as_secs_f32(),
        to_bluegreen.as_secs_f32()
    );
    check_load("strategy switches", &report, &["4", "5"]);
    eprintln!("all sections passed in {:.1}s", t0.elapsed().as_secs_f32());
    env.finish().await;
}
