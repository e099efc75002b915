//! The admin port (`/live`, `/ready`, `/metrics`); `/ready` is the kit's handler, as is the
//! gateway's own `/health`.
//!
//! A sidecar's `/metrics` is its own metrics followed by its app's, fetched from the
//! app's `/metrics` over loopback at each scrape: the public port never forwards
//! `/metrics` ([`crate::paths::is_admin_only`]), so this is where Prometheus reads the
//! app. An app that does not answer within [`APP_METRICS_TIMEOUT`] costs the scrape its
//! samples, never the scrape: `finflow_sidecar_upstream_metrics_up` says whether they
//! are there.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use finflow_platform::error::{ApiError, ErrorCode};
use finflow_platform::health::Health;
use finflow_platform::http::{metrics_handle, ready};
use http_body_util::{BodyExt as _, Limited};

use crate::config::BaseUrl;
use crate::paths::METRICS_PATH;
use crate::proxy::HttpClient;

/// How long the app may take to answer `/metrics`: well inside Prometheus's default
/// 10 s scrape timeout, so a stuck app still leaves the sidecar's metrics scraped.
pub const APP_METRICS_TIMEOUT: Duration = Duration::from_secs(2);

/// The most of the app's metrics text read; a larger answer counts as none.
const APP_METRICS_MAX_BYTES: usize = 16 * 1024 * 1024;

/// The gauge saying whether the app's metrics are in this scrape, up to its value.
const UPSTREAM_UP: &str = "# HELP finflow_sidecar_upstream_metrics_up Whether this scrape \
holds the app's metrics (its /metrics answered in time)\n\
# TYPE finflow_sidecar_upstream_metrics_up gauge\n\
finflow_sidecar_upstream_metrics_up ";

/// Where a sidecar reads its app's metrics.
#[derive(Clone)]
pub struct AppMetrics {
    uri: http::Uri,
    client: HttpClient,
}

impl AppMetrics {
    /// `/metrics` of the app at `upstream`, asked with `client`.
    pub fn new(upstream: &BaseUrl, client: HttpClient) -> Self {
        let uri = format!("{}{METRICS_PATH}", upstream.as_base())
            .parse()
            .expect("a base URL and an absolute path make a URI");
        Self { uri, client }
    }

    /// The app's exposition text, or why there is none.
    async fn fetch(&self) -> Result<String, String> {
        let request = http::Request::get(self.uri.clone())
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), APP_METRICS_MAX_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "not UTF-8 text".to_owned())
    }
}

/// `/live`, `/ready` and `/metrics`. `/ready` reports the critical checks of `health`
/// (the sidecar: its app's `/health` within 2 s and, in JWKS mode, a loaded key set)
/// and answers 503 from the moment shutdown begins. `/metrics` adds the app's metrics
/// when `app` is given (sidecar mode; the gateway has no app of its own).
pub fn router(health: Health, app: Option<AppMetrics>) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .with_state(health)
        .route("/metrics", get(metrics_text).with_state(app))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn live() -> Response {
    axum::Json(serde_json::json!({ "status": "up" })).into_response()
}

async fn metrics_text(State(app): State<Option<AppMetrics>>) -> Response {
    let handle = metrics_handle();
    handle.run_upkeep();
    let own = handle.render();
    let body = match app {
        None => own,
        Some(app) => {
            let fetched = tokio::time::timeout(APP_METRICS_TIMEOUT, app.fetch())
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {APP_METRICS_TIMEOUT:?}")));
            if let Err(e) = &fetched {
                tracing::warn!(error = %e, "the app's /metrics is unavailable: serving the sidecar's own");
            }
            with_app(&own, fetched.as_deref().ok())
        }
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// One metric family of an exposition text: its `# HELP`/`# TYPE` lines and samples.
#[derive(Default)]
struct Family<'a> {
    name: &'a str,
    kind: Option<&'a str>,
    comments: Vec<&'a str>,
    samples: Vec<&'a str>,
}

/// Splits an exposition text into its families, in order. A `# HELP` or `# TYPE` line
/// starts a family unless it names the current one; a sample belongs to the current
/// family when its name starts with the family's (`_bucket`, `_sum`, `_count`), else it
/// starts an untyped one. Other comments are dropped.
fn families(text: &str) -> Vec<Family<'_>> {
    let mut families: Vec<Family<'_>> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            let (Some(keyword @ ("HELP" | "TYPE")), Some(name)) = (words.next(), words.next())
            else {
                continue;
            };
            if families.last().is_none_or(|f| f.name != name) {
                families.push(Family {
                    name,
                    ..Family::default()
                });
            }
            let family = families.last_mut().expect("a family was just ensured");
            if keyword == "TYPE" {
                family.kind = words.next();
            }
            family.comments.push(line);
        } else {
            let name = line.split(['{', ' ', '\t']).next().unwrap_or(line);
            if families.last().is_none_or(|f| !name.starts_with(f.name)) {
                families.push(Family {
                    name,
                    ..Family::default()
                });
            }
            families
                .last_mut()
                .expect("a family was just ensured")
                .samples
                .push(line);
        }
    }
    families
}

