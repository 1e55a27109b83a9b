//! The operator against a real control plane (etcd, kube-apiserver, kube-controller-manager from
//! hack/cluster.sh, started by test-cluster; one cluster per test binary, no node, so pods stay
//! Pending). Each test works in its own namespace and runs its own `inference-operator` process
//! (`--namespace <its namespace>`), so the tests run in parallel and one test killing its
//! operator does not disturb the others.
//!
//! Needs the control plane binaries (hack/build-control-plane.sh, cached in
//! ~/.cache/inference-k8s); see test-cluster.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use inference_operator::crd::InferenceService;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// What the operator does in reaction to a change: well under a second normally.
const REACT: Duration = Duration::from_secs(30);
/// Garbage collection by kube-controller-manager.
const GC: Duration = Duration::from_secs(60);

fn q(s: &str) -> k8s_openapi::apimachinery::pkg::api::resource::Quantity {
    k8s_openapi::apimachinery::pkg::api::resource::Quantity(s.into())
}

/// Ready=False while no pod can run (there is no node), for the reasons the operator gives
/// before and after the Deployment controller created the pods.
fn settled_without_node(i: &InferenceService, replicas: i32) -> bool {
    observed_current(i)
        && i.status.as_ref().is_some_and(|s| s.replicas == replicas)
        && cond_of(i, "Ready").0 == "False"
        && cond_of(i, "Degraded") == ("False".into(), "AsExpected".into())
}

