//! Header rules: what is stripped, what is added, what never crosses a hop. All pure.

use std::net::IpAddr;

use finflow_platform::identity::IDENTITY_HEADERS;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use serde_json::Value;

use crate::jwt::Claims;

/// Marks a response the proxy itself produced (401, 403, 429, 502, 503, 504, 404 in the
/// gateway), so a client can tell it from the app's answer. Never on an upstream response.
pub const PROXY_ERROR: HeaderName = HeaderName::from_static("x-finflow-proxy-error");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Headers that belong to one connection and are never forwarded (RFC 9110 section 7.6.1),
/// besides any header the `Connection` header names and any `proxy-*` header.
// A static, not a const: a const array is built (and dropped) at every use, and this
// one is consulted for every header of every request and answer.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// Headers a claim may not be mapped to: they carry transport, routing or tracing
/// meaning that a token must not be able to override.
const RESERVED: [&str; 14] = [
    "host",
    "authorization",
    "cookie",
    "content-length",
    "content-type",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-finflow-proxy-error",
    "forwarded",
];

/// Which claim goes into which header (`CLAIM_HEADERS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeaders(Vec<(String, HeaderName)>);

impl ClaimHeaders {
    /// Parses `claim:header` entries; every bad entry is reported.
    pub fn parse<S: AsRef<str>>(entries: impl IntoIterator<Item = S>) -> Result<Self, Vec<String>> {
        let mut pairs = Vec::new();
        let mut errors = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            match entry.split_once(':') {
                Some((claim, header)) => pairs.push((claim.to_owned(), header.to_owned())),
                None => errors.push(format!("`{entry}` is not claim:header")),
            }
        }
        let mapped = Self::from_pairs(pairs.iter().map(|(c, h)| (c.as_str(), h.as_str())));
        match (mapped, errors.is_empty()) {
            (Ok(map), true) => Ok(map),
            (Ok(_), false) => Err(errors),
            (Err(more), _) => Err(errors.into_iter().chain(more).collect()),
        }
    }

    /// Maps each `(claim, header)`; every bad pair is reported.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, Vec<String>> {
        let mut mapped: Vec<(String, HeaderName)> = Vec::new();
        let mut errors = Vec::new();
        for (claim, name) in pairs {
            let (claim, name) = (claim.trim(), name.trim());
            let entry = format!("{claim}:{name}");
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                errors.push(format!("`{entry}` does not name a valid header"));
                continue;
            };
            if claim.is_empty() {
                errors.push(format!("`{entry}` does not name a claim"));
            } else if RESERVED.contains(&name.as_str())
                || is_hop_by_hop(&name)
                || name.as_str().starts_with("proxy-")
            {
                errors.push(format!("`{entry}`: {name} cannot carry a claim"));
            } else if mapped.iter().any(|(_, n)| *n == name) {
                errors.push(format!("`{entry}`: {name} is mapped twice"));
            } else {
                mapped.push((claim.to_owned(), name));
            }
        }
        if errors.is_empty() {
            Ok(Self(mapped))
        } else {
            Err(errors)
        }
    }

    pub fn pairs(&self) -> &[(String, HeaderName)] {
        &self.0
    }

    /// Every header a client may not send: the platform's identity headers and every
    /// header of the map.
    pub fn stripped(&self) -> Vec<HeaderName> {
        let mut names: Vec<HeaderName> = IDENTITY_HEADERS
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
        for (_, name) in &self.0 {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-")
}

/// Removes every client-supplied copy of the identity headers.
pub fn strip(headers: &mut HeaderMap, names: &[HeaderName]) {
    // Clients rarely send one: looking through the few headers a request has is cheaper
    // than hashing every name to remove, and the map changes only when one is there.
    if headers.keys().any(|key| names.contains(key)) {
        for name in names {
            headers.remove(name);
        }
    }
}

/// Removes hop-by-hop headers: the fixed list, `proxy-*`, and those `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none (a `Connection` header is one itself): one look through
    // the headers, and the map is touched only when there is something to remove.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_hop_by_hop(k))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// The headers carrying `claims` according to `map`. Strings are sent as is, arrays
/// joined with `,`, numbers and booleans as text; absent, null, empty and object claims,
/// and values that cannot be a header, are left out.
pub fn identity_headers(claims: &Claims, map: &ClaimHeaders) -> Vec<(HeaderName, HeaderValue)> {
    map.0
        .iter()
        .filter_map(|(claim, name)| {
            let text = claim_text(claims.raw.get(claim)?)?;
            match HeaderValue::from_str(&text) {
                Ok(value) => Some((name.clone(), value)),
                Err(_) => {
                    tracing::warn!(%claim, "claim value cannot be sent as a header; left out");
                    None
                }
            }
        })
        .collect()
}

fn claim_text(value: &Value) -> Option<String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let text = match value {
        Value::Array(items) => items
            .iter()
            .filter_map(scalar)
            .collect::<Vec<_>>()
            .join(","),
        other => scalar(other)?,
    };
    (!text.is_empty()).then_some(text)
}

