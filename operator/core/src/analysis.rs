//! Judging a version by its traffic: what the sidecars of its pods counted (their admin
//! `/metrics`, read by the edge through the API server's pod proxy), summed over the
//! pods and held against `spec.rollout.analysis`. Pure: the edge fetches the texts,
//! this reads and judges them.
//!
//! Only three families of the sidecar's exposition are read; the app's own families
//! that follow them are skipped. Probes (`traffic="probe"`: `/health`, `/ready`,
//! `/live`) are not traffic. A version's errors are the 5xx its app answered
//! (`origin="upstream"`) and the requests it failed to answer (the sidecar's 502, app
//! unreachable, and 504, app too slow); the sidecar's other 5xx (503: no keys to check
//! tokens with) are its own, shown and not judged. Integers throughout: latencies in
//! microseconds, shares compared by cross-multiplication.

use std::fmt::Write as _;

/// Requests answered, by `status`, `origin` and `traffic`.
pub const REQUESTS: &str = "finflow_sidecar_requests_total";
/// Tokens refused on protected paths, by `reason`.
pub const JWT_REJECTIONS: &str = "finflow_sidecar_jwt_rejections_total";
/// The time to the upstream's response head, by `traffic`, with `le` in seconds.
pub const UPSTREAM_BUCKETS: &str = "finflow_sidecar_upstream_duration_seconds_bucket";
/// The sidecar's last line before the app's metrics.
const UPSTREAM_METRICS_UP: &str = "finflow_sidecar_upstream_metrics_up";

/// The pod proxy path of a pod's sidecar metrics (its admin port is not a named port).
pub fn pod_metrics_path(namespace: &str, pod: &str, port: i32) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/metrics")
}

/// What the sidecars of a version's pods counted since they started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Pods whose sidecar answered.
    pub pods: u32,
    /// Requests answered, probes excepted.
    pub requests: u64,
    /// Of them, sent to the app: answered by it, or failed there (502, 504).
    pub forwarded: u64,
    /// Of those, answered 5xx by the app, or not answered (502 unreachable, 504 too slow).
    pub app_errors: u64,
    /// Other 5xx the sidecar answered for itself (503: no keys to check tokens): shown,
    /// not judged.
    pub proxy_errors: u64,
    /// Tokens refused.
    pub jwt_rejections: u64,
    /// The upstream latency of requests, probes excepted: `(le in µs, cumulative count)`
    /// in ascending `le`, `u64::MAX` for `+Inf`.
    pub latency: Vec<(u64, u64)>,
}

impl Sample {
    /// The sum of two pods' (or two sets of pods') samples.
    pub fn add(&mut self, other: &Sample) {
        self.pods = self.pods.saturating_add(other.pods);
        self.requests = self.requests.saturating_add(other.requests);
        self.forwarded = self.forwarded.saturating_add(other.forwarded);
        self.app_errors = self.app_errors.saturating_add(other.app_errors);
        self.proxy_errors = self.proxy_errors.saturating_add(other.proxy_errors);
        self.jwt_rejections = self.jwt_rejections.saturating_add(other.jwt_rejections);
        for &(le, count) in &other.latency {
            match self.latency.binary_search_by_key(&le, |&(l, _)| l) {
                Ok(i) => self.latency[i].1 = self.latency[i].1.saturating_add(count),
                Err(i) => self.latency.insert(i, (le, count)),
            }
        }
    }

    /// The sum of several pods' samples.
    pub fn sum<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Sample {
        samples.into_iter().fold(Sample::default(), |mut sum, s| {
            sum.add(s);
            sum
        })
    }
}

/// Whether `text`, the start of an exposition, holds the whole of the sidecar's own part
/// (what [`parse`] reads): it reaches the line that ends it.
pub fn sidecar_part_ends(text: &str) -> bool {
    text.lines()
        .any(|line| line.trim().starts_with(UPSTREAM_METRICS_UP))
}