/// 1. Create → Deployment, Service, PDB (2 replicas), no HPA; status, conditions and an event.
#[tokio::test]
async fn create_builds_children_and_status() {
    let mut env = Env::new(cluster(), "create").await;
    let _op = env.start_operator("op");
    let name = "resnet50-public";
    let applied = json!({
        "model": {"name": "resnet50", "version": "3"},
        "replicas": 2,
        "server": {"maxBatchSize": 4, "logLevel": "debug"},
        "env": [{"name": "EXTRA", "value": "1"}, {"name": "MAX_BATCH_SIZE", "value": "6"}],
        "service": {
            "type": "LoadBalancer",
            "port": 8000,
            "nodePort": 30080,
            "loadBalancerClass": "service.k8s.aws/nlb",
            "annotations": {"service.beta.kubernetes.io/aws-load-balancer-scheme": "internet-facing"},
        },
        "podLabels": {"team": "vision"},
    });
    let isvc = env.apply_isvc(name, applied.clone()).await;
    assert_eq!(isvc.metadata.generation, Some(1));

    // ---- Deployment
    let d: Deployment = env
        .wait_obj::<Deployment>(name, "created by the operator", REACT, |_| true)
        .await;
    assert_owned_by(&d.metadata, &isvc, "Deployment");
    assert_child_labels(&d.metadata, name, "Deployment");
    assert!(
        managers(&d.metadata).contains(&"inference-operator/Apply".to_string()),
        "server-side applied by the operator: {:?}",
        managers(&d.metadata)
    );
    let spec = d.spec.clone().unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(spec.selector.match_labels, Some(selector(name)));
    assert!(spec.selector.match_expressions.is_none());
    let strategy = spec.strategy.clone().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let ru = strategy.rolling_update.unwrap();
    assert_eq!(ru.max_surge, Some(IntOrString::String("25%".into())));
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(spec.progress_deadline_seconds, Some(600));
    assert_eq!(spec.revision_history_limit, Some(5));
    let tmeta = spec.template.metadata.clone().unwrap();
    let tlabels = tmeta.labels.unwrap();
    for (k, v) in selector(name) {
        assert_eq!(tlabels.get(&k), Some(&v), "pod label {k}: {tlabels:?}");
    }
    assert_eq!(tlabels["team"], "vision");
    assert_eq!(tlabels["app.kubernetes.io/version"], "3");
    let tann = tmeta.annotations.unwrap();
    assert_eq!(tann["prometheus.io/scrape"], "true");
    assert_eq!(tann["prometheus.io/port"], "8080");
    let pod = spec.template.spec.clone().unwrap();
    assert_eq!(pod.termination_grace_period_seconds, Some(45));
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.enable_service_links, Some(false));
    let psc = pod.security_context.clone().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65532));
    assert_eq!(psc.run_as_group, Some(65532));
    assert_eq!(psc.fs_group, Some(65532));
    assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let tsc = pod.topology_spread_constraints.clone().unwrap();
    assert_eq!(
        tsc.iter()
            .map(|t| t.topology_key.as_str())
            .collect::<Vec<_>>(),
        ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    );
    assert!(tsc.iter().all(|t| t.when_unsatisfiable == "ScheduleAnyway"));
    assert_eq!(pod.containers.len(), 1);
    let c = container(&d);
    assert_eq!(c.name, "server");
    assert_eq!(c.image.as_deref(), Some(DEFAULT_IMAGE), "--default-image");
    let port = &c.ports.as_ref().unwrap()[0];
    assert_eq!(
        (
            port.name.as_deref(),
            port.container_port,
            port.protocol.as_deref()
        ),
        (Some("http"), 8080, Some("TCP"))
    );
    let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let p = p.clone().expect("probe");
        let h = p.http_get.clone().expect("httpGet probe");
        (
            h.path.unwrap_or_default(),
            h.port,
            p.period_seconds,
            p.failure_threshold,
        )
    };
    let http = IntOrString::String("http".into());
    let (path, port, period, failures) = probe(&c.startup_probe);
    assert_eq!((path.as_str(), &port), ("/ready", &http), "startup probe");
    assert!(
        period.unwrap() * failures.unwrap() >= 600,
        "startup probe allows 10 minutes for the model load"
    );
    assert_eq!(
        probe(&c.liveness_probe),
        ("/health".into(), http.clone(), Some(10), Some(3))
    );
    assert_eq!(
        probe(&c.readiness_probe),
        ("/ready".into(), http.clone(), Some(5), Some(2))
    );
    let pre_stop = c.lifecycle.clone().unwrap().pre_stop.unwrap();
    assert_eq!(pre_stop.sleep.map(|s| s.seconds), Some(10), "preStop sleep");
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    assert!(sc.privileged.is_none());
    assert!(
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/tmp" && m.name == "tmp")
    );
    let res = c.resources.clone().unwrap();
    assert_eq!(res.requests.unwrap()["cpu"], q("1"));
    assert_eq!(res.limits.unwrap()["memory"], q("2Gi"));
    let env_vars = env_map(&d);
    let expected: BTreeMap<String, String> = [
        ("PORT", "8080"),
        ("HOST", "0.0.0.0"),
        ("MODEL_NAME", "resnet50"),
        ("MODEL_VERSION", "3"),
        ("DEVICE", "cpu"),
        ("MAX_BATCH_SIZE", "6"), // spec.env overrides server.maxBatchSize
        ("INFERENCE_THREADS", "1"),
        ("SHUTDOWN_GRACE_SECONDS", "30"),  // 45 - 10 - 5
        ("SHUTDOWN_TIMEOUT_SECONDS", "4"), // inside the 5 s margin
        ("DECODE_MEMORY_MB", "512"),       // a quarter of the 2Gi default limit
        ("BODY_MEMORY_MB", "256"),         // an eighth
        ("RUST_LOG", "debug"),
        ("EXTRA", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env_vars, expected);

    // ---- Service
    let svc: Service = env
        .wait_obj::<Service>(name, "created", REACT, |_| true)
        .await;
    assert_owned_by(&svc.metadata, &isvc, "Service");
    assert_child_labels(&svc.metadata, name, "Service");
    let mut annotations = svc.metadata.annotations.clone().unwrap_or_default();
    assert!(
        annotations
            .remove(inference_operator::diff::ANNOTATION_APPLIED)
            .is_some(),
        "every child carries the hash of what was applied"
    );
    assert_eq!(
        annotations,
        BTreeMap::from([(
            "service.beta.kubernetes.io/aws-load-balancer-scheme".to_string(),
            "internet-facing".to_string()
        )])
    );
    let sspec = svc.spec.clone().unwrap();
    assert_eq!(sspec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(sspec.selector, Some(selector(name)));
    assert_eq!(
        sspec.load_balancer_class.as_deref(),
        Some("service.k8s.aws/nlb")
    );
    let ports = sspec.ports.unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.as_deref(), Some("http"));
    assert_eq!(ports[0].port, 8000);
    assert_eq!(ports[0].node_port, Some(30080));
    assert_eq!(ports[0].target_port, Some(http.clone()));
    assert_eq!(ports[0].app_protocol.as_deref(), Some("http"));
    assert!(
        sspec.cluster_ip.is_some(),
        "the API server allocated a ClusterIP"
    );

    // ---- PDB (2 replicas), no HPA
    let pdb: PodDisruptionBudget = env
        .wait_obj::<PodDisruptionBudget>(name, "created", REACT, |_| true)
        .await;
    assert_owned_by(&pdb.metadata, &isvc, "PodDisruptionBudget");
    assert_child_labels(&pdb.metadata, name, "PodDisruptionBudget");
    let pspec = pdb.spec.unwrap();
    assert_eq!(pspec.max_unavailable, Some(IntOrString::Int(1)));
    assert!(pspec.min_available.is_none());
    assert_eq!(pspec.selector.unwrap().match_labels, Some(selector(name)));
    assert_eq!(
        pspec.unhealthy_pod_eviction_policy.as_deref(),
        Some("AlwaysAllow")
    );
    let hpas: Api<HorizontalPodAutoscaler> = env.api();
    assert!(hpas.get_opt(name).await.unwrap().is_none(), "no HPA");

    // ---- Status: the Deployment controller made 2 (Pending) pods, none is ready.
    let isvc = env
        .wait_isvc(name, "status for generation 1, 2 replicas", REACT, |i| {
            settled_without_node(i, 2)
        })
        .await;
    let st = isvc.status.clone().unwrap();
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(
        st.url.as_deref(),
        Some(format!("http://{name}.{}.svc.cluster.local:8000", env.ns).as_str())
    );
    assert_eq!(
        st.selector.as_deref(),
        Some(format!("serving.inference-server.dev/inferenceservice={name}").as_str())
    );
    assert_eq!(st.image.as_deref(), Some(DEFAULT_IMAGE));
    assert_eq!((st.ready_replicas, st.available_replicas), (0, 0));
    let types: Vec<&str> = st.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Ready", "Available", "Progressing", "Degraded"]);
    assert_eq!(
        cond_of(&isvc, "Available"),
        ("False".into(), "NoReplicasAvailable".into()),
        "{}",
        status_json(&isvc)
    );
    let ready = cond(&isvc, "Ready").unwrap();
    assert_eq!(
        ready.reason,
        "NoReplicasAvailable",
        "{}",
        status_json(&isvc)
    );
    assert!(
        ready.message.contains("0/2 replicas ready"),
        "{}",
        ready.message
    );

    // ---- A Normal "Created" event about the InferenceService.
    let events: Api<Event> = env.api();
    env.wait("a Created event", REACT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("Created")
                    && e.regarding.as_ref().and_then(|r| r.uid.as_ref())
                        == isvc.metadata.uid.as_ref()
            })
            .map(|e| {
                assert_eq!(e.type_.as_deref(), Some("Normal"));
                assert_eq!(
                    e.reporting_controller.as_deref(),
                    Some("inference-operator")
                );
                let note = e.note.unwrap_or_default();
                assert!(
                    note.contains("Deployment") && note.contains("PodDisruptionBudget"),
                    "{note}"
                );
            })
    })
    .await;

    // ---- Keys removed from the spec's maps are removed from the children, also when nothing
    // else changes (the stored objects still "contain" every field we send).
    let mut fewer_keys = applied;
    fewer_keys.as_object_mut().unwrap().remove("podLabels");
    fewer_keys["service"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    env.apply_isvc(name, fewer_keys).await;
    env.wait_obj::<Deployment>(name, "pod label team removed", REACT, |d| {
        let t = d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
        !t.labels.as_ref().unwrap().contains_key("team")
    })
    .await;
    env.wait_obj::<Service>(name, "the Service annotation removed", REACT, |s| {
        !s.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("service.beta.kubernetes.io/aws-load-balancer-scheme"))
    })
    .await;
    env.finish().await;
}

