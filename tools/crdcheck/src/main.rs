//! `crdcheck [CRD.yaml ...]`: the checks of `finflow-crdcheck` on the given CRDs (by
//! default `crds/*.yaml`), with the resources in `examples/` as samples. Prints each
//! problem and exits 1 when there is any.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use finflow_crdcheck::{check_crd, derived, read_yaml_documents};

fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

fn read_all(files: &[PathBuf]) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        out.extend(read_yaml_documents(&text).with_context(|| format!("parsing {}", f.display()))?);
    }
    Ok(out)
}

fn main() -> anyhow::Result<ExitCode> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let crd_files = if args.is_empty() {
        yaml_files(Path::new("crds"))?
    } else {
        args
    };
    let samples = match yaml_files(Path::new("examples")) {
        Ok(files) => read_all(&files)?,
        Err(_) => Vec::new(),
    };
    let mut count = 0;
    for crd in read_all(&crd_files)? {
        for problem in check_crd(&crd, derived::FINFLOW, &samples) {
            println!("{problem}");
            count += 1;
        }
    }
    if count == 0 {
        println!("crdcheck: {} file(s), no problems", crd_files.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("crdcheck: {count} problem(s)");
        Ok(ExitCode::FAILURE)
    }
}
