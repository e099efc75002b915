//! The `edge` benchmark: the app directly, through its sidecar with a real JWT, and
//! through an nginx hop.

use anyhow::{Context, bail};
use finflow_e2e::launcher::Platform;
use finflow_e2e::tools::ensure_tool;

use crate::cpu::{Target, measured, measured_together};
use crate::nginx::Nginx;
use crate::stats::{Added, Round, added_latency, compared_verdict, median};
use crate::wrk::wrk;

/// The identity headers the sidecar makes of `token` with its default claim map
/// (`sub`, `email`, `roles` joined with `,`, `kyc_status`, `tier`), for the paths that
/// have no sidecar to make them.
pub(crate) fn identity_headers(token: &str) -> anyhow::Result<Vec<(String, String)>> {
    use base64::Engine as _;
    let payload = token
        .split('.')
        .nth(1)
        .context("the token has no payload")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    let text = |claim: &str| match &claims[claim] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    };
    Ok([
        ("sub", "x-user-id"),
        ("email", "x-user-email"),
        ("roles", "x-user-roles"),
        ("kyc_status", "x-kyc-status"),
        ("tier", "x-account-tier"),
    ]
    .into_iter()
    .filter_map(|(claim, header)| Some((header.to_owned(), text(claim)?)))
    .collect())
}

/// The request every edge path measures, and the headers each path is sent with so
/// that all of them hand the app the same request.
pub(crate) struct EdgeRequests {
    /// The app's own URL of the path.
    pub(crate) app_url: String,
    /// Where the auth sidecar listens.
    pub(crate) sidecar_url: String,
    pub(crate) app_port: String,
    /// To the app directly: everything a proxy would have set.
    pub(crate) direct: Vec<(String, String)>,
    /// To the sidecar: the token and a caller's trace context, nothing else.
    pub(crate) bearer: Vec<(String, String)>,
    /// To nginx: the identity headers the sidecar would make, the token, the trace
    /// context; nginx sets the forwarding headers and request id.
    pub(crate) identity: Vec<(String, String)>,
}

pub(crate) const EDGE_PATH: &str = "/api/v1/users/me";

impl EdgeRequests {
    pub(crate) async fn new(platform: &Platform) -> anyhow::Result<Self> {
        let user = platform.client().new_user("bench").await;
        let token = user.session["access_token"]
            .as_str()
            .context("no token")?
            .to_owned();
        let auth = platform
            .services
            .iter()
            .find(|s| s.name == "auth")
            .context("no auth")?;
        let app_port = auth
            .app_url
            .rsplit(':')
            .next()
            .context("app port")?
            .to_owned();
        // Every path hands the app the same request, so the app's own work is the same
        // and the difference is the hop: the identity headers the sidecar makes of this
        // token, the forwarding headers and request id a proxy sets, and a caller's
        // trace context.
        let traceparent = (
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        );
        // The sidecar passes the token on too (the app may read it): the others carry it.
        let authorization = ("authorization".to_owned(), format!("Bearer {token}"));
        let mut identity = identity_headers(&token)?;
        identity.push(traceparent.clone());
        identity.push(authorization.clone());
        let mut direct = identity.clone();
        direct.extend([
            ("x-forwarded-for".to_owned(), "127.0.0.1".to_owned()),
            (
                "x-forwarded-host".to_owned(),
                format!("127.0.0.1:{app_port}"),
            ),
            ("x-forwarded-proto".to_owned(), "http".to_owned()),
            ("x-real-ip".to_owned(), "127.0.0.1".to_owned()),
            (
                "x-request-id".to_owned(),
                "3f2b7c1e-9a4d-4e8b-8f6a-2d1c0b9e7a54".to_owned(),
            ),
        ]);
        Ok(Self {
            app_url: format!("{}{EDGE_PATH}", auth.app_url),
            sidecar_url: format!("{}{EDGE_PATH}", auth.sidecar_url),
            app_port,
            direct,
            bearer: vec![authorization, traceparent],
            identity,
        })
    }
}

