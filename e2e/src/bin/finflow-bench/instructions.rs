//! The `instructions` benchmark: user-space instructions per proxied request, counted
//! by callgrind.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use finflow_e2e::launcher::Platform;
use finflow_e2e::tools::ensure_tool;
use tokio::process::Command;

use crate::edge::{EDGE_PATH, EdgeRequests};
use crate::nginx::Nginx;
use crate::wrk::wrk_requests;

/// Where the auth sidecar's callgrind counts go, in the instructions mode.
pub(crate) fn sidecar_callgrind(log_dir: &std::path::Path) -> String {
    log_dir.join("sidecar.callgrind").display().to_string()
}

/// valgrind's command line that counts instructions with callgrind into `out`
/// (dumps, on request, to `<out>.<n>`).
pub(crate) fn callgrind_wrapper(out: &str) -> Vec<String> {
    [
        "valgrind",
        "--tool=callgrind",
        "--dump-instr=no",
        "--quiet",
        &format!("--callgrind-out-file={out}"),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Instructions the process under callgrind at `pid` executed while wrk sent
/// requests to `url`, and the requests wrk completed: counters zeroed, a measured wrk
/// run, a dump to `<out>.<n>`.
pub(crate) async fn counted(
    pid: u32,
    out: &str,
    url: &str,
    headers: &[(String, String)],
    seconds: u64,
) -> anyhow::Result<(u64, u64)> {
    // Warm: connections open, the token verified, code translated by valgrind.
    wrk_requests(url, headers, 3).await?;
    callgrind_control("-z", pid).await?;
    let requests = wrk_requests(url, headers, seconds).await?;
    let before = dumps(out);
    callgrind_control("-d", pid).await?;
    // The dump is written by the process itself once it sees the request.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let fresh = dumps(out).into_iter().find(|d| !before.contains(d));
        if let Some(total) = fresh
            .and_then(|path| std::fs::read_to_string(path).ok())
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("summary:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        {
            return Ok((total, requests));
        }
        if Instant::now() > deadline {
            bail!("no callgrind dump of {out} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The dump files of `out` (`<out>.<n>`).
pub(crate) fn dumps(out: &str) -> Vec<std::path::PathBuf> {
    let path = std::path::Path::new(out);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_prefix(name))
                        .and_then(|rest| rest.strip_prefix('.'))
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) async fn callgrind_control(action: &str, pid: u32) -> anyhow::Result<()> {
    let out = Command::new("callgrind_control")
        .args([action, &pid.to_string()])
        .output()
        .await
        .context("running callgrind_control")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {action} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
pub(crate) async fn instructions(platform: &Platform, seconds: u64) -> anyhow::Result<()> {
    ensure_tool("wrk", "wrk").await?;
    ensure_tool("nginx", "nginx").await?;
    let requests = EdgeRequests::new(platform).await?;
    let sidecar_out = sidecar_callgrind(&platform.options.log_dir);
    let sidecar_pid = platform.pid("auth-sidecar").context("no auth sidecar")?;
    let sidecar = counted(
        sidecar_pid,
        &sidecar_out,
        &requests.sidecar_url,
        &requests.bearer,
        seconds,
    )
    .await?;

    let dir = platform.options.log_dir.join("nginx");
    let nginx_out = dir.join("nginx.callgrind").display().to_string();
    let nginx = Nginx::start(
        &dir,
        &requests.app_port,
        1,
        Some(callgrind_wrapper(&nginx_out)),
    )
    .await?;
    let nginx_pid = nginx.child.id().context("nginx has no pid")?;
    let via_nginx = counted(
        nginx_pid,
        &nginx_out,
        &nginx.url,
        &requests.identity,
        seconds,
    )
    .await;
    nginx.stop().await;
    let via_nginx = via_nginx?;

    println!(
        "\nGET {EDGE_PATH}: user-space instructions per proxied request (callgrind; the kernel's work for the sockets is not counted)"
    );
    println!("{:<40} {:>14} {:>10}", "proxy", "instructions", "requests");
    for (name, (total, count)) in [
        ("sidecar (JWT validated), 1 event loop", sidecar),
        ("nginx (no auth), 1 worker", via_nginx),
    ] {
        println!(
            "{name:<40} {:>14.0} {count:>10}",
            total as f64 / count as f64
        );
    }
    let ratio = (sidecar.0 as f64 / sidecar.1 as f64) / (via_nginx.0 as f64 / via_nginx.1 as f64);
    println!("sidecar / nginx: {ratio:.3}");
    Ok(())
}
