//! How much a window of outcomes proves: the one-sided 95% Wilson score
//! bounds of a share. A window of `n` outcomes that all agree proves an
//! agreement of at most `n / (n + z²)`, so a target `A` needs at least
//! `z² A / (1 - A)` outcomes before anything can be proved (268 for 0.99).

/// The normal quantile of the one-sided 95% bounds.
pub const Z: f64 = 1.645;

/// The lower and upper one-sided 95% Wilson bounds of `successes` of `n`;
/// (0, 1) when `n` is 0.
#[must_use]
pub fn wilson(successes: f64, n: f64) -> (f64, f64) {
    if n <= 0.0 {
        return (0.0, 1.0);
    }
    let p = (successes / n).clamp(0.0, 1.0);
    let z2 = Z * Z;
    let centre = p + z2 / (2.0 * n);
    let spread = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let scale = 1.0 + z2 / n;
    (
        ((centre - spread) / scale).max(0.0),
        ((centre + spread) / scale).min(1.0),
    )
}

/// The fewest outcomes that can prove an agreement of `target` (all of
/// them agreeing); `None` for a target of 1 or more, which no window proves.
#[must_use]
pub fn least_window(target: f64) -> Option<usize> {
    // NaN is no target either.
    if target.is_nan() || target >= 1.0 {
        return None;
    }
    let n = (Z * Z * target.max(0.0) / (1.0 - target)).ceil();
    // At the boundary rounding can leave the bound a hair under the target.
    let n = n as usize;
    Some(if wilson(n as f64, n as f64).0 >= target {
        n
    } else {
        n + 1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_bound_and_tightens_with_more_outcomes() {
        // 180 of 200 at z = 1.645: 0.860 (Wilson, one-sided 95%).
        assert!((wilson(180.0, 200.0).0 - 0.860).abs() < 0.001);
        assert!(wilson(18.0, 20.0).0 < wilson(180.0, 200.0).0);
        let (low, high) = wilson(0.0, 100.0);
        assert_eq!(low, 0.0);
        assert!((high - Z * Z / (100.0 + Z * Z)).abs() < 1e-12);
    }

    #[test]
    fn the_least_window_is_where_all_agreeing_first_proves_the_target() {
        // 200 outcomes prove at most 200 / (200 + z²) = 0.9867: never 0.99.
        assert!(wilson(200.0, 200.0).0 < 0.99);
        let least = least_window(0.99).expect("provable");
        assert_eq!(least, 268);
        assert!(wilson(least as f64, least as f64).0 >= 0.99);
        assert!(wilson((least - 1) as f64, (least - 1) as f64).0 < 0.99);
        assert_eq!(least_window(1.0), None);
    }
}
