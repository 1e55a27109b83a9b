//! The Helm chart (`charts/inference-operator/`) with the real helm (built from its Go module
//! with the control plane) and the real API server: lint, the values schema, the rendered RBAC
//! against `operator/src/rbac.rs`, install / upgrade / uninstall, and the operator running under
//! the chart's ServiceAccount (its process with that ServiceAccount's token: pods need the real
//! node of a later issue to run).
//!
//! Its own test binary, so its own control plane: the chart installs cluster-wide objects.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use inference_operator::rbac;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

fn chart() -> PathBuf {
    repo_file("charts/inference-operator")
}

/// `helm template` → the rendered objects.
fn render(sets: &[&str]) -> Vec<Value> {
    let c = chart();
    let mut args = vec!["template", "rel", c.to_str().unwrap(), "--namespace", "ops"];
    for s in sets {
        args.extend(["--set", s]);
    }
    let yaml = ok(&helm(&args, None));
    serde_saphyr::from_multiple::<Value>(&yaml)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn rules(rules: &[rbac::Rule]) -> Value {
    serde_json::to_value(rbac::policy_rules(rules)).unwrap()
}

#[test]
fn chart_versions_are_the_workspace_version() {
    let chart: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    let docs = render(&[]);
    let dep = find(&docs, "Deployment", "rel-inference-operator").unwrap();
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["image"],
        format!(
            "ghcr.io/inference-server/inference-operator:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(
            &format!(
                "--default-image={}",
                inference_operator::builders::default_image()
            )
            .as_str()
        ),
        "{args:?}"
    );
}

#[test]
fn lint_strict_with_defaults_and_with_every_option_on() {
    let c = chart();
    ok(&helm(&["lint", "--strict", c.to_str().unwrap()], None));
    let all_on = c.join("ci/all-on-values.yaml");
    ok(&helm(
        &[
            "lint",
            "--strict",
            c.to_str().unwrap(),
            "-f",
            all_on.to_str().unwrap(),
        ],
        None,
    ));
}

#[test]
fn a_mistyped_value_is_refused_by_the_schema() {
    let c = chart();
    for (set, says) in [
        ("replicaCount=two", "replicaCount"),
        ("imagee.tag=1", "imagee"),
        ("logFormat=yaml", "logFormat"),
        ("leaderElection.enabled=maybe", "leaderElection"),
        ("port=80", "port"),
    ] {
        let out = helm(
            &["template", "rel", c.to_str().unwrap(), "--set", set],
            None,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(
            err.contains("values don't meet the specifications of the schema")
                && err.contains(says),
            "{set}: {err}"
        );
    }
}

/// Every leaf of values.yaml is in the README's table, and the table names nothing else.
#[test]
fn the_readme_lists_every_value() {
    fn leaves(prefix: &str, v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&p, v, out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }
    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let mut want = BTreeSet::new();
    leaves("", &values, &mut want);
    // Free-form maps are documented as a whole.
    for free in ["resources", "podSecurityContext", "securityContext"] {
        want.retain(|k| !k.starts_with(&format!("{free}.")));
        want.insert(free.to_string());
    }
    let readme = std::fs::read_to_string(chart().join("README.md")).unwrap();
    let listed: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    assert_eq!(
        want, listed,
        "charts/inference-operator/README.md's value table vs values.yaml"
    );
}

/// The chart grants exactly the generated rules: cluster-wide by default, as a Role in the
/// watched namespace (and nothing cluster-wide for the operator) with watchNamespace.
#[test]
fn the_rendered_rbac_is_the_operators_rules() {
    let docs = render(&["replicaCount=2"]);
    let cr = find(&docs, "ClusterRole", "rel-inference-operator").expect("ClusterRole");
    assert_eq!(cr["rules"], rules(rbac::RULES));
    let crb = find(&docs, "ClusterRoleBinding", "rel-inference-operator").unwrap();
    assert_eq!(crb["subjects"][0]["name"], "rel-inference-operator");
    assert_eq!(crb["subjects"][0]["namespace"], "ops");
    let lease = find(&docs, "Role", "rel-inference-operator-leader-election").unwrap();
    assert_eq!(lease["metadata"]["namespace"], "ops");
    assert_eq!(lease["rules"], rules(rbac::LEASE_RULES));
    let edit = find(&docs, "ClusterRole", "rel-inference-operator:edit").unwrap();
    let generated = serde_json::to_value(&rbac::aggregate_roles()[0].rules).unwrap();
    assert_eq!(edit["rules"], generated);

    let docs = render(&[
        "watchNamespace=models",
        "rbac.aggregateToDefaultRoles=false",
    ]);
    let role = find(&docs, "Role", "rel-inference-operator").expect("Role");
    assert_eq!(role["metadata"]["namespace"], "models");
    assert_eq!(role["rules"], rules(rbac::RULES));
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding"),
        "namespaced mode grants something cluster-wide"
    );
    // One replica: no leader election, and no overlap on rollout.
    assert!(find(&docs, "Role", "rel-inference-operator-leader-election").is_none());
    let dep = find(&docs, "Deployment", "rel-inference-operator").unwrap();
    assert_eq!(dep["spec"]["strategy"]["type"], "Recreate");
    let args = dep["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--leader-election=false") && args.contains("--namespace=models"),
        "{args}"
    );
}

