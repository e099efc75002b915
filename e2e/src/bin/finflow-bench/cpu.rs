//! CPU time from `/proc`: a process's with its children's, per request, per round.

use crate::stats::Round;
use crate::wrk::{parse_wrk, spawn_wrk, wrk, wrk_report};

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on every Linux ABI).
pub(crate) const USER_HZ: f64 = 100.0;

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces,
/// hence the last `)`): `[0]` is the state, `[1]` the parent, `[11]`/`[12]` user and
/// system ticks.
pub(crate) fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User plus system CPU ticks of `pids` (all threads of each), from `/proc`.
pub(crate) fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&pid| {
            let fields = stat_fields(pid)?;
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum()
}

/// `pid` and its children (nginx's workers).
pub(crate) fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.filter_map(Result::ok) {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let parent = stat_fields(child).and_then(|f| f.get(1)?.parse::<u32>().ok());
            if parent == Some(pid) {
                pids.push(child);
            }
        }
    }
    pids
}

/// CPU µs per request of `ticks` spent over `seconds` at `rps` requests/s.
#[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
pub(crate) fn cpu_per_request(ticks: u64, rps: f64, seconds: u64) -> f64 {
    ticks as f64 / USER_HZ * 1_000_000.0 / (rps * seconds as f64).max(1.0)
}

/// wrk against `url`, with the CPU `proxy` and `app` spent meanwhile.
pub(crate) async fn measured(
    url: &str,
    headers: &[(String, String)],
    seconds: u64,
    concurrency: usize,
    proxy: &[u32],
    app: &[u32],
) -> anyhow::Result<Round> {
    let (proxy_before, app_before) = (cpu_ticks(proxy), cpu_ticks(app));
    let (rps, p50, p99) = wrk(url, headers, seconds, concurrency).await?;
    let (proxy_after, app_after) = (cpu_ticks(proxy), cpu_ticks(app));
    Ok(Round {
        rps,
        p50,
        p99,
        proxy_cpu: cpu_per_request(proxy_after.saturating_sub(proxy_before), rps, seconds),
        app_cpu: cpu_per_request(app_after.saturating_sub(app_before), rps, seconds),
    })
}

/// A path the edge benchmark loads: its URL, the headers wrk sends, the proxy's
/// processes (none for the app directly).
pub(crate) type Target<'a> = (&'a String, &'a Vec<(String, String)>, Vec<u32>);

/// Every target loaded at the same time, each by a wrk of its own (one thread,
/// `connections` connections), so that all of them meet the same moments of a shared
/// machine; the app's CPU is shared out over all the requests of the window.
pub(crate) async fn measured_together(
    targets: &[Target<'_>],
    seconds: u64,
    connections: usize,
    app: &[u32],
) -> anyhow::Result<Vec<Round>> {
    let app_before = cpu_ticks(app);
    let before: Vec<u64> = targets
        .iter()
        .map(|(_, _, proxy)| cpu_ticks(proxy))
        .collect();
    let running = targets
        .iter()
        .map(|(url, headers, _)| spawn_wrk(url, headers, seconds, 1, connections))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut reports = Vec::new();
    for (wrk, (url, _, _)) in running.into_iter().zip(targets) {
        reports.push(parse_wrk(&wrk_report(wrk, url).await?)?);
    }
    let app_ticks = cpu_ticks(app).saturating_sub(app_before);
    let all_rps: f64 = reports.iter().map(|(rps, _, _)| rps).sum();
    Ok(reports
        .into_iter()
        .zip(targets.iter().zip(before))
        .map(|((rps, p50, p99), ((_, _, proxy), proxy_before))| Round {
            rps,
            p50,
            p99,
            proxy_cpu: cpu_per_request(cpu_ticks(proxy).saturating_sub(proxy_before), rps, seconds),
            app_cpu: cpu_per_request(app_ticks, all_rps, seconds),
        })
        .collect())
}
