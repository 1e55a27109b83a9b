//! The system as users run it, on a real node (hack/real-node.sh: upstream kubelet, containerd
//! and runc, the CNI bridge and kube-proxy in a network namespace of their own, kube-scheduler):
//! the operator installed by its Helm chart runs as a pod under its own ServiceAccount, and
//! `examples/resnet50-demo.yaml` (the demo image: random weights baked in) becomes Ready on the
//! kubelet's probes and answers predictions through its Service's ClusterIP (kube-proxy's DNAT)
//! and, from a client pod, through its DNS name (CoreDNS); metrics-server reports its pods' CPU,
//! and the HPA scales the InferenceService out under load and back in after it, on CPU and then on
//! the request rate (Prometheus and the custom-metrics adapter of hack/metrics-pipeline.yaml, with
//! the prometheus-adapter rule the chart ships).
//!
//! Needs root, containerd (make deps) and the images (`make images`: the inference, operator and
//! demo images in buildah's storage; tools/test.sh builds them first). Without them the test
//! says so and checks nothing, except under CI, where it fails. Its own test binary: a real node
//! is one per machine (fixed namespace and addresses).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::real::*;
use common::*;
use inference_operator::crd::InferenceService;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn images() -> Vec<String> {
    let mut images = ["inference-server", "inference-operator", "resnet50-demo"]
        .map(image)
        .to_vec();
    images.extend(pipeline_images());
    images
}

