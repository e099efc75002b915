//! The gateway's `/openapi.json`: one document for everything the gateway routes, made
//! of the services' published documents (each sidecar serves its service's).
//!
//! Paths are the union of the services' (each path belongs to one service; only paths
//! the gateway routes are kept). Component schemas of the same name and the same text
//! are kept once; two different schemas of one name (a payment `Status` is not a
//! wallet's) keep the first service's name and the other becomes `<Service><Name>`,
//! with that service's references rewritten. The merged document is kept for
//! [`CACHE_FOR`]; a service whose document cannot be fetched makes the answer `503`,
//! since a document that silently lacks a service misleads every client built from it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use finflow_platform::error::{ApiError, ErrorCode};
use http_body_util::BodyExt as _;
use serde_json::{Map, Value, json};

use crate::config::BaseUrl;
use crate::paths::{Service, route};
use crate::proxy::HttpClient;

/// How long a merged document is served before the services are asked again.
pub const CACHE_FOR: Duration = Duration::from_secs(30);

/// A merged document and when it was made.
type Cached = Option<(Instant, Arc<Value>)>;

/// The services' documents, fetched and merged on demand.
#[derive(Clone)]
pub struct Documents {
    routes: Arc<Vec<(Service, BaseUrl)>>,
    client: HttpClient,
    version: &'static str,
    cached: Arc<Mutex<Cached>>,
}

impl Documents {
    pub fn new(routes: Vec<(Service, BaseUrl)>, client: HttpClient, version: &'static str) -> Self {
        Self {
            routes: Arc::new(routes),
            client,
            version,
            cached: Arc::new(Mutex::new(None)),
        }
    }

    async fn fetch(&self, base: &BaseUrl) -> Result<Value, String> {
        let uri: http::Uri = format!("{}/openapi.json", base.as_base())
            .parse()
            .map_err(|e| format!("{e}"))?;
        let request = http::Request::get(uri)
            .body(axum::body::Body::empty())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(5), self.client.request(request))
            .await
            .map_err(|_| "no answer within 5 s".to_owned())?
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))
    }

    async fn merged(&self) -> Result<Arc<Value>, ApiError> {
        if let Some((at, doc)) = self.cached.lock().expect("openapi cache").as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return Ok(Arc::clone(doc));
        }
        let mut documents = Vec::new();
        let mut missing = Vec::new();
        for (service, base) in self.routes.iter() {
            match self.fetch(base).await {
                Ok(doc) => documents.push((*service, doc)),
                Err(e) => {
                    tracing::warn!(service = service.name, error = %e, "no OpenAPI document");
                    missing.push(service.name);
                }
            }
        }
        if !missing.is_empty() {
            return Err(ApiError::new(
                ErrorCode::DependencyUnavailable,
                format!(
                    "the API documents of {} are unavailable, try again later",
                    missing.join(", ")
                ),
            ));
        }
        let doc = Arc::new(merge(&documents, self.version));
        *self.cached.lock().expect("openapi cache") = Some((Instant::now(), Arc::clone(&doc)));
        Ok(doc)
    }
}

/// `GET /openapi.json` on the gateway.
pub async fn document(State(documents): State<Documents>) -> Response {
    match documents.merged().await {
        Ok(doc) => axum::Json(doc.as_ref().clone()).into_response(),
        Err(e) => e.into_response(),
    }
}

