//! Writes the generated CRDs (`crds/`) and ClusterRole (`operator/rbac.yaml`).
//!
//! `crdgen --check` writes nothing and exits 1 when a file is stale.

use std::process::ExitCode;

use finflow_operator::crdgen;

fn main() -> anyhow::Result<ExitCode> {
    let root = crdgen::workspace_root();
    if std::env::args().any(|a| a == "--check") {
        let stale = crdgen::stale(&root)?;
        for path in &stale {
            eprintln!("stale: {}", path.display());
        }
        return Ok(if stale.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    for file in crdgen::files()? {
        let path = root.join(&file.path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, &file.contents)?;
        println!("wrote {}", file.path.display());
    }
    Ok(ExitCode::SUCCESS)
}
