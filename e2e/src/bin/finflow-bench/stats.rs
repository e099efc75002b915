//! Rounds and their medians, and the verdicts drawn from them.

/// One wrk run through one path: requests/s, p50 and p99 latency (ms), and the CPU
/// the proxy and the app spent per request (µs).
#[derive(Clone, Copy, Default)]
pub(crate) struct Round {
    pub(crate) rps: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) proxy_cpu: f64,
    pub(crate) app_cpu: f64,
}

/// The median (the mean of the two middle values of an even count), NaN for none.
#[allow(clippy::float_arithmetic)]
pub(crate) fn middle(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match (values.get(n.wrapping_sub(1) / 2), values.get(n / 2)) {
        (Some(low), Some(high)) => (low + high) / 2.0,
        _ => f64::NAN,
    }
}

/// Each figure's median over the rounds.
pub(crate) fn median(rounds: &[Round]) -> Round {
    let of = |f: fn(&Round) -> f64| middle(rounds.iter().map(f).collect());
    Round {
        rps: of(|r| r.rps),
        p50: of(|r| r.p50),
        p99: of(|r| r.p99),
        proxy_cpu: of(|r| r.proxy_cpu),
        app_cpu: of(|r| r.app_cpu),
    }
}

/// What the sidecar and one nginx configuration added to the app's p50, compared
/// within each round (the paths of a round run back to back, or at once with
/// `--together`, so they share the machine's state of the moment).
pub(crate) struct Added {
    /// Which nginx: "nginx, 1 worker".
    pub(crate) nginx_label: String,
    /// (sidecar, nginx) per round, ms.
    pub(crate) per_round: Vec<(f64, f64)>,
    pub(crate) sidecar: f64,
    pub(crate) nginx: f64,
    /// Rounds in which the sidecar added no more than nginx.
    pub(crate) sidecar_not_worse: usize,
}

#[allow(clippy::float_arithmetic)]
pub(crate) fn added_latency(
    direct: &[Round],
    sidecar: &[Round],
    nginx: &[Round],
    nginx_label: &str,
) -> Added {
    let per_round: Vec<(f64, f64)> = direct
        .iter()
        .zip(sidecar)
        .zip(nginx)
        .map(|((d, s), n)| (s.p50 - d.p50, n.p50 - d.p50))
        .collect();
    let median_of = |f: fn(&(f64, f64)) -> f64| middle(per_round.iter().map(f).collect());
    Added {
        nginx_label: nginx_label.to_owned(),
        sidecar: median_of(|r| r.0),
        nginx: median_of(|r| r.1),
        sidecar_not_worse: per_round.iter().filter(|(s, n)| s <= n).count(),
        per_round,
    }
}

impl Added {
    /// Whether the sidecar added more or less than this nginx, or the run cannot tell:
    /// by the median of the per-round differences and its 95% interval.
    #[allow(clippy::float_arithmetic)]
    pub(crate) fn verdict(&self) -> String {
        let nginx = &self.nginx_label;
        interval_verdict(
            &format!("sidecar - {nginx} per round"),
            self.per_round.iter().map(|(s, n)| s - n).collect(),
            [
                &format!("the sidecar added less latency than {nginx}"),
                &format!("the sidecar added more latency than {nginx}"),
                &format!("no difference between the sidecar and {nginx} is measurable in this run"),
            ],
        )
    }
}

/// The compared build's p50 minus the launcher's sidecar's, per round: their median
/// and 95% interval, and what they say.
#[allow(clippy::float_arithmetic)]
pub(crate) fn compared_verdict(compared: &[Round], sidecar: &[Round]) -> String {
    interval_verdict(
        "compared - sidecar p50 per round",
        compared
            .iter()
            .zip(sidecar)
            .map(|(b, a)| b.p50 - a.p50)
            .collect(),
        [
            "the compared build is faster",
            "the compared build is slower",
            "no difference between the builds is measurable in this run",
        ],
    )
}

/// `what`: the median of `differences` (ms) and its 95% interval, then the first of
/// `[below, above, neither]` when the interval lies below zero, the second when above,
/// else the third.
pub(crate) fn interval_verdict(
    what: &str,
    differences: Vec<f64>,
    [below, above, neither]: [&str; 3],
) -> String {
    let median = middle(differences.clone());
    match median_interval(differences) {
        None => format!("{what}: median {median:+.3} ms (6 or more rounds give a 95% interval)"),
        Some((low, high)) => {
            let verdict = if high < 0.0 {
                below
            } else if low > 0.0 {
                above
            } else {
                neither
            };
            format!(
                "{what}: median {median:+.3} ms, 95% interval [{low:+.3}, {high:+.3}] ms: {verdict}"
            )
        }
    }
}

