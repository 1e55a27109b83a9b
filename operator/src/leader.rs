//! Leader election on a `coordination.k8s.io/v1` Lease, in the style of client-go.
//!
//! kube 5 ships no leader election. This one acquires and renews the Lease with
//! `resourceVersion`-guarded replaces (optimistic concurrency: of two writers one gets 409).
//! Expiry is judged on this process's monotonic clock, from when it last saw the lease record
//! change, never by comparing `renewTime` with the local wall clock, so clock skew between nodes
//! does not matter. Timings follow client-go: lease 15s, renew deadline 10s, retry every 2s.
//!
//! The decision logic ([`decide`], [`next_spec`], [`renew_budget`]) is pure and unit-tested;
//! [`LeaderElector`] does the API calls.
//!
//! Safety against a hung API server: a renewal counts from when its request was *sent*, every
//! attempt is bounded by what is left of the renew deadline (not a fresh timeout each), and at
//! the deadline the holder stops at once. The renew deadline (10s) is shorter than the lease (15s)
//! that a standby waits from when it *saw* our last write, so the old leader has stopped before a
//! standby may take over. A 409 on our own renewal (our previous write landed late) is not a loss:
//! the lease is read again and only another holder's name ends the term.

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

/// What is left of the renew deadline for the next attempt, counted from the start of the last
/// successful renewal; `None` once the deadline has passed (the lease must be given up).
pub fn renew_budget(since_last_renew: Duration, renew_deadline: Duration) -> Option<Duration> {
    renew_deadline
        .checked_sub(since_last_renew)
        .filter(|left| !left.is_zero())
}

/// The result of one attempt on the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease (acquired or renewed).
    Held,
    /// Another replica holds it.
    HeldBy(String),
    /// Our write lost a race (409): the lease changed since we read it; read it again.
    Conflict,
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
        Ok(self.attempt().await? == Attempt::Held)
    }

    /// One attempt: read the lease, then create, renew or take it over if we may.
    pub async fn attempt(&mut self) -> Result<Attempt, kube::Error> {
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
            let holder = match decision {
                Decision::Wait { holder } => holder,
                _ => String::new(),
            };
            tracing::debug!(%holder, "lease held by another replica");
            return Ok(Attempt::HeldBy(holder));
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
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Tries until this replica leads (`Some(when the winning request was sent)`) or a stop is
    /// requested (`None`).
    pub async fn acquire(&mut self, stop: &mut watch::Receiver<Option<Stop>>) -> Option<Instant> {
        loop {
            if stop.borrow().is_some() {
                return None;
            }
            let started = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => return Some(started),
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

    /// Renews every retry period until a stop is requested (returns `Stop::Signal`), another
    /// replica holds the lease, or the renew deadline passes without a renewal (both send and
    /// return `Stop::LostLease`). `acquired_at` is when the acquiring request was sent.
    pub async fn hold(
        &mut self,
        stop_tx: &watch::Sender<Option<Stop>>,
        acquired_at: Instant,
    ) -> Stop {
        let mut stop = stop_tx.subscribe();
        let mut last_renew = acquired_at;
        let lost = |why: &str| {
            tracing::error!(reason = why, "lost the leader lease");
            stop_tx.send_replace(Some(Stop::LostLease));
            Stop::LostLease
        };
        let mut wait = self.cfg.retry_period;
        loop {
            if let Some(s) = *stop.borrow() {
                return s;
            }
            let Some(left) = renew_budget(last_renew.elapsed(), self.cfg.renew_deadline) else {
                return lost("no renewal within the renew deadline");
            };
            tokio::select! {
                _ = tokio::time::sleep(wait.min(left)) => {}
                _ = stop.changed() => continue,
            }
            let Some(left) = renew_budget(last_renew.elapsed(), self.cfg.renew_deadline) else {
                return lost("no renewal within the renew deadline");
            };
            let started = Instant::now();
            wait = self.cfg.retry_period;
            match tokio::time::timeout(left, self.attempt()).await {
                Ok(Ok(Attempt::Held)) => last_renew = started,
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    return lost(&format!("{holder} holds the lease"));
                }
                // Our previous write may have landed late: read again at once.
                Ok(Ok(Attempt::Conflict)) => wait = Duration::ZERO,
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the leader lease failed"),
                Err(_) => tracing::warn!("renewing the leader lease timed out"),
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
    fn the_renew_budget_shrinks_to_the_deadline() {
        let deadline = Duration::from_secs(10);
        // Right after a renewal: the whole deadline; later, only what is left of it.
        assert_eq!(renew_budget(Duration::ZERO, deadline), Some(deadline));
        assert_eq!(
            renew_budget(Duration::from_secs(8), deadline),
            Some(Duration::from_secs(2))
        );
        // At or past the deadline: give the lease up (no fresh timeout for another attempt).
        assert_eq!(renew_budget(deadline, deadline), None);
        assert_eq!(renew_budget(Duration::from_secs(30), deadline), None);
        // The holder stops before a standby may take over.
        let cfg = LeaderConfig::new("l", "ns", "me");
        assert!(cfg.renew_deadline < cfg.lease_duration);
    }

    #[test]
    fn identities_are_unique() {
        let a = identity("pod-1");
        let b = identity("pod-1");
        assert!(a.starts_with("pod-1_"));
        assert_ne!(a, b);
    }
}