/// 2. A spec change (image tag, server setting) changes the pod template: a new ReplicaSet; the
/// status follows the generation.
#[tokio::test]
async fn spec_update_rolls_out_a_new_replica_set() {
    let mut env = Env::new(cluster(), "update").await;
    let _op = env.start_operator("op");
    let name = "rollout";
    let v1 = "example.com/ml/inference-server:v1";
    let v2 = "example.com/ml/inference-server:v2";
    env.apply_isvc(name, json!({"model": {"name": "resnet50"}, "image": v1}))
        .await;
    let d: Deployment = env
        .wait_obj::<Deployment>(name, "revision 1 with one ReplicaSet", REACT, |d| {
            d.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("deployment.kubernetes.io/revision"))
                == Some(&"1".to_string())
        })
        .await;
    assert_eq!(image_of(&d), v1);
    let isvc = env
        .wait_isvc(name, "status of generation 1", REACT, |i| {
            settled_without_node(i, 1)
        })
        .await;
    assert_eq!(isvc.status.as_ref().unwrap().image.as_deref(), Some(v1));
    let rs1 = env
        .wait("the first ReplicaSet", REACT, || async {
            let list = replica_sets_of(&env, &d).await;
            (list.len() == 1).then(|| list[0].clone())
        })
        .await;
    assert_eq!(rs_image(&rs1), v1);

    // The update: a new tag and a server setting.
    let isvc = env
        .apply_isvc(
            name,
            json!({"model": {"name": "resnet50"}, "image": v2, "server": {"maxBatchSize": 8}}),
        )
        .await;
    assert_eq!(isvc.metadata.generation, Some(2));
    let d: Deployment = env
        .wait_obj::<Deployment>(name, "template with the v2 image", REACT, |d| {
            image_of(d) == v2
        })
        .await;
    assert_eq!(
        env_map(&d).get("MAX_BATCH_SIZE").map(String::as_str),
        Some("8")
    );
    assert_eq!(d.metadata.generation, Some(2));
    let (old, new) = env
        .wait(
            "a second ReplicaSet (revision 2) next to the old one",
            REACT,
            || async {
                let list = replica_sets_of(&env, &d).await;
                let new = list.iter().find(|r| rs_image(r) == v2)?.clone();
                let old = list.iter().find(|r| rs_image(r) == v1)?.clone();
                (list.len() == 2
                    && new.spec.as_ref()?.replicas == Some(1)
                    && new
                        .metadata
                        .annotations
                        .as_ref()?
                        .get("deployment.kubernetes.io/revision")
                        == Some(&"2".to_string()))
                .then_some((old, new))
            },
        )
        .await;
    assert_eq!(old.metadata.uid, rs1.metadata.uid);
    // maxUnavailable 0: the old pod stays while the new one cannot become ready.
    assert_eq!(old.spec.as_ref().unwrap().replicas, Some(1));
    let hash = |r: &ReplicaSet| r.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_ne!(hash(&old), hash(&new));

    // The status follows: generation 2, rolling out (Progressing), the new image. Nothing serves
    // (no node runs the old pod either), which Ready says on its own.
    let isvc = env
        .wait_isvc(name, "status of generation 2, rolling out", REACT, |i| {
            observed_current(i)
                && i.metadata.generation == Some(2)
                && cond_of(i, "Ready") == ("False".into(), "NoReplicasAvailable".into())
                && cond_of(i, "Progressing") == ("True".into(), "RollingOut".into())
        })
        .await;
    let st = isvc.status.as_ref().unwrap();
    assert_eq!(st.image.as_deref(), Some(v2));
    assert_eq!(
        (st.replicas, st.updated_replicas),
        (2, 1),
        "{}",
        status_json(&isvc)
    );
    let msg = &cond(&isvc, "Progressing").unwrap().message;
    assert!(msg.contains("1 updated"), "{msg}");
    env.finish().await;
}

