//! A container's environment, as the kubelet builds it: `envFrom` then `env`, `$(VAR)`
//! expansion, `valueFrom` (fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;

/// The env of `c` in `pod` (whose IP is `pod_ip`). Err: a message for the container's
/// `CreateContainerConfigError` waiting state.
pub async fn resolve(
    client: &kube::Client,
    pod: &Pod,
    c: &Container,
    pod_ip: &str,
    node_cpus: u64,
    node_memory: u64,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut vars: Vec<(String, String)> = Vec::new();
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        vars.retain(|(name, _)| *name != k);
        vars.push((k, v));
    };

    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data: Option<BTreeMap<String, String>> = if let Some(r) = &from.config_map_ref {
            match get_config_map(client, ns, &r.name).await? {
                Some(cm) => Some(cm),
                None if r.optional == Some(true) => None,
                None => return Err(format!("configmap \"{}\" not found", r.name)),
            }
        } else if let Some(r) = &from.secret_ref {
            match get_secret(client, ns, &r.name).await? {
                Some(s) => Some(s),
                None if r.optional == Some(true) => None,
                None => return Err(format!("secret \"{}\" not found", r.name)),
            }
        } else {
            None
        };
        for (k, v) in data.into_iter().flatten() {
            set(&mut vars, format!("{prefix}{k}"), v);
        }
    }

    for e in c.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                Some(field_ref(pod, &f.field_path, pod_ip)?)
            } else if let Some(r) = &from.resource_field_ref {
                Some(resource_field_ref(
                    c,
                    &r.resource,
                    r.divisor.as_ref().map(|q| q.0.as_str()),
                    node_cpus,
                    node_memory,
                )?)
            } else if let Some(r) = &from.config_map_key_ref {
                match get_config_map(client, ns, &r.name).await? {
                    Some(data) => match data.get(&r.key) {
                        Some(v) => Some(v.clone()),
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                r.key, r.name
                            ));
                        }
                    },
                    None if r.optional == Some(true) => None,
                    None => return Err(format!("configmap \"{}\" not found", r.name)),
                }
            } else if let Some(r) = &from.secret_key_ref {
                match get_secret(client, ns, &r.name).await? {
                    Some(data) => match data.get(&r.key) {
                        Some(v) => Some(v.clone()),
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                r.key, r.name
                            ));
                        }
                    },
                    None if r.optional == Some(true) => None,
                    None => return Err(format!("secret \"{}\" not found", r.name)),
                }
            } else {
                return Err(format!("env {}: unsupported valueFrom", e.name));
            }
        } else {
            Some(expand(e.value.as_deref().unwrap_or(""), &vars))
        };
        if let Some(v) = value {
            set(&mut vars, e.name.clone(), v);
        }
    }
    Ok(vars)
}

async fn get_config_map(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("reading configmap \"{name}\": {e}"))?;
    Ok(cm.map(|cm| {
        let mut data = cm.data.unwrap_or_default();
        for (k, v) in cm.binary_data.unwrap_or_default() {
            data.insert(k, String::from_utf8_lossy(&v.0).into_owned());
        }
        data
    }))
}

async fn get_secret(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("reading secret \"{name}\": {e}"))?;
    Ok(s.map(|s| {
        let mut data: BTreeMap<String, String> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect();
        data.extend(s.string_data.unwrap_or_default());
        data
    }))
}

/// `metadata.name`, `metadata.labels['app']`, `status.podIP`, ...
pub fn field_ref(pod: &Pod, path: &str, pod_ip: &str) -> Result<String, String> {
    let md = &pod.metadata;
    let spec = pod.spec.as_ref();
    let subscript = |prefix: &str| -> Option<String> {
        let rest = path
            .strip_prefix(prefix)?
            .strip_prefix('[')?
            .strip_suffix(']')?;
        Some(rest.trim_matches(|c| c == '\'' || c == '"').to_string())
    };
    if let Some(k) = subscript("metadata.labels") {
        return Ok(md
            .labels
            .as_ref()
            .and_then(|l| l.get(&k))
            .cloned()
            .unwrap_or_default());
    }
    if let Some(k) = subscript("metadata.annotations") {
        return Ok(md
            .annotations
            .as_ref()
            .and_then(|l| l.get(&k))
            .cloned()
            .unwrap_or_default());
    }
    Ok(match path {
        "metadata.name" => md.name.clone().unwrap_or_default(),
        "metadata.namespace" => md.namespace.clone().unwrap_or_default(),
        "metadata.uid" => md.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => crate::node::HOST_IP.to_string(),
        _ => return Err(format!("unsupported fieldRef fieldPath {path}")),
    })
}

fn resource_field_ref(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
    node_cpus: u64,
    node_memory: u64,
) -> Result<String, String> {
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resourceFieldRef {resource}"))?;
    let res = c.resources.as_ref();
    let value = match kind {
        "limits" => res
            .and_then(|r| r.limits.as_ref())
            .and_then(|m| m.get(name)),
        "requests" => res
            .and_then(|r| r.requests.as_ref())
            .and_then(|m| m.get(name)),
        _ => return Err(format!("unsupported resourceFieldRef {resource}")),
    };
    let amount = match (value, name) {
        (Some(q), _) => {
            parse_quantity(&q.0).ok_or_else(|| format!("cannot parse quantity {}", q.0))?
        }
        // no limit: the node's allocatable, as the kubelet does; no request: 0
        (None, "cpu") if kind == "limits" => node_cpus as f64,
        (None, "memory") if kind == "limits" => node_memory as f64,
        (None, "cpu" | "memory" | "ephemeral-storage") => 0.0,
        _ => return Err(format!("unsupported resourceFieldRef {resource}")),
    };
    let div = match divisor {
        Some(d) => parse_quantity(d)
            .filter(|d| *d > 0.0)
            .ok_or_else(|| format!("bad divisor {d}"))?,
        None => 1.0,
    };
    Ok(format!("{}", (amount / div).ceil() as u64))
}

/// Kubernetes quantities: `250m`, `2`, `1.5Gi`, `512M`, `1e3`.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0f64.powi(2),
        "Gi" => 1024.0f64.powi(3),
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        _ => return None,
    };
    Some(num.parse::<f64>().ok()? * mult)
}

/// `$(VAR)` → the value of an earlier variable; `$$(VAR)` → `$(VAR)`; unknown references stay.
pub fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(after2) = after.strip_prefix('$') {
            out.push('$');
            rest = after2;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_the_kubelet() {
        let vars = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "two".to_string()),
        ];
        assert_eq!(expand("x$(A)-$(B)", &vars), "x1-two");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$(C) $A $(", &vars), "$(C) $A $(");
    }

    #[test]
    fn parses_quantities() {
        assert_eq!(parse_quantity("250m"), Some(0.25));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("1x"), None);
    }

    #[test]
    fn field_refs() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "a"}},
            "spec": {"containers": [], "nodeName": "n"}
        }))
        .unwrap();
        assert_eq!(field_ref(&pod, "metadata.name", "1.2.3.4").unwrap(), "p");
        assert_eq!(field_ref(&pod, "metadata.labels['app']", "").unwrap(), "a");
        assert_eq!(
            field_ref(&pod, "status.podIP", "1.2.3.4").unwrap(),
            "1.2.3.4"
        );
        assert!(field_ref(&pod, "spec.bogus", "").is_err());
    }
}
