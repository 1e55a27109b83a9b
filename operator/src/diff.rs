//! Whether a stored object already holds what the operator would apply.

use kube::Resource;
use serde::Serialize;
use serde_json::Value;

/// On every child: a hash of the object the operator last applied (see [`stamped`]).
pub const ANNOTATION_APPLIED: &str = "serving.inference-server.dev/applied-hash";

/// FNV-1a (64 bit): the same in every build and process, unlike std's hasher.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `desired` with [`ANNOTATION_APPLIED`] set to a hash of itself. [`contains`] alone cannot see a
/// key removed from a map (a pod label, a Service annotation, a node selector entry): the stored
/// object still holds every field we send. With the hash, any change of the desired object makes
/// the stored copy stop containing it, the apply goes out, and server-side apply removes the
/// fields the operator no longer sends. At rest nothing changes, so no request is made.
pub fn stamped<K: Resource + Serialize + Clone>(desired: &K) -> K {
    let mut out = desired.clone();
    let hash = fnv1a(&serde_json::to_vec(desired).unwrap_or_default());
    out.meta_mut()
        .annotations
        .get_or_insert_default()
        .insert(ANNOTATION_APPLIED.into(), format!("{hash:016x}"));
    out
}

/// True when every field of `want` has the same value in `have`: `have` may hold more (defaults
/// the API server filled in, fields of other managers). Lists must have the same length and match
/// element by element. A false "different" only costs an apply that changes nothing; a false
/// "same" cannot happen, because every field we would send is compared.
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| contains(hv, wv))
        }
        (h, w) => h == w,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;

    use super::*;

    fn service(annotations: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "s", "annotations": annotations},
            "spec": {"selector": {"app": "a"}},
        }))
        .unwrap()
    }

    #[test]
    fn a_removed_map_key_is_seen_through_the_stamp() {
        let before = stamped(&service(json!({"lb": "nlb", "scheme": "internet-facing"})));
        // What the API server stores: what we applied, plus what it and others add.
        let mut stored = serde_json::to_value(&before).unwrap();
        stored["metadata"]["uid"] = json!("u1");
        stored["metadata"]["annotations"]["other-tool"] = json!("x");
        stored["spec"]["clusterIP"] = json!("198.18.0.10");
        assert!(contains(&stored, &serde_json::to_value(&before).unwrap()));
        // The user drops an annotation: unstamped, the stored object still "contains" it...
        let after = service(json!({"lb": "nlb"}));
        assert!(contains(&stored, &serde_json::to_value(&after).unwrap()));
        // ...stamped, it does not, so the apply that removes the key is made.
        assert!(!contains(
            &stored,
            &serde_json::to_value(stamped(&after)).unwrap()
        ));
        // The stamp is a function of the desired object only.
        assert_eq!(
            stamped(&after).metadata.annotations,
            stamped(&after.clone()).metadata.annotations
        );
        assert_ne!(
            before.metadata.annotations.unwrap()[ANNOTATION_APPLIED],
            stamped(&after).metadata.annotations.unwrap()[ANNOTATION_APPLIED]
        );
    }

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        // http://www.isthe.com/chongo/tech/comp/fnv/ (FNV-1a 64).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn containment_ignores_what_others_added() {
        let want = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "s", "image": "a"}]}}});
        let have = json!({"spec": {"replicas": 2, "paused": false, "template": {"containers": [{"name": "s", "image": "a", "terminationMessagePath": "/dev/termination-log"}]}}, "status": {}});
        assert!(contains(&have, &want));
        // A changed value, a missing key, an extra list element, a different list order: differ.
        for other in [
            json!({"spec": {"replicas": 3, "template": {"containers": [{"name": "s", "image": "a"}]}}}),
            json!({"spec": {"template": {"containers": [{"name": "s", "image": "a"}]}}}),
            json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "s", "image": "a"}, {"name": "t"}]}}}),
            json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "s", "image": "b"}]}}}),
        ] {
            assert!(!contains(&other, &want), "{other}");
        }
        // Numbers and strings are not interchangeable (an IntOrString of 1 vs "1").
        assert!(!contains(&json!({"a": "1"}), &json!({"a": 1})));
    }
}
