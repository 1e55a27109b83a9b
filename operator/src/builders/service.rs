//! The Service in front of the server pods.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec as K8sServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{PORT_NAME, child_meta, non_empty, selector_labels, service_spec};
use crate::crd::{InferenceService, ServiceType};

/// Builds the Service: `port` → the pods' `http` port, selecting on the stable labels only.
pub fn build(isvc: &InferenceService) -> Service {
    let svc = service_spec(isvc);
    let mut meta = child_meta(isvc);
    meta.annotations = non_empty(svc.annotations.clone());
    let exposed = svc.type_ != ServiceType::ClusterIP;
    Service {
        metadata: meta,
        spec: Some(K8sServiceSpec {
            type_: Some(svc.type_.as_str().into()),
            selector: Some(selector_labels(isvc)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: svc.port,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                node_port: if exposed { svc.node_port } else { None },
            }]),
            load_balancer_class: if svc.type_ == ServiceType::LoadBalancer {
                svc.load_balancer_class.clone()
            } else {
                None
            },
            load_balancer_source_ranges: if svc.type_ == ServiceType::LoadBalancer {
                svc.load_balancer_source_ranges.clone().and_then(non_empty)
            } else {
                None
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The port list to write to `existing` before applying `desired`, when a hand edit changed the
/// key (`port`, `protocol`) of one of our ports: server-side apply then sees the edited entry as
/// another manager's and would add ours next to it, two ports with the same name, which the API
/// server rejects; so the edited copy has to be replaced first. `None` when no port needs it.
/// Ports the operator does not know (other names) are kept.
pub fn repaired_ports(existing: &Service, desired: &Service) -> Option<Vec<ServicePort>> {
    let ports = |s: &Service| {
        s.spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default()
    };
    let (have, want) = (ports(existing), ports(desired));
    let key = |p: &ServicePort| (p.port, p.protocol.clone().unwrap_or_else(|| "TCP".into()));
    let stale = |p: &ServicePort| {
        want.iter()
            .any(|w| w.name.is_some() && w.name == p.name && key(w) != key(p))
    };
    if !have.iter().any(stale) {
        return None;
    }
    let mut repaired: Vec<ServicePort> = have.into_iter().filter(|p| !stale(p)).collect();
    for w in want {
        if !repaired.iter().any(|p| key(p) == key(&w)) {
            repaired.push(w);
        }
    }
    Some(repaired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::test_support::fixture;

    #[test]
    fn default_is_cluster_ip_on_port_80() {
        let isvc = fixture("minimal.yaml");
        let s = build(&isvc);
        assert_eq!(s.metadata.name.as_deref(), Some("resnet50"));
        assert!(s.metadata.owner_references.is_some());
        assert!(s.metadata.annotations.is_none());
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!(port.port, 80);
        assert_eq!(port.target_port, Some(IntOrString::String("http".into())));
        assert_eq!(port.node_port, None);
        assert_eq!(spec.selector.unwrap(), selector_labels(&isvc));
        assert!(
            spec.cluster_ip.is_none(),
            "never claim server-allocated fields"
        );
    }

    #[test]
    fn load_balancer_with_aws_annotations() {
        let isvc = fixture("loadbalancer.yaml");
        let s = build(&isvc);
        let ann = s.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            ann["service.beta.kubernetes.io/aws-load-balancer-scheme"],
            "internet-facing"
        );
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(
            spec.load_balancer_class.as_deref(),
            Some("service.k8s.aws/nlb")
        );
        assert_eq!(
            spec.load_balancer_source_ranges.unwrap(),
            vec!["198.18.0.0/15".to_string()]
        );
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!((port.port, port.node_port), (8000, Some(30080)));
    }

    #[test]
    fn hand_edited_port_is_repaired() {
        let isvc = fixture("minimal.yaml");
        let desired = build(&isvc);
        assert_eq!(repaired_ports(&desired, &desired), None);
        let mut edited = desired.clone();
        let extra = ServicePort {
            name: Some("debug".into()),
            port: 9090,
            ..Default::default()
        };
        {
            let ports = edited.spec.as_mut().unwrap().ports.as_mut().unwrap();
            ports[0].port = 9999;
            ports.push(extra.clone());
        }
        let repaired = repaired_ports(&edited, &desired).unwrap();
        assert_eq!(repaired.len(), 2);
        assert_eq!(repaired[0], extra, "other ports are kept");
        assert_eq!(repaired[1], desired.spec.unwrap().ports.unwrap()[0]);
        // A port of another name is not ours to repair.
        let mut other = build(&isvc);
        other.spec.as_mut().unwrap().ports = Some(vec![extra]);
        let mut with_both = other.clone();
        with_both
            .spec
            .as_mut()
            .unwrap()
            .ports
            .as_mut()
            .unwrap()
            .push(build(&isvc).spec.unwrap().ports.unwrap()[0].clone());
        assert_eq!(repaired_ports(&with_both, &build(&isvc)), None);
    }
}
