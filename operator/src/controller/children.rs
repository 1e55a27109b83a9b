//! The children as the operator last saw them (reflector stores fed by watches), and the two
//! writes it makes to them: apply what differs, delete what is no longer wanted.
//!
//! Reads never go to the API server once the stores are synced: each reconcile looks objects up
//! in the stores, which hold every Deployment, Service, HPA and PDB of the watched namespaces (not
//! only ours: a same-named object the operator does not control must be found before an apply
//! takes it over) and the server pods (by label), all with `managedFields` stripped. An apply is
//! sent only when the desired object is not already contained in the stored one (see
//! [`contains`]), so a reconcile of an object at rest makes no request at all.

use std::fmt::Debug;

use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::builders::{self, LABEL_SELECTOR, MANAGER};
use crate::crd::InferenceService;
use crate::diff::{self, contains};

/// Read-only views of the watched children.
#[derive(Clone)]
pub struct Stores {
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub hpas: Store<HorizontalPodAutoscaler>,
    pub pdbs: Store<PodDisruptionBudget>,
    pub pods: Store<Pod>,
}

/// Whether a store has completed its first list: only then does "not in the store" mean "does
/// not exist".
pub fn synced<K>(store: &Store<K>) -> bool
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.wait_until_ready().now_or_never().is_some()
}

/// One child kind: its store and how to name it in messages.
pub trait Child:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    fn store(stores: &Stores) -> &Store<Self>;
}

macro_rules! child {
    ($t:ty, $field:ident) => {
        impl Child for $t {
            fn store(stores: &Stores) -> &Store<Self> {
                &stores.$field
            }
        }
    };
}
child!(Deployment, deployments);
child!(Service, services);
child!(HorizontalPodAutoscaler, hpas);
child!(PodDisruptionBudget, pdbs);

impl Stores {
    /// The stored object of this kind with the InferenceService's child name: `Some(None)`
    /// when the store is synced and holds none, `None` when the store cannot tell yet.
    pub fn lookup<K: Child>(&self, isvc: &InferenceService) -> Option<Option<K>> {
        let found = self.get::<K>(isvc);
        (found.is_some() || synced(K::store(self))).then_some(found)
    }

    /// [`Stores::lookup`] for another name in the InferenceService's namespace.
    pub fn lookup_named<K: Child>(&self, isvc: &InferenceService, name: &str) -> Option<Option<K>> {
        let found = self.get_named::<K>(isvc, name);
        (found.is_some() || synced(K::store(self))).then_some(found)
    }

    /// The stored object of this kind with the InferenceService's child name.
    pub fn get<K: Child>(&self, isvc: &InferenceService) -> Option<K> {
        self.get_named(isvc, &builders::child_name(isvc))
    }

    /// The stored object of this kind with this name in the InferenceService's namespace.
    pub fn get_named<K: Child>(&self, isvc: &InferenceService, name: &str) -> Option<K> {
        let key = ObjectRef::new(name).within(&isvc.namespace().unwrap_or_default());
        K::store(self).get(&key).map(|o| (*o).clone())
    }

    /// The server pods of this InferenceService.
    pub fn pods_of(&self, isvc: &InferenceService) -> Vec<Pod> {
        let ns = isvc.namespace();
        let name = isvc.name_any();
        self.pods
            .state()
            .into_iter()
            .filter(|p| p.namespace() == ns && p.labels().get(LABEL_SELECTOR) == Some(&name))
            .map(|p| (*p).clone())
            .collect()
    }

    /// Children of `kind` that this InferenceService controls.
    pub fn owned<K: Child>(&self, isvc: &InferenceService) -> Vec<K> {
        let ns = isvc.namespace();
        K::store(self)
            .state()
            .into_iter()
            .filter(|o| o.namespace() == ns && builders::is_controlled_by(o.meta(), isvc))
            .map(|o| (*o).clone())
            .collect()
    }
}

/// What [`ensure`] did.
pub struct Ensured<K> {
    pub object: K,
    /// False when the stored object already held everything: no request was made.
    pub applied: bool,
}

/// Server-side applies `desired` (force: the operator owns these fields, hand edits are reverted)
/// unless the stored copy already contains it, hash stamp included ([`diff::stamped`]).
pub async fn ensure<K: Child>(
    client: &Client,
    stored: Option<&K>,
    desired: &K,
) -> Result<Ensured<K>, kube::Error> {
    let desired = &diff::stamped(desired);
    if let Some(have) = stored {
        let (h, w) = (serde_json::to_value(have), serde_json::to_value(desired));
        if let (Ok(h), Ok(w)) = (h, w)
            && contains(&h, &w)
        {
            return Ok(Ensured {
                object: have.clone(),
                applied: false,
            });
        }
    }
    let api: Api<K> = Api::namespaced(client.clone(), &desired.namespace().unwrap_or_default());
    let name = desired.name_any();
    tracing::debug!(kind = %K::kind(&()), %name, "server-side apply");
    let object = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await?;
    Ok(Ensured {
        object,
        applied: true,
    })
}

/// Deletes the children of `kind` that this InferenceService controls but no longer wants.
/// Returns the names deleted.
pub async fn delete_unwanted<K: Child>(
    client: &Client,
    stores: &Stores,
    isvc: &InferenceService,
    wanted: &[String],
) -> Result<Vec<String>, kube::Error> {
    let mut deleted = Vec::new();
    for obj in stores.owned::<K>(isvc) {
        let name = obj.name_any();
        if wanted.contains(&name) {
            continue;
        }
        let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted.push(name),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}