/// Verbs: neither wildcards nor `update` on what server-side apply patches, no secrets, no
/// nodes.
#[test]
fn the_rules_are_least_privilege() {
    let docs = render(&[]);
    let cr = find(&docs, "ClusterRole", "rel-inference-operator").unwrap();
    let rules: Vec<PolicyRule> = serde_json::from_value(cr["rules"].clone()).unwrap();
    for r in &rules {
        let res = r.resources.clone().unwrap_or_default();
        assert!(!r.verbs.iter().any(|v| v == "*" || v == "update"), "{r:?}");
        assert!(
            !res.iter()
                .any(|x| x == "*" || x == "secrets" || x == "nodes"),
            "{r:?}"
        );
        assert!(
            !r.api_groups
                .clone()
                .unwrap_or_default()
                .iter()
                .any(|g| g == "*"),
            "{r:?}"
        );
    }
}

async fn can(
    env: &Env,
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    ns: Option<&str>,
) -> bool {
    let sars: Api<SubjectAccessReview> = Api::all(env.client.clone());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: ns.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let r = sars.create(&PostParams::default(), &review).await.unwrap();
    r.status.unwrap().allowed
}

/// The args the chart gives the operator, for running its process here: the listen address
/// moved to a free loopback port (the pod's own network is not ours).
fn chart_args(dep: &Deployment) -> Vec<String> {
    let c = &dep
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    c.args
        .clone()
        .unwrap()
        .into_iter()
        // The harness sets these itself (its own port, text logs, a test default image).
        .filter(|a| {
            !["--listen=", "--log-format=", "--default-image="]
                .iter()
                .any(|f| a.starts_with(f))
        })
        .collect()
}