/// The URL and process id of the sidecar build `--compare` names, started beside the
/// launcher's auth sidecar with its settings.
pub(crate) async fn start_compared(
    platform: &mut Platform,
    binary: &std::path::Path,
) -> anyhow::Result<(String, u32)> {
    const NAME: &str = "auth-sidecar-compared";
    let base = platform.start_sidecar_like("auth", NAME, binary).await?;
    let pid = platform
        .pid(NAME)
        .context("the compared sidecar has no pid")?;
    Ok((format!("{base}{EDGE_PATH}"), pid))
}

/// The nginx configurations the sidecar is measured against: `workers` when asked
/// for, else nginx's built-in default (one worker) and Debian's packaged `auto` (one
/// per CPU), the second left out where the machine has one CPU.
pub(crate) fn nginx_workers(workers: Option<usize>) -> Vec<usize> {
    match workers {
        Some(n) => vec![n],
        None => {
            let cpus = std::thread::available_parallelism().map_or(1, usize::from);
            let mut counts = vec![1, cpus];
            counts.dedup();
            counts
        }
    }
}

/// "nginx, 1 worker", "nginx, 2 workers".
pub(crate) fn nginx_label(workers: usize) -> String {
    let plural = if workers == 1 { "" } else { "s" };
    format!("nginx, {workers} worker{plural}")
}

