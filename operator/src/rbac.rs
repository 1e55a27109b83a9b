//! The RBAC the operator needs, from one list: `crdgen` writes it to `rbac/` (a test fails when
//! that is stale), the Helm chart renders the same rules, and the cluster tests run the operator
//! under exactly these rules, cluster-wide and namespaced.
//!
//! Least privilege: server-side apply needs `create` + `patch` (never `update`); reads come from
//! watches (`list` + `watch`; `get` only for a child seen the first time); no wildcard, no
//! Secrets, no Nodes, no `inferenceservices/finalizers` (children carry no
//! `blockOwnerDeletion`).

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::crd::GROUP;

/// One rule: an API group, its resources and the verbs the operator uses on them.
pub struct Rule {
    pub api_group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    /// What the operator does with it (a comment in the generated file).
    pub why: &'static str,
}

const CHILD_VERBS: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];

/// Everything the operator does in the namespaces it watches.
pub const RULES: &[Rule] = &[
    Rule {
        api_group: GROUP,
        resources: &["inferenceservices"],
        verbs: &["get", "list", "watch"],
        why: "watch the InferenceServices",
    },
    Rule {
        api_group: GROUP,
        resources: &["inferenceservices/status"],
        verbs: &["patch"],
        why: "server-side apply of the status",
    },
    Rule {
        api_group: "apps",
        resources: &["deployments"],
        verbs: CHILD_VERBS,
        why: "children: watched, applied, deleted when no longer wanted",
    },
    Rule {
        api_group: "apps",
        resources: &["deployments/scale"],
        verbs: &["patch"],
        why: "blue/green: the serving colour follows the replica count without a new template, and the old colour is scaled to 0",
    },
    Rule {
        api_group: "",
        resources: &["services"],
        verbs: CHILD_VERBS,
        why: "children",
    },
    Rule {
        api_group: "autoscaling",
        resources: &["horizontalpodautoscalers"],
        verbs: CHILD_VERBS,
        why: "children",
    },
    Rule {
        api_group: "policy",
        resources: &["poddisruptionbudgets"],
        verbs: CHILD_VERBS,
        why: "children",
    },
    Rule {
        api_group: "",
        resources: &["pods"],
        verbs: &["list", "watch"],
        why: "the server pods' state (crash loops, pull errors) for the status",
    },
    Rule {
        api_group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
        why: "events about the InferenceServices",
    },
];

/// The leader-election Lease, in the operator's own namespace only.
pub const LEASE_RULES: &[Rule] = &[Rule {
    api_group: "coordination.k8s.io",
    resources: &["leases"],
    verbs: &["get", "create", "update"],
    why: "leader election",
}];

/// Name of the operator's ClusterRole (cluster-wide mode) or Role (namespaced mode).
pub const ROLE_NAME: &str = "inference-operator";
/// Name of the leader-election Role.
pub const LEASE_ROLE_NAME: &str = "inference-operator-leader-election";

pub fn policy_rules(rules: &[Rule]) -> Vec<PolicyRule> {
    rules
        .iter()
        .map(|r| PolicyRule {
            api_groups: Some(vec![r.api_group.into()]),
            resources: Some(r.resources.iter().map(|s| s.to_string()).collect()),
            verbs: r.verbs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .collect()
}

fn labels(extra: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    let mut l = BTreeMap::from([(
        "app.kubernetes.io/name".to_string(),
        "inference-operator".to_string(),
    )]);
    l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Some(l)
}

/// Cluster-wide mode: one ClusterRole, bound with a ClusterRoleBinding.
pub fn cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(ROLE_NAME.into()),
            labels: labels(&[]),
            ..Default::default()
        },
        rules: Some(policy_rules(RULES)),
        aggregation_rule: None,
    }
}

/// Namespaced mode (`--namespace`): the same rules as a Role in the watched namespace.
pub fn namespaced_role(namespace: &str) -> Role {
    Role {
        metadata: ObjectMeta {
            name: Some(ROLE_NAME.into()),
            namespace: Some(namespace.into()),
            labels: labels(&[]),
            ..Default::default()
        },
        rules: Some(policy_rules(RULES)),
    }
}

/// The Lease rules, in the operator's namespace.
pub fn lease_role(namespace: Option<&str>) -> Role {
    Role {
        metadata: ObjectMeta {
            name: Some(LEASE_ROLE_NAME.into()),
            namespace: namespace.map(Into::into),
            labels: labels(&[]),
            ..Default::default()
        },
        rules: Some(policy_rules(LEASE_RULES)),
    }
}