#[tokio::test]
async fn install_run_under_its_service_account_upgrade_uninstall() {
    let mut env = Env::new(cluster(), "chart").await;
    let kubeconfig = env.cluster.kubeconfig();
    let ops = env.ns.clone();
    let c = chart();
    let chart_path = c.to_str().unwrap();

    // Every option on, checked by the API server without being created: the Prometheus
    // Operator's CRDs first, so the ServiceMonitor, PodMonitor and PrometheusRule are checked too.
    let monitoring_crds = script_output("hack/monitoring-crds.sh", &[]);
    for kind in ["servicemonitors", "podmonitors", "prometheusrules"] {
        let file = monitoring_crds.join(format!("monitoring.coreos.com_{kind}.yaml"));
        test_cluster::apply_file(&env.client, &file, None)
            .await
            .unwrap();
    }
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(env.client.clone());
    for kind in ["servicemonitors", "podmonitors", "prometheusrules"] {
        let name = format!("{kind}.monitoring.coreos.com");
        env.wait(
            &format!("{name} established"),
            Duration::from_secs(30),
            || async {
                crds.get(&name)
                    .await
                    .ok()?
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await;
    }
    // (helm's own --dry-run=server only renders with lookups: the objects go to the API server
    // here, as a server-side apply dry run.)
    let all_on = c.join("ci/all-on-values.yaml");
    for ns in ["models", "monitoring"] {
        let yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
        test_cluster::apply_yaml(&env.client, &yaml, None)
            .await
            .unwrap();
    }
    let rendered = ok(&helm(
        &[
            "template",
            "dry",
            chart_path,
            "-n",
            &ops,
            "-f",
            all_on.to_str().unwrap(),
        ],
        None,
    ));
    let checked = test_cluster::dry_run_yaml(&env.client, &rendered, Some(&ops))
        .await
        .unwrap_or_else(|e| panic!("the API server refused the chart with every option on: {e:#}"));
    let kinds: BTreeSet<String> = checked
        .iter()
        .filter_map(|o| o.types.as_ref().map(|t| t.kind.clone()))
        .collect();
    for kind in [
        "Deployment",
        "Role",
        "ClusterRole",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
    ] {
        assert!(
            kinds.contains(kind),
            "{kind} not rendered with every option on: {kinds:?}"
        );
    }

    // Cluster-wide (the defaults).
    ok(&helm(
        &["install", "rel", chart_path, "-n", &ops, "--wait=false"],
        Some(&kubeconfig),
    ));
    let name = "rel-inference-operator";
    let deps: Api<Deployment> = env.api();
    let dep = deps.get(name).await.expect("the operator Deployment");
    env.api::<ServiceAccount>()
        .get(name)
        .await
        .expect("the ServiceAccount");
    env.api::<Service>()
        .get(&format!("{name}-metrics"))
        .await
        .expect("the metrics Service");
    let crs: Api<ClusterRole> = Api::all(env.client.clone());
    let cr = crs.get(name).await.expect("the ClusterRole");
    assert_eq!(serde_json::to_value(cr.rules).unwrap(), rules(rbac::RULES));
    let crbs: Api<ClusterRoleBinding> = Api::all(env.client.clone());
    crbs.get(name).await.expect("the ClusterRoleBinding");

    // What the ServiceAccount may and may not do, asked of the API server.
    let user = format!("system:serviceaccount:{ops}:{name}");
    for (verb, group, res) in [
        ("list", "serving.inference-server.dev", "inferenceservices"),
        ("watch", "serving.inference-server.dev", "inferenceservices"),
        (
            "patch",
            "serving.inference-server.dev",
            "inferenceservices/status",
        ),
        ("create", "apps", "deployments"),
        ("patch", "apps", "deployments"),
        ("delete", "policy", "poddisruptionbudgets"),
        ("create", "events.k8s.io", "events"),
    ] {
        assert!(
            can(&env, &user, verb, group, res, Some("anywhere")).await,
            "{verb} {res}"
        );
    }
    for (verb, group, res) in [
        ("get", "", "secrets"),
        ("list", "", "secrets"),
        ("update", "", "nodes"),
        ("update", "apps", "deployments"),
        (
            "delete",
            "serving.inference-server.dev",
            "inferenceservices",
        ),
        ("create", "coordination.k8s.io", "leases"),
    ] {
        assert!(
            !can(&env, &user, verb, group, res, Some("anywhere")).await,
            "{verb} {res}"
        );
    }

    // The operator under that ServiceAccount, with the chart's flags, reconciles.
    let sa_kubeconfig = token_kubeconfig(&env, &ops, name).await;
    let args = chart_args(&dep);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = Operator::start_as(sa_kubeconfig, "chart", None, &args);
    env.logs.push(op.log.clone());
    env.apply_isvc("resnet", json!({"model": {"name": "resnet50"}}))
        .await;
    let react = Duration::from_secs(60);
    env.wait_reconciled("resnet", react).await;
    let log = std::fs::read_to_string(&op.log).unwrap();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "{}",
        tail(&op.log, 40)
    );
    drop(op);

    // helm upgrade with a changed value rolls the operator (a new pod template).
    let before = deps.get(name).await.unwrap();
    ok(&helm(
        &[
            "upgrade",
            "rel",
            chart_path,
            "-n",
            &ops,
            "--set",
            "concurrency=4",
            "--wait=false",
        ],
        Some(&kubeconfig),
    ));
    let after = deps.get(name).await.unwrap();
    assert!(after.metadata.generation > before.metadata.generation);
    assert!(chart_args(&after).contains(&"--concurrency=4".to_string()));

    // helm uninstall removes everything but the CRD (and so the InferenceServices).
    ok(&helm(
        &["uninstall", "rel", "-n", &ops, "--wait"],
        Some(&kubeconfig),
    ));
    env.wait_gone::<Deployment>(name, react).await;
    assert!(crs.get_opt(name).await.unwrap().is_none());
    assert!(crbs.get_opt(name).await.unwrap().is_none());
    assert!(
        env.api::<ServiceAccount>()
            .get_opt(name)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        env.isvcs().get_opt("resnet").await.unwrap().is_some(),
        "the CRD went"
    );

    // Namespaced: a Role in the watched namespace; nothing elsewhere.
    let models = test_cluster::create_namespace(&env.client, "chart-models")
        .await
        .unwrap();
    ok(&helm(
        &[
            "install",
            "ns",
            chart_path,
            "-n",
            &ops,
            "--wait=false",
            "--set",
            &format!("watchNamespace={models}"),
        ],
        Some(&kubeconfig),
    ));
    let ns_name = "ns-inference-operator";
    let roles: Api<Role> = Api::namespaced(env.client.clone(), &models);
    assert_eq!(
        serde_json::to_value(roles.get(ns_name).await.unwrap().rules).unwrap(),
        rules(rbac::RULES)
    );
    assert!(crs.get_opt(ns_name).await.unwrap().is_none());
    let user = format!("system:serviceaccount:{ops}:{ns_name}");
    assert!(can(&env, &user, "create", "apps", "deployments", Some(&models)).await);
    assert!(!can(&env, &user, "create", "apps", "deployments", Some(&ops)).await);
    assert!(
        !can(
            &env,
            &user,
            "list",
            "serving.inference-server.dev",
            "inferenceservices",
            None
        )
        .await
    );
    ok(&helm(
        &["uninstall", "ns", "-n", &ops, "--wait"],
        Some(&kubeconfig),
    ));
    env.finish().await;
}

// ---- Alerts (files/alerts.yaml) ------------------------------------------------------------

/// Where a metric name may come from: the server's and the operator's metric sources, or the
/// standard exporters the chart README lists.
struct MetricSources {
    server: String,
    operator: String,
    readme: String,
}

impl MetricSources {
    fn load() -> Self {
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        MetricSources {
            server: read(repo_file("inference/src/metrics.rs")),
            operator: read(repo_file("operator/src/metrics.rs")),
            readme: read(chart().join("README.md")),
        }
    }

    /// Every metric `expr` names is exported by the server or the operator, or listed.
    fn check(&self, what: &str, expr: &str) {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            let base = ["_bucket", "_total", "_sum", "_count"]
                .iter()
                .fold(word, |w, s| w.strip_suffix(s).unwrap_or(w));
            if let Some(m) = base.strip_prefix("ml_inference_") {
                assert!(
                    self.server.contains(&format!("\"ml_inference_{m}")),
                    "{what}: {word} is not exported by the server"
                );
            } else if let Some(m) = base.strip_prefix("inference_operator_") {
                assert!(
                    self.operator.contains(&format!("\"{m}\"")),
                    "{what}: {word} is not exported by the operator"
                );
            } else if word.starts_with("kube_") || word.starts_with("container_") {
                assert!(
                    self.readme.contains(&format!("`{word}`")),
                    "{what}: {word} is not listed in the chart README"
                );
            }
        }
    }
}

