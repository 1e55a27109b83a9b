//! The 1000 ImageNet class names, in class-id order (the list torchvision's weights use).

use std::sync::LazyLock;

static LABELS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    include_str!("../assets/imagenet-classes.txt")
        .lines()
        .collect()
});

pub fn label(class_id: usize) -> &'static str {
    LABELS.get(class_id).copied().unwrap_or("unknown")
}

pub fn count() -> usize {
    LABELS.len()
}

#[cfg(test)]
mod tests {
    #[test]
    fn all_1000_labels_in_order() {
        assert_eq!(super::count(), 1000);
        assert_eq!(super::label(0), "tench");
        assert_eq!(super::label(281), "tabby");
        assert_eq!(super::label(999), "toilet tissue");
    }
}
