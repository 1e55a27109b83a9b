//! Blue/green (`spec.rollout.strategy: BlueGreen`): the colours' Deployments, the Services'
//! selectors, and the pure decision of what one reconcile does ([`plan`]).
//!
//! State lives in the cluster, never in the operator: the Service's `color` selector says which
//! colour serves, each colour's Deployment carries the revision (a hash of its pod template) it
//! runs, and the Service's `promoted-at` annotation says when traffic last moved. A restarted
//! operator, or another replica after a leader change, picks up where the last one stopped.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::deployment::spec_replicas;
use super::{Config, child_name, deployment, service};
use crate::crd::{BlueGreenSpec, InferenceService, RolloutStrategy, ServiceType};

/// Pod label that tells the colours apart; the Services select on it.
pub const LABEL_COLOR: &str = "serving.inference-server.dev/color";
/// Deployment annotation: the revision (pod template hash) the colour runs.
pub const ANNOTATION_REVISION: &str = "serving.inference-server.dev/revision";
/// InferenceService annotation that promotes the preview when `autoPromote` is false: its value
/// must be the preview's revision, so a stale annotation never promotes a later spec.
pub const ANNOTATION_PROMOTE: &str = "serving.inference-server.dev/promote";
/// Service annotation: when it last moved to another colour (RFC 3339).
pub const ANNOTATION_PROMOTED_AT: &str = "serving.inference-server.dev/promoted-at";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    pub fn parse(s: &str) -> Option<Color> {
        match s {
            "blue" => Some(Color::Blue),
            "green" => Some(Color::Green),
            _ => None,
        }
    }

    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];
}

pub fn is_blue_green(isvc: &InferenceService) -> bool {
    super::rollout(isvc).strategy == RolloutStrategy::BlueGreen
}

pub fn settings(isvc: &InferenceService) -> BlueGreenSpec {
    super::rollout(isvc).blue_green.unwrap_or_default()
}

/// `<name>-blue` / `<name>-green`.
pub fn deployment_name(isvc: &InferenceService, color: Color) -> String {
    format!("{}-{}", child_name(isvc), color.as_str())
}

/// `<name>-preview`: the Service in front of the idle colour.
pub fn preview_name(isvc: &InferenceService) -> String {
    format!("{}-preview", child_name(isvc))
}

/// The revision of a Deployment as [`deployment::build`] makes it: FNV-1a (64 bit) of its pod
/// template's JSON, so equal specs give equal revisions in every operator build and process.
pub fn revision(built: &Deployment) -> String {
    let template = built.spec.as_ref().map(|s| &s.template);
    let h = crate::diff::fnv1a(&serde_json::to_vec(&template).unwrap_or_default());
    format!("{:010x}", h & 0xff_ffff_ffff)
}

/// The revision a stored colour Deployment runs.
pub fn revision_of(d: &Deployment) -> Option<&str> {
    d.metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_REVISION)
        .map(String::as_str)
}

/// One colour's Deployment: [`deployment::build`] with the colour in its name, selector and
/// pods, the revision annotation, and `replicas` pods.
pub fn deployment(
    isvc: &InferenceService,
    cfg: &Config,
    color: Color,
    replicas: i32,
) -> Deployment {
    let mut d = deployment::build(isvc, cfg);
    let rev = revision(&d);
    d.metadata.name = Some(deployment_name(isvc, color));
    d.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_REVISION.into(), rev);
    let spec = d.spec.as_mut().expect("build sets the spec");
    spec.replicas = Some(replicas);
    let color_label = (LABEL_COLOR.to_string(), color.as_str().to_string());
    spec.selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .extend([color_label.clone()]);
    spec.template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(BTreeMap::new)
        .extend([color_label]);
    d
}

/// The Service, selecting the pods of `color` (`None`: every pod, as with RollingUpdate), with
/// the time of the last promotion.
pub fn service(
    isvc: &InferenceService,
    color: Option<Color>,
    promoted_at: Option<&str>,
) -> Service {
    let mut svc = service::build(isvc);
    if let Some(color) = color {
        select(&mut svc, color);
    }
    if let Some(at) = promoted_at {
        svc.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(ANNOTATION_PROMOTED_AT.into(), at.into());
    }
    svc
}

