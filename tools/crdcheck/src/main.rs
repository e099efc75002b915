//! `crdcheck [CRD.yaml ...]`: the checks of `finflow-crdcheck` on the given CRDs (by
//! default `crds/*.yaml`), with the resources in `examples/` as samples. Prints each
//! problem and exits 1 when there is any.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use finflow_crdcheck::{check_crd, derived, read_yaml_dir, read_yaml_documents};

fn main() -> anyhow::Result<ExitCode> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let crds = if args.is_empty() {
        read_yaml_dir(Path::new("crds"))?
    } else {
        let mut crds = Vec::new();
        for f in &args {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            crds.extend(read_yaml_documents(&text)?);
        }
        crds
    };
    let samples = read_yaml_dir(Path::new("examples")).unwrap_or_default();
    let mut count = 0;
    for crd in &crds {
        for problem in check_crd(crd, derived::FINFLOW, &samples) {
            println!("{problem}");
            count += 1;
        }
    }
    if count == 0 {
        println!("crdcheck: {} CRD(s), no problems", crds.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("crdcheck: {count} problem(s)");
        Ok(ExitCode::FAILURE)
    }
}