/// The custom-metrics pipeline's images, adapter then Prometheus (hack/build-metrics-adapter.sh:
/// Go builds cached by version, so a warm call only prints the tags).
fn pipeline_images() -> Vec<String> {
    let script = repo_file("hack/build-metrics-adapter.sh");
    let out = Command::new(&script)
        .output()
        .expect("hack/build-metrics-adapter.sh");
    assert!(
        out.status.success(),
        "hack/build-metrics-adapter.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tags: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(tags.len(), 2, "{tags:?}");
    tags
}

/// POST /predict with a JPEG body: (status, JSON body).
async fn predict(url: String, image: Vec<u8>) -> (u16, Value) {
    tokio::task::spawn_blocking(move || {
        let mut resp = http_agent(Duration::from_secs(30))
            .post(&url)
            .header("Content-Type", "image/jpeg")
            .send(&image[..])
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_charts_operator_runs_an_inference_service_that_predicts_through_kube_proxy() {
    let Some(cluster) = real_cluster(images(), false) else {
        return;
    };
    let t0 = Instant::now();
    let client = cluster.client().await;
    let node = NODE;

    // The operator from its chart: a pod of the operator image under the chart's ServiceAccount.
    let chart: PathBuf = repo_file("charts/inference-operator");
    ok(&helm(
        &[
            "install",
            "inference-operator",
            chart.to_str().unwrap(),
            "--namespace",
            "inference-system",
            "--create-namespace",
            "--wait",
            "--timeout",
            "180s",
        ],
        Some(&cluster.kubeconfig()),
    ));
    let ops: Api<Pod> = Api::namespaced(client.clone(), "inference-system");
    let op_pods = ops.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(op_pods.len(), 1, "{op_pods:#?}");
    let op = &op_pods[0];
    let op_spec = op.spec.as_ref().unwrap();
    assert_eq!(op_spec.node_name.as_deref(), Some(node));
    assert_eq!(
        op_spec.service_account_name.as_deref(),
        Some("inference-operator")
    );
    assert_eq!(
        op_spec.containers[0].image.as_deref(),
        Some(image("inference-operator").as_str())
    );
    eprintln!(
        "operator pod {} Running on {node} after {:.1}s",
        op.metadata.name.as_deref().unwrap_or_default(),
        t0.elapsed().as_secs_f32()
    );

    // An InferenceService of the demo image, through the operator in the cluster.
    let ns = "demo";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), ns);
    // The demo's own file, as make demo applies it (its image must be the one make images made).
    let text = std::fs::read_to_string(repo_file("examples/resnet50-demo.yaml")).unwrap();
    let isvc: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(isvc["spec"]["image"], json!(image("resnet50-demo")));
    isvcs
        .patch(
            "resnet50",
            &PatchParams::apply("real-node-test").force(),
            &Patch::Apply(&isvc),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let got = isvcs.get("resnet50").await.unwrap();
        if cond_of(&got, "Ready").0 == "True" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not Ready after 240 s: {}",
            status_json(&got)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "InferenceService Ready after {:.1}s",
        t0.elapsed().as_secs_f32()
    );

    // Ready means one replica serves; both are Ready soon after (a busy machine: a few seconds).
    let deploy: Api<Deployment> = Api::namespaced(client.clone(), ns);
    test_cluster::wait_for("both replicas Ready", Duration::from_secs(120), || async {
        let d = deploy.get("resnet50").await.ok()?;
        (d.status?.ready_replicas? == 2).then_some(())
    })
    .await;
    // Its pods run on the kubelet, restricted, with the operator's probes and drain.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(pods.len(), 2);
    for p in &pods {
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(node));
        let sc = spec.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        let c = &spec.containers[0];
        assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
        assert!(
            c.lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref())
                .is_some()
        );
        let ip = p.status.as_ref().unwrap().pod_ip.as_deref().unwrap();
        assert!(ip.starts_with("198.18.0."), "pod IP {ip}");
    }
    // A prediction through the Service's ClusterIP: kube-proxy's DNAT in the node's namespace.
    let svc: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc = svc.get("resnet50").await.unwrap();
    let spec = svc.spec.unwrap();
    let ip = spec.cluster_ip.unwrap();
    let port = spec.ports.unwrap()[0].port;
    let (code, body) = predict(format!("http://{ip}:{port}/predict"), cat_jpg()).await;
    assert_eq!(code, 200, "{body}");
    let preds = body["predictions"].as_array().expect("predictions");
    assert_eq!(preds.len(), 5, "{body}");
    eprintln!(
        "prediction through ClusterIP {ip}:{port} after {:.1}s: {}",
        t0.elapsed().as_secs_f32(),
        preds[0]
    );

    // From a client pod, by the Service's DNS name: CoreDNS, then the ClusterIP. busybox's wget
    // posts text only (it stops at the first NUL byte), so the photo goes base64 in an Open
    // Inference Protocol v2 request, with Triton's classification extension for the top 5.
    let client_image = String::from_utf8(
        Command::new(repo_file("hack/build-node-addons.sh"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .lines()
    .find(|l| l.contains("/busybox:"))
    .expect("the client image")
    .to_string();
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), ns);
    use base64::Engine as _;
    let request = json!({
        "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                    "data": [base64::engine::general_purpose::STANDARD.encode(cat_jpg())]}],
        "outputs": [{"name": "logits", "parameters": {"classification": 5}}],
    });
    let cm = k8s_openapi::api::core::v1::ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("photo".into()),
            ..Default::default()
        },
        data: Some([("cat.json".to_string(), request.to_string())].into()),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let pod = json!({
        "metadata": {"name": "client"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "client", "image": client_image, "imagePullPolicy": "Never",
                "command": ["/bin/busybox", "wget", "-q", "-O", "-", "--header",
                            "Content-Type: application/json", "--post-file", "/photo/cat.json",
                            format!("http://resnet50.{ns}.svc.cluster.local/v2/models/resnet50/infer")],
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "readOnlyRootFilesystem": true,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "photo", "mountPath": "/photo"}],
            }],
            "volumes": [{"name": "photo", "configMap": {"name": "photo"}}],
        }
    });
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod).unwrap(),
        )
        .await
        .unwrap();
    let phase = test_cluster::wait_for(
        "the client pod to finish",
        Duration::from_secs(90),
        || async {
            let p = pods_api.get("client").await.ok()?;
            let phase = p.status?.phase?;
            (phase == "Succeeded" || phase == "Failed").then_some(phase)
        },
    )
    .await;
    let logs = pods_api.logs("client", &Default::default()).await.unwrap();
    assert_eq!(phase, "Succeeded", "client pod: {logs}");
    let answer: Value = serde_json::from_str(&logs).unwrap_or_else(|e| panic!("{e}: {logs}"));
    // "score:index:label", best first: the same classes /predict gave through the ClusterIP.
    let top5: Vec<i64> = answer["outputs"][0]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{logs}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap()
                .split(':')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let want: Vec<i64> = preds
        .iter()
        .map(|p| p["class_id"].as_i64().unwrap())
        .collect();
    assert_eq!(top5, want, "{logs}");
    eprintln!(
        "prediction from a client pod via resnet50.{ns}.svc.cluster.local after {:.1}s",
        t0.elapsed().as_secs_f32()
    );

    // metrics-server: the resource metrics API the HPA reads has both server pods' CPU.
    let metrics = test_cluster::wait_for(
        "pod metrics from metrics-server",
        Duration::from_secs(120),
        || async {
            let ar = kube::core::ApiResource {
                group: "metrics.k8s.io".into(),
                version: "v1beta1".into(),
                api_version: "metrics.k8s.io/v1beta1".into(),
                kind: "PodMetrics".into(),
                plural: "pods".into(),
            };
            let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let lp = ListParams::default()
                .labels("serving.inference-server.dev/inferenceservice=resnet50");
            let v = serde_json::to_value(api.list(&lp).await.ok()?).ok()?;
            (v["items"].as_array()?.len() == 2).then_some(v)
        },
    )
    .await;
    for item in metrics["items"].as_array().unwrap() {
        let cpu = &item["containers"][0]["usage"]["cpu"];
        assert!(cpu.is_string(), "{item}");
    }
    eprintln!(
        "metrics.k8s.io has both pods after {:.1}s",
        t0.elapsed().as_secs_f32()
    );
    let url = format!("http://{ip}:{port}/predict");
    hpa_scales_out_under_load_and_back(&isvcs, &url, t0).await;
    hpa_scales_on_the_request_rate(cluster, &client, &isvcs, ns, &url, t0).await;
    ok(&helm(
        &[
            "uninstall",
            "inference-operator",
            "--namespace",
            "inference-system",
        ],
        Some(&cluster.kubeconfig()),
    ));
}