/// Whoever may create InferenceServices may in effect create Deployments (image, ServiceAccount,
/// env from Secrets of the namespace): these roles extend the built-in `edit`/`admin` and `view`
/// roles, so a namespace's editors get InferenceServices as they get Deployments, and no one else.
pub fn aggregate_roles() -> Vec<ClusterRole> {
    let role = |name: &str, aggregate: &[&str], verbs: &[&str]| ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: labels(&aggregate.iter().map(|a| (*a, "true")).collect::<Vec<_>>()),
            ..Default::default()
        },
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![GROUP.into()]),
                resources: Some(vec!["inferenceservices".into()]),
                verbs: verbs.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            PolicyRule {
                api_groups: Some(vec![GROUP.into()]),
                resources: Some(vec![
                    "inferenceservices/status".into(),
                    "inferenceservices/scale".into(),
                ]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..Default::default()
            },
        ]),
        aggregation_rule: None,
    };
    let mut edit = role(
        "inference-operator:edit",
        &[
            "rbac.authorization.k8s.io/aggregate-to-admin",
            "rbac.authorization.k8s.io/aggregate-to-edit",
        ],
        &[
            "get",
            "list",
            "watch",
            "create",
            "update",
            "patch",
            "delete",
            "deletecollection",
        ],
    );
    // `kubectl scale infsvc` for editors, as for Deployments.
    edit.rules.as_mut().unwrap().push(PolicyRule {
        api_groups: Some(vec![GROUP.into()]),
        resources: Some(vec!["inferenceservices/scale".into()]),
        verbs: vec!["update".into(), "patch".into()],
        ..Default::default()
    });
    let view = role(
        "inference-operator:view",
        &["rbac.authorization.k8s.io/aggregate-to-view"],
        &["get", "list", "watch"],
    );
    vec![edit, view]
}

/// The chart's copy of the rules (`charts/inference-operator/files/rbac.yaml`): its templates
/// render the ClusterRole (or Role), the Lease Role and the aggregated roles from this file, so
/// the chart grants exactly what this module lists.
pub fn chart_rules_yaml() -> String {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ChartRules {
        operator: Vec<PolicyRule>,
        leader_election: Vec<PolicyRule>,
        edit: Vec<PolicyRule>,
        view: Vec<PolicyRule>,
    }
    let mut aggregate = aggregate_roles()
        .into_iter()
        .map(|r| r.rules.unwrap_or_default());
    let rules = ChartRules {
        operator: policy_rules(RULES),
        leader_election: policy_rules(LEASE_RULES),
        edit: aggregate.next().unwrap_or_default(),
        view: aggregate.next().unwrap_or_default(),
    };
    format!(
        "# Generated by `make crds` (operator/src/rbac.rs). Do not edit.\n# operator: the operator's ClusterRole (or Role with watchNamespace); leaderElection: its\n# Lease Role; edit / view: InferenceServices for the built-in aggregated roles.\n{}",
        serde_saphyr::to_string(&rules).expect("RBAC rules serialize")
    )
}

/// One commented YAML document per object.
fn document<T: serde::Serialize>(comment: &str, obj: &T) -> String {
    let body = serde_saphyr::to_string(obj).expect("RBAC objects serialize");
    format!("# {comment}\n---\n{body}")
}

/// The files of `rbac/`: `(file name, contents)`.
pub fn files() -> Vec<(&'static str, String)> {
    const HEADER: &str = "# Generated by `make crds` (operator/src/rbac.rs). Do not edit.\n";
    let why = |rules: &[Rule]| {
        rules
            .iter()
            .map(|r| {
                format!(
                    "#   {}/{}: {} ({})",
                    if r.api_group.is_empty() {
                        "core"
                    } else {
                        r.api_group
                    },
                    r.resources.join(","),
                    r.verbs.join(","),
                    r.why
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    vec![
        (
            "operator-clusterrole.yaml",
            format!(
                "{HEADER}# Cluster-wide mode: bind with a ClusterRoleBinding to the operator's ServiceAccount.\n# Namespaced mode (--namespace): the same rules as a Role in the watched namespace.\n{}\n{}",
                why(RULES),
                document("ClusterRole", &cluster_role())
            ),
        ),
        (
            "leader-election-role.yaml",
            format!(
                "{HEADER}# In the operator's own namespace (kubectl apply -n <namespace>), bound with a RoleBinding.\n{}\n{}",
                why(LEASE_RULES),
                document("Role", &lease_role(None))
            ),
        ),
        (
            "aggregate-clusterroles.yaml",
            format!(
                "{HEADER}# InferenceServices for the built-in admin/edit and view roles.\n{}{}",
                document("ClusterRole", &aggregate_roles()[0]),
                document("ClusterRole", &aggregate_roles()[1])
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_privilege() {
        for rule in RULES.iter().chain(LEASE_RULES) {
            for v in rule.verbs {
                assert_ne!(*v, "*", "no wildcard verbs");
                if rule.api_group != "coordination.k8s.io" {
                    assert_ne!(
                        *v, "update",
                        "server-side apply patches: {:?}",
                        rule.resources
                    );
                }
            }
            for r in rule.resources {
                assert!(
                    !["*", "secrets", "nodes", "inferenceservices/finalizers"].contains(r),
                    "{r}"
                );
            }
        }
        // Pods are read only.
        let pods = RULES.iter().find(|r| r.resources == ["pods"]).unwrap();
        assert_eq!(pods.verbs, ["list", "watch"]);
    }

    #[test]
    fn aggregate_roles_extend_the_built_in_ones() {
        let roles = aggregate_roles();
        let l = roles[0].metadata.labels.as_ref().unwrap();
        assert_eq!(l["rbac.authorization.k8s.io/aggregate-to-edit"], "true");
        let l = roles[1].metadata.labels.as_ref().unwrap();
        assert_eq!(l["rbac.authorization.k8s.io/aggregate-to-view"], "true");
        assert!(
            !roles[1].rules.as_ref().unwrap()[0]
                .verbs
                .contains(&"create".to_string())
        );
    }
}