/// `<name>-preview`: a ClusterIP Service on the same port, selecting the idle colour (what the
/// smoke request goes through, and what a user can test by hand before promoting).
pub fn preview_service(isvc: &InferenceService, idle: Color) -> Service {
    let mut svc = service::build(isvc);
    svc.metadata.name = Some(preview_name(isvc));
    svc.metadata.annotations = None;
    let spec = svc.spec.as_mut().expect("build sets the spec");
    spec.type_ = Some(ServiceType::ClusterIP.as_str().into());
    spec.load_balancer_class = None;
    spec.load_balancer_source_ranges = None;
    for p in spec.ports.iter_mut().flatten() {
        p.node_port = None;
    }
    select(&mut svc, idle);
    svc
}

/// The label the Deployment controller gives every pod: its ReplicaSet's template hash.
pub const LABEL_POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// While switching from RollingUpdate, before the first promotion: the `pod-template-hash` that
/// every running pod of the old Deployment shares (pods without a colour, not being deleted).
/// The Service's old selector would also match blue's pods as soon as they are ready, before
/// their smoke request; adding this hash keeps it on the old pods. `None` when they do not agree
/// (the old Deployment is itself mid-rollout) or there are none: the selector stays as it was.
pub fn plain_pods_hash(pods: &[Pod]) -> Option<String> {
    let mut hashes = pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none() && !p.labels().contains_key(LABEL_COLOR)
        })
        .map(|p| p.labels().get(LABEL_POD_TEMPLATE_HASH));
    let first = hashes.next()??;
    hashes.all(|h| h == Some(first)).then(|| first.clone())
}

/// Adds the old Deployment's pod-template-hash to the Service's selector (see [`plain_pods_hash`]).
pub fn pin_to_plain_pods(svc: &mut Service, hash: &str) {
    add_to_selector(svc, LABEL_POD_TEMPLATE_HASH, hash);
}

fn select(svc: &mut Service, color: Color) {
    add_to_selector(svc, LABEL_COLOR, color.as_str());
}

fn add_to_selector(svc: &mut Service, key: &str, value: &str) {
    svc.spec
        .as_mut()
        .expect("build sets the spec")
        .selector
        .get_or_insert_with(BTreeMap::new)
        .insert(key.into(), value.into());
}

/// The colour a stored Service selects, if any.
pub fn selected_color(svc: &Service) -> Option<Color> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()?
        .get(LABEL_COLOR)
        .and_then(|c| Color::parse(c))
}

/// The stored Service's last promotion time, as written.
pub fn promoted_at(svc: &Service) -> Option<&str> {
    svc.metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_PROMOTED_AT)
        .map(String::as_str)
}

/// Every pod of the Deployment's current template is ready and available, and the Deployment
/// controller has seen its latest spec.
pub fn rolled_out(d: &Deployment) -> bool {
    let want = spec_replicas(d);
    let Some(s) = &d.status else { return false };
    want > 0
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && s.updated_replicas == Some(want)
        && s.ready_replicas == Some(want)
        && s.available_replicas == Some(want)
        && s.replicas == Some(want)
}

/// The children as stored (only those this InferenceService controls).
#[derive(Clone, Copy, Debug, Default)]
pub struct Live<'a> {
    pub blue: Option<&'a Deployment>,
    pub green: Option<&'a Deployment>,
    /// The RollingUpdate Deployment `<name>`, while switching from that strategy.
    pub plain: Option<&'a Deployment>,
    pub service: Option<&'a Service>,
}

impl<'a> Live<'a> {
    pub fn of(&self, color: Color) -> Option<&'a Deployment> {
        match color {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }
}

/// Where the new spec is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The serving colour runs the spec.
    Steady,
    /// The idle colour is rolling the spec out.
    RollingOut(Color),
    /// The idle colour did not become ready within `progressDeadlineSeconds`.
    Stuck(Color, String),
    /// The idle colour runs the spec and is ready: smoke-test it, then promote.
    Ready(Color),
}

/// What one reconcile does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Colours applied with the spec's pod template and `replicas`.
    pub apply: Vec<Color>,
    /// Colours whose replica count changes, their template untouched.
    pub scale: Vec<(Color, i32)>,
    /// The colour the Service selects now (`None`: the RollingUpdate selector, every pod).
    pub serving: Option<Color>,
    /// The colour behind the preview Service.
    pub idle: Color,
    /// Keep the RollingUpdate Deployment: switching from that strategy, it serves until the
    /// first promotion and stays `scaleDownDelaySeconds` after it.
    pub keep_plain: bool,
    pub phase: Phase,
    /// Look again then (the end of the scale-down delay).
    pub requeue: Option<Duration>,
}