/// One document of the services' `documents`.
pub fn merge(documents: &[(Service, Value)], version: &str) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let mut schemes = Map::new();
    let mut tags: Vec<Value> = Vec::new();
    let mut security = json!([{ "bearer": [] }]);
    for (service, doc) in documents {
        let mut doc = doc.clone();
        let own = doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        // Names another service already uses for a different schema.
        let renames: Vec<(String, String)> = own
            .iter()
            .filter(|(name, schema)| schemas.get(*name).is_some_and(|kept| kept != *schema))
            .map(|(name, _)| (name.clone(), format!("{}{name}", capitalized(service.name))))
            .collect();
        for (from, to) in &renames {
            rewrite_refs(
                &mut doc,
                &format!("#/components/schemas/{from}"),
                &format!("#/components/schemas/{to}"),
            );
        }
        if let Some(own) = doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
        {
            for (name, schema) in own {
                let name = renames
                    .iter()
                    .find(|(from, _)| from == name)
                    .map_or(name.clone(), |(_, to)| to.clone());
                schemas.entry(name).or_insert_with(|| schema.clone());
            }
        }
        if let Some(own) = doc
            .pointer("/components/securitySchemes")
            .and_then(Value::as_object)
        {
            for (name, scheme) in own {
                schemes
                    .entry(name.clone())
                    .or_insert_with(|| scheme.clone());
            }
        }
        if let Some(own) = doc.get("paths").and_then(Value::as_object) {
            for (path, item) in own {
                if route(path).is_some() {
                    paths.entry(path.clone()).or_insert_with(|| item.clone());
                }
            }
        }
        for tag in doc
            .get("tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !tags.contains(tag) {
                tags.push(tag.clone());
            }
        }
        if let Some(s) = doc.get("security") {
            security = s.clone();
        }
    }
    let mut merged = json!({
        "openapi": documents
            .first()
            .and_then(|(_, d)| d.get("openapi").cloned())
            .unwrap_or_else(|| json!("3.1.0")),
        "info": {
            "title": "FinFlow",
            "description": "Every service's API, as the gateway routes it.",
            "version": version,
        },
        "paths": paths,
        "components": { "schemas": schemas, "securitySchemes": schemes },
        "security": security,
    });
    if !tags.is_empty() {
        merged["tags"] = Value::Array(tags);
    }
    merged
}

fn capitalized(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

fn rewrite_refs(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "$ref" && v.as_str() == Some(from) {
                    *v = Value::String(to.to_owned());
                } else {
                    rewrite_refs(v, from, to);
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                rewrite_refs(v, from, to);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use finflow_contracts::catalog;

    fn doc(paths: Value, schemas: Value) -> Value {
        json!({"openapi": "3.1.0", "info": {"title": "x", "version": "1"}, "paths": paths,
               "components": {"schemas": schemas,
                              "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
               "security": [{"bearer": []}]})
    }

    fn merged() -> Value {
        let error = json!({"type": "object", "properties": {"success": {"type": "boolean"}}});
        let wallet = doc(
            json!({"/api/v1/wallets": {"get": {"responses": {"200": {"content": {"application/json":
                {"schema": {"$ref": "#/components/schemas/Status"}}}}}}}}),
            json!({"Status": {"type": "string", "enum": ["active", "frozen"]}, "ErrorEnvelope": error}),
        );
        let payment = doc(
            json!({"/api/v1/payments/{id}": {"get": {"responses": {"200": {"content": {"application/json":
                {"schema": {"$ref": "#/components/schemas/Status"}}}}}}},
                   "/internal/transfers": {"post": {}}}),
            json!({"Status": {"type": "string", "enum": ["PENDING", "COMPLETED"]}, "ErrorEnvelope": error}),
        );
        merge(
            &[
                (catalog::named("wallet").unwrap(), wallet),
                (catalog::named("payment").unwrap(), payment),
            ],
            "0.1.0",
        )
    }

    #[test]
    fn paths_of_every_service_are_merged_without_internal_ones() {
        let doc = merged();
        let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
        assert_eq!(paths, ["/api/v1/payments/{id}", "/api/v1/wallets"]);
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert_eq!(doc["info"]["version"], "0.1.0");
    }

    #[test]
    fn a_schema_name_two_services_use_differently_is_renamed_for_the_second() {
        let doc = merged();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["Status"]["enum"], json!(["active", "frozen"]));
        assert_eq!(
            schemas["PaymentStatus"]["enum"],
            json!(["PENDING", "COMPLETED"])
        );
        assert!(
            schemas.get("PaymentErrorEnvelope").is_none(),
            "the same schema is kept once"
        );
        let payment = &doc["paths"]["/api/v1/payments/{id}"]["get"]["responses"]["200"];
        assert_eq!(
            payment["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/PaymentStatus"
        );
        let wallet = &doc["paths"]["/api/v1/wallets"]["get"]["responses"]["200"];
        assert_eq!(
            wallet["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Status"
        );
    }
}
