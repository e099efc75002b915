//! Decisions on paths alone: which are public, which are internal, where the gateway
//! sends them. All pure.

use finflow_contracts::catalog::{SERVICES, ServiceInfo};

/// The paths probes use (`/health`: the operator's and, with the default `healthPath`,
/// the kubelet's; `/ready` and `/live`: the platform's probe routes): counted apart from
/// traffic, so that probes neither make up a version's request count nor dilute its
/// share of errors. A custom `healthPath` is not among them.
pub const PROBE_PATHS: [&str; 3] = ["/health", "/ready", "/live"];

/// Whether `path` is one of [`PROBE_PATHS`].
pub fn is_probe(path: &str) -> bool {
    PROBE_PATHS.contains(&path)
}

/// One `PUBLIC_PATHS` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    /// An entry that ended in `*`: everything starting with the rest.
    Prefix(String),
}

/// The paths that pass without a token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PathPatterns(Vec<Pattern>);

impl PathPatterns {
    /// Parses the entries; each starts with `/`, and a `*` may only end it.
    pub fn parse<S: AsRef<str>>(entries: impl IntoIterator<Item = S>) -> Result<Self, Vec<String>> {
        let mut patterns = Vec::new();
        let mut errors = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            let (body, prefix) = match entry.strip_suffix('*') {
                Some(body) => (body, true),
                None => (entry, false),
            };
            if !body.starts_with('/') {
                errors.push(format!("`{entry}` must start with /"));
            } else if body.contains('*') {
                errors.push(format!("`{entry}` may only end with *"));
            } else if prefix {
                patterns.push(Pattern::Prefix(body.to_owned()));
            } else {
                patterns.push(Pattern::Exact(body.to_owned()));
            }
        }
        if errors.is_empty() {
            Ok(Self(patterns))
        } else {
            Err(errors)
        }
    }
}

/// The prefix of service-to-service routes: never public, never routed by the gateway.
pub const INTERNAL_PREFIX: &str = "/internal";

/// `path` is `prefix` or below it (`/a/b` is under `/a`, `/ab` is not).
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `/internal` and everything below it.
pub fn is_internal(path: &str) -> bool {
    under(path, INTERNAL_PREFIX)
}

/// The app's Prometheus metrics. Its business counters are not for clients, so the
/// public port never forwards this path; Prometheus reads it on the admin port.
pub const METRICS_PATH: &str = "/metrics";

/// Whether `path` is `/metrics` or below it: answered `404` by the sidecar itself, with a
/// token or without, whatever `PUBLIC_PATHS` says (a FinService may still list it).
pub fn is_admin_only(path: &str) -> bool {
    under(path, METRICS_PATH)
}

/// Whether `path` passes without a token. Internal paths never do, whatever the patterns say.
pub fn is_public(path: &str, patterns: &PathPatterns) -> bool {
    !is_internal(path)
        && patterns.0.iter().any(|p| match p {
            Pattern::Exact(e) => path == e,
            Pattern::Prefix(p) => path.starts_with(p.as_str()),
        })
}

/// Whether a path is not in normal form: a `.` or `..` segment, an empty segment
/// (`//`), or a percent-encoded unreserved character (`%2e`, `%69`). Such a path may mean
/// one thing to the proxy's checks (public, internal, route) and another to an app that
/// normalizes it, so it is refused rather than guessed at. Clients never need them.
pub fn is_ambiguous(path: &str) -> bool {
    // One pass over the bytes, since every request is checked.
    let bytes = path.as_bytes();
    bytes.iter().enumerate().any(|(at, &byte)| match byte {
        b'%' => bytes
            .get(at + 1..at + 3)
            .and_then(hex_pair)
            .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')),
        b'/' => bytes.get(at + 1) == Some(&b'/'),
        // A dot that starts a segment: the segment is `.` or `..`, or a name.
        b'.' if at == 0 || bytes.get(at - 1) == Some(&b'/') => {
            let segment = bytes[at..].split(|&b| b == b'/').next().unwrap_or_default();
            segment == b"." || segment == b".."
        }
        _ => false,
    })
}

/// The byte two hex digits spell.
fn hex_pair(pair: &[u8]) -> Option<u8> {
    let [high, low] = pair else { return None };
    let digit = |d: &u8| char::from(*d).to_digit(16);
    u8::try_from(digit(high)? * 16 + digit(low)?).ok()
}

/// A service behind the gateway, as the catalog lists it.
pub type Service = &'static ServiceInfo;

