//! The webhook's TLS: a self-signed CA and a serving certificate the operator generates
//! (rcgen), keeps in a Secret, renews before it expires, and publishes as the
//! `caBundle` of the MutatingWebhookConfiguration it also applies.
//!
//! The decisions (generate or keep, the Secret, the webhook configuration) are pure;
//! [`ensure`] and [`load`] at the bottom are the API calls. Only the leader writes; every
//! replica serves with whatever the Secret holds, reloading it when it changes.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
    ServiceReference, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, Patch};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::config::ClusterDomain;
use crate::inject;
use crate::meta::{self, FIELD_MANAGER, with_spec_hash};
use crate::webhook::MUTATE_PATH;

/// Secret holding `ca.crt`, `tls.crt` and `tls.key`.
pub const SECRET_NAME: &str = "finflow-operator-webhook-tls";
/// Name of the MutatingWebhookConfiguration.
pub const CONFIGURATION_NAME: &str = "finflow-operator";
/// Name of its one webhook.
pub const WEBHOOK_NAME: &str = "inject.finflow.dev";
/// Annotation on the Secret: when the serving certificate expires (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "finflow.dev/not-after";
const VALIDITY: SignedDuration = SignedDuration::from_hours(24 * 365);
/// Renewed this long before it expires, so no replica ever serves an expired one.
const RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(24 * 30);

/// A CA and the serving certificate it signed, in PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: Timestamp,
}

/// The DNS names of the webhook Service: the API server calls `<service>.<namespace>.svc`,
/// clients inside the cluster may use any of the others.
pub fn dns_names(service: &str, namespace: &str, domain: &ClusterDomain) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{domain}"),
    ]
}

/// The calendar day (UTC) of `ts`, as rcgen takes validity dates.
fn day(ts: Timestamp) -> (i32, u8, u8) {
    let d = ts.to_zoned(TimeZone::UTC).date();
    (
        i32::from(d.year()),
        u8::try_from(d.month()).unwrap_or(1),
        u8::try_from(d.day()).unwrap_or(1),
    )
}

/// A new CA and serving certificate for the webhook Service, valid from a day before
/// `now` (clock skew) for a year.
pub fn generate(
    service: &str,
    namespace: &str,
    domain: &ClusterDomain,
    now: Timestamp,
) -> Result<Bundle, rcgen::Error> {
    let (y, m, d) = day(now - SignedDuration::from_hours(24));
    let not_before = rcgen::date_time_ymd(y, m, d);
    let expiry = now + VALIDITY;
    let (y, m, d) = day(expiry);
    let not_after = rcgen::date_time_ymd(y, m, d);

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "finflow-operator webhook CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut leaf = CertificateParams::new(dns_names(service, namespace, domain))?;
    leaf.distinguished_name
        .push(DnType::CommonName, format!("{service}.{namespace}.svc"));
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let leaf_key = KeyPair::generate()?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    Ok(Bundle {
        ca_pem: ca_cert.pem(),
        cert_pem: leaf_cert.pem(),
        key_pem: leaf_key.serialize_pem(),
        // The certificate says midnight of that day; the earlier instant is the safe one.
        not_after: expiry - SignedDuration::from_hours(24),
    })
}

/// The Secret holding `bundle`.
pub fn secret(bundle: &Bundle, namespace: &str) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(SECRET_NAME.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(meta::labels(FIELD_MANAGER, "webhook-tls")),
            annotations: Some(
                [(
                    NOT_AFTER_ANNOTATION.to_owned(),
                    bundle.not_after.to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(
            [
                ("ca.crt".to_owned(), bytes(&bundle.ca_pem)),
                ("tls.crt".to_owned(), bytes(&bundle.cert_pem)),
                ("tls.key".to_owned(), bytes(&bundle.key_pem)),
            ]
            .into(),
        ),
        ..Secret::default()
    }
}

/// The bundle a Secret holds, if it holds a complete one.
pub fn from_secret(secret: &Secret) -> Option<Bundle> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .filter(|s| !s.is_empty())
    };
    let not_after = secret
        .metadata
        .annotations
        .as_ref()?
        .get(NOT_AFTER_ANNOTATION)?
        .parse()
        .ok()?;
    Some(Bundle {
        ca_pem: text("ca.crt")?,
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
        not_after,
    })
}

/// Whether a new certificate is needed: none yet, or close to expiry.
pub fn needs_renewal(bundle: Option<&Bundle>, now: Timestamp) -> bool {
    bundle.is_none_or(|b| b.not_after - RENEW_BEFORE <= now)
}