/// Reads one sidecar's exposition as one pod's sample: its own families, which come
/// before `finflow_sidecar_upstream_metrics_up` (what follows is the app's, and not
/// read, whatever it names). `Err` when it is not a FinFlow sidecar's, or one from
/// before the `origin` and `traffic` labels (its counts would mix probes and the
/// sidecar's own errors into the app's).
pub fn parse(text: &str) -> Result<Sample, String> {
    let mut sample = Sample {
        pods: 1,
        ..Sample::default()
    };
    let mut seen_requests = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with(UPSTREAM_METRICS_UP) {
            break;
        }
        let family = line
            .split(|c: char| c == '{' || c.is_whitespace())
            .next()
            .unwrap_or_default();
        if ![REQUESTS, JWT_REJECTIONS, UPSTREAM_BUCKETS].contains(&family) {
            continue;
        }
        let (labels, value) =
            series(&line[family.len()..]).map_err(|e| format!("line {}: {e}", n + 1))?;
        let label = |name: &str| {
            labels
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let value =
            integer(value).ok_or_else(|| format!("line {}: `{value}` is not a count", n + 1))?;
        match family {
            REQUESTS => {
                seen_requests = true;
                let (Some(status), Some(origin), Some(traffic)) =
                    (label("status"), label("origin"), label("traffic"))
                else {
                    return Err(format!(
                        "line {}: {REQUESTS} without status, origin and traffic labels (a sidecar from before traffic analysis)",
                        n + 1
                    ));
                };
                if traffic != "api" {
                    continue;
                }
                sample.requests = sample.requests.saturating_add(value);
                let (forwarded, app_error, proxy_error) = match (origin, status) {
                    ("upstream", s) => (true, s.starts_with('5'), false),
                    // The app did not answer: unreachable, or too slow.
                    (_, "502" | "504") => (true, true, false),
                    (_, s) => (false, false, s.starts_with('5')),
                };
                let add = |n: &mut u64, yes: bool| {
                    if yes {
                        *n = n.saturating_add(value);
                    }
                };
                add(&mut sample.forwarded, forwarded);
                add(&mut sample.app_errors, app_error);
                add(&mut sample.proxy_errors, proxy_error);
            }
            JWT_REJECTIONS => sample.jwt_rejections = sample.jwt_rejections.saturating_add(value),
            _ => {
                if label("traffic") != Some("api") {
                    continue;
                }
                let le =
                    label("le").ok_or_else(|| format!("line {}: a bucket without le", n + 1))?;
                let le = if le == "+Inf" {
                    u64::MAX
                } else {
                    micros(le).ok_or_else(|| format!("line {}: le `{le}` is not seconds", n + 1))?
                };
                sample.add(&Sample {
                    latency: vec![(le, value)],
                    ..Sample::default()
                });
            }
        }
    }
    if !seen_requests {
        return Err(format!(
            "no {REQUESTS} samples: not a FinFlow sidecar's metrics"
        ));
    }
    Ok(sample)
}

/// A sample's labels, names with values, in their order.
type Labels = Vec<(String, String)>;

/// `{k="v",...} value [timestamp]` (the labels optional) as labels and value.
fn series(rest: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = rest;
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start_matches([',', ' ']);
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            if inner.is_empty() {
                return Err("unclosed labels".into());
            }
            let eq = inner.find('=').ok_or("a label without value")?;
            let name = inner[..eq].trim().to_owned();
            let quoted = inner[eq + 1..]
                .strip_prefix('"')
                .ok_or_else(|| format!("label {name}'s value is not quoted"))?;
            let (mut value, mut escaped, mut end) = (String::new(), false, None);
            for (i, c) in quoted.char_indices() {
                if escaped {
                    value.push(if c == 'n' { '\n' } else { c });
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    end = Some(i);
                    break;
                } else {
                    value.push(c);
                }
            }
            let end = end.ok_or_else(|| format!("label {name}'s value is not closed"))?;
            labels.push((name, value));
            inner = &quoted[end + 1..];
        }
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or("a sample without value")?;
    Ok((labels, value))
}

/// A count as the exporter writes it: digits, perhaps with a fraction of zeros.
fn integer(value: &str) -> Option<u64> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if !fraction.bytes().all(|b| b == b'0') {
        return None;
    }
    whole.parse().ok()
}

/// Seconds written as a decimal (`0.0025`, `10`) in whole microseconds, truncated.
fn micros(seconds: &str) -> Option<u64> {
    let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    if whole.is_empty() && fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let digits: String = fraction.chars().chain("000000".chars()).take(6).collect();
    whole
        .checked_mul(1_000_000)?
        .checked_add(digits.parse().ok()?)
}

/// The 99th percentile of a cumulative histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum P99 {
    /// Interpolated within its bucket, in microseconds.
    Micros(u64),
    /// Beyond the last finite bucket (its bound in microseconds): slower than any
    /// threshold can say.
    Above(u64),
}

