//! Whether a stored object already holds what the operator would apply.

use serde_json::Value;

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
    use serde_json::json;

    use super::*;

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