/// A distribution-free 95% confidence interval for the median of `values`: the `k`-th
/// smallest and largest, with `k` the largest such that a fair coin gives fewer than
/// `k` heads in `n` tosses with probability at most 2.5% (the sign test's interval).
/// `None` for fewer than 6 values, where no such `k` exists.
#[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
pub(crate) fn median_interval(mut values: Vec<f64>) -> Option<(f64, f64)> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let mut k = 0;
    // P(heads = j) for j = 0, 1, ... as C(n, j) / 2^n, summed while the tail allows.
    let (mut term, mut below) = (0.5f64.powi(i32::try_from(n).ok()?), 0.0);
    for j in 0..n {
        below += term;
        if below > 0.025 {
            break;
        }
        k = j + 1;
        term *= (n - j) as f64 / (j + 1) as f64;
    }
    (k > 0).then(|| (values[k - 1], values[n - k]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_two_middle_values() {
        assert_eq!(middle(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(middle(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(middle(Vec::new()).is_nan());
    }

    #[test]
    fn the_median_interval_needs_six_values_and_widens_to_the_sign_test_bounds() {
        assert_eq!(median_interval(vec![1.0; 5]), None);
        let six: Vec<f64> = (1..=6).map(f64::from).collect();
        // P(no heads in 6) = 1/64 <= 2.5% < P(at most one) = 7/64.
        assert_eq!(median_interval(six), Some((1.0, 6.0)));
        let nine: Vec<f64> = [9, 1, 8, 2, 7, 3, 6, 4, 5]
            .into_iter()
            .map(f64::from)
            .collect();
        // 10/512 <= 2.5% < 46/512: the 2nd smallest and the 2nd largest.
        assert_eq!(median_interval(nine), Some((2.0, 8.0)));
        let sixteen: Vec<f64> = (1..=16).map(f64::from).collect();
        // 697/65536 <= 2.5% < 2517/65536.
        assert_eq!(median_interval(sixteen), Some((4.0, 13.0)));
    }

    #[test]
    fn the_verdict_says_which_proxy_added_less_only_when_the_interval_excludes_zero() {
        let added = |per_round: Vec<(f64, f64)>| Added {
            nginx_label: "nginx, 2 workers".to_owned(),
            per_round,
            sidecar: 0.0,
            nginx: 0.0,
            sidecar_not_worse: 0,
        };
        let faster = added(vec![(0.2, 0.3); 9]);
        assert!(
            faster
                .verdict()
                .ends_with("the sidecar added less latency than nginx, 2 workers")
        );
        let slower = added(vec![(0.4, 0.3); 9]);
        assert!(
            slower
                .verdict()
                .ends_with("the sidecar added more latency than nginx, 2 workers")
        );
        let mixed = added(
            [(0.2, 0.3), (0.4, 0.3)]
                .into_iter()
                .cycle()
                .take(9)
                .collect(),
        );
        assert!(mixed.verdict().ends_with("measurable in this run"));
    }

    #[test]
    fn the_compared_build_is_called_faster_only_when_its_rounds_say_so() {
        let rounds = |p50s: &[f64]| -> Vec<Round> {
            p50s.iter()
                .map(|&p50| Round {
                    p50,
                    ..Round::default()
                })
                .collect()
        };
        let sidecar = rounds(&[1.0; 9]);
        assert!(
            compared_verdict(&rounds(&[0.9; 9]), &sidecar)
                .ends_with("the compared build is faster")
        );
        assert!(
            compared_verdict(&rounds(&[1.1; 9]), &sidecar)
                .ends_with("the compared build is slower")
        );
        let mixed = rounds(&[0.9, 1.1, 0.9, 1.1, 0.9, 1.1, 0.9, 1.1, 1.0]);
        assert!(compared_verdict(&mixed, &sidecar).ends_with("measurable in this run"));
        assert!(compared_verdict(&rounds(&[0.9; 3]), &sidecar[..3]).contains("6 or more rounds"));
    }
}
