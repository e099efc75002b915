//! The sidecar's configuration file, `sidecar.json`, which the operator writes into
//! each FinService's ConfigMap and the sidecar reads at start (`SIDECAR_CONFIG`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The file's name in the ConfigMap and in the sidecar's mount.
pub const FILE_NAME: &str = "sidecar.json";

/// `sidecar.json`. Secrets stay out of it: the HS256 secret reaches the sidecar as an
/// environment variable from its Secret, and `hs256` only says that it does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarFile {
    pub issuer: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub hs256: bool,
    #[serde(default)]
    pub public_paths: Vec<String>,
    /// Claim name to the header it is forwarded in.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
    /// Left out when empty, so sidecars older than the setting still read the file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_trusted_proxies_reads_as_older_sidecars_expect() {
        let file = SidecarFile {
            issuer: Some("finflow-auth".into()),
            audiences: vec!["finflow".into()],
            ..SidecarFile::default()
        };
        let text = serde_json::to_string(&file).unwrap();
        assert_eq!(
            text,
            r#"{"issuer":"finflow-auth","audiences":["finflow"],"jwksUri":null,"hs256":false,"publicPaths":[],"claimHeaders":{}}"#
        );
        assert_eq!(serde_json::from_str::<SidecarFile>(&text).unwrap(), file);
    }

    #[test]
    fn a_setting_the_sidecar_does_not_know_is_refused() {
        let err =
            serde_json::from_str::<SidecarFile>(r#"{"issuer":null,"jwksUri":null,"hs265":true}"#)
                .unwrap_err();
        assert!(err.to_string().contains("hs265"), "{err}");
    }
}
