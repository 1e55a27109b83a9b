//! Leader election on a `coordination.k8s.io/v1` Lease, in the style of client-go.
//!
//! kube 5 ships no leader election. This one acquires and renews the Lease with
//! `resourceVersion`-guarded replaces (optimistic concurrency: of two writers one gets 409).
//! Expiry is judged on this process's monotonic clock, from when it last saw the lease record
//! change, never by comparing `renewTime` with the local wall clock, so clock skew between nodes
//! does not matter. Timings follow client-go: lease 15s, renew deadline 10s, retry every 2s.
//!
//! The decision logic ([`decide`], [`next_spec`]) is pure and unit-tested; [`LeaderElector`]
//! does the API calls.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

/// Why the process stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM or Ctrl-C: shut down gracefully and release the lease.
    Signal,
    /// The lease could not be renewed in time: another replica may lead now. Exit non-zero.
    LostLease,
}

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub namespace: String,
    /// Unique per process (pod name plus a random suffix).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderConfig {
    pub fn new(lease_name: &str, namespace: &str, identity: &str) -> Self {
        Self {
            lease_name: lease_name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What to do with the lease as last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease object yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    TakeOver,
    /// Someone else holds it and it has not expired.
    Wait { holder: String },
}

/// Decides from the lease spec and how long ago (on our clock) its record last changed.
pub fn decide(
    spec: Option<&LeaseSpec>,
    identity: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let duration = spec
        .lease_duration_seconds
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s as u64))
        .unwrap_or(default_duration);
    if unchanged_for >= duration {
        Decision::TakeOver
    } else {
        Decision::Wait { holder }
    }
}

/// The spec to write for a decision.
pub fn next_spec(
    decision: &Decision,
    old: Option<&LeaseSpec>,
    cfg: &LeaderConfig,
    now: Timestamp,
) -> Option<LeaseSpec> {
    let now = MicroTime(now);
    let duration = Some(cfg.lease_duration.as_secs() as i32);
    match decision {
        Decision::Wait { .. } => None,
        Decision::Create => Some(LeaseSpec {
            holder_identity: Some(cfg.identity.clone()),
            lease_duration_seconds: duration,
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..Default::default()
        }),
        Decision::Renew => {
            let mut spec = old.cloned().unwrap_or_default();
            spec.renew_time = Some(now.clone());
            spec.lease_duration_seconds = duration;
            spec.acquire_time.get_or_insert(now);
            Some(spec)
        }
        Decision::TakeOver => {
            let old = old.cloned().unwrap_or_default();
            Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: duration,
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(old.lease_transitions.unwrap_or(0) + 1),
                ..old
            })
        }
    }
}

/// The released form of our lease: no holder, so a successor takes over at once.
pub fn released_spec(old: &LeaseSpec) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: None,
        renew_time: Some(MicroTime(Timestamp::now())),
        ..old.clone()
    }
}

