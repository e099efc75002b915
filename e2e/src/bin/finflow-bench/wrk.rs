//! wrk, the load generator: started on a path, its report read and parsed.

use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::process::Command;

/// wrk started on `seconds` of requests to `url` over `connections` connections on
/// `threads` threads; [`wrk_report`] reads its report.
pub(crate) fn spawn_wrk(
    url: &str,
    headers: &[(String, String)],
    seconds: u64,
    threads: usize,
    connections: usize,
) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        &format!("-t{threads}"),
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    cmd.arg("-s").arg(latency_script()?);
    cmd.arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running wrk")
}

/// What the wrk script of [`latency_script`] prints before its figures.
pub(crate) const LATENCY_LINE: &str = "finflow-latency-us";

/// The path of a wrk script, written once per process, that prints [`LATENCY_LINE`]
/// and p50 and p99 in microseconds once the run is done. wrk's own report gives a
/// latency of a millisecond or more to 10 µs ("1.62ms"), coarser than the differences
/// between two proxies; `done` runs once, after the requests, so the requests
/// themselves stay on wrk's script-free path.
pub(crate) fn latency_script() -> anyhow::Result<&'static std::path::Path> {
    static SCRIPT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    if let Some(path) = SCRIPT.get() {
        return Ok(path);
    }
    let script = format!(
        "done = function(summary, latency, requests)\n  \
         io.write(string.format(\"{LATENCY_LINE} %.1f %.1f\\n\", latency:percentile(50), latency:percentile(99)))\nend\n"
    );
    let path = std::env::temp_dir().join(format!("finflow-bench-{}.lua", std::process::id()));
    std::fs::write(&path, script).context("writing the wrk latency script")?;
    Ok(SCRIPT.get_or_init(|| path))
}

/// The report of a wrk started by [`spawn_wrk`] against `url`; an error if any answer
/// was not 2xx.
pub(crate) async fn wrk_report(wrk: tokio::process::Child, url: &str) -> anyhow::Result<String> {
    let out = wrk.wait_with_output().await.context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx")) {
        bail!("wrk saw errors against {url}: {line}\n{text}");
    }
    Ok(text)
}

/// wrk's report of `seconds` of requests to `url` over `connections` connections on
/// `threads` threads; an error if any answer was not 2xx.
pub(crate) async fn run_wrk(
    url: &str,
    headers: &[(String, String)],
    seconds: u64,
    threads: usize,
    connections: usize,
) -> anyhow::Result<String> {
    wrk_report(spawn_wrk(url, headers, seconds, threads, connections)?, url).await
}

/// Runs wrk and returns (requests/s, p50 ms, p99 ms).
pub(crate) async fn wrk(
    url: &str,
    headers: &[(String, String)],
    seconds: u64,
    concurrency: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    // wrk needs at least one connection per thread.
    parse_wrk(&run_wrk(url, headers, seconds, concurrency.clamp(1, 2), concurrency).await?)
}

/// (requests/s, p50 ms, p99 ms) of a wrk report.
#[allow(clippy::float_arithmetic)]
pub(crate) fn parse_wrk(text: &str) -> anyhow::Result<(f64, f64, f64)> {
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    // The script's microseconds, else wrk's own rounded figures.
    let exact: Option<Vec<f64>> =
        text.lines()
            .find_map(|l| l.strip_prefix(LATENCY_LINE))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|n| n.parse::<f64>().ok())
                    .collect()
            });
    if let Some([p50, p99]) = exact.as_deref() {
        return Ok((rps, p50 / 1000.0, p99 / 1000.0));
    }
    let percentile = |p: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .map(|v| to_ms(v.trim()))
            .unwrap_or(f64::NAN)
    };
    Ok((rps, percentile("50%"), percentile("99%")))
}

#[allow(clippy::float_arithmetic)] // latency figures for people, not money
pub(crate) fn to_ms(v: &str) -> f64 {
    let (number, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    number.parse::<f64>().unwrap_or(f64::NAN) * factor
}

/// Requests wrk completed against `url` in `seconds` (one thread, a few connections:
/// under valgrind a proxy is some 50 times slower, and the count is what matters).
pub(crate) async fn wrk_requests(
    url: &str,
    headers: &[(String, String)],
    seconds: u64,
) -> anyhow::Result<u64> {
    let text = run_wrk(url, headers, seconds, 1, 4).await?;
    text.lines()
        .find_map(|l| {
            let (count, rest) = l.trim().split_once(' ')?;
            rest.starts_with("requests in")
                .then(|| count.parse::<u64>().ok())?
        })
        .filter(|&n| n > 0)
        .with_context(|| format!("no requests counted in wrk output:\n{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_read_in_microseconds_from_the_script_line_and_else_from_wrks_report() {
        let report = "Latency Distribution\n     50%    1.62ms\n     99%    6.30ms\nRequests/sec:   2203.50\n";
        assert_eq!(parse_wrk(report).unwrap(), (2203.5, 1.62, 6.3));
        let scripted = format!("{report}{LATENCY_LINE} 1617.0 6304.0\n");
        assert_eq!(parse_wrk(&scripted).unwrap(), (2203.5, 1.617, 6.304));
        assert!(parse_wrk("no figures").is_err());
    }

    #[test]
    fn the_latency_script_prints_the_line_the_parser_reads_in_done() {
        let script = std::fs::read_to_string(latency_script().unwrap()).unwrap();
        assert!(script.starts_with("done = function(summary, latency, requests)\n"));
        assert!(script.contains(&format!(
            "io.write(string.format(\"{LATENCY_LINE} %.1f %.1f\\n\", latency:percentile(50), latency:percentile(99)))"
        )));
        assert!(script.ends_with("\nend\n"));
    }
}
