//! Tests of the generated CustomResourceDefinition, without a cluster:
//! - `crds/` (and the Helm chart's copy, if present) match what `crdgen` generates;
//! - the schema is structural, every field has a description, the subresources and columns are set;
//! - fixtures under `tests/fixtures/` pass the schema, and each `invalid/` fixture is rejected
//!   with the message its `# expect:` line names. OpenAPI checks (minimum, maximum, pattern,
//!   enum, required) run in a small validator below; CEL rules run in kube-cel, the same rule
//!   language the API server evaluates. The `# expect:` strings are phrased as the API server
//!   phrases them, so the cluster tests can reuse the fixtures.

use std::path::{Path, PathBuf};

use inference_operator::crd::{self, InferenceService};
use inference_operator::validate;
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

fn load(path: &Path) -> (Value, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let expect = text
        .lines()
        .find_map(|l| l.strip_prefix("# expect: "))
        .unwrap_or_default()
        .to_string();
    let value: Value =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (value, expect)
}

fn schema() -> Value {
    let crd = serde_json::to_value(crd::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn rbac_files_are_up_to_date() {
    let hint = "run `make crds` and commit the result";
    for (name, text) in inference_operator::rbac::files() {
        let path = repo_root().join("rbac").join(name);
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; {hint}", path.display()));
        assert!(on_disk == text, "{} is stale: {hint}", path.display());
    }
}

#[test]
fn crd_files_are_up_to_date() {
    let generated = crd::crd_yaml();
    let name = crd::crd_file_name();
    let hint = "run `make crds` (or `cargo run -p inference-operator --bin crdgen -- --rbac rbac --chart charts/inference-operator crds`) and commit the result";
    let main = repo_root().join("crds").join(&name);
    let on_disk = std::fs::read_to_string(&main)
        .unwrap_or_else(|e| panic!("{}: {e}; {hint}", main.display()));
    assert!(on_disk == generated, "{} is stale: {hint}", main.display());
    let chart_dir = repo_root().join("charts/inference-operator");
    let chart = chart_dir.join("crds").join(&name);
    let on_disk = std::fs::read_to_string(&chart)
        .unwrap_or_else(|e| panic!("{}: {e}; {hint}", chart.display()));
    assert!(on_disk == generated, "{} is stale: {hint}", chart.display());
    let rules = chart_dir.join("files/rbac.yaml");
    let on_disk = std::fs::read_to_string(&rules)
        .unwrap_or_else(|e| panic!("{}: {e}; {hint}", rules.display()));
    assert!(
        on_disk == inference_operator::rbac::chart_rules_yaml(),
        "{} is stale: {hint}",
        rules.display()
    );
}

#[test]
fn crd_names_subresources_and_columns() {
    let crd = serde_json::to_value(crd::crd()).unwrap();
    let spec = &crd["spec"];
    assert_eq!(
        crd["metadata"]["name"],
        "inferenceservices.serving.inference-server.dev"
    );
    assert_eq!(spec["group"], "serving.inference-server.dev");
    assert_eq!(spec["scope"], "Namespaced");
    assert_eq!(spec["names"]["kind"], "InferenceService");
    assert_eq!(spec["names"]["shortNames"], serde_json::json!(["infsvc"]));
    let v = &spec["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(v["served"], true);
    assert_eq!(v["storage"], true);
    assert!(v["subresources"]["status"].is_object());
    assert_eq!(
        v["subresources"]["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
    assert_eq!(
        v["subresources"]["scale"]["statusReplicasPath"],
        ".status.replicas"
    );
    assert_eq!(
        v["subresources"]["scale"]["labelSelectorPath"],
        ".status.selector"
    );
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for c in ["Ready", "Replicas", "URL", "Age"] {
        assert!(columns.contains(&c), "missing column {c}: {columns:?}");
    }
}

/// Walks every schema node with its path.
fn walk<'a>(node: &'a Value, path: String, f: &mut dyn FnMut(&str, &'a Value)) {
    f(&path, node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            walk(v, format!("{path}.{k}"), f);
        }
    }
    if let Some(items) = node.get("items") {
        walk(items, format!("{path}[]"), f);
    }
    if let Some(ap) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(ap, format!("{path}{{}}"), f);
    }
}

#[test]
fn every_field_has_a_description() {
    let schema = schema();
    let mut missing = Vec::new();
    walk(
        &schema["properties"]["spec"],
        "spec".into(),
        &mut |path, node| {
            if !path.ends_with("[]") && !path.ends_with("{}") && node.get("description").is_none() {
                missing.push(path.to_string());
            }
        },
    );
    walk(
        &schema["properties"]["status"],
        "status".into(),
        &mut |path, node| {
            if !path.ends_with("[]") && !path.ends_with("{}") && node.get("description").is_none() {
                missing.push(path.to_string());
            }
        },
    );
    assert!(
        missing.is_empty(),
        "fields without a description (kubectl explain shows nothing): {missing:#?}"
    );
}

#[test]
fn schema_is_structural() {
    let schema = schema();
    let mut problems = Vec::new();
    walk(&schema, String::new(), &mut |path, node| {
        let typed = node.get("type").is_some()
            || node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
            || node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        if !typed {
            problems.push(format!("{path}: no type"));
        }
        for k in ["$ref", "definitions", "$defs", "const"] {
            if node.get(k).is_some() {
                problems.push(format!("{path}: has {k}"));
            }
        }
        for k in ["anyOf", "oneOf", "allOf"] {
            if let Some(list) = node.get(k).and_then(Value::as_array) {
                for sub in list {
                    for banned in [
                        "type",
                        "description",
                        "default",
                        "nullable",
                        "items",
                        "properties",
                    ] {
                        if sub.get(banned).is_some() {
                            problems.push(format!("{path}: {k} branch sets {banned}"));
                        }
                    }
                }
            }
        }
    });
    assert!(
        problems.is_empty(),
        "not a structural schema: {problems:#?}"
    );
    let yaml = crd::crd_yaml();
    assert!(
        yaml.len() < 256 * 1024,
        "CRD is {} bytes: too big for client-side apply",
        yaml.len()
    );
}

#[test]
fn cel_rules_compile() {
    let compiled = kube_cel::compile_schema(&schema());
    let errors: Vec<String> = compiled
        .compilation_errors()
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let mut rules = 0;
    walk(&schema(), String::new(), &mut |_, node| {
        rules += node
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
    });
    assert!(rules >= 12, "only {rules} CEL rules");
}

// ---- A small OpenAPI v3 validator: what the API server checks besides CEL ------------------

fn type_ok(node: &Value, v: &Value) -> bool {
    if node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return v.is_i64() || v.is_u64() || v.is_string();
    }
    if v.is_null() {
        return node.get("nullable") == Some(&Value::Bool(true));
    }
    match node.get("type").and_then(Value::as_str) {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    }
}

fn openapi_errors(node: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    if !type_ok(node, v) {
        out.push(format!(
            "{path}: Invalid value: {v}: {path} in body must be of type {}",
            node["type"]
        ));
        return;
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = node.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            out.push(format!("{path}: Invalid value: {v}: {path} in body should be greater than or equal to {min}"));
        }
        if let Some(max) = node.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            out.push(format!(
                "{path}: Invalid value: {v}: {path} in body should be less than or equal to {max}"
            ));
        }
    }
    if let Some(s) = v.as_str() {
        if let Some(enums) = node.get("enum").and_then(Value::as_array)
            && !enums.contains(v)
        {
            out.push(format!(
                "{path}: Unsupported value: {v}: supported values: {enums:?}"
            ));
        }
        if let Some(p) = node.get("pattern").and_then(Value::as_str)
            && !regex::Regex::new(p).unwrap().is_match(s)
        {
            out.push(format!(
                "{path}: Invalid value: {v}: {path} in body should match '{p}'"
            ));
        }
        let len = s.chars().count() as u64;
        if node
            .get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len > m)
        {
            out.push(format!(
                "{path}: Too long: may not be longer than {}",
                node["maxLength"]
            ));
        }
        if node
            .get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
        {
            out.push(format!(
                "{path}: Invalid value: {v}: {path} in body should be at least {} chars long",
                node["minLength"]
            ));
        }
    }
    if let Some(obj) = v.as_object() {
        for req in node
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let req = req.as_str().unwrap();
            if !obj.contains_key(req) {
                out.push(format!(
                    "{}: Required value",
                    if path.is_empty() {
                        req.to_string()
                    } else {
                        format!("{path}.{req}")
                    }
                ));
            }
        }
        for (k, child) in obj {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if let Some(sub) = node.get("properties").and_then(|ps| ps.get(k)) {
                openapi_errors(sub, child, &p, out);
            } else if let Some(ap) = node.get("additionalProperties").filter(|a| a.is_object()) {
                openapi_errors(ap, child, &p, out);
            }
        }
    }
    if let Some(items) = v.as_array() {
        if node
            .get("maxItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| items.len() as u64 > m)
        {
            out.push(format!(
                "{path}: Too many: {}: must have at most {} items",
                items.len(),
                node["maxItems"]
            ));
        }
        if let Some(sub) = node.get("items") {
            for (i, item) in items.iter().enumerate() {
                openapi_errors(sub, item, &format!("{path}[{i}]"), out);
            }
        }
    }
}

