//! The cloud examples users copy are checked offline, each by the validator of the tool that
//! consumes it: `examples/eksctl/cluster.yaml` against eksctl's JSON schema
//! (`tools/validate_eksctl_example.py`), `examples/ecs/*.json` against botocore's service
//! models for the AWS calls they feed (`tools/validate_ecs_examples.py`). Each validator also
//! breaks its files in memory and fails if a broken copy passes. The Kubernetes manifests under
//! `examples/` are checked by the API server itself (tests/cluster.rs, dry run) and by tests/crd.rs.
//!
//! Needs a Python with botocore, jsonschema and PyYAML: `EXAMPLES_PYTHON` (tools/test.sh sets
//! it to the lint venv's). Without it the tests say so and check nothing, except under CI,
//! where they fail.

use std::path::Path;
use std::process::Command;

fn run_validator(script: &str) {
    let Ok(python) = std::env::var("EXAMPLES_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "EXAMPLES_PYTHON is not set"
        );
        eprintln!("SKIPPED: EXAMPLES_PYTHON is not set (tools/test.sh sets it)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(python)
        .arg(root.join("tools").join(script))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "{script} failed:\n{text}");
}

#[test]
fn eksctl_cluster_config_matches_eksctls_schema() {
    run_validator("validate_eksctl_example.py");
}

#[test]
fn ecs_files_match_botocores_service_models() {
    run_validator("validate_ecs_examples.py");
}
