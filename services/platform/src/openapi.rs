//! The public OpenAPI document of a service: what a client of the gateway can call, as
//! the gateway and the sidecar answer it.
//!
//! Handlers document their data and their own refusals; [`publish`] adds, once for
//! every operation, what the platform and the proxies do around them: success bodies
//! in the `{"success": true, "data": ...}` envelope, the bearer token (except on the
//! public paths) and the refusals any request can meet (`400` malformed input, `401`,
//! `403`, `408`, `429`, `500`, `502`, `503`, `504`, in the error envelope). Routes the gateway
//! never routes (`/internal/*`, `/health`, `/ready`, `/metrics`) are left out.
//!
//! Two rules of every request are stated here once, so no handler has to: text never
//! holds a NUL character (`platform::extract` refuses it), and an `amount` goes with
//! its `currency`: at most the currency's minor units of decimals, stated as one
//! branch per number of decimals, each naming its currencies.

use serde_json::{Map, Value, json};

/// Paths a request may take without a token: the sidecar's default `PUBLIC_PATHS`, and
/// the operations published without a security requirement.
// Why public: /health and /ready, probes (the operator's via the API server's service
// proxy); /openapi.json, what the gateway publishes (no /internal); the JWK set and auth
// routes, how a caller gets a token (or replaces a forgotten password). Not /metrics:
// the sidecar's admin port serves it.
pub const PUBLIC_PATHS: &str = "/health,/ready,/openapi.json,\
/.well-known/jwks.json,/api/v1/auth/register,/api/v1/auth/verify,/api/v1/auth/login,\
/api/v1/auth/refresh,/api/v1/auth/logout,/api/v1/auth/token,/api/v1/auth/password-reset,\
/api/v1/auth/password-reset/confirm";

/// Answered by the platform or a proxy, not by the service's routes: not published.
const UNPUBLISHED: [&str; 3] = ["/health", "/ready", "/metrics"];