/// Acquires, renews and releases the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaderConfig,
    /// (holder, renewTime) last seen, and when it last changed on our clock.
    seen: Option<(Option<String>, Option<MicroTime>)>,
    seen_changed_at: Instant,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, cfg: LeaderConfig) -> Self {
        Self {
            api,
            cfg,
            seen: None,
            seen_changed_at: Instant::now(),
        }
    }

    pub fn config(&self) -> &LeaderConfig {
        &self.cfg
    }

    /// One attempt: `Ok(true)` when we hold the lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.cfg.lease_name).await?;
        let spec = current.as_ref().and_then(|l| l.spec.clone());
        let record = spec
            .as_ref()
            .map(|s| (s.holder_identity.clone(), s.renew_time.clone()));
        if record != self.seen {
            self.seen = record;
            self.seen_changed_at = Instant::now();
        }
        let decision = decide(
            spec.as_ref(),
            &self.cfg.identity,
            self.seen_changed_at.elapsed(),
            self.cfg.lease_duration,
        );
        let Some(new_spec) = next_spec(&decision, spec.as_ref(), &self.cfg, Timestamp::now())
        else {
            if let Decision::Wait { holder } = decision {
                tracing::debug!(%holder, "lease held by another replica");
            }
            return Ok(false);
        };
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.lease_name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(new_spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // metadata.resourceVersion from the read guards the write.
                lease.spec = Some(new_spec);
                self.api
                    .replace(&self.cfg.lease_name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => {
                if decision != Decision::Renew {
                    tracing::info!(identity = %self.cfg.identity, lease = %self.cfg.lease_name, "acquired the leader lease");
                }
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Tries until this replica leads (`true`) or a stop is requested (`false`).
    pub async fn acquire(&mut self, stop: &mut watch::Receiver<Option<Stop>>) -> bool {
        loop {
            if stop.borrow().is_some() {
                return false;
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: cannot read or write the lease")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.retry_period) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Renews every retry period until a stop is requested (returns `Stop::Signal`) or renewal
    /// failed for longer than the renew deadline (sends and returns `Stop::LostLease`).
    pub async fn hold(&mut self, stop_tx: &watch::Sender<Option<Stop>>) -> Stop {
        let mut stop = stop_tx.subscribe();
        let mut last_renew = Instant::now();
        loop {
            if let Some(s) = *stop.borrow() {
                return s;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.retry_period) => {}
                _ = stop.changed() => continue,
            }
            match tokio::time::timeout(self.cfg.renew_deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => last_renew = Instant::now(),
                Ok(Ok(false)) => {
                    tracing::error!("another replica took the leader lease");
                    stop_tx.send_replace(Some(Stop::LostLease));
                    return Stop::LostLease;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the leader lease failed"),
                Err(_) => tracing::warn!("renewing the leader lease timed out"),
            }
            if last_renew.elapsed() > self.cfg.renew_deadline {
                tracing::error!("could not renew the leader lease within the renew deadline");
                stop_tx.send_replace(Some(Stop::LostLease));
                return Stop::LostLease;
            }
        }
    }

    /// Gives the lease up (if we hold it) so a standby replica takes over without waiting.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.lease_name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_ref() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        lease.spec = Some(released_spec(spec));
        match self
            .api
            .replace(&self.cfg.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("released the leader lease"),
            Err(e) => tracing::warn!(error = %e, "releasing the leader lease failed"),
        }
    }
}

/// A process identity: the pod name (or hostname) plus a random suffix, so a restarted
/// container never mistakes its predecessor's lease for its own.
pub fn identity(base: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{base}_{:08x}", h.finish() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn cfg() -> LeaderConfig {
        LeaderConfig::new("inference-operator", "ops", "me_1")
    }

    fn held_by(holder: Option<&str>, duration: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(Into::into),
            lease_duration_seconds: duration,
            lease_transitions: Some(3),
            renew_time: Some(MicroTime(Timestamp::from_second(1_700_000_000).unwrap())),
            acquire_time: Some(MicroTime(Timestamp::from_second(1_600_000_000).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let s = Duration::from_secs;
        assert_eq!(decide(None, "me_1", s(0), D), Decision::Create);
        assert_eq!(
            decide(Some(&held_by(Some("me_1"), Some(15))), "me_1", s(100), D),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&held_by(None, Some(15))), "me_1", s(0), D),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&held_by(Some(""), Some(15))), "me_1", s(0), D),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&held_by(Some("other"), Some(15))), "me_1", s(14), D),
            Decision::Wait {
                holder: "other".into()
            }
        );
        assert_eq!(
            decide(Some(&held_by(Some("other"), Some(15))), "me_1", s(15), D),
            Decision::TakeOver
        );
        // The record's own duration counts, not ours.
        assert_eq!(
            decide(Some(&held_by(Some("other"), Some(60))), "me_1", s(30), D),
            Decision::Wait {
                holder: "other".into()
            }
        );
        // Missing duration: ours.
        assert_eq!(
            decide(Some(&held_by(Some("other"), None)), "me_1", s(16), D),
            Decision::TakeOver
        );
    }

    #[test]
    fn specs_written() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let c = cfg();
        let created = next_spec(&Decision::Create, None, &c, now).unwrap();
        assert_eq!(created.holder_identity.as_deref(), Some("me_1"));
        assert_eq!(created.lease_duration_seconds, Some(15));
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.renew_time, Some(MicroTime(now)));

        let old = held_by(Some("me_1"), Some(15));
        let renewed = next_spec(&Decision::Renew, Some(&old), &c, now).unwrap();
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        assert_eq!(
            renewed.acquire_time, old.acquire_time,
            "renewing keeps the acquire time"
        );
        assert_eq!(renewed.lease_transitions, Some(3));

        let other = held_by(Some("other"), Some(15));
        let taken = next_spec(&Decision::TakeOver, Some(&other), &c, now).unwrap();
        assert_eq!(taken.holder_identity.as_deref(), Some("me_1"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));

        assert!(
            next_spec(
                &Decision::Wait { holder: "x".into() },
                Some(&other),
                &c,
                now
            )
            .is_none()
        );

        let released = released_spec(&renewed);
        assert_eq!(released.holder_identity, None);
        assert_eq!(
            decide(Some(&released), "other", Duration::ZERO, D),
            Decision::TakeOver
        );
    }

    #[test]
    fn identities_are_unique() {
        let a = identity("pod-1");
        let b = identity("pod-1");
        assert!(a.starts_with("pod-1_"));
        assert_ne!(a, b);
    }
}