/// Everything the API server would say about `object` on create (OpenAPI first; CEL runs only
/// when the OpenAPI checks pass, as in the API server).
fn admission_errors(object: &Value) -> Vec<String> {
    let schema = schema();
    let mut errors = Vec::new();
    // metadata is validated by the API server's own rules, not the CRD schema.
    let mut body = object.clone();
    body.as_object_mut().unwrap().remove("metadata");
    openapi_errors(&schema, &body, "", &mut errors);
    if errors.is_empty()
        && let Err(cel) = kube_cel::validate(&schema, object, None)
    {
        errors.extend(
            cel.iter()
                .map(|e| format!("{}: Invalid value: \"object\": {}", e.field_path, e.message)),
        );
    }
    errors
}

/// `value` (read from `path`) is admitted, parses into our types and passes the operator's own
/// checks.
fn assert_admitted(value: Value, path: &Path) {
    let errors = admission_errors(&value);
    assert!(
        errors.is_empty(),
        "{} should be admitted: {errors:#?}",
        path.display()
    );
    let isvc: InferenceService = serde_json::from_value(value).unwrap();
    assert_eq!(validate::validate(&isvc), Ok(()), "{}", path.display());
}

#[test]
fn valid_fixtures_are_admitted() {
    for path in fixtures("") {
        assert_admitted(load(&path).0, &path);
    }
}