/// The service the gateway sends `path` to; `None` for unknown and internal paths.
pub fn route(path: &str) -> Option<Service> {
    if is_internal(path) {
        return None;
    }
    SERVICES
        .iter()
        .find(|s| s.routes.iter().any(|prefix| under(path, prefix)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> PathPatterns {
        PathPatterns::parse(crate::config::DEFAULT_PUBLIC_PATHS.split(',')).unwrap()
    }

    #[test]
    fn exact_entries_match_only_themselves() {
        let p = defaults();
        assert!(is_public("/api/v1/auth/login", &p));
        assert!(is_public("/health", &p));
        assert!(!is_public("/api/v1/auth/login/", &p));
        assert!(!is_public("/api/v1/auth/loginx", &p));
        assert!(!is_public("/api/v1/users/me", &p));
        assert!(!is_public("/healthz", &p));
    }

    #[test]
    fn an_entry_ending_in_a_star_is_a_prefix() {
        let p = PathPatterns::parse(" /docs/* , /status*,".split(',')).unwrap();
        assert!(is_public("/docs/", &p));
        assert!(is_public("/docs/a/b", &p));
        assert!(!is_public("/docs", &p));
        assert!(is_public("/status", &p));
        assert!(is_public("/statusboard", &p));
    }

    #[test]
    fn internal_paths_are_never_public_even_when_listed() {
        let p = PathPatterns::parse("/internal/*,/*".split(',')).unwrap();
        assert!(!is_public("/internal/users/1", &p));
        assert!(!is_public("/internal", &p));
        assert!(is_public("/internalish", &p));
    }

    #[test]
    fn metrics_is_neither_public_nor_forwarded() {
        let p = defaults();
        assert!(!is_public("/metrics", &p));
        for path in ["/metrics", "/metrics/", "/metrics/app"] {
            assert!(is_admin_only(path), "{path}");
        }
        for path in ["/metricsx", "/api/v1/metrics", "/health"] {
            assert!(!is_admin_only(path), "{path}");
        }
    }

    #[test]
    fn malformed_patterns_are_all_reported() {
        let errors = PathPatterns::parse("health,/a*b,/ok".split(',')).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn paths_that_an_app_might_normalize_differently_are_ambiguous() {
        for path in [
            "/api/v1/auth/login/../../users/me",
            "/api/v1/auth/%2e%2E/x",
            "/./internal",
            "//internal/x",
            "/api/v1/auth/login/..",
            "/%69nternal/x",
            "/api/v1/wallets%2Dx",
        ] {
            assert!(is_ambiguous(path), "{path}");
        }
        for path in [
            "/",
            "/api/v1/files/a.b/..c",
            "/api/v1/users/me",
            "/api/v1/search/a%20b",
            "/api/v1/x/%2F",
            "/api/v1/x/100%",
        ] {
            assert!(!is_ambiguous(path), "{path}");
        }
    }

    /// The definition, written plainly: what [`is_ambiguous`] computes in one pass.
    fn ambiguous_by_definition(path: &str) -> bool {
        let encoded_unreserved = path.as_bytes().windows(3).any(|w| {
            w[0] == b'%'
                && std::str::from_utf8(&w[1..])
                    .ok()
                    .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .is_some_and(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
                    })
        });
        encoded_unreserved
            || path.contains("//")
            || path
                .split('/')
                .any(|segment| segment == "." || segment == "..")
    }

    proptest::proptest! {
        #[test]
        fn the_one_pass_check_agrees_with_the_definition(
            path in "[/.%a-zA-Z0-9+~_-]{0,24}"
        ) {
            proptest::prop_assert_eq!(is_ambiguous(&path), ambiguous_by_definition(&path));
        }
    }

    #[test]
    fn the_gateway_routes_each_prefix_to_its_service() {
        let cases = [
            ("/api/v1/auth/login", "auth"),
            ("/api/v1/users/me", "auth"),
            ("/.well-known/jwks.json", "auth"),
            ("/api/v1/wallets", "wallet"),
            ("/api/v1/wallets/1/balance", "wallet"),
            ("/api/v1/payments/x", "payment"),
            ("/api/v1/notifications", "notification"),
            ("/api/v1/webhooks/1", "notification"),
            ("/api/v1/kyc/documents", "kyc"),
            ("/api/v1/aml/alerts", "kyc"),
            ("/api/v1/reports/daily", "reporting"),
            ("/dashboard", "reporting"),
            ("/dashboard/x", "reporting"),
        ];
        for (path, expected) in cases {
            assert_eq!(route(path).map(|s| s.name), Some(expected), "{path}");
        }
    }

    #[test]
    fn the_gateway_routes_neither_internal_nor_unknown_paths() {
        for path in [
            "/internal/users/1",
            "/internal",
            "/api/v1/walletsx",
            "/api/v2/wallets",
            "/",
            "/dashboards",
            "/health",
        ] {
            assert_eq!(route(path), None, "{path}");
        }
    }
}