/// The sidecar's metrics `own`, then whether the app answered, then the app's metrics.
///
/// A family may appear once in an exposition, with one `# TYPE`, and both processes
/// report `finflow_dependency_up` (the platform's health checks; their `dependency`
/// labels differ): the app's samples of a family the sidecar has join the sidecar's.
fn with_app<'a>(own: &'a str, app: Option<&'a str>) -> String {
    let mut theirs = app.map(families).unwrap_or_default();
    let mut out = String::with_capacity(own.len() + app.map_or(0, str::len) + 256);
    for family in families(own) {
        let mut samples = family.samples;
        while let Some(at) = theirs.iter().position(|t| t.name == family.name) {
            let shared = theirs.remove(at);
            if shared.kind == family.kind {
                samples.extend(shared.samples);
            } else {
                tracing::warn!(
                    family = family.name,
                    "the app's metric has another type than the sidecar's: left out"
                );
            }
        }
        write_family(&mut out, &family.comments, &samples);
    }
    out.push_str(UPSTREAM_UP);
    out.push_str(if app.is_some() { "1\n\n" } else { "0\n\n" });
    for family in &theirs {
        write_family(&mut out, &family.comments, &family.samples);
    }
    out
}

fn write_family(out: &mut String, comments: &[&str], samples: &[&str]) {
    for line in comments.iter().chain(samples) {
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "# HELP finflow_sidecar_requests_total Requests\n\
# TYPE finflow_sidecar_requests_total counter\n\
finflow_sidecar_requests_total{status=\"200\"} 3\n\
\n\
# TYPE finflow_dependency_up gauge\n\
finflow_dependency_up{dependency=\"upstream\"} 1\n\
\n";

    const APP: &str = "# TYPE finflow_dependency_up gauge\n\
finflow_dependency_up{dependency=\"database\"} 1\n\
\n\
# TYPE finflow_http_request_duration_seconds histogram\n\
finflow_http_request_duration_seconds_bucket{le=\"+Inf\"} 2\n\
finflow_http_request_duration_seconds_sum 0.5\n\
finflow_http_request_duration_seconds_count 2\n";

    fn type_lines(text: &str, name: &str) -> usize {
        let line = format!("# TYPE {name} ");
        text.lines().filter(|l| l.starts_with(&line)).count()
    }

    #[test]
    fn a_family_both_report_is_one_group_and_the_apps_own_follow() {
        let merged = with_app(OWN, Some(APP));
        assert_eq!(type_lines(&merged, "finflow_dependency_up"), 1, "{merged}");
        let group = families(&merged)
            .into_iter()
            .find(|f| f.name == "finflow_dependency_up")
            .unwrap();
        assert_eq!(group.samples.len(), 2, "{merged}");
        assert!(merged.contains("\nfinflow_sidecar_upstream_metrics_up 1\n"));
        let up = merged.find("finflow_sidecar_upstream_metrics_up").unwrap();
        let histogram = merged.find("finflow_http_request_duration_seconds_sum");
        assert!(up < histogram.unwrap(), "the app's follow: {merged}");
        assert_eq!(
            type_lines(&merged, "finflow_http_request_duration_seconds"),
            1
        );
    }

    #[test]
    fn without_the_app_the_sidecars_metrics_stay_and_say_so() {
        let merged = with_app(OWN, None);
        assert!(merged.contains("finflow_sidecar_requests_total{status=\"200\"} 3\n"));
        assert!(merged.contains(
            "# TYPE finflow_sidecar_upstream_metrics_up gauge\nfinflow_sidecar_upstream_metrics_up 0\n"
        ));
        assert_eq!(
            type_lines(&merged, "finflow_sidecar_upstream_metrics_up"),
            1
        );
    }

    #[test]
    fn a_family_of_another_type_is_left_out_rather_than_declared_twice() {
        let app = "# TYPE finflow_dependency_up counter\nfinflow_dependency_up 7\n";
        let merged = with_app(OWN, Some(app));
        assert_eq!(type_lines(&merged, "finflow_dependency_up"), 1, "{merged}");
        assert!(!merged.contains("finflow_dependency_up 7"), "{merged}");
    }
}