/// Seconds since the Service's last promotion, when it is younger than `delay`: what is left.
fn delay_left(live: &Live<'_>, delay: Duration, now: Timestamp) -> Option<Duration> {
    let at: Timestamp = live.service.and_then(promoted_at)?.parse().ok()?;
    let elapsed = now.as_second() - at.as_second();
    let left = delay.as_secs() as i64 - elapsed;
    (left > 0).then(|| Duration::from_secs(left as u64))
}

fn phase_of(live: &Live<'_>, color: Color, revision: &str) -> Phase {
    match live.of(color) {
        Some(d) if revision_of(d) == Some(revision) && rolled_out(d) => Phase::Ready(color),
        Some(d) if revision_of(d) == Some(revision) => match deployment::deadline_exceeded(d) {
            Some(message) => Phase::Stuck(color, message),
            None => Phase::RollingOut(color),
        },
        _ => Phase::RollingOut(color),
    }
}

/// Decides one reconcile of a blue/green InferenceService whose pod template hashes to
/// `revision` and wants `replicas` pods.
pub fn plan(
    live: &Live<'_>,
    revision: &str,
    replicas: i32,
    delay: Duration,
    now: Timestamp,
) -> Plan {
    let left = delay_left(live, delay, now);
    let serving = live.service.and_then(selected_color);
    let Some(active) = serving.filter(|c| live.of(*c).is_some()) else {
        if live.plain.is_some() && serving.is_none() {
            // Switching from RollingUpdate: blue is rolled out and smoke-tested while the old
            // Deployment serves through the Service's old selector.
            let mut scale = Vec::new();
            if live.green.is_some_and(|d| spec_replicas(d) > 0) {
                scale.push((Color::Green, 0));
            }
            return Plan {
                apply: vec![Color::Blue],
                scale,
                serving: None,
                idle: Color::Blue,
                keep_plain: true,
                phase: phase_of(live, Color::Blue, revision),
                requeue: None,
            };
        }
        // Nothing serves yet (a new object, or the serving colour was deleted by hand): the
        // spec goes live at once, there is no traffic to protect.
        let color = serving.unwrap_or(Color::Blue);
        return Plan {
            apply: vec![color],
            scale: Vec::new(),
            serving: Some(color),
            idle: color.other(),
            keep_plain: live.plain.is_some() && left.is_some(),
            phase: Phase::Steady,
            requeue: left,
        };
    };
    let idle = active.other();
    let active_dep = live.of(active).expect("filtered above");
    let keep_plain = live.plain.is_some() && left.is_some();
    if revision_of(active_dep) == Some(revision) || replicas == 0 {
        // The serving colour runs the spec (or nothing serves: replicas 0).
        let mut scale = Vec::new();
        let mut requeue = None;
        if live.of(idle).is_some_and(|d| spec_replicas(d) > 0) {
            match left {
                Some(left) => requeue = Some(left),
                None => scale.push((idle, 0)),
            }
        }
        if keep_plain {
            requeue = left;
        }
        return Plan {
            apply: vec![active],
            scale,
            serving: Some(active),
            idle,
            keep_plain,
            phase: Phase::Steady,
            requeue,
        };
    }
    // A new spec: it goes to the idle colour; the serving one keeps its template and follows the
    // replica count (the HPA scales the InferenceService).
    let mut scale = Vec::new();
    if spec_replicas(active_dep) != replicas {
        scale.push((active, replicas));
    }
    Plan {
        apply: vec![idle],
        scale,
        serving: Some(active),
        idle,
        keep_plain,
        phase: phase_of(live, idle, revision),
        requeue: keep_plain.then_some(left).flatten(),
    }
}

/// The Deployments of both colours, and the RollingUpdate one with `keep_plain` (switching
/// strategy, either way).
pub fn wanted_deployments(isvc: &InferenceService, keep_plain: bool) -> Vec<String> {
    let mut names: Vec<String> = Color::ALL
        .iter()
        .map(|c| deployment_name(isvc, *c))
        .collect();
    if keep_plain {
        names.push(child_name(isvc));
    }
    names
}

/// The one-line command that promotes the preview of `isvc` by hand.
pub fn promote_command(isvc: &InferenceService, revision: &str) -> String {
    format!(
        "kubectl -n {} annotate infsvc {} {ANNOTATION_PROMOTE}={revision} --overwrite",
        isvc.namespace().unwrap_or_else(|| "default".into()),
        isvc.name_any()
    )
}