pub(crate) async fn edge(
    platform: &mut Platform,
    seconds: u64,
    concurrency: usize,
    rounds_wanted: usize,
    workers: Option<usize>,
    together: bool,
    compare: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    ensure_tool("wrk", "wrk").await?;
    ensure_tool("nginx", "nginx").await?;
    let compared = match compare {
        Some(binary) => Some(start_compared(platform, binary).await?),
        None => None,
    };
    let platform = &*platform;
    let requests = EdgeRequests::new(platform).await?;
    let nginx_counts = nginx_workers(workers);
    let mut nginxes = Vec::new();
    for &count in &nginx_counts {
        let dir = platform.options.log_dir.join(format!("nginx-{count}"));
        nginxes.push(Nginx::start(&dir, &requests.app_port, count, None).await?);
    }

    // Warm-up, then rounds of the measurements interleaved (so drift in the machine's
    // load hits all of them alike); each figure's median is reported.
    wrk(&requests.app_url, &requests.direct, 2, concurrency).await?;
    let app: Vec<u32> = platform.pid("auth").into_iter().collect();
    let sidecar_pid: Vec<u32> = platform.pid("auth-sidecar").into_iter().collect();
    let mut targets: Vec<Target<'_>> = vec![
        (&requests.app_url, &requests.direct, Vec::new()),
        (&requests.sidecar_url, &requests.bearer, sidecar_pid),
    ];
    for nginx in &nginxes {
        targets.push((&nginx.url, &requests.identity, nginx.pids()));
    }
    if let Some((url, pid)) = &compared {
        targets.push((url, &requests.bearer, vec![*pid]));
    }
    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); targets.len()];
    let paths = targets.len();
    // Loaded together, the paths share the connections, so the machine is about as
    // loaded as by one path at a time.
    let together_connections = (concurrency / paths).max(1);
    if together {
        for _ in 0..rounds_wanted {
            let measured = measured_together(&targets, seconds, together_connections, &app).await?;
            for (path, round) in rounds.iter_mut().zip(measured) {
                path.push(round);
            }
        }
    } else {
        for round in 0..rounds_wanted {
            // The proxies take turns at going first, so a machine getting slower or
            // faster during a round favours none of them.
            let proxies = paths - 1;
            let order = std::iter::once(0).chain((0..proxies).map(|k| 1 + (k + round) % proxies));
            for i in order {
                let (url, headers, proxy) = &targets[i];
                rounds[i].push(measured(url, headers, seconds, concurrency, proxy, &app).await?);
            }
        }
    }
    for nginx in nginxes {
        nginx.stop().await;
    }
    let compared_rounds = compared.is_some().then(|| rounds.pop()).flatten();
    let (Some(direct_rounds), Some(sidecar_rounds)) = (rounds.first(), rounds.get(1)) else {
        bail!("the edge paths start with the app directly and the sidecar");
    };
    let nginx_rounds = rounds.get(2..).unwrap_or_default();
    let nginx_labels: Vec<String> = nginx_counts.iter().map(|&n| nginx_label(n)).collect();
    let added: Vec<Added> = nginx_rounds
        .iter()
        .zip(&nginx_labels)
        .map(|(n, label)| added_latency(direct_rounds, sidecar_rounds, n, label))
        .collect();
    let (direct, sidecar) = (median(direct_rounds), median(sidecar_rounds));

    if together {
        println!(
            "\nGET {EDGE_PATH}, all {paths} paths loaded at once in each round, {together_connections} connections each (wrk), {seconds} s, medians of {rounds_wanted} rounds"
        );
    } else {
        println!(
            "\nGET {EDGE_PATH}, {concurrency} connections, {seconds} s each (wrk), medians of {rounds_wanted} interleaved rounds"
        );
    }
    let loops = workers.map_or_else(
        || "its default event loops (WORKER_THREADS unset)".to_owned(),
        |n| format!("{n} event loops"),
    );
    let nginx_configs = nginx_labels.join(" and ");
    println!("sidecar: {loops}; measured against {nginx_configs}");
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>14} {:>12}",
        "path", "req/s", "p50 ms", "p99 ms", "proxy CPU µs", "app CPU µs"
    );
    let mut rows = vec![
        ("app directly".to_owned(), direct),
        ("sidecar (JWT validated) -> app".to_owned(), sidecar),
    ];
    for (n, label) in nginx_rounds.iter().zip(&nginx_labels) {
        rows.push((format!("{label} (no auth) -> app"), median(n)));
    }
    for (name, r) in &rows {
        let proxy = if r.proxy_cpu > 0.0 {
            format!("{:.1}", r.proxy_cpu)
        } else {
            "-".to_owned()
        };
        println!(
            "{name:<34} {:>8.0} {:>8.3} {:>8.3} {proxy:>14} {:>12.1}",
            r.rps, r.p50, r.p99, r.app_cpu
        );
    }
    for (added, (_, r)) in added.iter().zip(rows.iter().skip(2)) {
        let nginx = &added.nginx_label;
        println!(
            "\nadded p50 latency per round (ms, sidecar / {nginx}): {}",
            added
                .per_round
                .iter()
                .map(|(s, n)| format!("{s:.3}/{n:.3}"))
                .collect::<Vec<_>>()
                .join("  ")
        );
        println!(
            "added p50 latency, median of the rounds: sidecar {:.3} ms, {nginx} {:.3} ms; the sidecar added no more in {} of {} rounds",
            added.sidecar,
            added.nginx,
            added.sidecar_not_worse,
            added.per_round.len()
        );
        println!("{}", added.verdict());
        println!(
            "proxy CPU per request (the cost behind that latency on a busy machine): sidecar {:.1} µs, {nginx} {:.1} µs (the app's own: {:.1} µs)",
            sidecar.proxy_cpu, r.proxy_cpu, direct.app_cpu
        );
    }
    if let (Some(other), Some(binary)) = (&compared_rounds, compare) {
        let other_median = median(other);
        println!(
            "\ncompared build {}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, proxy CPU {:.1} µs",
            binary.display(),
            other_median.rps,
            other_median.p50,
            other_median.p99,
            other_median.proxy_cpu
        );
        println!("{}", compared_verdict(other, sidecar_rounds));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_is_measured_at_the_asked_workers_or_else_at_one_and_at_one_per_cpu() {
        assert_eq!(nginx_workers(Some(3)), vec![3]);
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let defaults = nginx_workers(None);
        assert_eq!(defaults.first(), Some(&1));
        assert_eq!(defaults.last(), Some(&cpus));
        assert_eq!(defaults.len(), if cpus == 1 { 1 } else { 2 });
        assert_eq!(nginx_label(1), "nginx, 1 worker");
        assert_eq!(nginx_label(2), "nginx, 2 workers");
    }
}
