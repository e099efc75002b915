//! Gateway mode: routes by path prefix to each service's sidecar, never to `/internal/*`.
//!
//! The gateway does not validate tokens (the sidecars do); it passes `Authorization`
//! through and otherwise treats a request like a sidecar does: client identity headers
//! removed, forwarding headers, request id and trace context set.

use http::request::Parts;

use crate::config::{BaseUrl, GatewaySettings};
use crate::paths::{is_internal, route};
use crate::proxy::ProxyError;
use finflow_platform::error::ErrorCode;

/// The routing decision of gateway mode.
pub struct GatewayGate {
    routes: GatewaySettings,
}

impl GatewayGate {
    pub fn new(routes: GatewaySettings) -> Self {
        Self { routes }
    }

    /// The sidecar to send the request to. Internal and unknown paths are the same 404,
    /// so the gateway does not reveal which internal routes exist; a known route to a
    /// service that is not configured is `503` with reason `no_upstream`.
    pub fn admit(&self, parts: &Parts) -> Result<&BaseUrl, ProxyError> {
        let path = parts.uri.path();
        if is_internal(path) {
            return Err(ProxyError::no_route());
        }
        let service = route(path).ok_or_else(ProxyError::no_route)?;
        self.routes.base(service).ok_or_else(|| {
            ProxyError::new(
                ErrorCode::DependencyUnavailable,
                "no_upstream",
                format!("the {} service is not configured", service.name),
            )
        })
    }
}
