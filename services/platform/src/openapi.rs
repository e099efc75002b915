//! The public OpenAPI document of a service: what a client of the gateway can call, as
//! the gateway and the sidecar answer it.
//!
//! Handlers document their data and their own refusals; [`publish`] adds, once for
//! every operation, what the platform and the proxies do around them: success bodies
//! in the `{"success": true, "data": ...}` envelope, the bearer token (except on the
//! public paths) and the refusals any request can meet (`400` malformed input, `401`,
//! `403`, `429`, `500`, `502`, `503`, `504`, in the error envelope). Routes the gateway
//! never routes (`/internal/*`, `/health`, `/ready`, `/metrics`) are left out.

use serde_json::{Map, Value, json};

/// Paths a request may take without a token: the sidecar's default `PUBLIC_PATHS`, and
/// the operations published without a security requirement.
pub const PUBLIC_PATHS: &str = "/health,/ready,/metrics,/openapi.json,\
/.well-known/jwks.json,/api/v1/auth/register,/api/v1/auth/login,/api/v1/auth/refresh,\
/api/v1/auth/logout,/api/v1/auth/token";

/// Answered by the platform or a proxy, not by the service's routes: not published.
const UNPUBLISHED: [&str; 3] = ["/health", "/ready", "/metrics"];

/// Served as they are, not in the envelope.
const RAW: [&str; 1] = ["/.well-known/jwks.json"];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Refusals any operation can answer, and who answers them.
const REFUSALS: [(&str, &str); 8] = [
    (
        "400",
        "VALIDATION_ERROR: the request is malformed (body, path, query or headers)",
    ),
    ("401", "UNAUTHORIZED: no valid bearer token (sidecar)"),
    (
        "403",
        "FORBIDDEN: the caller may not do this (a role, an owner, a staff rule)",
    ),
    (
        "429",
        "RATE_LIMITED: too many requests; see Retry-After (sidecar)",
    ),
    (
        "500",
        "INTERNAL_ERROR: an internal failure; nothing is disclosed",
    ),
    (
        "502",
        "DEPENDENCY_UNAVAILABLE: the service could not be reached (sidecar)",
    ),
    (
        "503",
        "DEPENDENCY_UNAVAILABLE: the service or one it needs is unavailable",
    ),
    (
        "504",
        "DEPENDENCY_UNAVAILABLE: the service did not answer in time (sidecar)",
    ),
];

/// Turns a service's document (as utoipa serializes it) into its public document.
pub fn publish(doc: &mut Value) {
    let public: Vec<&str> = PUBLIC_PATHS.split(',').collect();
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        paths.retain(|path, _| {
            !path.starts_with("/internal") && !UNPUBLISHED.contains(&path.as_str())
        });
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for method in METHODS {
                if let Some(operation) = item.get_mut(method).and_then(Value::as_object_mut) {
                    publish_operation(path, operation, public.contains(&path.as_str()));
                }
            }
        }
    }
    let root = doc
        .as_object_mut()
        .expect("an OpenAPI document is an object");
    root.insert("security".to_owned(), json!([{ "bearer": [] }]));
    let components = root
        .entry("components")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("components is an object");
    components
        .entry("securitySchemes")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("securitySchemes is an object")
        .insert(
            "bearer".to_owned(),
            json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "An access token from POST /api/v1/auth/login (users) or \
                                   POST /api/v1/auth/token (services)"}),
        );
}

fn publish_operation(path: &str, operation: &mut Map<String, Value>, public: bool) {
    if public {
        // Overrides the document's bearer requirement: no token needed.
        operation.insert("security".to_owned(), json!([]));
    }
    let responses = operation
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("responses is an object");
    for (status, response) in responses.iter_mut() {
        if status.starts_with('2') && !RAW.contains(&path) {
            envelope_json_bodies(response);
        }
    }
    for (status, description) in REFUSALS {
        if public && status == "401" {
            continue;
        }
        responses.entry(status.to_owned()).or_insert_with(|| {
            json!({
                "description": description,
                "content": { "application/json": {
                    "schema": { "$ref": "#/components/schemas/ErrorEnvelope" } } }
            })
        });
    }
    if let Some(too_many) = responses.get_mut("429").and_then(Value::as_object_mut) {
        too_many.entry("headers").or_insert_with(|| {
            json!({ "Retry-After": { "description": "Seconds to wait before retrying",
                                     "schema": { "type": "integer", "minimum": 1 } } })
        });
    }
}