/// The revision the promote annotation names, if any.
pub fn promote_annotation(isvc: &InferenceService) -> Option<&str> {
    isvc.metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_PROMOTE)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::test_support::from_yaml;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};

    const BG: &str = "apiVersion: serving.inference-server.dev/v1alpha1
kind: InferenceService
metadata: {name: resnet50}
spec:
  model: {name: resnet50}
  image: img:1
  replicas: 2
  rollout: {strategy: BlueGreen}
";

    fn cfg() -> Config {
        Config::default()
    }

    /// The colour's Deployment as the API server would show it once rolled out (`ready`) or not.
    fn stored(isvc: &InferenceService, color: Color, replicas: i32, ready: bool) -> Deployment {
        let mut d = deployment(isvc, &cfg(), color, replicas);
        d.metadata.generation = Some(1);
        let n = if ready { replicas } else { 0 };
        d.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(replicas),
            updated_replicas: Some(replicas),
            ready_replicas: Some(n),
            available_replicas: Some(n),
            ..Default::default()
        });
        d
    }

    fn now() -> Timestamp {
        "2026-11-28T06:00:00Z".parse().unwrap()
    }

    fn rev(isvc: &InferenceService) -> String {
        revision(&deployment::build(isvc, &cfg()))
    }

    const DELAY: Duration = Duration::from_secs(30);

    #[test]
    fn colours_have_their_own_selector_pods_and_revision() {
        let isvc = from_yaml(BG);
        let d = deployment(&isvc, &cfg(), Color::Green, 3);
        assert_eq!(d.metadata.name.as_deref(), Some("resnet50-green"));
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        let sel = spec.selector.match_labels.as_ref().unwrap();
        assert_eq!(sel.get(LABEL_COLOR).map(String::as_str), Some("green"));
        assert_eq!(
            sel.get(super::super::LABEL_SELECTOR).map(String::as_str),
            Some("resnet50")
        );
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert!(sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        // Both colours of one spec run one revision; another image is another revision.
        let blue = deployment(&isvc, &cfg(), Color::Blue, 3);
        assert_eq!(revision_of(&d), revision_of(&blue));
        assert_eq!(revision_of(&d), Some(rev(&isvc).as_str()));
        let other = from_yaml(&BG.replace("img:1", "img:2"));
        assert_ne!(rev(&other), rev(&isvc));
        // The replica count is not part of the revision.
        assert_eq!(
            rev(&from_yaml(&BG.replace("replicas: 2", "replicas: 5"))),
            rev(&isvc)
        );
    }

    #[test]
    fn services_select_the_active_and_the_idle_colour() {
        let isvc = from_yaml(BG);
        let main = service(&isvc, Some(Color::Blue), Some("2026-11-28T06:00:00Z"));
        assert_eq!(selected_color(&main), Some(Color::Blue));
        assert_eq!(promoted_at(&main), Some("2026-11-28T06:00:00Z"));
        let preview = preview_service(&isvc, Color::Green);
        assert_eq!(preview.metadata.name.as_deref(), Some("resnet50-preview"));
        assert_eq!(selected_color(&preview), Some(Color::Green));
        assert_eq!(
            preview.spec.as_ref().unwrap().type_.as_deref(),
            Some("ClusterIP")
        );
        // No colour: the RollingUpdate Service.
        assert_eq!(service(&isvc, None, None), service::build(&isvc));
    }

    #[test]
    fn a_new_object_serves_blue_at_once() {
        let isvc = from_yaml(BG);
        let p = plan(&Live::default(), &rev(&isvc), 2, DELAY, now());
        assert_eq!(p.apply, vec![Color::Blue]);
        assert_eq!(p.serving, Some(Color::Blue));
        assert_eq!(p.phase, Phase::Steady);
        assert!(!p.keep_plain);
    }

    #[test]
    fn a_new_spec_rolls_out_to_the_idle_colour_then_is_ready_to_promote() {
        let v1 = from_yaml(BG);
        let v2 = from_yaml(&BG.replace("img:1", "img:2"));
        let blue = stored(&v1, Color::Blue, 2, true);
        let main_svc = service(&v1, Some(Color::Blue), None);
        let live = Live {
            blue: Some(&blue),
            service: Some(&main_svc),
            ..Default::default()
        };
        let p = plan(&live, &rev(&v2), 2, DELAY, now());
        assert_eq!(p.apply, vec![Color::Green]);
        assert_eq!(p.serving, Some(Color::Blue));
        assert_eq!(p.phase, Phase::RollingOut(Color::Green));
        assert!(p.scale.is_empty());
        // Green rolling out, then stuck, then ready.
        let green = stored(&v2, Color::Green, 2, false);
        let rolling = Live {
            green: Some(&green),
            ..live
        };
        assert_eq!(
            plan(&rolling, &rev(&v2), 2, DELAY, now()).phase,
            Phase::RollingOut(Color::Green)
        );
        let mut green = green.clone();
        green.status.as_mut().unwrap().conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet has timed out progressing.".into()),
            ..Default::default()
        }]);
        let live = Live {
            green: Some(&green),
            ..live
        };
        assert!(
            matches!(plan(&live, &rev(&v2), 2, DELAY, now()).phase, Phase::Stuck(Color::Green, m) if m.contains("timed out"))
        );
        let green = stored(&v2, Color::Green, 2, true);
        let live = Live {
            green: Some(&green),
            ..live
        };
        let p = plan(&live, &rev(&v2), 2, DELAY, now());
        assert_eq!(p.phase, Phase::Ready(Color::Green));
        assert_eq!(p.serving, Some(Color::Blue));
        // A green of an older spec is not ready for this one.
        let v3 = from_yaml(&BG.replace("img:1", "img:3"));
        assert_eq!(
            plan(&live, &rev(&v3), 2, DELAY, now()).phase,
            Phase::RollingOut(Color::Green)
        );
    }

    #[test]
    fn the_autoscaler_count_reaches_the_serving_colour_during_a_preview() {
        let v1 = from_yaml(BG);
        let v2 = from_yaml(&BG.replace("img:1", "img:2"));
        let blue = stored(&v1, Color::Blue, 2, true);
        let main_svc = service(&v1, Some(Color::Blue), None);
        let live = Live {
            blue: Some(&blue),
            service: Some(&main_svc),
            ..Default::default()
        };
        let p = plan(&live, &rev(&v2), 4, DELAY, now());
        assert_eq!(p.scale, vec![(Color::Blue, 4)]);
        assert_eq!(p.apply, vec![Color::Green]);
    }

    #[test]
    fn after_a_promotion_the_old_colour_runs_out_its_delay_then_scales_to_zero() {
        let v1 = from_yaml(BG);
        let v2 = from_yaml(&BG.replace("img:1", "img:2"));
        let blue = stored(&v1, Color::Blue, 2, true);
        let green = stored(&v2, Color::Green, 2, true);
        let promoted = service(&v2, Some(Color::Green), Some("2026-11-28T05:59:50Z"));
        let live = Live {
            blue: Some(&blue),
            green: Some(&green),
            service: Some(&promoted),
            ..Default::default()
        };
        let p = plan(&live, &rev(&v2), 2, DELAY, now());
        assert_eq!(p.phase, Phase::Steady);
        assert_eq!(p.apply, vec![Color::Green]);
        assert!(p.scale.is_empty(), "{p:?}");
        assert_eq!(p.requeue, Some(Duration::from_secs(20)));
        let later: Timestamp = "2026-11-28T06:00:30Z".parse().unwrap();
        let p = plan(&live, &rev(&v2), 2, DELAY, later);
        assert_eq!(p.scale, vec![(Color::Blue, 0)]);
        assert_eq!(p.requeue, None);
        // Rolling back inside the delay: the old colour is still ready, promote it back.
        let p = plan(&live, &rev(&v1), 2, DELAY, now());
        assert_eq!(p.phase, Phase::Ready(Color::Blue));
        assert_eq!(p.serving, Some(Color::Green));
    }

    #[test]
    fn rolling_back_a_preview_that_never_served_stops_it_at_once() {
        let v1 = from_yaml(BG);
        let v2 = from_yaml(&BG.replace("img:1", "img:2"));
        let blue = stored(&v1, Color::Blue, 2, true);
        let green = stored(&v2, Color::Green, 2, false);
        let main_svc = service(&v1, Some(Color::Blue), Some("2026-11-28T05:00:00Z"));
        let live = Live {
            blue: Some(&blue),
            green: Some(&green),
            service: Some(&main_svc),
            ..Default::default()
        };
        let p = plan(&live, &rev(&v1), 2, DELAY, now());
        assert_eq!(p.phase, Phase::Steady);
        assert_eq!(p.scale, vec![(Color::Green, 0)]);
        assert_eq!(p.serving, Some(Color::Blue));
    }

    fn pod(labels: &[(&str, &str)], deleting: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        if deleting {
            p.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        }
        p
    }

    #[test]
    fn the_old_pods_are_pinned_only_when_they_agree() {
        let h = LABEL_POD_TEMPLATE_HASH;
        let old = |hash| pod(&[(h, hash)], false);
        let blue = pod(&[(h, "bbb"), (LABEL_COLOR, "blue")], false);
        let going = pod(&[(h, "zzz")], true);
        // Blue's pods and pods on their way out do not count.
        assert_eq!(
            plain_pods_hash(&[old("aaa"), blue.clone(), going.clone(), old("aaa")]),
            Some("aaa".into())
        );
        // The old Deployment mid-rollout (two hashes), no old pods, a pod without the label.
        assert_eq!(plain_pods_hash(&[old("aaa"), old("ccc")]), None);
        assert_eq!(plain_pods_hash(&[blue, going]), None);
        assert_eq!(plain_pods_hash(&[pod(&[], false)]), None);
        // A pinned Service still selects no colour: the plan goes on rolling blue out.
        let isvc = from_yaml(BG);
        let mut pinned = service::build(&isvc);
        pin_to_plain_pods(&mut pinned, "aaa");
        assert_eq!(
            pinned.spec.as_ref().unwrap().selector.as_ref().unwrap()[h],
            "aaa"
        );
        assert_eq!(selected_color(&pinned), None);
        let plain = deployment::build(&isvc, &cfg());
        let live = Live {
            plain: Some(&plain),
            service: Some(&pinned),
            ..Default::default()
        };
        let p = plan(&live, &rev(&isvc), 2, DELAY, now());
        assert_eq!((p.serving, p.keep_plain), (None, true));
    }

    #[test]
    fn switching_from_rolling_update_keeps_the_old_deployment_until_after_the_first_promotion() {
        let isvc = from_yaml(BG);
        let mut plain = deployment::build(&isvc, &cfg());
        plain.status = Some(Default::default());
        let old_service = service::build(&isvc);
        let live = Live {
            plain: Some(&plain),
            service: Some(&old_service),
            ..Default::default()
        };
        let p = plan(&live, &rev(&isvc), 2, DELAY, now());
        assert_eq!(p.apply, vec![Color::Blue]);
        assert_eq!(
            p.serving, None,
            "the old selector serves until blue is promoted"
        );
        assert!(p.keep_plain);
        assert_eq!(p.phase, Phase::RollingOut(Color::Blue));
        let blue = stored(&isvc, Color::Blue, 2, true);
        let live = Live {
            blue: Some(&blue),
            ..live
        };
        assert_eq!(
            plan(&live, &rev(&isvc), 2, DELAY, now()).phase,
            Phase::Ready(Color::Blue)
        );
        // Promoted 10 s ago: the plain Deployment stays for the delay, then goes.
        let promoted = service(&isvc, Some(Color::Blue), Some("2026-11-28T05:59:50Z"));
        let live = Live {
            service: Some(&promoted),
            ..live
        };
        let p = plan(&live, &rev(&isvc), 2, DELAY, now());
        assert!(p.keep_plain);
        assert_eq!(p.requeue, Some(Duration::from_secs(20)));
        assert!(wanted_deployments(&isvc, p.keep_plain).contains(&"resnet50".to_string()));
        let later: Timestamp = "2026-11-28T06:01:00Z".parse().unwrap();
        let p = plan(&live, &rev(&isvc), 2, DELAY, later);
        assert!(!p.keep_plain);
        assert!(!wanted_deployments(&isvc, p.keep_plain).contains(&"resnet50".to_string()));
    }

    #[test]
    fn with_no_replicas_the_spec_goes_to_the_serving_colour() {
        let v1 = from_yaml(BG);
        let v2 = from_yaml(&BG.replace("img:1", "img:2"));
        let blue = stored(&v1, Color::Blue, 0, false);
        let main_svc = service(&v1, Some(Color::Blue), None);
        let live = Live {
            blue: Some(&blue),
            service: Some(&main_svc),
            ..Default::default()
        };
        let p = plan(&live, &rev(&v2), 0, DELAY, now());
        assert_eq!(p.apply, vec![Color::Blue]);
        assert_eq!(p.phase, Phase::Steady);
    }

    #[test]
    fn the_promote_command_names_the_revision() {
        let isvc = from_yaml(BG);
        assert_eq!(
            promote_command(&isvc, "00ab"),
            "kubectl -n ml annotate infsvc resnet50 serving.inference-server.dev/promote=00ab --overwrite"
        );
    }
}