fn alerts() -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(chart().join("files/alerts.yaml")).unwrap())
        .unwrap()
}

/// `promtool check rules` and `promtool test rules`: each alert fires when it should and stays
/// silent when it should not (tests/alerts_test.yaml).
#[test]
fn alerts_pass_promtool_check_and_unit_tests() {
    let promtool = script_output("hack/promtool.sh", &[]);
    for args in [
        &["check", "rules", "files/alerts.yaml"][..],
        &["test", "rules", "tests/alerts_test.yaml"][..],
    ] {
        let out = Command::new(&promtool)
            .current_dir(chart())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every alert: severity, summary, description, a runbook section that exists, a unit test; every
/// metric it names is exported by the server or the operator, or is a listed standard one.
#[test]
fn every_alert_is_documented_tested_and_on_real_metrics() {
    let runbooks = std::fs::read_to_string(repo_file("docs/runbooks.md")).unwrap();
    let tests = std::fs::read_to_string(chart().join("tests/alerts_test.yaml")).unwrap();
    let metrics = MetricSources::load();
    let mut names = BTreeSet::new();
    for group in alerts()["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            assert!(names.insert(name.to_string()), "{name} twice");
            let sev = rule["labels"]["severity"].as_str().unwrap_or_default();
            assert!(
                ["warning", "critical"].contains(&sev),
                "{name}: severity {sev:?}"
            );
            for a in ["summary", "description", "runbook_url"] {
                assert!(
                    rule["annotations"][a]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{name}: {a}"
                );
            }
            let anchor = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap()
                .rsplit('#')
                .next()
                .unwrap();
            assert_eq!(anchor, name.to_lowercase(), "{name}: runbook anchor");
            assert!(
                runbooks.contains(&format!("\n## {name}\n")),
                "{name}: no section in docs/runbooks.md"
            );
            assert!(
                tests.contains(&format!("alertname: {name}\n")),
                "{name}: no promtool unit test"
            );
            assert!(
                metrics.readme.contains(&format!("| {name} |")),
                "{name}: not in the chart README"
            );
            metrics.check(name, rule["expr"].as_str().unwrap());
        }
    }
    assert!(names.len() >= 12, "{names:?}");
}

/// The PrometheusRule the chart renders carries files/alerts.yaml unchanged.
#[test]
fn the_prometheus_rule_is_the_alerts_file() {
    let docs = render(&["monitoring.prometheusRule.enabled=true"]);
    let rule = find(&docs, "PrometheusRule", "rel-inference-operator").expect("PrometheusRule");
    assert_eq!(rule["spec"]["groups"], alerts()["groups"]);
    assert!(
        find(&render(&[]), "PrometheusRule", "rel-inference-operator").is_none(),
        "on by default"
    );
}

// ---- Dashboard (dashboards/*.json) ----------------------------------------------------------

fn dashboard() -> (String, Value) {
    let text = std::fs::read_to_string(chart().join("dashboards/inference-service.json")).unwrap();
    let v = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    (text, v)
}

/// Every query of the dashboard, with Grafana's variables replaced by what Prometheus accepts.
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
                .replace("$namespace", ".*")
                .replace("$inferenceservice", ".*");
            out.push((format!("{} / {}", p["title"], t["refId"]), expr));
        }
    }
    out
}

