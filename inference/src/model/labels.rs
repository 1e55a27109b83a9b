//! The 1000 ImageNet class names, in class-id order (the list torchvision's weights use), and
//! the top-k classes of one image's logits.

use std::sync::LazyLock;

use serde::Serialize;

static LABELS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    include_str!("../../assets/imagenet-classes.txt")
        .lines()
        .collect()
});

pub fn label(class_id: usize) -> &'static str {
    LABELS.get(class_id).copied().unwrap_or("unknown")
}

pub fn count() -> usize {
    LABELS.len()
}

#[derive(Serialize, Debug, PartialEq)]
pub struct Prediction {
    pub class: &'static str,
    pub confidence: f64,
    pub class_id: usize,
}

/// The `k` largest logits as (class id, logit), largest first; ties keep the lower id first.
pub fn top_k_raw(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut ids: Vec<usize> = (0..logits.len()).collect();
    ids.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    ids.into_iter().take(k).map(|id| (id, logits[id])).collect()
}

/// Softmax over one image's logits, the `k` most likely classes first.
pub fn top_k(logits: &[f32], k: usize) -> Vec<Prediction> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    top_k_raw(logits, k)
        .into_iter()
        .map(|(id, logit)| Prediction {
            class: label(id),
            confidence: (((logit as f64 - max).exp() / sum) * 1e4).round() / 1e4,
            class_id: id,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_sorts_and_normalises() {
        let mut logits = vec![0f32; 1000];
        logits[281] = 5.0;
        logits[7] = 3.0;
        let p = top_k(&logits, 3);
        assert_eq!(
            p.iter().map(|p| p.class_id).collect::<Vec<_>>(),
            vec![281, 7, 0]
        );
        assert_eq!(p[0].class, "tabby");
        assert!(p[0].confidence > p[1].confidence && p[1].confidence > p[2].confidence);
        let all: f64 = top_k(&logits, 1000).iter().map(|p| p.confidence).sum();
        assert!((all - 1.0).abs() < 0.05, "sum {all}"); // each of 1000 values rounded to 4 decimals
    }

    #[test]
    fn all_1000_labels_in_order() {
        assert_eq!(super::count(), 1000);
        assert_eq!(super::label(0), "tench");
        assert_eq!(super::label(281), "tabby");
        assert_eq!(super::label(999), "toilet tissue");
    }
}