/// 3. Autoscaling on → an autoscaling/v2 HPA that scales the InferenceService itself (its scale
/// subresource), and the real HPA controller raising it to minReplicas; a scale by the HPA reaches
/// the Deployment and survives spec edits; autoscaling off → HPA gone, the count kept.
#[tokio::test]
async fn autoscaling_scales_the_inference_service_and_keeps_the_count() {
    let mut env = Env::new(cluster(), "hpa").await;
    let _op = env.start_operator("op");
    let name = "scaled";
    let hpas: Api<HorizontalPodAutoscaler> = env.api();
    let pdbs: Api<PodDisruptionBudget> = env.api();
    let isvcs = env.isvcs();
    // No replicas in the manifest: the scale subresource reads the schema's default, 1 (not 0,
    // which an HPA or KEDA pointed at the InferenceService would take for "scaled to zero").
    let isvc = env
        .apply_isvc(name, json!({"model": {"name": "resnet50"}}))
        .await;
    assert_eq!(isvc.spec.replicas, 1);
    let scale = isvcs.get_scale(name).await.expect("the scale subresource");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(1));
    env.wait_isvc(name, "reconciled", REACT, observed_current)
        .await;
    let d: Deployment = env
        .wait_obj::<Deployment>(name, "1 replica", REACT, |d| {
            d.spec.as_ref().unwrap().replicas == Some(1)
        })
        .await;
    assert!(
        hpas.get_opt(name).await.unwrap().is_none(),
        "no HPA without autoscaling"
    );
    // One replica has its budget too (maxUnavailable 1 never blocks a drain).
    env.wait_obj::<PodDisruptionBudget>(name, "made for 1 replica", REACT, |p| {
        p.spec.as_ref().unwrap().max_unavailable == Some(IntOrString::Int(1))
    })
    .await;
    let dep_uid = d.metadata.uid.clone();
    let template = d.spec.clone().unwrap().template;

    // On.
    let auto = |max: i32| {
        json!({
            "model": {"name": "resnet50"},
            "autoscaling": {
                "minReplicas": 2, "maxReplicas": max,
                "targetCPUUtilizationPercentage": 60,
                "targetRequestsPerSecond": 5,
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 120}},
            },
        })
    };
    env.apply_isvc(name, auto(4)).await;
    let hpa: HorizontalPodAutoscaler = env
        .wait_obj::<HorizontalPodAutoscaler>(name, "created", REACT, |_| true)
        .await;
    assert_owned_by(&hpa.metadata, &isvc, "HorizontalPodAutoscaler");
    assert_child_labels(&hpa.metadata, name, "HorizontalPodAutoscaler");
    let spec = hpa.spec.clone().unwrap();
    assert_eq!(
        spec.scale_target_ref.api_version.as_deref(),
        Some("serving.inference-server.dev/v1alpha1")
    );
    assert_eq!(spec.scale_target_ref.kind, "InferenceService");
    assert_eq!(spec.scale_target_ref.name, name);
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 4));
    let metrics = spec.metrics.clone().unwrap();
    assert_eq!(metrics.len(), 2, "{metrics:?}");
    assert_eq!(metrics[0].type_, "Resource");
    let cpu = metrics[0].resource.clone().unwrap();
    assert_eq!(cpu.name, "cpu");
    assert_eq!(cpu.target.type_, "Utilization");
    assert_eq!(cpu.target.average_utilization, Some(60));
    assert_eq!(metrics[1].type_, "Pods");
    let rps = metrics[1].pods.clone().unwrap();
    assert_eq!(rps.metric.name, "ml_inference_requests_per_second");
    assert_eq!(rps.target.type_, "AverageValue");
    assert_eq!(rps.target.average_value, Some(q("5")));
    assert_eq!(
        spec.behavior
            .unwrap()
            .scale_down
            .unwrap()
            .stabilization_window_seconds,
        Some(120)
    );
    // The Deployment is held at minReplicas at once; the same Deployment, no rollout.
    let d: Deployment = env
        .wait_obj::<Deployment>(name, "raised to minReplicas 2", REACT, |d| {
            d.spec.as_ref().unwrap().replicas == Some(2)
        })
        .await;
    assert_eq!(d.metadata.uid, dep_uid);
    assert_eq!(
        d.spec.clone().unwrap().template,
        template,
        "only spec.replicas changed: no rollout"
    );
    // The kube-controller-manager's HPA controller (with its own RBAC) scales the
    // InferenceService through its scale subresource: 1 is below minReplicas, so it writes 2
    // (it cannot read metrics here, so it makes no other decision).
    let scaled = env
        .wait_isvc(
            name,
            "spec.replicas raised to 2 by the HPA controller",
            GC,
            |i| i.spec.replicas == 2,
        )
        .await;
    // (The operator itself never writes the spec: only its status.)
    assert!(
        !managers(&scaled.metadata).contains(&"inference-operator/Apply".to_string()),
        "{:?}",
        managers(&scaled.metadata)
    );
    env.wait_obj::<HorizontalPodAutoscaler>(name, "status from the HPA controller", GC, |h| {
        h.status
            .as_ref()
            .is_some_and(|s| s.current_replicas == Some(2) && s.desired_replicas == 2)
    })
    .await;

    // A scale decision (by hand here, as the HPA controller makes them with metrics) reaches the
    // Deployment, and a later spec edit without replicas does not undo it.
    let scale: Scale = serde_json::from_value(json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": name, "namespace": env.ns},
        "spec": {"replicas": 3},
    }))
    .unwrap();
    isvcs
        .replace_scale(
            name,
            &PostParams {
                field_manager: Some("hpa-simulator".into()),
                ..Default::default()
            },
            &scale,
        )
        .await
        .expect("scaling the InferenceService to 3");
    env.wait_obj::<Deployment>(name, "scaled to 3", REACT, |d| {
        d.spec.as_ref().unwrap().replicas == Some(3)
    })
    .await;
    let isvc2 = env.apply_isvc(name, auto(5)).await;
    assert_eq!(
        isvc2.spec.replicas, 3,
        "the user's apply kept the HPA's count"
    );
    env.wait_obj::<HorizontalPodAutoscaler>(name, "maxReplicas 5", REACT, |h| {
        h.spec.as_ref().unwrap().max_replicas == 5
    })
    .await;
    env.wait_isvc(name, "generation observed", REACT, |i| {
        observed_current(i) && i.metadata.generation == isvc2.metadata.generation
    })
    .await;
    let deployments: Api<Deployment> = env.api();
    let d = deployments.get(name).await.unwrap();
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3));

    // Off again (the natural edit: the block removed, no replicas): the HPA goes, the pods stay
    // at the last count, the PDB stays.
    env.apply_isvc(name, json!({"model": {"name": "resnet50"}}))
        .await;
    env.wait_gone::<HorizontalPodAutoscaler>(name, REACT).await;
    let isvc3 = env
        .wait_isvc(name, "reconciled without autoscaling", REACT, |i| {
            observed_current(i) && i.spec.autoscaling.is_none()
        })
        .await;
    assert_eq!(isvc3.spec.replicas, 3);
    assert!(
        pdbs.get_opt(name).await.unwrap().is_some(),
        "the PDB went away"
    );
    let d = deployments.get(name).await.unwrap();
    assert_eq!(
        d.spec.as_ref().unwrap().replicas,
        Some(3),
        "removing autoscaling changed the replica count"
    );
    assert_eq!(d.metadata.uid, dep_uid, "the same Deployment all along");
    // A fixed count from the user applies as usual.
    env.apply_isvc(name, json!({"model": {"name": "resnet50"}, "replicas": 1}))
        .await;
    env.wait_obj::<Deployment>(name, "back to 1 replica", REACT, |d| {
        d.spec.as_ref().unwrap().replicas == Some(1)
    })
    .await;
    env.wait_isvc(name, "status after autoscaling off", REACT, |i| {
        settled_without_node(i, 1)
    })
    .await;
    env.finish().await;
}