/// A client's request id is kept when it is 1 to 128 characters of `[A-Za-z0-9._-]`.
pub fn is_valid_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The incoming request id if well formed, else a new UUID v4.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(X_REQUEST_ID)
        .filter(|v| is_valid_request_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(|| {
            let mut text = uuid::Uuid::encode_buffer();
            let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
            HeaderValue::from_str(text)
                .unwrap_or_else(|_| unreachable!("a UUID is a valid header value"))
        })
}

/// The client's address as a header value, made once per connection.
pub fn address_value(client: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_string())
        .unwrap_or_else(|_| unreachable!("an IP address is a valid header value"))
}

/// Who sent a request: the connection's peer and, when that peer is a trusted proxy,
/// the client it forwards for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The connection's peer as a header value ([`address_value`]).
    pub peer: &'a HeaderValue,
    /// Whether the peer is a trusted proxy, whose `X-Forwarded-For` is kept.
    pub trusted: bool,
    /// The client as a header value (`X-Real-IP`): the peer, or whom it forwards for.
    pub client: &'a HeaderValue,
}

/// The client a trusted proxy forwards for: the rightmost `X-Forwarded-For` address
/// that is not itself a trusted proxy (entries to its left were written by the client
/// and prove nothing). `None` when the list is empty or garbled before such an address,
/// and the proxy's own address stands for the client.
pub fn forwarded_client(headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let mut entries: Vec<&str> = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        entries.extend(value.to_str().ok()?.split(','));
    }
    let mut last = None;
    for entry in entries.iter().rev().map(|e| e.trim()) {
        let address = forwarded_address(entry)?;
        if !trusted.iter().any(|net| net.contains(&address)) {
            return Some(address);
        }
        last = Some(address);
    }
    last
}

/// An `X-Forwarded-For` entry's address: bare, or with the port some load balancers
/// add (`203.0.113.7:41234`, `[2001:db8::7]:41234`). Read as garbage, such an entry
/// would make every client behind that balancer one client, with one rate limit.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    entry
        .parse()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// Sets `X-Forwarded-For` (the peer appended to the list a trusted peer sent, else the