/// The 99th percentile of `latency` (as [`Sample::latency`]), interpolated linearly
/// within the bucket that holds it, as Prometheus' `histogram_quantile` does; `None`
/// without observations.
pub fn p99(latency: &[(u64, u64)]) -> Option<P99> {
    let total = latency.last()?.1;
    if total == 0 {
        return None;
    }
    // The rank of the 99th percentile among `total` observations, rounded up.
    let rank = (u128::from(total) * 99).div_ceil(100);
    let (mut lower, mut below) = (0_u64, 0_u64);
    for &(le, count) in latency {
        if u128::from(count) >= rank {
            if le == u64::MAX {
                return Some(P99::Above(lower));
            }
            let within = u128::from(count.saturating_sub(below)).max(1);
            let into = rank.saturating_sub(u128::from(below));
            let span = u128::from(le - lower);
            let at = u128::from(lower) + span * into / within;
            return Some(P99::Micros(u64::try_from(at).unwrap_or(le)));
        }
        lower = le;
        below = count;
    }
    None
}

/// The limits a version is judged by (`spec.rollout.analysis`), in integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Requests below which nothing is judged; each share and the latency are judged
    /// once their own count (requests sent to the app, observed latencies) reaches it.
    pub min_requests: u64,
    /// Highest share of the requests sent to the app that may fail (5xx, or no answer),
    /// in percent.
    pub max_app_error_percent: Option<u32>,
    /// Highest 99th percentile of the upstream latency, in microseconds.
    pub max_p99_micros: Option<u64>,
    /// Highest share of requests refused for their token, in percent.
    pub max_jwt_rejection_percent: Option<u32>,
}

/// What an analysis concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verdict {
    /// No sidecar answered, or none of them counts as the analysis needs.
    #[default]
    Unavailable,
    /// Fewer requests than the minimum: nothing judged, nothing held back.
    Inconclusive,
    Passed,
    Failed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "Unavailable",
            Self::Inconclusive => "Inconclusive",
            Self::Passed => "Passed",
            Self::Failed => "Failed",
        }
    }
}

/// A verdict, the figures it was reached on, and why, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub sample: Sample,
    pub p99: Option<P99>,
    pub message: String,
}

/// `part` of `whole` is more than `percent` %.
fn exceeds(part: u64, whole: u64, percent: u32) -> bool {
    u128::from(part) * 100 > u128::from(whole) * u128::from(percent)
}

/// `part` of `whole` in percent with one decimal, rounded down (for messages).
fn percent(part: u64, whole: u64) -> String {
    let tenths = u128::from(part) * 1000 / u128::from(whole.max(1));
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// Microseconds as milliseconds with one decimal, rounded down (for messages).
fn millis(micros: u64) -> String {
    format!("{}.{}", micros / 1000, micros % 1000 / 100)
}

/// Judges a version's sample against `t`. Each limit that is set is checked, and every
/// one exceeded is named; latency only once the histogram holds `min_requests`
/// observations.
pub fn judge(sample: &Sample, t: &Thresholds) -> Judgement {
    let p99 = p99(&sample.latency);
    let verdict = |verdict, message: String| Judgement {
        verdict,
        sample: sample.clone(),
        p99,
        message,
    };
    if sample.pods == 0 {
        return verdict(
            Verdict::Unavailable,
            "no sidecar of the version's pods answered".into(),
        );
    }
    if sample.requests < t.min_requests {
        return verdict(
            Verdict::Inconclusive,
            format!(
                "{} requests, fewer than the {} needed to judge",
                sample.requests, t.min_requests
            ),
        );
    }
    // `n` of `total` requests `what`, when that share is over `max` percent.
    let share = |n: u64, total: u64, max: u32, what: &str| {
        exceeds(n, total, max).then(|| {
            format!(
                "{n} of {total} requests {what} ({}% > {max}%)",
                percent(n, total)
            )
        })
    };
    let mut failures = Vec::new();
    failures.extend(
        t.max_app_error_percent
            .filter(|_| sample.forwarded >= t.min_requests)
            .and_then(|max| {
                share(
                    sample.app_errors,
                    sample.forwarded,
                    max,
                    "failed at the app",
                )
            }),
    );
    failures.extend(t.max_jwt_rejection_percent.and_then(|max| {
        share(
            sample.jwt_rejections,
            sample.requests,
            max,
            "refused for their token",
        )
    }));
    let observed = sample.latency.last().map_or(0, |&(_, count)| count);
    if let Some(max) = t.max_p99_micros
        && observed >= t.min_requests
    {
        match p99 {
            Some(P99::Micros(at)) if at > max => failures.push(format!(
                "p99 latency {} ms > {} ms",
                millis(at),
                millis(max)
            )),
            Some(P99::Above(bound)) => failures.push(format!(
                "p99 latency above {} ms, the histogram's last bound (limit {} ms)",
                millis(bound),
                millis(max)
            )),
            _ => {}
        }
    }
    if failures.is_empty() {
        let latency = match p99 {
            Some(P99::Micros(at)) => format!(", p99 {} ms", millis(at)),
            _ => String::new(),
        };
        verdict(
            Verdict::Passed,
            format!(
                "{} requests on {} pods, {} of {} failed at the app{latency}",
                sample.requests, sample.pods, sample.app_errors, sample.forwarded
            ),
        )
    } else {
        verdict(Verdict::Failed, failures.join("; "))
    }
}

/// A sidecar's traffic in a few figures: what [`exposition`] renders (the fake API
/// server and the e2e stand serve it as the sidecars' metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Requests the app answered 200.
    pub ok: u64,
    /// Requests the app answered 500.
    pub app_errors: u64,
    /// Requests the app did not answer in time (the sidecar's 504).
    pub unanswered: u64,
    /// Requests the sidecar answered 503 for itself (no keys to check tokens).
    pub proxy_errors: u64,
    /// Requests the sidecar refused 401 for their token.
    pub jwt_rejections: u64,
    /// Probes the app answered 200 (not traffic).
    pub probes: u64,
    /// How long each forwarded request took, in milliseconds.
    pub latency_millis: u64,
}

