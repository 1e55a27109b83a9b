//! Watches the pods bound to this node and gives each its worker (see pod.rs).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Ctx;

struct Worker {
    tx: watch::Sender<Option<Pod>>,
    handle: JoinHandle<()>,
}

pub async fn run(ctx: Arc<Ctx>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut workers: HashMap<String, Worker> = HashMap::new();
    // uids whose worker finished (the object was removed by us): ignore late events for them
    let mut done: HashSet<String> = HashSet::new();
    let mut listing: Option<HashSet<String>> = None;

    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = ctx.shutdown.cancelled() => break,
        };
        let Some(ev) = ev else { break };
        for (uid, w) in workers.iter() {
            if w.handle.is_finished() {
                done.insert(uid.clone());
            }
        }
        workers.retain(|_, w| !w.handle.is_finished());
        match ev {
            Ok(watcher::Event::Init) => listing = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(pod)) => {
                if let (Some(seen), Some(uid)) = (listing.as_mut(), pod.metadata.uid.clone()) {
                    seen.insert(uid);
                }
                upsert(&ctx, &mut workers, &done, pod);
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = listing.take() {
                    for (uid, w) in &workers {
                        if !seen.contains(uid) {
                            w.tx.send_replace(None);
                        }
                    }
                    done.retain(|uid| seen.contains(uid));
                }
            }
            Ok(watcher::Event::Apply(pod)) => upsert(&ctx, &mut workers, &done, pod),
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.metadata.uid.unwrap_or_default();
                if let Some(w) = workers.get(&uid) {
                    w.tx.send_replace(None);
                }
                done.remove(&uid);
            }
            Err(e) => tracing::warn!(error = %e, "watching this node's pods failed"),
        }
    }
    // shutdown: every worker stops its containers
    for (_, w) in workers {
        let _ = w.handle.await;
    }
}

fn upsert(ctx: &Arc<Ctx>, workers: &mut HashMap<String, Worker>, done: &HashSet<String>, pod: Pod) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if done.contains(&uid) {
        return;
    }
    match workers.get(&uid) {
        Some(w) => {
            w.tx.send_replace(Some(pod));
        }
        None => {
            let (tx, rx) = watch::channel(Some(pod));
            let handle = tokio::spawn(crate::pod::run(ctx.clone(), rx));
            workers.insert(uid, Worker { tx, handle });
        }
    }
}