/// A success's JSON body `S` becomes `{"success": true, "data": S}`.
fn envelope_json_bodies(response: &mut Value) {
    let Some(content) = response.get_mut("content").and_then(Value::as_object_mut) else {
        return;
    };
    for (media_type, body) in content.iter_mut() {
        if media_type != "application/json" {
            continue;
        }
        let Some(body) = body.as_object_mut() else {
            continue;
        };
        let data = body.remove("schema").unwrap_or_else(|| json!({}));
        body.insert(
            "schema".to_owned(),
            json!({
                "type": "object",
                "required": ["success", "data"],
                "properties": {
                    "success": { "type": "boolean", "enum": [true] },
                    "data": data
                }
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> Value {
        json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {
                "/api/v1/wallets": {"post": {"responses": {
                    "201": {"description": "made", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Wallet"}}}},
                    "403": {"description": "KYC_REQUIRED", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}}}},
                "/api/v1/auth/login": {"post": {"responses": {"200": {"description": "ok"}}}},
                "/.well-known/jwks.json": {"get": {"responses": {"200": {"description": "keys",
                    "content": {"application/json": {"schema": {"type": "object"}}}}}}},
                "/internal/transfers": {"post": {"responses": {}}},
                "/health": {"get": {"responses": {}}},
                "/metrics": {"get": {"responses": {}}}
            },
            "components": {"schemas": {}}
        })
    }

    #[test]
    fn successes_are_enveloped_and_refusals_added_without_replacing_the_services_own() {
        let mut doc = document();
        publish(&mut doc);
        let post = &doc["paths"]["/api/v1/wallets"]["post"]["responses"];
        let created = &post["201"]["content"]["application/json"]["schema"];
        assert_eq!(created["required"], json!(["success", "data"]));
        assert_eq!(
            created["properties"]["data"]["$ref"],
            "#/components/schemas/Wallet"
        );
        assert_eq!(post["403"]["description"], "KYC_REQUIRED", "kept");
        for status in ["400", "401", "429", "500", "502", "503", "504"] {
            assert!(post.get(status).is_some(), "{status} added");
        }
        assert!(post["429"]["headers"].get("Retry-After").is_some());
    }

    #[test]
    fn public_paths_need_no_token_and_never_answer_401() {
        let mut doc = document();
        publish(&mut doc);
        assert_eq!(doc["security"], json!([{"bearer": []}]));
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let login = &doc["paths"]["/api/v1/auth/login"]["post"];
        assert_eq!(login["security"], json!([]));
        assert!(login["responses"].get("401").is_none());
        let wallets = &doc["paths"]["/api/v1/wallets"]["post"];
        assert!(
            wallets.get("security").is_none(),
            "the document's default applies"
        );
    }

    #[test]
    fn what_the_gateway_never_routes_is_left_out_and_the_key_set_stays_raw() {
        let mut doc = document();
        publish(&mut doc);
        let paths = doc["paths"].as_object().unwrap();
        let published: Vec<&str> = paths.keys().map(String::as_str).collect();
        assert_eq!(
            published,
            [
                "/.well-known/jwks.json",
                "/api/v1/auth/login",
                "/api/v1/wallets"
            ]
        );
        let jwks = &doc["paths"]["/.well-known/jwks.json"]["get"]["responses"]["200"];
        assert_eq!(
            jwks["content"]["application/json"]["schema"],
            json!({"type": "object"})
        );
    }
}