/// The samples both rungs of the rollout tests serve (the fake API server's scenarios
/// and the e2e stand's sidecars), so each judges the same traffic.
#[cfg(any(test, feature = "testing"))]
impl Traffic {
    const NONE: Self = Self {
        ok: 0,
        app_errors: 0,
        unanswered: 0,
        proxy_errors: 0,
        jwt_rejections: 0,
        probes: 0,
        latency_millis: 0,
    };
    /// 3 of 100 requests failed at the app, under the default 5 %, in 4 ms each; the
    /// probes beside them are not traffic.
    pub const HEALTHY: Self = Self {
        ok: 97,
        app_errors: 3,
        probes: 40,
        latency_millis: 4,
        ..Self::NONE
    };
    /// 20 of 100 requests failed at the app, over the default 5 %.
    pub const FAILING: Self = Self {
        ok: 80,
        app_errors: 20,
        latency_millis: 4,
        ..Self::NONE
    };
    /// 100 requests and no errors, in 20 ms each.
    pub const FAST: Self = Self {
        ok: 100,
        latency_millis: 20,
        ..Self::NONE
    };
}

/// The histogram bounds the sidecar uses, in seconds as it writes them.
const BOUNDS: [&str; 12] = [
    "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "10",
];

/// What a sidecar with `t`'s traffic exposes at `/metrics`, in the sidecar's families
/// and labels.
pub fn exposition(t: &Traffic) -> String {
    let mut out = format!("# TYPE {REQUESTS} counter\n");
    for (status, origin, traffic, count) in [
        ("200", "upstream", "api", t.ok),
        ("500", "upstream", "api", t.app_errors),
        ("504", "proxy", "api", t.unanswered),
        ("503", "proxy", "api", t.proxy_errors),
        ("401", "proxy", "api", t.jwt_rejections),
        ("200", "upstream", "probe", t.probes),
    ] {
        if count > 0 {
            let _ = writeln!(
                out,
                "{REQUESTS}{{status=\"{status}\",origin=\"{origin}\",traffic=\"{traffic}\"}} {count}"
            );
        }
    }
    let _ = writeln!(out, "# TYPE {JWT_REJECTIONS} counter");
    if t.jwt_rejections > 0 {
        let _ = writeln!(
            out,
            "{JWT_REJECTIONS}{{reason=\"bad_signature\"}} {}",
            t.jwt_rejections
        );
    }
    let family = UPSTREAM_BUCKETS.trim_end_matches("_bucket");
    let _ = writeln!(out, "# TYPE {family} histogram");
    let forwarded = t.ok + t.app_errors + t.unanswered;
    let took = t.latency_millis * 1000;
    for bound in BOUNDS {
        let within = micros(bound).is_some_and(|b| took <= b);
        let count = if within { forwarded } else { 0 };
        let _ = writeln!(
            out,
            "{UPSTREAM_BUCKETS}{{traffic=\"api\",le=\"{bound}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "{UPSTREAM_BUCKETS}{{traffic=\"api\",le=\"+Inf\"}} {forwarded}"
    );
    let _ = writeln!(out, "{family}_count{{traffic=\"api\"}} {forwarded}");
    out
}

#[cfg(test)]
mod tests;