/// 4. Hand edits of the children (another field manager) are reverted; deleted children come back.
#[tokio::test]
async fn edited_or_deleted_children_are_restored() {
    let mut env = Env::new(cluster(), "restore").await;
    let _op = env.start_operator("op");
    let name = "guarded";
    env.apply_isvc(name, json!({"model": {"name": "resnet50"}, "replicas": 2}))
        .await;
    let deployments: Api<Deployment> = env.api();
    let services: Api<Service> = env.api();
    let pdbs: Api<PodDisruptionBudget> = env.api();
    let d0: Deployment = env
        .wait_obj::<Deployment>(name, "created", REACT, |_| true)
        .await;
    let svc0: Service = env
        .wait_obj::<Service>(name, "created", REACT, |_| true)
        .await;
    let pdb0: PodDisruptionBudget = env
        .wait_obj::<PodDisruptionBudget>(name, "created", REACT, |_| true)
        .await;
    env.wait_isvc(name, "reconciled", REACT, observed_current)
        .await;
    let by_hand = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };

    // The image, the replica count and a label of our own on the Deployment.
    let edited = deployments
        .patch(
            name,
            &by_hand,
            &Patch::Strategic(json!({
                "metadata": {"labels": {"edited-by": "hand"}},
                "spec": {
                    "replicas": 5,
                    "template": {"spec": {"containers": [{"name": "server", "image": "evil.example.com/other:1"}]}},
                },
            })),
        )
        .await
        .expect("editing the Deployment");
    assert_eq!(image_of(&edited), "evil.example.com/other:1");
    let d: Deployment = env
        .wait_obj::<Deployment>(name, "image and replicas restored", REACT, |d| {
            image_of(d) == DEFAULT_IMAGE
                && d.spec.as_ref().unwrap().replicas == Some(2)
                && d.metadata.generation > edited.metadata.generation
        })
        .await;
    assert_eq!(d.metadata.uid, d0.metadata.uid);
    assert_eq!(
        d.metadata
            .labels
            .as_ref()
            .unwrap()
            .get("edited-by")
            .map(String::as_str),
        Some("hand"),
        "fields the operator does not own are left alone (server-side apply)"
    );

    // The Service port.
    let edited = services
        .patch(
            name,
            &by_hand,
            &Patch::Json::<()>(
                serde_json::from_value(json!([
                    {"op": "replace", "path": "/spec/ports/0/port", "value": 9999}
                ]))
                .unwrap(),
            ),
        )
        .await
        .expect("editing the Service");
    assert_eq!(
        edited.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
        9999
    );
    env.wait_obj::<Service>(name, "port 80 restored", REACT, |s| {
        s.spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port)
            .collect::<Vec<_>>()
            == [80]
    })
    .await;

    // The PDB's maxUnavailable.
    pdbs.patch(
        name,
        &by_hand,
        &Patch::Merge(json!({"spec": {"maxUnavailable": 2}})),
    )
    .await
    .expect("editing the PDB");
    env.wait_obj::<PodDisruptionBudget>(name, "maxUnavailable 1 restored", REACT, |p| {
        p.spec.as_ref().unwrap().max_unavailable == Some(IntOrString::Int(1))
    })
    .await;

    // Deleted children are created again (new objects).
    services
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    let svc: Service = env
        .wait_obj::<Service>(name, "recreated", REACT, |s| {
            s.metadata.uid != svc0.metadata.uid
        })
        .await;
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 80);
    pdbs.delete(name, &DeleteParams::default()).await.unwrap();
    env.wait_obj::<PodDisruptionBudget>(name, "recreated", REACT, |p| {
        p.metadata.uid != pdb0.metadata.uid
    })
    .await;
    deployments
        .delete(name, &DeleteParams::background())
        .await
        .unwrap();
    let d: Deployment = env
        .wait_obj::<Deployment>(name, "recreated", REACT, |d| {
            d.metadata.uid != d0.metadata.uid
        })
        .await;
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(image_of(&d), DEFAULT_IMAGE);
    env.wait_isvc(name, "status settled again", REACT, |i| {
        settled_without_node(i, 2)
    })
    .await;
    env.finish().await;
}

/// 5. Deleting the InferenceService removes its children (garbage collector), in the background
/// (kubectl's default) and in the foreground (blockOwnerDeletion; the operator must not recreate
/// children of an InferenceService being deleted).
#[tokio::test]
async fn deleting_the_parent_collects_the_children() {
    let mut env = Env::new(cluster(), "gc").await;
    let _op = env.start_operator("op");
    let spec = json!({
        "model": {"name": "resnet50"},
        "autoscaling": {"minReplicas": 2, "maxReplicas": 3},
    });
    for name in ["background", "foreground"] {
        env.apply_isvc(name, spec.clone()).await;
    }
    for name in ["background", "foreground"] {
        env.wait_obj::<HorizontalPodAutoscaler>(name, "created", REACT, |_| true)
            .await;
        env.wait_obj::<PodDisruptionBudget>(name, "created", REACT, |_| true)
            .await;
        env.wait_obj::<Service>(name, "created", REACT, |_| true)
            .await;
        env.wait_isvc(name, "reconciled", REACT, |i| settled_without_node(i, 2))
            .await;
    }
    let pods: Api<Pod> = env.api();
    let isvcs = env.isvcs();
    for (name, dp) in [
        ("background", DeleteParams::background()),
        ("foreground", DeleteParams::foreground()),
    ] {
        let t0 = Instant::now();
        isvcs.delete(name, &dp).await.unwrap();
        env.wait_gone::<InferenceService>(name, GC).await;
        env.wait_gone::<Deployment>(name, GC).await;
        env.wait_gone::<Service>(name, GC).await;
        env.wait_gone::<HorizontalPodAutoscaler>(name, GC).await;
        env.wait_gone::<PodDisruptionBudget>(name, GC).await;
        let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={name}"));
        let rs: Api<ReplicaSet> = env.api();
        env.wait(
            &format!("ReplicaSets and pods of {name} gone"),
            GC,
            || async {
                (rs.list(&lp).await.ok()?.items.is_empty()
                    && pods.list(&lp).await.ok()?.items.is_empty())
                .then_some(())
            },
        )
        .await;
        eprintln!(
            "{name} deletion collected in {:.1}s",
            t0.elapsed().as_secs_f32()
        );
    }
    env.finish().await;
}

fn expect_line(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("# expect: "))
        .unwrap_or_default()
        .to_string()
}