fn ready_replicas(i: &InferenceService) -> i32 {
    i.status.as_ref().map_or(0, |s| s.ready_replicas)
}

/// Waits until the HPA has scaled `resnet50` out and the new pods are Ready; the count.
async fn scaled_out(isvcs: &Api<InferenceService>, what: &str) -> i32 {
    test_cluster::wait_for(what, Duration::from_secs(240), || async {
        let i = isvcs.get("resnet50").await.ok()?;
        (i.spec.replicas > 1 && ready_replicas(&i) > 1).then_some(i.spec.replicas)
    })
    .await
}

/// Waits until the HPA has scaled `resnet50` back to one replica.
async fn scaled_in(isvcs: &Api<InferenceService>, what: &str, timeout: Duration) {
    test_cluster::wait_for(what, timeout, || async {
        let i = isvcs.get("resnet50").await.ok()?;
        (i.spec.replicas == 1).then_some(())
    })
    .await
}

/// CPU autoscaling for real: metrics-server's pod CPU → the HPA controller → the
/// InferenceService's scale subresource → the Deployment. Load from this machine through the
/// ClusterIP scales it out; without load it scales back in (short windows here; the examples
/// carry the seed's 60/300 s).
async fn hpa_scales_out_under_load_and_back(isvcs: &Api<InferenceService>, url: &str, t0: Instant) {
    // A merge patch: an apply by the same field manager without the rest of the spec would
    // drop the fields it no longer names.
    let patch = json!({
        "spec": {"autoscaling": {
            "minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10,
                                        "policies": [{"type": "Pods", "value": 2, "periodSeconds": 10}]}},
        }}
    });
    isvcs
        .patch("resnet50", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    // Idle, the HPA takes the two replicas of the demo's file down to minReplicas first.
    test_cluster::wait_for(
        "the HPA to scale in to 1 while idle",
        Duration::from_secs(240),
        || async {
            let i = isvcs.get("resnet50").await.ok()?;
            (i.spec.replicas == 1 && ready_replicas(&i) == 1).then_some(())
        },
    )
    .await;
    eprintln!(
        "HPA: idle, down to 1 replica at {:.1}s",
        t0.elapsed().as_secs_f32()
    );
    let load_start = Instant::now();
    let load = Load::start(url, 3);
    let scaled = scaled_out(isvcs, "the HPA to scale out under load").await;
    let out_after = load_start.elapsed();
    let report = load.stop();
    let (ok, failed) = (report.ok, report.failures.len());
    let load_end = Instant::now();
    scaled_in(
        isvcs,
        "the HPA to scale back in without load",
        Duration::from_secs(240),
    )
    .await;
    eprintln!(
        "HPA: load from {:.1}s; {scaled} replicas, Ready {:.1}s into the load ({ok} requests answered \
         200, {failed} not); back to 1 replica {:.1}s after the load stopped",
        (load_start - t0).as_secs_f32(),
        out_after.as_secs_f32(),
        load_end.elapsed().as_secs_f32()
    );
    assert!(ok > 0);
}