/// peer alone: what an untrusted client claims is dropped), `X-Forwarded-Host` (the
/// original `Host`), `X-Forwarded-Proto`, `X-Real-IP` (the client) and `X-Request-Id`.
pub fn set_forwarding(
    headers: &mut HeaderMap,
    origin: &Origin<'_>,
    host: Option<HeaderValue>,
    request_id: &HeaderValue,
) {
    let prior: Vec<&str> = if origin.trusted {
        headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    } else {
        Vec::new()
    };
    let chain = if prior.is_empty() {
        origin.peer.clone()
    } else {
        let peer_text = origin.peer.to_str().unwrap_or_default();
        HeaderValue::from_str(&format!("{}, {peer_text}", prior.join(", ")))
            .unwrap_or_else(|_| origin.peer.clone())
    };
    headers.insert(X_FORWARDED_FOR, chain);
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    headers.insert(X_REAL_IP, origin.client.clone());
    headers.insert(X_REQUEST_ID, request_id.clone());
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(raw: Value) -> Claims {
        crate::jwt::claims_for_tests("u1", 0, raw.as_object().unwrap().clone())
    }

    #[test]
    fn the_default_map_turns_claims_into_the_platform_headers() {
        let map = ClaimHeaders::parse(crate::config::DEFAULT_CLAIM_HEADERS.split(',')).unwrap();
        let headers = identity_headers(
            &claims(json!({
                "sub": "u1",
                "email": "ada@example.com",
                "roles": ["user", "admin"],
                "kyc_status": "verified",
                "tier": null,
            })),
            &map,
        );
        let text: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            text,
            [
                ("x-user-id", "u1"),
                ("x-user-email", "ada@example.com"),
                ("x-user-roles", "user,admin"),
                ("x-kyc-status", "verified"),
            ]
        );
    }

    #[test]
    fn any_claim_can_be_mapped_and_unsendable_values_are_left_out() {
        let map =
            ClaimHeaders::parse("jti:x-token-id,n:x-n,flag:X-Flag,obj:x-obj,bad:x-bad".split(','))
                .unwrap();
        let headers = identity_headers(
            &claims(json!({"jti": "j1", "n": 3, "flag": true, "obj": {"a": 1}, "bad": "a\nb"})),
            &map,
        );
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-token-id", "x-n", "x-flag"]);
    }

    #[test]
    fn a_claim_cannot_be_mapped_to_a_transport_header() {
        let errors = ClaimHeaders::parse(
            "sub:authorization,sub:x-forwarded-for,sub:proxy-x,sub:connection,a:x-a,b:x-a"
                .split(','),
        )
        .unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
    }

    #[test]
    fn the_strip_list_covers_platform_and_mapped_headers() {
        let map = ClaimHeaders::parse("sub:x-user-id,jti:x-token-id".split(',')).unwrap();
        let names = map.stripped();
        for n in IDENTITY_HEADERS.iter().chain(&["x-token-id"]) {
            assert!(names.iter().any(|h| h == n), "{n}");
        }
        assert_eq!(names.len(), 6);
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic x"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("trailer", "x"),
            ("x-kept", "1"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        remove_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["x-kept"]
        );
    }

    #[test]
    fn request_ids_are_kept_only_when_well_formed() {
        assert!(is_valid_request_id(b"abc-123_X.y"));
        assert!(is_valid_request_id(&[b'a'; 128]));
        assert!(!is_valid_request_id(&[b'a'; 129]));
        assert!(!is_valid_request_id(b""));
        assert!(!is_valid_request_id(b"a b"));
        assert!(!is_valid_request_id(b"a/b"));

        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("req-1"));
        assert_eq!(request_id(&h), "req-1");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("bad id"));
        let generated = request_id(&h);
        assert!(uuid::Uuid::parse_str(generated.to_str().unwrap()).is_ok());
    }

    #[test]
    fn forwarding_headers_append_a_trusted_peer_and_overwrite_the_rest() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        h.insert(X_REAL_IP, HeaderValue::from_static("6.6.6.6"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let peer = address_value("10.0.0.7".parse().unwrap());
        let client = address_value("2.2.2.2".parse().unwrap());
        let origin = Origin {
            peer: &peer,
            trusted: true,
            client: &client,
        };
        set_forwarding(
            &mut h,
            &origin,
            Some(HeaderValue::from_static("api.example")),
            &HeaderValue::from_static("r1"),
        );
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.7");
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[X_FORWARDED_HOST], "api.example");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_REAL_IP], "2.2.2.2");
        assert_eq!(h[X_REQUEST_ID], "r1");
    }

    #[test]
    fn what_an_untrusted_peer_claims_to_forward_for_is_dropped() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        let peer = address_value("10.0.0.7".parse().unwrap());
        let origin = Origin {
            peer: &peer,
            trusted: false,
            client: &peer,
        };
        set_forwarding(&mut h, &origin, None, &HeaderValue::from_static("r1"));
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.7");
        assert_eq!(h[X_REAL_IP], "10.0.0.7");
    }

    #[test]
    fn the_client_is_the_rightmost_forwarded_address_that_is_not_a_trusted_proxy() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let xff = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(X_FORWARDED_FOR, HeaderValue::from_static(v));
            }
            forwarded_client(&h, &trusted)
        };
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // A client's own claim (6.6.6.6) left of the real client is ignored.
        assert_eq!(xff(&["6.6.6.6, 203.0.113.9, 10.1.2.3"]), ip("203.0.113.9"));
        assert_eq!(
            xff(&["6.6.6.6", "203.0.113.9", "10.1.2.3"]),
            ip("203.0.113.9")
        );
        assert_eq!(xff(&["2001:db8::5, ::1"]), ip("2001:db8::5"));
        // Only proxies: the farthest one is the best we know.
        assert_eq!(xff(&["10.9.9.9, 10.1.2.3"]), ip("10.9.9.9"));
        // Nothing usable: the caller falls back to the peer.
        assert_eq!(xff(&[]), None);
        assert_eq!(xff(&["203.0.113.9, garbage, 10.1.2.3"]), None);
        assert_eq!(xff(&["garbage, 203.0.113.9"]), ip("203.0.113.9"));
        // With the port a load balancer wrote, the address is still the client's.
        assert_eq!(xff(&["203.0.113.9:41234, 10.1.2.3"]), ip("203.0.113.9"));
        assert_eq!(xff(&["[2001:db8::5]:41234"]), ip("2001:db8::5"));
        assert_eq!(xff(&["[2001:db8::5]"]), ip("2001:db8::5"));
        assert_eq!(xff(&["203.0.113.9:port"]), None);
    }
}