fn fixtures(dir: &str) -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// 6. The API server rejects each invalid fixture with the message of its `# expect:` line (the
/// same fixtures tests/crd.rs checks offline); the valid fixtures are admitted (dry run).
#[tokio::test]
async fn api_server_rejects_invalid_fixtures_and_admits_valid_ones() {
    let env = Env::new(cluster(), "fixtures").await;
    let api = env.isvcs();
    let load = |p: &std::path::Path| {
        let text = std::fs::read_to_string(p).unwrap();
        let mut obj: Value = serde_saphyr::from_str(&text).unwrap();
        obj["metadata"]["namespace"] = json!(env.ns);
        (text, obj)
    };
    let invalid = fixtures("invalid");
    assert!(invalid.len() >= 22, "{} invalid fixtures", invalid.len());
    let mut failures = Vec::new();
    for path in &invalid {
        let (text, obj) = load(path);
        let expect = expect_line(&text);
        assert!(!expect.is_empty(), "{}: no # expect: line", path.display());
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        match api
            .patch(
                &name,
                &PatchParams::apply(USER).force(),
                &Patch::Apply(&obj),
            )
            .await
        {
            Ok(_) => failures.push(format!(
                "{file}: admitted, expected rejection with {expect:?}"
            )),
            Err(kube::Error::Api(s)) => {
                if s.code != 422 || !s.message.contains(&expect) {
                    failures.push(format!(
                        "{file}: rejected with {} {:?}, expected 422 containing {expect:?}",
                        s.code, s.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{file}: {e}")),
        }
    }
    for path in fixtures("") {
        let (_, obj) = load(&path);
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let pp = PatchParams::apply(USER).force().dry_run();
        if let Err(e) = api.patch(&name, &pp, &Patch::Apply(&obj)).await {
            failures.push(format!("{}: valid fixture rejected: {e}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures not handled as expected:\n{}",
        failures.len(),
        invalid.len(),
        failures.join("\n")
    );
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    env.finish().await;
}

/// 6b. What users copy from `examples/` (every object: InferenceServices, the ALB Ingress) is
/// admitted by the API server (server-side apply, dry run), and so is every child the operator
/// builds from each example: the NLB Service with its class and annotations, the HPA with the
/// request-rate metric, the spot example's spread constraints, the GPU pod template.
#[tokio::test]
async fn examples_and_their_children_pass_the_api_servers_dry_run() {
    use inference_operator::builders::{self, Config};
    use kube::api::DynamicObject;
    use kube::core::GroupVersionKind;

    let env = Env::new(cluster(), "examples").await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let pp = PatchParams::apply(USER).force().dry_run();
    let mut failures = Vec::new();
    let (mut objects, mut children) = (0, 0);
    for path in &files {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(path)
            .unwrap()
            .replace("__MODEL_PATH__", "/models/resnet50.safetensors");
        let mut obj: Value = serde_saphyr::from_str(&text).unwrap();
        obj["metadata"]["namespace"] = json!(env.ns);
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let (group, version) = match obj["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (
                String::new(),
                obj["apiVersion"].as_str().unwrap().to_string(),
            ),
        };
        let gvk = GroupVersionKind::gvk(&group, &version, obj["kind"].as_str().unwrap());
        let (ar, _) = kube::discovery::pinned_kind(&env.client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("{file}: {gvk:?} is not served: {e}"));
        let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &ar);
        objects += 1;
        if let Err(e) = api.patch(&name, &pp, &Patch::Apply(&obj)).await {
            failures.push(format!("{file}: {e}"));
        }
        if gvk.kind != "InferenceService" {
            continue;
        }
        let isvc: InferenceService = serde_json::from_value(obj).unwrap();
        let cfg = Config::default();
        let results = [
            (
                "Deployment",
                dry_run(&env, &builders::deployment::build(&isvc, &cfg)).await,
            ),
            (
                "Service",
                dry_run(&env, &builders::service::build(&isvc)).await,
            ),
            (
                "PodDisruptionBudget",
                dry_run(&env, &builders::pdb::build(&isvc)).await,
            ),
        ];
        let hpa = match builders::hpa::build(&isvc) {
            Some(hpa) => Some(("HorizontalPodAutoscaler", dry_run(&env, &hpa).await)),
            None => None,
        };
        // Blue/green: a colour's Deployment and the Services that select by colour.
        let mut colors = Vec::new();
        if builders::bluegreen::is_blue_green(&isvc) {
            use builders::bluegreen::{self as bg, Color};
            colors.push((
                "blue Deployment",
                dry_run(&env, &bg::deployment(&isvc, &cfg, Color::Blue, 3)).await,
            ));
            colors.push((
                "Service on green",
                dry_run(
                    &env,
                    &bg::service(&isvc, Some(Color::Green), Some("2026-11-28T06:00:00Z")),
                )
                .await,
            ));
            colors.push((
                "preview Service",
                dry_run(&env, &bg::preview_service(&isvc, Color::Blue)).await,
            ));
        }
        for (what, r) in results.into_iter().chain(hpa).chain(colors) {
            children += 1;
            if let Err(e) = r {
                failures.push(format!("{file}: its {what}: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {objects} example objects and {children} children refused:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // 8 InferenceServices + the Ingress; each InferenceService has 3 or 4 children, the
    // blue/green one 3 more.
    assert!(objects >= 9, "{objects} example objects");
    assert!(children >= 28, "{children} children");
    env.finish().await;
}

/// A server-side apply of `obj` in the test's namespace as a dry run: is it admitted?
async fn dry_run<K>(env: &Env, obj: &K) -> Result<(), kube::Error>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let pp = PatchParams::apply(USER).force().dry_run();
    env.api::<K>()
        .patch(&kube::ResourceExt::name_any(obj), &pp, &Patch::Apply(obj))
        .await
        .map(drop)
}

/// What an InferenceService of [`operator_killed_mid_reconcile_converges`] must end with.
async fn converged(env: &Env, name: &str, spec: &Value) -> Option<()> {
    let isvc = env.isvcs().get(name).await.ok()?;
    // (A spec change rolls out a new ReplicaSet next to the old one: more pods than replicas.)
    let st = isvc.status.as_ref()?;
    if !(observed_current(&isvc)
        && st.replicas >= want_replicas(spec)
        && st.image.as_deref() == Some(want_image(spec).as_str())
        && cond_of(&isvc, "Ready").0 == "False"
        && cond_of(&isvc, "Degraded") == ("False".into(), "AsExpected".into()))
    {
        return None;
    }
    let d = env.api::<Deployment>().get_opt(name).await.ok()??;
    if d.spec.as_ref()?.replicas != Some(want_replicas(spec)) || image_of(&d) != want_image(spec) {
        return None;
    }
    env.api::<Service>().get_opt(name).await.ok()??;
    let hpa = env
        .api::<HorizontalPodAutoscaler>()
        .get_opt(name)
        .await
        .ok()?;
    let pdb = env.api::<PodDisruptionBudget>().get_opt(name).await.ok()?;
    (hpa.is_some() == spec.get("autoscaling").is_some() && pdb.is_some()).then_some(())
}

fn want_replicas(spec: &Value) -> i32 {
    spec.get("replicas")
        .or_else(|| spec.get("autoscaling").map(|a| &a["minReplicas"]))
        .and_then(Value::as_i64)
        .unwrap_or(1) as i32
}

fn want_image(spec: &Value) -> String {
    spec.get("image")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_IMAGE)
        .to_string()
}

/// 7. SIGKILL of the operator in the middle of reconciling a batch of new InferenceServices (and
/// a spec change while it is down): a new process converges all of them.
#[tokio::test]
async fn operator_killed_mid_reconcile_converges() {
    let mut env = Env::new(cluster(), "kill").await;
    let specs: Vec<(String, Value)> = (0..8)
        .map(|i| {
            let spec = match i % 3 {
                0 => json!({"model": {"name": "resnet50"}}),
                1 => json!({"model": {"name": "resnet50"}, "replicas": 2}),
                _ => json!({"model": {"name": "resnet50"}, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}),
            };
            (format!("svc-{i}"), spec)
        })
        .collect();
    // --concurrency 2: the batch takes several rounds, so the kill lands in the middle.
    let mut op = env.start_operator_with(
        "first",
        &["--leader-election", "false", "--concurrency", "2"],
    );
    futures::future::join_all(specs.iter().map(|(n, s)| env.apply_isvc(n, s.clone()))).await;
    let deployments: Api<Deployment> = env.api();
    let first = env
        .wait("the first Deployment", REACT, || async {
            let l = deployments.list(&ListParams::default()).await.ok()?;
            (!l.items.is_empty()).then_some(l.items.len())
        })
        .await;
    op.kill();
    let done_before = {
        let mut n = 0;
        for (name, spec) in &specs {
            if converged(&env, name, spec).await.is_some() {
                n += 1;
            }
        }
        n
    };
    eprintln!("killed with {first} Deployment(s) seen, {done_before}/8 converged");

    // While no operator runs: a spec change of one of them.
    let mut specs = specs;
    specs[0].1 = json!({"model": {"name": "resnet50"}, "replicas": 3, "image": "example.com/ml/inference-server:new"});
    env.apply_isvc(&specs[0].0, specs[0].1.clone()).await;

    let _op2 = env.start_operator("second");
    let t0 = Instant::now();
    for (name, spec) in &specs {
        env.wait(
            &format!("{name} converged ({spec})"),
            Duration::from_secs(60),
            || converged(&env, name, spec),
        )
        .await;
    }
    eprintln!(
        "all converged {:.1}s after the restart",
        t0.elapsed().as_secs_f32()
    );
    // One owner, no conflict, and the status of the change made while the operator was down.
    for (name, _) in &specs {
        let isvc = env.isvcs().get(name).await.unwrap();
        let d = deployments.get(name).await.unwrap();
        assert_owned_by(&d.metadata, &isvc, name);
        assert_eq!(
            cond_of(&isvc, "Degraded").1,
            "AsExpected",
            "{}",
            status_json(&isvc)
        );
    }
    let first = env.isvcs().get(&specs[0].0).await.unwrap();
    assert_eq!(first.metadata.generation, Some(2));
    assert_eq!(
        first.status.as_ref().unwrap().image.as_deref(),
        Some("example.com/ml/inference-server:new")
    );
    env.finish().await;
}

/// Leader election with two replicas: one leads, the other waits; after the leader stops
/// (SIGTERM releases the lease) the other takes over and reconciles.
#[tokio::test]
async fn leader_election_hands_over_to_the_standby() {
    let env = Env::new(cluster(), "leader").await;
    let start = |id: &str| {
        Operator::start(
            env.cluster,
            id,
            &env.ns,
            &[
                "--leader-election",
                "true",
                "--lease-name",
                "op-lease",
                "--lease-namespace",
                &env.ns,
                "--identity",
                id,
            ],
        )
    };
    let mut a = start("alpha");
    let mut b = start("bravo");
    let mut env = env;
    env.logs.push(a.log.clone());
    env.logs.push(b.log.clone());
    let leases: Api<Lease> = env.api();
    let holder = || lease_holder(&leases, "op-lease");
    let first = env.wait("a lease holder", REACT, holder).await;
    let (leader, standby, standby_id) = if first.starts_with("alpha_") {
        (&mut a, &mut b, "bravo_")
    } else {
        assert!(first.starts_with("bravo_"), "holder {first}");
        (&mut b, &mut a, "alpha_")
    };
    env.wait("the leader's /metrics says leader 1", REACT, || async {
        (leader.metric("inference_operator_leader")? == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        standby.metric("inference_operator_leader"),
        Some(0.0),
        "standby is not leader"
    );
    assert_eq!(
        standby.http_get("/readyz").map(|r| r.0),
        Some(200),
        "a standby is ready"
    );

    let name = "led";
    env.apply_isvc(name, json!({"model": {"name": "resnet50"}}))
        .await;
    env.wait_isvc(name, "reconciled by the leader", REACT, |i| {
        settled_without_node(i, 1)
    })
    .await;

    // Graceful stop: the lease is released, the standby takes over without waiting 15 s.
    let t0 = Instant::now();
    let status = leader.terminate(Duration::from_secs(30));
    assert!(
        status.success(),
        "the leader exits 0 after SIGTERM: {status}"
    );
    let next = env
        .wait("the standby holding the lease", REACT, || async {
            holder().await.filter(|h| h.starts_with(standby_id))
        })
        .await;
    eprintln!(
        "{next} took over {:.1}s after SIGTERM",
        t0.elapsed().as_secs_f32()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(14),
        "took over before the lease expired"
    );
    env.wait("the new leader's /metrics says leader 1", REACT, || async {
        (standby.metric("inference_operator_leader")? == 1.0).then_some(())
    })
    .await;
    env.apply_isvc(name, json!({"model": {"name": "resnet50"}, "replicas": 2}))
        .await;
    env.wait_obj::<PodDisruptionBudget>(name, "created by the new leader", REACT, |_| true)
        .await;
    env.wait_isvc(name, "generation 2 observed", REACT, |i| {
        i.metadata.generation == Some(2) && settled_without_node(i, 2)
    })
    .await;
    assert!(standby.is_running());
    env.finish().await;
}

/// A leader cut off from a hung API server stops (exits non-zero) within the renew deadline,
/// counted from its last renewal, before a standby may take the lease over (the lease duration,
/// counted from when the standby saw that renewal): never two leaders at once.
#[tokio::test]
async fn a_leader_cut_off_from_a_hung_api_server_stops_before_the_standby_leads() {
    let mut env = Env::new(cluster(), "hung").await;
    let proxy = StallingProxy::start(api_server_addr(&env.cluster.kubeconfig())).await;
    let via_proxy = proxy.kubeconfig(
        &env.cluster.kubeconfig(),
        &tmp_dir().join(format!("{}-proxy.kubeconfig", env.ns)),
    );
    let flags = |id: &'static str| {
        [
            "--leader-election",
            "true",
            "--lease-name",
            "hung-lease",
            "--lease-namespace",
            env.ns.as_str(),
            "--identity",
            id,
        ]
        .map(String::from)
    };
    fn args(f: &[String; 8]) -> Vec<&str> {
        f.iter().map(String::as_str).collect()
    }
    // The leader talks through the proxy; it is started first and takes the lease.
    let fa = flags("alpha");
    let mut leader = Operator::start_as(via_proxy, "alpha", Some(&env.ns), &args(&fa));
    env.logs.push(leader.log.clone());
    let leases: Api<Lease> = env.api();
    let holder = || lease_holder(&leases, "hung-lease");
    let first = env.wait("alpha holding the lease", REACT, holder).await;
    assert!(first.starts_with("alpha_"), "{first}");
    let fb = flags("bravo");
    let standby = Operator::start_as(env.cluster.kubeconfig(), "bravo", Some(&env.ns), &args(&fb));
    env.logs.push(standby.log.clone());
    env.wait("the standby ready", REACT, || async {
        (standby.http_get("/readyz")?.0 == 200).then_some(())
    })
    .await;

    // Hang the leader's API server right after a renewal (renewTime moved).
    let renew_time = || async { leases.get_opt("hung-lease").await.ok()??.spec?.renew_time };
    let before = renew_time().await;
    env.wait("a renewal", REACT, || async {
        renew_time().await.filter(|t| Some(t) != before.as_ref())
    })
    .await;
    let t0 = Instant::now();
    proxy.stall(true);

    let mut leader_exit = None;
    let mut standby_leads = None;
    while t0.elapsed() < Duration::from_secs(40)
        && (leader_exit.is_none() || standby_leads.is_none())
    {
        if leader_exit.is_none() && !leader.is_running() {
            leader_exit = Some(t0.elapsed());
        }
        if standby_leads.is_none() && holder().await.is_some_and(|h| h.starts_with("bravo_")) {
            standby_leads = Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.stall(false);
    let exit = leader_exit.expect("the cut-off leader never stopped");
    let lead = standby_leads.expect("the standby never took the lease");
    eprintln!(
        "API hung at 0 s: the old leader exited at {:.1} s, the standby led at {:.1} s",
        exit.as_secs_f32(),
        lead.as_secs_f32()
    );
    assert!(
        exit < lead,
        "two leaders at once: exit {exit:?}, standby {lead:?}"
    );
    assert!(
        exit <= Duration::from_secs(11),
        "renew deadline 10 s: {exit:?}"
    );
    let status = leader.exited().expect("exited");
    assert!(!status.success(), "a lost lease exits non-zero: {status}");
    assert!(leader.log_contains("lost the leader lease"));
    // The new leader works.
    env.apply_isvc("after", json!({"model": {"name": "resnet50"}}))
        .await;
    env.wait_isvc("after", "reconciled by the new leader", REACT, |i| {
        settled_without_node(i, 1)
    })
    .await;
    env.finish().await;
}

/// Problems the operator reports in the status instead of failing silently: a child name taken
/// by an object it does not control, a spec the schema admits but the operator cannot build,
/// and an apply the API server rejects. Each recovers once the cause is gone.
#[tokio::test]
async fn spec_problems_degrade_and_recover() {
    let mut env = Env::new(cluster(), "problems").await;
    let _op = env.start_operator("op");
    let deployments: Api<Deployment> = env.api();
    let services: Api<Service> = env.api();
    let degraded = |reason: &'static str| {
        move |i: &InferenceService| {
            observed_current(i)
                && cond_of(i, "Degraded") == ("True".into(), reason.into())
                && cond_of(i, "Ready") == ("False".into(), reason.into())
        }
    };

    // A Service of the same name that someone else made: not taken over, not touched.
    test_cluster::apply_yaml(
        &env.client,
        "apiVersion: v1\nkind: Service\nmetadata: {name: taken}\nspec:\n  selector: {app: other}\n  ports: [{port: 1234}]\n",
        Some(&env.ns),
    )
    .await
    .unwrap();
    env.apply_isvc("taken", json!({"model": {"name": "resnet50"}}))
        .await;
    let isvc = env
        .wait_isvc(
            "taken",
            "Degraded ChildConflict",
            REACT,
            degraded("ChildConflict"),
        )
        .await;
    let msg = &cond(&isvc, "Degraded").unwrap().message;
    assert!(
        msg.contains(&format!(
            "Service {}/taken already exists and is not controlled",
            env.ns
        )),
        "{msg}"
    );
    assert!(
        deployments.get_opt("taken").await.unwrap().is_none(),
        "nothing built while blocked"
    );
    let foreign = services.get("taken").await.unwrap();
    assert!(foreign.metadata.owner_references.is_none());
    assert_eq!(foreign.spec.unwrap().ports.unwrap()[0].port, 1234);
    // Removed: the operator builds everything on the next reconcile (any change of the object;
    // by itself it only retries every 2 minutes, as it does not watch foreign objects).
    services
        .delete("taken", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone::<Service>("taken", REACT).await;
    env.apply_isvc_full(
        "taken",
        json!({"annotations": {"retry": "1"}}),
        json!({"model": {"name": "resnet50"}}),
    )
    .await;
    env.wait_isvc("taken", "recovered", REACT, |i| settled_without_node(i, 1))
        .await;
    env.wait_obj::<Service>("taken", "ours now", REACT, |s| {
        s.metadata.owner_references.is_some()
    })
    .await;

    // requests > limits: admitted by the schema, refused by the operator's validation.
    let limits = |cpu: &str| {
        json!({
            "model": {"name": "resnet50"},
            "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
        })
    };
    env.apply_isvc("limits", limits("2")).await;
    let isvc = env
        .wait_isvc(
            "limits",
            "Degraded InvalidSpec",
            REACT,
            degraded("InvalidSpec"),
        )
        .await;
    let msg = &cond(&isvc, "Degraded").unwrap().message;
    assert!(
        msg.contains(
            "spec.resources.requests.cpu: must be less than or equal to spec.resources.limits.cpu"
        ),
        "{msg}"
    );
    assert!(deployments.get_opt("limits").await.unwrap().is_none());
    let events: Api<Event> = env.api();
    env.wait("a Warning InvalidSpec event", REACT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("InvalidSpec")
            })
            .then_some(())
    })
    .await;
    env.apply_isvc("limits", limits("500m")).await;
    env.wait_isvc("limits", "recovered", REACT, |i| settled_without_node(i, 1))
        .await;
    let d: Deployment = deployments.get("limits").await.unwrap();
    assert_eq!(
        container(&d)
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap()["cpu"],
        q("1")
    );

    // The API server refuses the Service: its nodePort is taken by another Service.
    let lb = |port: i32| json!({"model": {"name": "resnet50"}, "service": {"type": "NodePort", "nodePort": port}});
    env.apply_isvc("lb-a", lb(30123)).await;
    env.wait_obj::<Service>("lb-a", "created", REACT, |_| true)
        .await;
    env.apply_isvc("lb-b", lb(30123)).await;
    let isvc = env
        .wait_isvc(
            "lb-b",
            "Degraded ApplyFailed",
            REACT,
            degraded("ApplyFailed"),
        )
        .await;
    let msg = &cond(&isvc, "Degraded").unwrap().message;
    assert!(
        msg.contains("rejected the Service") && msg.contains("already allocated"),
        "{msg}"
    );
    env.apply_isvc("lb-b", lb(30124)).await;
    env.wait_isvc("lb-b", "recovered", REACT, |i| settled_without_node(i, 1))
        .await;
    let svc = services.get("lb-b").await.unwrap();
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].node_port, Some(30124));
    env.finish().await;
}