/// Request-rate autoscaling for real (the seed's ALBRequestCountPerTarget): Prometheus scrapes
/// the servers' `ml_inference_requests_total`; the custom-metrics adapter (hack/metrics-adapter,
/// on the library prometheus-adapter is built on) serves `ml_inference_requests_per_second` per
/// pod with the rule the chart ships (`monitoring.adapterRules`, turned on here by a `helm
/// upgrade`); the HPA of `targetRequestsPerSecond` reads it through the aggregated
/// custom.metrics.k8s.io API and scales the InferenceService out under load and back after it.
async fn hpa_scales_on_the_request_rate(
    cluster: &test_cluster::Cluster,
    client: &kube::Client,
    isvcs: &Api<InferenceService>,
    ns: &str,
    url: &str,
    t0: Instant,
) {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;

    let images = pipeline_images();
    let yaml = std::fs::read_to_string(repo_file("hack/metrics-pipeline.yaml"))
        .unwrap()
        .replace("__ADAPTER_IMAGE__", &images[0])
        .replace("__PROMETHEUS_IMAGE__", &images[1]);
    test_cluster::apply_yaml(client, &yaml, None)
        .await
        .unwrap_or_else(|e| panic!("applying hack/metrics-pipeline.yaml: {e:#}"));
    let chart: PathBuf = repo_file("charts/inference-operator");
    ok(&helm(
        &[
            "upgrade",
            "inference-operator",
            chart.to_str().unwrap(),
            "--namespace",
            "inference-system",
            "--reuse-values",
            "--set",
            "monitoring.adapterRules.enabled=true",
            "--set",
            "monitoring.adapterRules.namespace=monitoring",
            "--wait",
            "--timeout",
            "180s",
        ],
        Some(&cluster.kubeconfig()),
    ));
    let t = Instant::now();
    let apiservices: Api<APIService> = Api::all(client.clone());
    test_cluster::wait_for(
        "custom.metrics.k8s.io (the adapter) to be Available",
        Duration::from_secs(240),
        || async {
            let s = apiservices
                .get("v1beta2.custom.metrics.k8s.io")
                .await
                .ok()?
                .status?;
            s.conditions?
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True")
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "request rate: Prometheus and the adapter up, custom.metrics.k8s.io Available {:.1}s after the apply",
        t.elapsed().as_secs_f32()
    );

    // The request rate alone: 2 requests/s per pod, short windows.
    let patch = json!({
        "spec": {"autoscaling": {
            "minReplicas": 1, "maxReplicas": 3,
            "targetCPUUtilizationPercentage": null, "targetRequestsPerSecond": 2,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10,
                                        "policies": [{"type": "Pods", "value": 2, "periodSeconds": 10}]}},
        }}
    });
    isvcs
        .patch("resnet50", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let rate = || async {
        let hpa = hpas.get("resnet50").await.ok()?;
        let metric = hpa
            .spec?
            .metrics?
            .into_iter()
            .find(|m| m.type_ == "Pods")?
            .pods?
            .metric
            .name;
        let current = hpa
            .status?
            .current_metrics?
            .into_iter()
            .find(|m| m.type_ == "Pods")?
            .pods?;
        assert_eq!(current.metric.name, metric);
        let v = current.current.average_value?.0;
        Some(k8s_openapi_quantity_to_f64(&v))
    };
    let idle = test_cluster::wait_for(
        "the HPA to read ml_inference_requests_per_second",
        Duration::from_secs(240),
        || async { rate().await },
    )
    .await;
    eprintln!(
        "request rate: the HPA reads ml_inference_requests_per_second = {idle:.2}/s per pod at idle, {:.1}s after the apply",
        t.elapsed().as_secs_f32()
    );
    assert!(idle < 2.0, "idle rate {idle}");

    let load_start = Instant::now();
    let load = Load::start(url, 2);
    let seen = test_cluster::wait_for(
        "the HPA to see the load's request rate",
        Duration::from_secs(240),
        || async { rate().await.filter(|r| *r > 2.0) },
    )
    .await;
    let seen_after = load_start.elapsed();
    let scaled = scaled_out(isvcs, "the HPA to scale out on the request rate").await;
    let out_after = load_start.elapsed();
    let report = load.stop();
    let load_end = Instant::now();
    scaled_in(
        isvcs,
        "the HPA to scale back in on the request rate",
        Duration::from_secs(300),
    )
    .await;
    eprintln!(
        "request rate: load from {:.1}s; the HPA read {seen:.2}/s per pod {:.1}s into it; {scaled} replicas Ready \
         {:.1}s into it ({} requests answered 200, {} failed); back to 1 replica {:.1}s after it stopped",
        (load_start - t0).as_secs_f32(),
        seen_after.as_secs_f32(),
        out_after.as_secs_f32(),
        report.ok,
        report.failures.len(),
        load_end.elapsed().as_secs_f32()
    );
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert!(report.ok > 0);
}

/// A quantity as the HPA writes it (`1500m`, `2`, `2500u`…) as a number.
fn k8s_openapi_quantity_to_f64(q: &str) -> f64 {
    let (digits, scale) = match q.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let scale = match &q[i..] {
                "n" => 1e-9,
                "u" => 1e-6,
                "m" => 1e-3,
                "k" => 1e3,
                "M" => 1e6,
                other => panic!("unexpected quantity suffix {other} in {q}"),
            };
            (&q[..i], scale)
        }
        None => (q, 1.0),
    };
    digits
        .parse::<f64>()
        .unwrap_or_else(|e| panic!("quantity {q}: {e}"))
        * scale
}
