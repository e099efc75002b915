//! The nginx hop the edge benchmark measures the sidecar against.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use finflow_e2e::tools::{command_under, which};
use tokio::process::Command;

use crate::cpu::with_children;
use crate::edge::EDGE_PATH;

/// An nginx proxy hop to the app: keep-alive upstream connections, the forwarding
/// headers and a request id, nothing else.
pub(crate) struct Nginx {
    pub(crate) child: tokio::process::Child,
    pub(crate) bin: &'static str,
    pub(crate) conf: String,
    pub(crate) error_log: String,
    pub(crate) url: String,
}

impl Nginx {
    /// Starts nginx with `workers` worker processes, or (`wrapper` given) as one
    /// process without a master, under `wrapper`.
    pub(crate) async fn start(
        dir: &std::path::Path,
        app_port: &str,
        workers: usize,
        wrapper: Option<Vec<String>>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let processes = if wrapper.is_some() {
            "master_process off; worker_processes 1;".to_owned()
        } else {
            format!("worker_processes {workers};")
        };
        let conf = format!(
            "daemon off; {processes} pid {dir}/nginx.pid; error_log {dir}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir};\n\
               upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; }}\n\
               server {{ listen 127.0.0.1:{port};\n\
                 location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
                   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Host $http_host;\n\
                   proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Real-IP $remote_addr;\n\
                   proxy_set_header X-Request-Id $request_id; add_header X-Request-Id $request_id always; }} }} }}\n",
            dir = dir.display()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let bin = if which("nginx") && std::path::Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let conf = conf_path.display().to_string();
        let error_log = dir.join("error.log").display().to_string();
        // nginx's workers must not inherit our stdout: they would outlive the master's kill.
        let child = command_under(wrapper.as_deref(), bin)
            .args(["-c", &conf, "-e", &error_log])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nginx")?;
        let url = format!("http://127.0.0.1:{port}{EDGE_PATH}");
        // Up when it answers (under valgrind that takes seconds).
        let client = finflow_platform::client::default_client();
        let deadline = Instant::now() + Duration::from_secs(60);
        while client.get(&url).send().await.is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not start; see {error_log}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Self {
            child,
            bin,
            conf,
            error_log,
            url,
        })
    }

    /// The master and its workers, or the one process.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.child.id().map(with_children).unwrap_or_default()
    }

    pub(crate) async fn stop(mut self) {
        // A graceful stop takes the workers down with the master.
        let _ = Command::new(self.bin)
            .args(["-c", &self.conf, "-e", &self.error_log, "-s", "stop"])
            .status()
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        self.child.kill().await.ok();
    }
}
