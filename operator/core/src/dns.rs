//! Names as the cluster's DNS knows them.

use std::fmt;
use std::str::FromStr;

/// A cluster DNS domain such as `cluster.local`: lower-case DNS labels, validated when
/// the operator starts so that no object is ever built with a name that cannot resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDomain(String);

impl ClusterDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ClusterDomain {
    fn default() -> Self {
        Self("cluster.local".to_owned())
    }
}

impl fmt::Display for ClusterDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ClusterDomain {
    type Err = String;

    /// Accepts a trailing dot (the absolute form) and any case, as DNS does.
    fn from_str(text: &str) -> Result<Self, String> {
        let domain = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        // Room for `<service>.<namespace>.svc.` in front within DNS's 253 characters.
        if domain.is_empty() || domain.len() > 200 || !domain.split('.').all(label_ok) {
            return Err(format!(
                "invalid cluster domain {text:?}: expected DNS labels such as cluster.local"
            ));
        }
        Ok(Self(domain))
    }
}
