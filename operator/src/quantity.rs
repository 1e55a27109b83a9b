//! Just enough of Kubernetes' resource.Quantity to compare requests with limits and to derive a
//! thread count from a CPU amount. Values are parsed into f64 base units (cores, bytes).

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Parses a quantity such as `500m`, `2`, `1.5Gi`, `1e3`, `128974848`. Returns `None` when the
/// string is not a valid Kubernetes quantity.
pub fn parse(q: &str) -> Option<f64> {
    let s = q.trim();
    if s.is_empty() || s != q {
        return None;
    }
    // Split off the number: sign, digits, optional fraction.
    let bytes = s.as_bytes();
    let mut i = 0;
    if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
        i += 1;
    }
    let digits_start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - digits_start;
    let mut frac_digits = 0;
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - frac_start;
    }
    if int_digits + frac_digits == 0 {
        return None;
    }
    let number: f64 = s[..i].parse().ok()?;
    let suffix = &s[i..];
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            if exp[1..].is_empty()
                || !exp[1..]
                    .trim_start_matches(['+', '-'])
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            {
                return None;
            }
            10f64.powi(e)
        }
        _ => return None,
    };
    Some(number * multiplier)
}

/// [`parse`] for a k8s-openapi [`Quantity`].
pub fn parse_quantity(q: &Quantity) -> Option<f64> {
    parse(&q.0)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_kubernetes_quantities() {
        assert_eq!(parse("500m"), Some(0.5));
        assert_eq!(parse("2"), Some(2.0));
        assert_eq!(parse("1.5"), Some(1.5));
        assert_eq!(parse("1Gi"), Some(1073741824.0));
        assert_eq!(parse("1536Mi"), Some(1536.0 * 1048576.0));
        assert_eq!(parse("1k"), Some(1000.0));
        assert_eq!(parse("1e3"), Some(1000.0));
        assert_eq!(parse("128974848"), Some(128974848.0));
        assert_eq!(parse(".5"), Some(0.5));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "", "abc", "1 Gi", "1gi", "Gi", "1.2.3", " 1", "1e", "1x", "--1",
        ] {
            assert_eq!(parse(bad), None, "{bad:?} should not parse");
        }
    }
}
