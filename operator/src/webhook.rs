//! The mutating admission webhook that injects the sidecar into pods annotated
//! `finflow.dev/inject: "true"`.
//!
//! [`review`] is pure: an AdmissionReview in, an AdmissionReview out whose response
//! carries a JSON patch from the pod as submitted to the pod after
//! [`inject`](crate::inject::inject). Because injection is idempotent, a pod that
//! already has the sidecar yields no patch. The HTTP side ([`router`], [`serve`]) only
//! moves JSON; TLS uses the certificate [`crate::certs`] keeps in a Secret.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use http::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use tokio::sync::Semaphore;

use crate::inject::{self, SidecarSettings};

/// Path the MutatingWebhookConfiguration calls.
pub const MUTATE_PATH: &str = "/mutate";

/// What the webhook injects when a pod does not say otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    pub sidecar_image: String,
    pub native_sidecars: bool,
}

/// The sidecar settings for `pod`: the operator's defaults, with the ConfigMap and
/// app port its annotations name.
pub fn sidecar_settings(pod: &Pod, defaults: &WebhookSettings) -> SidecarSettings {
    let annotations = pod.annotations();
    SidecarSettings {
        image: defaults.sidecar_image.clone(),
        app_port: annotations
            .get(inject::APP_PORT_ANNOTATION)
            .and_then(|p| p.parse().ok()),
        config_map: annotations.get(inject::CONFIG_ANNOTATION).cloned(),
        hs256_secret: None,
        native: defaults.native_sidecars,
    }
}