/// The webhook configuration: pods carrying `finflow.dev/inject: "true"` (filtered by a
/// match condition, so no other pod ever waits on the operator), outside kube-system and
/// the operator's own namespace. `Fail`: a pod that asked for the sidecar is never
/// started without it.
pub fn webhook_configuration(
    namespace: &str,
    service: &str,
    ca_pem: &str,
) -> MutatingWebhookConfiguration {
    with_spec_hash(MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(CONFIGURATION_NAME.to_owned()),
            labels: Some(meta::labels(FIELD_MANAGER, "webhook")),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: WEBHOOK_NAME.to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            side_effects: "None".to_owned(),
            failure_policy: Some("Fail".to_owned()),
            reinvocation_policy: Some("Never".to_owned()),
            timeout_seconds: Some(5),
            client_config: WebhookClientConfig {
                ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
                service: Some(ServiceReference {
                    name: service.to_owned(),
                    namespace: namespace.to_owned(),
                    path: Some(MUTATE_PATH.to_owned()),
                    port: Some(443),
                }),
                url: None,
            },
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".to_owned()]),
                operations: Some(vec!["CREATE".to_owned()]),
                resources: Some(vec!["pods".to_owned()]),
                scope: Some("Namespaced".to_owned()),
            }]),
            match_conditions: Some(vec![MatchCondition {
                name: "annotated-for-injection".to_owned(),
                expression: format!(
                    "has(object.metadata.annotations) && '{a}' in object.metadata.annotations && object.metadata.annotations['{a}'] == 'true'",
                    a = inject::INJECT_ANNOTATION
                ),
            }]),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "kubernetes.io/metadata.name".to_owned(),
                    operator: "NotIn".to_owned(),
                    values: Some(vec!["kube-system".to_owned(), namespace.to_owned()]),
                }]),
                match_labels: None,
            }),
            object_selector: None,
            match_policy: Some("Equivalent".to_owned()),
        }]),
    })
}

// The edge.

/// Leader only: makes sure a valid certificate is in the Secret and its CA in the
/// webhook configuration. Returns the bundle in force.
pub async fn ensure(
    client: &Client,
    namespace: &str,
    service: &str,
    domain: &ClusterDomain,
) -> kube::Result<Bundle> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let current = secrets
        .get_opt(SECRET_NAME)
        .await?
        .as_ref()
        .and_then(from_secret);
    let now = Timestamp::now();
    let bundle = match current {
        Some(b) if !needs_renewal(Some(&b), now) => b,
        _ => {
            let b = generate(service, namespace, domain, now)
                .map_err(|e| kube::Error::Service(Box::new(e)))?;
            secrets
                .patch(
                    SECRET_NAME,
                    &crate::controller::apply_params(),
                    &Patch::Apply(&secret(&b, namespace)),
                )
                .await?;
            tracing::info!(not_after = %b.not_after, "generated the webhook certificate");
            b
        }
    };
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let desired = webhook_configuration(namespace, service, &bundle.ca_pem);
    let current = configurations.get_opt(CONFIGURATION_NAME).await?;
    if meta::needs_apply(&desired, current.as_ref()) {
        configurations
            .patch(
                CONFIGURATION_NAME,
                &crate::controller::apply_params(),
                &Patch::Apply(&desired),
            )
            .await?;
    }
    Ok(bundle)
}

/// Any replica: the bundle the Secret holds now, if any.
pub async fn load(client: &Client, namespace: &str) -> kube::Result<Option<Bundle>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    Ok(secrets
        .get_opt(SECRET_NAME)
        .await?
        .as_ref()
        .and_then(from_secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_790_000_000).unwrap()
    }

    #[test]
    fn a_generated_bundle_round_trips_through_its_secret() {
        let bundle = generate(
            "finflow-operator-webhook",
            "finflow-system",
            &ClusterDomain::default(),
            now(),
        )
        .unwrap();
        assert!(bundle.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(bundle.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(bundle.key_pem.contains("PRIVATE KEY"));
        let s = secret(&bundle, "finflow-system");
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(from_secret(&s), Some(bundle));
    }

    #[test]
    fn the_serving_certificate_is_accepted_by_rustls() {
        let bundle = generate("svc", "ns", &ClusterDomain::default(), now()).unwrap();
        let certs: Vec<_> =
            rustls::pki_types::pem::PemObject::pem_slice_iter(bundle.cert_pem.as_bytes())
                .collect::<Result<Vec<rustls::pki_types::CertificateDer<'_>>, _>>()
                .unwrap();
        let key = <rustls::pki_types::PrivateKeyDer<'_> as rustls::pki_types::pem::PemObject>::from_pem_slice(
            bundle.key_pem.as_bytes(),
        )
        .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    }

    #[test]
    fn a_certificate_is_renewed_a_month_before_it_expires() {
        let bundle = generate("svc", "ns", &ClusterDomain::default(), now()).unwrap();
        assert!(needs_renewal(None, now()));
        assert!(!needs_renewal(Some(&bundle), now()));
        let late = bundle.not_after - SignedDuration::from_hours(24 * 29);
        assert!(needs_renewal(Some(&bundle), late));
    }

    #[test]
    fn the_webhook_only_sees_annotated_pods_and_trusts_the_ca() {
        let config = webhook_configuration("finflow-system", "finflow-operator-webhook", "CA PEM");
        let hook = &config.webhooks.as_ref().unwrap()[0];
        assert_eq!(
            hook.client_config.ca_bundle,
            Some(ByteString(b"CA PEM".to_vec()))
        );
        let service = hook.client_config.service.as_ref().unwrap();
        assert_eq!(service.path.as_deref(), Some("/mutate"));
        let condition = &hook.match_conditions.as_ref().unwrap()[0];
        assert!(condition.expression.contains("finflow.dev/inject"));
        let excluded = hook
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_expressions
            .as_ref()
            .unwrap()[0]
            .values
            .clone()
            .unwrap();
        assert!(excluded.contains(&"finflow-system".to_owned()));
    }

    #[test]
    fn the_names_cover_every_form_of_the_service_address() {
        let domain: ClusterDomain = "corp.example".parse().unwrap();
        assert_eq!(
            dns_names("hook", "ops", &domain),
            [
                "hook",
                "hook.ops",
                "hook.ops.svc",
                "hook.ops.svc.corp.example"
            ]
        );
    }
}