/// The InferenceServices under `examples/` are what users copy: they must be admitted and pass
/// the operator's checks too (the demo's template with its path placeholder filled in).
#[test]
fn examples_are_admitted() {
    let dir = repo_root().join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("__MODEL_PATH__", "/models/resnet50.safetensors");
        let value: Value =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if value["kind"] != "InferenceService" {
            continue;
        }
        assert_admitted(value, &path);
        checked += 1;
    }
    // local, hf, s3, cpu, autoscaling, gpu, nlb, spot, bluegreen.
    assert!(
        checked >= 9,
        "only {checked} example InferenceServices under {}",
        dir.display()
    );
}

#[test]
fn invalid_fixtures_are_rejected_with_a_clear_message() {
    let mut checked = 0;
    for path in fixtures("invalid") {
        let (value, expect) = load(&path);
        assert!(
            !expect.is_empty(),
            "{}: add a `# expect: <message>` line",
            path.display()
        );
        let errors = admission_errors(&value);
        assert!(
            errors.iter().any(|e| e.contains(&expect)),
            "{}: expected an error containing {expect:?}, got {errors:#?}",
            path.display()
        );
        // Defence in depth: the operator's validation rejects it too (when it parses at all).
        if let Ok(isvc) = serde_json::from_value::<InferenceService>(value) {
            assert!(
                validate::validate(&isvc).is_err(),
                "{}: validate.rs accepted it",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 20);
}

#[test]
fn schema_defaults_match_the_rust_defaults() {
    // Absent optional blocks and blocks with omitted fields mean the same thing.
    use inference_operator::crd::{
        AutoscalingSpec, RolloutSpec, SchedulingSpec, ServiceSpec, TerminationSpec,
    };
    assert_eq!(
        serde_json::from_str::<ServiceSpec>("{}").unwrap(),
        ServiceSpec::default()
    );
    assert_eq!(
        serde_json::from_str::<RolloutSpec>("{}").unwrap(),
        RolloutSpec::default()
    );
    assert_eq!(
        serde_json::from_str::<TerminationSpec>("{}").unwrap(),
        TerminationSpec::default()
    );
    assert_eq!(
        serde_json::from_str::<SchedulingSpec>("{}").unwrap(),
        SchedulingSpec::default()
    );
    let a: AutoscalingSpec = serde_json::from_str(r#"{"maxReplicas": 1}"#).unwrap();
    assert_eq!(a, AutoscalingSpec::default());
    // The schema carries the same defaults, so `kubectl get -o yaml` shows them.
    let s = schema();
    let spec = &s["properties"]["spec"]["properties"];
    assert_eq!(spec["service"]["properties"]["port"]["default"], 80);
    assert_eq!(
        spec["service"]["properties"]["type"]["default"],
        "ClusterIP"
    );
    assert_eq!(spec["rollout"]["properties"]["maxSurge"]["default"], "25%");
    assert_eq!(
        spec["rollout"]["properties"]["maxUnavailable"]["default"],
        0
    );
    assert_eq!(
        spec["termination"]["properties"]["gracePeriodSeconds"]["default"],
        45
    );
    assert_eq!(
        spec["autoscaling"]["properties"]["minReplicas"]["default"],
        1
    );
    // An absent replicas is 1 in the schema too, so the scale subresource never reads 0 for it.
    assert_eq!(spec["replicas"]["default"], 1);
}