/// Whether the pod asks for injection.
pub fn wants_injection(pod: &Pod) -> bool {
    pod.annotations()
        .get(inject::INJECT_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// The response to one admission request. Never denies: a pod that cannot be injected
/// is admitted unchanged, with a warning saying why.
pub fn mutate(request: &AdmissionRequest<Pod>, defaults: &WebhookSettings) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let Some(pod) = request.object.as_ref() else {
        return response;
    };
    if !wants_injection(pod) {
        return response;
    }
    let Some(spec) = pod.spec.as_ref() else {
        return response;
    };
    if !inject::is_injected(spec) && inject::app_container(spec).is_none() {
        let mut response = response;
        response.warnings = Some(vec![
            "finflow.dev/inject: no container declares a port, so no sidecar was injected"
                .to_owned(),
        ]);
        return response;
    }
    let mut injected = pod.clone();
    injected.spec = Some(inject::inject(spec, &sidecar_settings(pod, defaults)));
    let (Ok(before), Ok(after)) = (serde_json::to_value(pod), serde_json::to_value(&injected))
    else {
        return response;
    };
    let patch = json_patch::diff(&before, &after);
    if patch.0.is_empty() {
        return response;
    }
    match response.clone().with_patch(patch) {
        Ok(patched) => patched,
        Err(e) => {
            tracing::error!(error = %e, "could not serialize the injection patch");
            response
        }
    }
}

/// An AdmissionReview in, the AdmissionReview to answer with out.
pub fn review(
    review: AdmissionReview<Pod>,
    defaults: &WebhookSettings,
) -> AdmissionReview<DynamicObject> {
    let request: Result<AdmissionRequest<Pod>, _> = review.try_into();
    match request {
        Ok(request) => mutate(&request, defaults).into_review(),
        Err(e) => AdmissionResponse::invalid(e.to_string()).into_review(),
    }
}

/// The largest AdmissionReview read. A pod asking for injection is a few KiB; one
/// read into its types takes some thirty times its JSON (every `env` entry, however
/// short, is a full `EnvVar`), and the port is open to every pod of the cluster.
pub const MAX_REVIEW_BYTES: usize = 1024 * 1024;
/// Reviews parsed at once: bounds the memory a burst of large reviews takes in the
/// process that also runs the controllers.
pub const REVIEWS_AT_ONCE: usize = 2;
/// How long a review's body may take to arrive. The API server sends it at once; a
/// client that trickles it is refused, and holds nothing another review waits for (the
/// body is read before a parsing slot is taken).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a read review waits for a parsing slot before 503: well inside the API
/// server's webhook timeout, so a burst is answered, not left to time out.
pub const SLOT_WAIT: Duration = Duration::from_secs(2);

/// `POST /mutate` and `GET /healthz`.
pub fn router(defaults: Arc<WebhookSettings>) -> Router {
    let slots = Arc::new(Semaphore::new(REVIEWS_AT_ONCE));
    Router::new()
        .route(
            MUTATE_PATH,
            post(move |body: Body| {
                let (defaults, slots) = (defaults.clone(), slots.clone());
                async move { answer(body, &defaults, &slots).await }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

/// Reads the body (at most [`MAX_REVIEW_BYTES`], within [`BODY_TIMEOUT`]), then parses
/// and answers it in one of [`REVIEWS_AT_ONCE`] slots.
async fn answer(body: Body, defaults: &WebhookSettings, slots: &Semaphore) -> Response {
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_REVIEW_BYTES));
    let bytes = match read.await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
        Err(_) => return StatusCode::REQUEST_TIMEOUT.into_response(),
    };
    let Ok(Ok(_slot)) = tokio::time::timeout(SLOT_WAIT, slots.acquire()).await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    match serde_json::from_slice::<AdmissionReview<Pod>>(&bytes) {
        Ok(request) => Json(review(request, defaults)).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// Serves `router` over TLS until `handle` is told to shut down. The certificate can be
/// swapped while serving with [`RustlsConfig::reload_from_pem`].
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    tls: RustlsConfig,
    handle: Handle<SocketAddr>,
) -> std::io::Result<()> {
    axum_server::bind_rustls(addr, tls)
        .handle(handle)
        .serve(router.into_make_service())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn defaults() -> WebhookSettings {
        WebhookSettings {
            sidecar_image: "finflow/sidecar:1".into(),
            native_sidecars: true,
        }
    }

    /// An AdmissionReview as the API server sends it for a pod CREATE.
    fn review_of(pod: Value) -> AdmissionReview<Pod> {
        serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "finflow",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
                "oldObject": null,
                "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
            }
        }))
        .unwrap()
    }

    fn pod(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "kyc-", "namespace": "finflow", "annotations": annotations},
            "spec": {"containers": [{
                "name": "kyc",
                "image": "ghcr.io/finflow/kyc:1.0.0",
                "ports": [{"name": "http", "containerPort": 8005}]
            }]}
        })
    }

    /// The review's response as JSON, and its patch decoded.
    fn respond(pod: Value) -> (Value, Option<json_patch::Patch>) {
        let out = serde_json::to_value(review(review_of(pod), &defaults())).unwrap();
        let response = out["response"].clone();
        let patch = response["patch"].as_array().map(|bytes| {
            let bytes: Vec<u8> = bytes.iter().map(|b| b.as_u64().unwrap() as u8).collect();
            serde_json::from_slice(&bytes).unwrap()
        });
        (response, patch)
    }

    #[test]
    fn an_annotated_pod_gets_a_patch_that_injects_the_sidecar() {
        let original =
            pod(json!({"finflow.dev/inject": "true", "finflow.dev/sidecar-config": "kyc-sidecar"}));
        let (response, patch) = respond(original.clone());
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let mut patched = original;
        json_patch::patch(&mut patched, &patch.unwrap()).unwrap();
        let init = &patched["spec"]["initContainers"];
        assert_eq!(init[0]["name"], inject::SIDECAR_NAME);
        assert_eq!(init[0]["restartPolicy"], "Always");
        assert_eq!(init[0]["ports"][0]["containerPort"], 8005);
        let app_env = &patched["spec"]["containers"][0]["env"];
        assert_eq!(
            app_env[0],
            json!({"name": "LISTEN_ADDR", "value": "127.0.0.1:9005"})
        );
        assert_eq!(
            patched["spec"]["volumes"][0]["configMap"]["name"],
            "kyc-sidecar"
        );
    }

    #[test]
    fn reviewing_the_injected_pod_again_patches_nothing() {
        let original = pod(json!({"finflow.dev/inject": "true"}));
        let (_, patch) = respond(original.clone());
        let mut injected = original;
        json_patch::patch(&mut injected, &patch.unwrap()).unwrap();
        let (response, second) = respond(injected);
        assert_eq!(response["allowed"], true);
        assert!(second.is_none(), "a second review must not patch");
        assert!(response.get("patchType").is_none());
    }

    #[test]
    fn a_pod_without_the_annotation_is_admitted_unchanged() {
        for annotations in [json!({}), json!({"finflow.dev/inject": "false"})] {
            let (response, patch) = respond(pod(annotations));
            assert_eq!(response["allowed"], true);
            assert!(patch.is_none());
        }
    }

    #[test]
    fn a_pod_without_ports_is_admitted_with_a_warning() {
        let mut p = pod(json!({"finflow.dev/inject": "true"}));
        p["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("ports");
        let (response, patch) = respond(p);
        assert_eq!(response["allowed"], true);
        assert!(patch.is_none());
        assert!(
            response["warnings"][0]
                .as_str()
                .unwrap()
                .contains("no container declares a port")
        );
    }

    #[tokio::test]
    async fn a_review_larger_than_any_pod_asking_for_injection_is_refused_unread() {
        use tower::ServiceExt;
        let mut review =
            serde_json::to_value(review_of(pod(json!({"finflow.dev/inject": "true"})))).unwrap();
        // Valid JSON, a pod of many empty `env` entries: cheap to send, dear to read.
        review["request"]["object"]["spec"]["containers"][0]["env"] =
            json!(vec![json!({"name": ""}); MAX_REVIEW_BYTES / 12]);
        let body = serde_json::to_vec(&review).unwrap();
        assert!(body.len() > MAX_REVIEW_BYTES);
        let answer = router(Arc::new(defaults()))
            .oneshot(
                http::Request::post(MUTATE_PATH)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_review_trickled_in_is_refused_and_holds_up_no_other() {
        use tower::ServiceExt;
        let router = router(Arc::new(defaults()));
        // More clients than slots, each sending a byte and then nothing.
        let mut stalled = Vec::new();
        for _ in 0..REVIEWS_AT_ONCE + 1 {
            use futures_util::StreamExt;
            let first = futures_util::stream::iter([Ok::<_, std::io::Error>(
                axum::body::Bytes::from_static(b"{"),
            )]);
            let body = Body::from_stream(first.chain(futures_util::stream::pending()));
            let request = http::Request::post(MUTATE_PATH)
                .header("content-type", "application/json")
                .body(body)
                .unwrap();
            stalled.push(tokio::spawn(router.clone().oneshot(request)));
        }
        tokio::task::yield_now().await;
        // The API server's review is answered meanwhile.
        let review =
            serde_json::to_vec(&review_of(pod(json!({"finflow.dev/inject": "true"})))).unwrap();
        let answer = router
            .clone()
            .oneshot(
                http::Request::post(MUTATE_PATH)
                    .header("content-type", "application/json")
                    .body(Body::from(review))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        tokio::time::advance(BODY_TIMEOUT + Duration::from_secs(1)).await;
        for waiting in stalled {
            let answer = waiting.await.unwrap().unwrap();
            assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
        }
    }

    /// The whole path the API server takes: TLS with the operator's generated
    /// certificate, verified against its CA for the Service's DNS name, then JSON in and
    /// a JSON patch out.
    #[tokio::test]
    async fn the_webhook_answers_over_tls_with_the_generated_certificate() {
        use std::io::{Read, Write};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let bundle = crate::certs::generate(
            crate::certs::WEBHOOK_SERVICE,
            "finflow-system",
            &crate::dns::ClusterDomain::default(),
            k8s_openapi::jiff::Timestamp::now(),
        )
        .unwrap();
        let tls = RustlsConfig::from_pem(
            bundle.cert_pem.clone().into_bytes(),
            bundle.key_pem.clone().into_bytes(),
        )
        .await
        .unwrap();
        let handle: Handle<SocketAddr> = Handle::new();
        let server = tokio::spawn(serve(
            "127.0.0.1:0".parse().unwrap(),
            router(Arc::new(defaults())),
            tls,
            handle.clone(),
        ));
        let addr = handle.listening().await.unwrap();

        let body =
            serde_json::to_vec(&review_of(pod(json!({"finflow.dev/inject": "true"})))).unwrap();
        let ca_pem = bundle.ca_pem.clone();
        let response = tokio::task::spawn_blocking(move || {
            let mut roots = rustls::RootCertStore::empty();
            for cert in <rustls::pki_types::CertificateDer<'_> as rustls::pki_types::pem::PemObject>::pem_slice_iter(ca_pem.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = "finflow-operator-webhook.finflow-system.svc".try_into().unwrap();
            let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
            let tcp = std::net::TcpStream::connect(addr).unwrap();
            let mut stream = rustls::StreamOwned::new(connection, tcp);
            let head = format!(
                "POST {MUTATE_PATH} HTTP/1.1\r\nHost: finflow-operator-webhook.finflow-system.svc\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
            let mut out = Vec::new();
            // The server closes the TLS session without close_notify on some paths;
            // everything needed has arrived by then.
            let _ = stream.read_to_end(&mut out);
            String::from_utf8(out).unwrap()
        })
        .await
        .unwrap();
        handle.shutdown();
        let _ = server.await;

        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let json_start = response.find("\r\n\r\n").unwrap() + 4;
        let answer: Value = serde_json::from_str(&response[json_start..]).unwrap();
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
    }

    #[test]
    fn the_app_port_annotation_is_honoured() {
        let original = pod(json!({"finflow.dev/inject": "true", "finflow.dev/app-port": "7005"}));
        let (_, patch) = respond(original.clone());
        let mut patched = original;
        json_patch::patch(&mut patched, &patch.unwrap()).unwrap();
        let upstream = patched["spec"]["initContainers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "UPSTREAM")
            .unwrap()["value"]
            .clone();
        assert_eq!(upstream, "http://127.0.0.1:7005");
    }
}