#[test]
fn the_dashboard_is_well_formed() {
    let (_, d) = dashboard();
    assert_eq!(d["uid"], "inference-server-overview", "a stable uid");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 39);
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["name"] == "datasource"
        && v["type"] == "datasource"
        && v["query"] == "prometheus"));
    let mut ids = BTreeSet::new();
    let mut rows = 0;
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel id {} twice",
            p["id"]
        );
        if p["type"] == "row" {
            rows += 1;
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
        assert!(
            p["description"].as_str().is_some_and(|s| !s.is_empty()),
            "{}",
            p["title"]
        );
    }
    assert!(rows >= 4, "one row per concern");
    // The seed's widgets and the list, by the metric each needs.
    let text = d.to_string();
    for m in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "ml_inference_requests_total",
        "ml_inference_latency_seconds_bucket",
        "kube_deployment_status_replicas_available",
        "ml_inference_request_errors_total",
        "ml_inference_rejected_total",
        "ml_inference_queue_depth",
        "ml_inference_batch_size_sum",
        "ml_inference_preprocess_seconds_bucket",
        "ml_inference_queue_seconds_bucket",
        "ml_inference_model_seconds_bucket",
        "kube_horizontalpodautoscaler_spec_max_replicas",
        "ml_inference_model_load_seconds",
    ] {
        assert!(text.contains(m), "the dashboard shows nothing from {m}");
    }
}

