//! The operator as a ServiceAccount under exactly the RBAC it ships (`rbac/`, generated from
//! `operator/src/rbac.rs`), not as the cluster's admin: first cluster-wide (ClusterRole +
//! ClusterRoleBinding, watching every namespace), then namespaced (`--namespace`, the same rules
//! as a Role, nothing cluster-wide). Each mode creates, edits (autoscaling off: a delete) and
//! reports status without one `forbidden`.
//!
//! Its own test binary, so its own control plane: a cluster-wide operator would otherwise
//! reconcile the other tests' namespaces.

mod common;

use std::time::Duration;

use common::*;
use inference_operator::rbac;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

const REACT: Duration = Duration::from_secs(30);

/// Creates an autoscaled InferenceService, waits for its children and status, turns autoscaling
/// off (the HPA is deleted) and checks the operator's health and log.
async fn exercise(env: &Env, op: &Operator, name: &str) {
    let auto =
        json!({"model": {"name": "resnet50"}, "autoscaling": {"minReplicas": 2, "maxReplicas": 3}});
    env.apply_isvc(name, auto).await;
    env.wait_obj::<HorizontalPodAutoscaler>(name, "created", REACT, |_| true)
        .await;
    env.wait_obj::<PodDisruptionBudget>(name, "created", REACT, |_| true)
        .await;
    env.wait_isvc(name, "status written", REACT, |i| {
        observed_current(i) && i.status.as_ref().is_some_and(|s| s.replicas == 2)
    })
    .await;
    env.apply_isvc(name, json!({"model": {"name": "resnet50"}}))
        .await;
    env.wait_gone::<HorizontalPodAutoscaler>(name, REACT).await;
    let events: Api<Event> = env.api();
    env.wait("a Created event", REACT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Created")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .then_some(())
    })
    .await;
    assert_eq!(op.http_get("/healthz").map(|r| r.0), Some(200));
    assert_eq!(op.http_get("/readyz").map(|r| r.0), Some(200));
    let log = std::fs::read_to_string(&op.log).unwrap();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the operator was refused something: {}",
        tail(&op.log, 40)
    );
}

#[tokio::test]
async fn runs_under_the_rbac_it_ships() {
    let mut env = Env::new(cluster(), "rbac").await;
    let ns = env.ns.clone();
    let kubeconfig = service_account_kubeconfig(&env).await;
    test_cluster::apply_file(
        &env.client,
        repo_file("rbac/leader-election-role.yaml"),
        Some(&ns),
    )
    .await
    .unwrap();
    apply_json(
        &env,
        binding(
            "RoleBinding",
            "inference-operator-leader-election",
            "Role",
            rbac::LEASE_ROLE_NAME,
            &ns,
        ),
        Some(&ns),
    )
    .await;

    // Cluster-wide: the shipped ClusterRole, bound cluster-wide; every namespace watched.
    let crb = format!("inference-operator-{ns}");
    grant_cluster_wide(&env, &crb).await;
    let lease_flags = [
        "--lease-namespace",
        ns.as_str(),
        "--lease-name",
        "rbac-test",
    ];
    let mut op = Operator::start_as(kubeconfig.clone(), "cluster-wide", None, &lease_flags);
    env.logs.push(op.log.clone());
    exercise(&env, &op, "cluster-wide").await;
    op.terminate(Duration::from_secs(10));

    // Namespaced: no cluster-wide grant at all; the same rules as a Role in the namespace.
    let crbs: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(env.client.clone());
    crbs.delete(&crb, &DeleteParams::default()).await.unwrap();
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = env.api();
    roles
        .patch(
            rbac::ROLE_NAME,
            &PatchParams::apply("cluster-test").force(),
            &Patch::Apply(rbac::namespaced_role(&ns)),
        )
        .await
        .unwrap();
    apply_json(
        &env,
        binding(
            "RoleBinding",
            "inference-operator",
            "Role",
            rbac::ROLE_NAME,
            &ns,
        ),
        Some(&ns),
    )
    .await;
    let op = Operator::start_as(kubeconfig, "namespaced", Some(&ns), &lease_flags);
    env.logs.push(op.log.clone());
    exercise(&env, &op, "namespaced").await;
    drop(op);
    env.finish().await;
}