/// Served as they are, not in the envelope.
const RAW: [&str; 1] = ["/.well-known/jwks.json"];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Refusals any operation can answer, and who answers them.
const REFUSALS: [(&str, &str); 9] = [
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
        "408",
        "REQUEST_TIMEOUT: the request body did not arrive in time (sidecar)",
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

/// Text without NUL characters, for a string with no other rule on its characters.
const NO_NUL: &str = r"^[^\x00]*$";

/// Turns a service's document (as utoipa serializes it) into its public document.
pub fn publish(doc: &mut Value) {
    let public: Vec<&str> = PUBLIC_PATHS.split(',').collect();
    let in_requests = request_components(doc);
    // The currencies the document offers (a service that values money offers fewer
    // than `Currency::parse` takes: `fx::Rates::document`).
    let currencies: Vec<String> = doc
        .pointer("/components/schemas/CurrencyCode/enum")
        .and_then(Value::as_array)
        .map(|codes| {
            codes
                .iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_else(|| {
            crate::Currency::codes()
                .iter()
                .map(|c| (*c).to_owned())
                .collect()
        });
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for (name, schema) in schemas.iter_mut() {
            // Answers may quote a request's text back: only what requests carry is bound.
            if in_requests.contains(name) {
                refuse_nul(schema);
                couple_amount_and_currency(schema, &currencies);
            }
        }
    }
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
    link_created_resources(doc);
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
    for parameter in operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(schema) = parameter.get_mut("schema") {
            refuse_nul(schema);
        }
    }
    if let Some(body) = operation.get_mut("requestBody") {
        refuse_nul(body);
    }
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

/// The component schemas a request body or parameter refers to, directly or through
/// other components.
fn request_components(doc: &Value) -> std::collections::BTreeSet<String> {
    fn refs(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v.as_str()) {
                        ("$ref", Some(r)) => {
                            if let Some(name) = r.strip_prefix("#/components/schemas/") {
                                found.push(name.to_owned());
                            }
                        }
                        _ => refs(v, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }
    let mut pending = Vec::new();
    for item in doc
        .get("paths")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|paths| paths.values())
    {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                for part in ["requestBody", "parameters"] {
                    if let Some(v) = operation.get(part) {
                        refs(v, &mut pending);
                    }
                }
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    while let Some(name) = pending.pop() {
        if seen.insert(name.clone())
            && let Some(schema) = doc.pointer(&format!("/components/schemas/{name}"))
        {
            refs(schema, &mut pending);
        }
    }
    seen
}

/// Every string schema in `schema` without a pattern, a format or a fixed set of values
/// gets [`NO_NUL`] (a pattern beside a format makes some generators give up; formats
/// and fixed values hold no NUL anyway), and every object's property names do too.
fn refuse_nul(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let is_object =
                map.contains_key("properties") || map.get("type").is_some_and(|t| t == "object");
            if is_object && !map.contains_key("propertyNames") {
                map.insert("propertyNames".to_owned(), json!({ "pattern": NO_NUL }));
            }
            let is_string = match map.get("type") {
                Some(Value::String(t)) => t == "string",
                Some(Value::Array(types)) => types.iter().any(|t| t == "string"),
                _ => false,
            };
            if is_string
                && !map.contains_key("pattern")
                && !map.contains_key("format")
                && !map.contains_key("enum")
                && !map.contains_key("const")
            {
                map.insert("pattern".to_owned(), Value::String(NO_NUL.to_owned()));
            }
            for (key, value) in map.iter_mut() {
                // Examples, defaults and constants are data, not schemas.
                if !matches!(
                    key.as_str(),
                    "example" | "examples" | "default" | "const" | "enum"
                ) {
                    refuse_nul(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(refuse_nul),
        _ => {}
    }
}

/// An object with an `amount` string and a `currency` of the currency codes gets one
/// branch per number of decimals a currency of `currencies` allows: those currencies,
/// and amounts greater than zero with at most that many decimals.
fn couple_amount_and_currency(schema: &mut Value, currencies: &[String]) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    let is_currency = properties
        .get("currency")
        .and_then(|c| c.get("$ref"))
        .and_then(Value::as_str)
        .is_some_and(|r| r.ends_with("/CurrencyCode"));
    let is_amount = properties
        .get("amount")
        .and_then(|a| a.get("type"))
        .is_some_and(|t| t == "string");
    if !(is_currency && is_amount) || schema.get("oneOf").is_some() {
        return;
    }
    let mut by_decimals: std::collections::BTreeMap<u32, Vec<&str>> = Default::default();
    for code in currencies {
        if let Ok(currency) = crate::Currency::parse(code) {
            by_decimals
                .entry(currency.minor_units())
                .or_default()
                .push(code);
        }
    }
    let branches: Vec<Value> = by_decimals
        .into_iter()
        .map(|(decimals, codes)| {
            json!({ "properties": {
                "currency": { "enum": codes },
                "amount": { "pattern": amount_pattern(decimals) }
            } })
        })
        .collect();
    schema["oneOf"] = Value::Array(branches);
}

/// Amounts greater than zero with at most `decimals` decimals, as `Amount::parse` reads
/// them (at most 16 digits before the point; zeros may pad either end).
pub fn amount_pattern(decimals: u32) -> String {
    if decimals == 0 {
        return r"^0*[1-9][0-9]{0,15}(\.0+)?$".to_owned();
    }
    format!(
        r"^(0*[1-9][0-9]{{0,15}}(\.[0-9]{{1,{decimals}}}0*)?|0+\.[0-9]{{0,{}}}[1-9]0*)$",
        decimals - 1
    )
}

/// Links from each operation that makes a resource to the operations on it, so that a
/// client (and a stateful fuzzer) can follow a creation with what it allows: a `POST`
/// at `C` or `C/<verb>` answers `data.id`, the `id` of every operation at `C/{id}...`.
fn link_created_resources(doc: &mut Value) {
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return;
    };
    // (creating path, operationIds of the operations on what it makes)
    let mut links: Vec<(String, Vec<String>)> = Vec::new();
    for (path, item) in paths {
        if path.contains('{') || item.get("post").is_none() {
            continue;
        }
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        let mut targets = Vec::new();
        for collection in [path.as_str(), parent] {
            let prefix = format!("{collection}/{{id}}");
            for (other, other_item) in paths {
                if other != &prefix && !other.starts_with(&format!("{prefix}/")) {
                    continue;
                }
                for method in METHODS {
                    if let Some(id) = other_item
                        .get(method)
                        .and_then(|op| op.get("operationId"))
                        .and_then(Value::as_str)
                    {
                        targets.push(id.to_owned());
                    }
                }
            }
        }
        if !targets.is_empty() {
            links.push((path.clone(), targets));
        }
    }
    for (path, targets) in links {
        let pointer = format!(
            "/paths/{}/post/responses",
            path.replace('~', "~0").replace('/', "~1")
        );
        let Some(responses) = doc.pointer_mut(&pointer).and_then(Value::as_object_mut) else {
            continue;
        };
        for (status, response) in responses.iter_mut() {
            if !status.starts_with('2') {
                continue;
            }
            let Some(response) = response.as_object_mut() else {
                continue;
            };
            let map = response
                .entry("links")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("links is an object");
            for operation_id in &targets {
                map.entry(operation_id.clone()).or_insert_with(|| {
                    json!({ "operationId": operation_id,
                            "parameters": { "id": "$response.body#/data/id" } })
                });
            }
        }
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

    #[test]
    fn the_amount_patterns_take_what_amount_parse_takes_for_each_currency() {
        let usd = regex_lite(&amount_pattern(2));
        for ok in ["1", "1.5", "1.50", "0.01", "0001.10", "9999999999999999.99"] {
            assert!(usd(ok), "{ok}");
            let amount = crate::Amount::parse(ok).unwrap();
            assert!(
                crate::Money::positive(amount, crate::Currency::parse("USD").unwrap()).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "0",
            "0.00",
            "1.234",
            ".5",
            "1.",
            "-1",
            "1e3",
            "10000000000000000",
        ] {
            assert!(!usd(bad), "{bad}");
        }
        let jpy = regex_lite(&amount_pattern(0));
        assert!(jpy("100") && jpy("100.00") && !jpy("100.5") && !jpy("0"));
    }

    /// The patterns only use what both JSON Schema and this test's matcher read.
    fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool + use<> {
        let re = regex::Regex::new(pattern).unwrap();
        move |s| re.is_match(s)
    }

    #[test]
    fn text_refuses_nul_and_an_amount_follows_its_currency() {
        let mut doc = json!({
            "openapi": "3.1.0", "info": {"title": "t", "version": "1"},
            "paths": {"/api/v1/x": {"get": {
                "parameters": [{"name": "q", "in": "query", "schema": {"type": "string"}}],
                "responses": {}}}},
            "components": {"schemas": {"Pay": {"type": "object", "properties": {
                "amount": {"type": "string"},
                "currency": {"$ref": "#/components/schemas/CurrencyCode"},
                "note": {"type": ["string", "null"]},
                "id": {"type": "string", "format": "uuid"}}}}}
        });
        doc["paths"]["/api/v1/x"]["get"]["requestBody"] = json!({"content": {"application/json":
            {"schema": {"$ref": "#/components/schemas/Pay"}}}});
        doc["components"]["schemas"]["Answer"] = json!({"type": "object", "properties": {
            "message": {"type": "string"}}});
        publish(&mut doc);
        let pay = &doc["components"]["schemas"]["Pay"];
        assert_eq!(pay["properties"]["note"]["pattern"], NO_NUL);
        assert_eq!(pay["propertyNames"]["pattern"], NO_NUL);
        let answer = &doc["components"]["schemas"]["Answer"];
        assert!(
            answer["properties"]["message"].get("pattern").is_none(),
            "answers are not bound"
        );
        assert!(
            pay["properties"]["id"].get("pattern").is_none(),
            "a format is left alone"
        );
        let q = &doc["paths"]["/api/v1/x"]["get"]["parameters"][0]["schema"];
        assert_eq!(q["pattern"], NO_NUL);
        let branches = pay["oneOf"].as_array().unwrap();
        let two = branches
            .iter()
            .find(|b| {
                b["properties"]["currency"]["enum"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("USD"))
            })
            .unwrap();
        assert_eq!(two["properties"]["amount"]["pattern"], amount_pattern(2));
        assert!(branches.len() >= 3, "0, 2 and 3 decimals at least");
    }

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
    fn a_creation_links_to_the_operations_on_what_it_made() {
        let mut doc = json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
        "paths": {
            "/api/v1/payments/deposit": {"post": {"operationId": "deposit",
                "responses": {"202": {"description": "accepted"}}}},
            "/api/v1/payments/{id}": {"get": {"operationId": "get_one", "responses": {}}},
            "/api/v1/payments/{id}/reverse": {"post": {"operationId": "reverse", "responses": {}}},
            "/api/v1/wallets/{id}": {"get": {"operationId": "get_wallet", "responses": {}}}
        }});
        publish(&mut doc);
        let responses = &doc["paths"]["/api/v1/payments/deposit"]["post"]["responses"];
        let links = &responses["202"]["links"];
        assert_eq!(
            links["get_one"]["parameters"]["id"],
            "$response.body#/data/id"
        );
        assert_eq!(links["reverse"]["operationId"], "reverse");
        assert!(links.get("get_wallet").is_none(), "another collection");
        assert!(responses["400"].get("links").is_none());
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
    fn metrics_is_not_public() {
        assert!(!PUBLIC_PATHS.split(',').any(|path| path == "/metrics"));
        for path in ["/health", "/ready", "/openapi.json"] {
            assert!(PUBLIC_PATHS.split(',').any(|p| p == path), "{path}");
        }
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