/// Each query parses (promtool, as recording rules) and names only metrics the server or the
/// operator export, or standard ones the chart README lists.
#[test]
fn every_dashboard_query_parses_and_names_real_metrics() {
    let (_, d) = dashboard();
    let queries = dashboard_queries(&d);
    let metrics = MetricSources::load();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (what, expr)) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
        metrics.check(what, expr);
    }
    let file = tmp_dir().join(format!("dashboard-rules-{}.yaml", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    let out = Command::new(script_output("hack/promtool.sh", &[]))
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a dashboard query does not parse:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(file);
}

#[test]
fn the_dashboard_configmap_carries_the_file() {
    let (text, _) = dashboard();
    let docs = render(&["monitoring.grafanaDashboard.enabled=true"]);
    let cm = find(&docs, "ConfigMap", "rel-inference-operator-dashboards").expect("ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["data"]["inference-service.json"], text);
    assert!(
        find(
            &render(&[]),
            "ConfigMap",
            "rel-inference-operator-dashboards"
        )
        .is_none()
    );
}

/// The prometheus-adapter rule ships as a ConfigMap for `rules.existing`, in the namespace asked
/// for, holding `files/adapter-rules.yaml` unchanged; its metric is the one the operator's HPA
/// names by default, made from the counter the server exports. (tests/real_node.rs serves it
/// through a real custom metrics API and has the HPA scale on it.)
#[test]
fn the_adapter_rules_configmap_carries_the_file() {
    let text = std::fs::read_to_string(chart().join("files/adapter-rules.yaml")).unwrap();
    let docs = render(&[
        "monitoring.adapterRules.enabled=true",
        "monitoring.adapterRules.namespace=monitoring",
    ]);
    let cm = find(&docs, "ConfigMap", "rel-inference-operator-adapter-rules").expect("ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["data"]["config.yaml"], text);
    let config: Value = serde_saphyr::from_str(&text).unwrap();
    let rule = &config["rules"][0];
    assert_eq!(
        rule["name"]["as"],
        inference_operator::crd::DEFAULT_RPS_METRIC
    );
    assert!(
        rule["seriesQuery"]
            .as_str()
            .unwrap()
            .starts_with("ml_inference_requests_total{"),
        "{rule}"
    );
    let server_metrics = std::fs::read_to_string(repo_file("inference/src/metrics.rs")).unwrap();
    assert!(server_metrics.contains("\"ml_inference_requests_total\""));
    assert!(
        find(
            &render(&[]),
            "ConfigMap",
            "rel-inference-operator-adapter-rules"
        )
        .is_none()
    );
}
