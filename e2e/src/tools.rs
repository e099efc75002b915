//! Debian tools the tests and benchmarks need, installed on demand (the project's own
//! scripts install what they use; CI starts from a machine without them).

use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::process::Command;

/// Installs `package` with apt-get unless `binary` is already on the PATH (or in sbin).
pub async fn ensure_tool(binary: &str, package: &str) -> anyhow::Result<()> {
    if which(binary) {
        return Ok(());
    }
    eprintln!("installing {package} with apt-get ...");
    let sudo = if nix::unistd::Uid::effective().is_root() {
        vec![]
    } else {
        vec!["sudo"]
    };
    for args in [
        vec!["apt-get", "update", "-qq"],
        vec!["apt-get", "install", "-y", "-qq", package],
    ] {
        let mut cmd = sudo.iter().chain(args.iter());
        let program = cmd.next().context("empty command")?;
        let status = Command::new(program)
            .args(cmd)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!("could not install {package}");
        }
    }
    Ok(())
}

pub fn which(binary: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|p| p.join(binary).is_file())
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|p| std::path::Path::new(p).join(binary).is_file())
    })
}

/// A command that runs `binary` under `wrapper` (a program and its arguments, the binary
/// coming last, as valgrind takes it), or `binary` itself when there is none.
pub fn command_under(wrapper: Option<&[String]>, binary: impl AsRef<std::ffi::OsStr>) -> Command {
    match wrapper.and_then(<[String]>::split_first) {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(binary);
            command
        }
        None => Command::new(binary),
    }
}
