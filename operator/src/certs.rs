//! The webhook's TLS: a self-signed CA and a serving certificate the operator generates
//! (rcgen), keeps in a Secret, renews before it expires, and publishes as the
//! `caBundle` of the chart's MutatingWebhookConfiguration, the one field of it the
//! operator writes.
//!
//! The decisions (generate or keep, the Secret, the caBundle patch) are pure;
//! [`ensure`] and [`load`] at the bottom are the API calls. Only the leader writes; every
//! replica serves with whatever the Secret holds, reloading it when it changes.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Value, json};

use crate::dns::ClusterDomain;
use crate::meta::{self, FIELD_MANAGER};

/// The Service in front of the webhook (the chart's `services.yaml`), named in its
/// certificate.
pub const WEBHOOK_SERVICE: &str = "finflow-operator-webhook";
/// Secret holding `ca.crt`, `tls.crt` and `tls.key`, and for a while after a renewal
/// [`RETIRED_CA_KEY`].
pub const SECRET_NAME: &str = "finflow-operator-webhook-tls";
/// Name of the MutatingWebhookConfiguration the chart renders (the one the operator's
/// ClusterRole names).
pub const CONFIGURATION_NAME: &str = crate::rbac::WEBHOOK_CONFIGURATION_NAME;
/// Name of its one webhook in the chart.
pub const WEBHOOK_NAME: &str = "inject.finflow.dev";
/// Annotation on the Secret: when the serving certificate expires (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "finflow.dev/not-after";
/// Key in the Secret: the CA a renewal replaced, still in the caBundle.
pub const RETIRED_CA_KEY: &str = "ca-retired.crt";
/// Annotation on the Secret: when the certificate the retired CA signed expires.
pub const RETIRED_NOT_AFTER_ANNOTATION: &str = "finflow.dev/retired-not-after";
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

/// The CA of a certificate a renewal replaced, and when that certificate expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    pub ca_pem: String,
    pub not_after: Timestamp,
}

/// What the Secret holds: the bundle replicas serve and, after a renewal, the CA it
/// replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub bundle: Bundle,
    pub retired: Option<Retired>,
}

impl Stored {
    /// The caBundle: the CA of the certificate in the Secret, then the retired one.
    pub fn ca_bundle(&self) -> String {
        let mut pem = String::new();
        for ca in
            std::iter::once(&self.bundle.ca_pem).chain(self.retired.as_ref().map(|r| &r.ca_pem))
        {
            pem.push_str(ca);
            if !pem.ends_with('\n') {
                pem.push('\n');
            }
        }
        pem
    }
}

/// `stored` renewed with `fresh`. Replicas pick a new certificate up at their next
/// reload of the Secret, each at its own moment, so the CA it replaces stays trusted
/// beside the new one until the certificate it signed expires (a renewal period, a month
/// after the renewal); by then none serves it.
pub fn renewed(stored: Option<&Stored>, fresh: Bundle, now: Timestamp) -> Stored {
    let retired = stored
        .map(|s| Retired {
            ca_pem: s.bundle.ca_pem.clone(),
            not_after: s.bundle.not_after,
        })
        .filter(|r| r.not_after > now);
    Stored {
        bundle: fresh,
        retired,
    }
}

/// `stored` without its retired CA once the certificate that CA signed has expired.
pub fn pruned(stored: &Stored, now: Timestamp) -> Stored {
    Stored {
        bundle: stored.bundle.clone(),
        retired: stored.retired.clone().filter(|r| r.not_after > now),
    }
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

/// The Secret holding `stored`.
pub fn secret(stored: &Stored, namespace: &str) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let bundle = &stored.bundle;
    let mut annotations: BTreeMap<String, String> = [(
        NOT_AFTER_ANNOTATION.to_owned(),
        bundle.not_after.to_string(),
    )]
    .into();
    let mut data: BTreeMap<String, ByteString> = [
        ("ca.crt".to_owned(), bytes(&bundle.ca_pem)),
        ("tls.crt".to_owned(), bytes(&bundle.cert_pem)),
        ("tls.key".to_owned(), bytes(&bundle.key_pem)),
    ]
    .into();
    if let Some(retired) = &stored.retired {
        annotations.insert(
            RETIRED_NOT_AFTER_ANNOTATION.to_owned(),
            retired.not_after.to_string(),
        );
        data.insert(RETIRED_CA_KEY.to_owned(), bytes(&retired.ca_pem));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(SECRET_NAME.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(meta::labels(FIELD_MANAGER, "webhook-tls")),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// What a Secret holds, if it holds a complete bundle.
pub fn stored_in(secret: &Secret) -> Option<Stored> {
    let bundle = from_secret(secret)?;
    let retired = (|| {
        let ca = secret.data.as_ref()?.get(RETIRED_CA_KEY)?;
        Some(Retired {
            ca_pem: String::from_utf8(ca.0.clone()).ok()?,
            not_after: secret
                .metadata
                .annotations
                .as_ref()?
                .get(RETIRED_NOT_AFTER_ANNOTATION)?
                .parse()
                .ok()?,
        })
    })();
    Some(Stored { bundle, retired })
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

/// The strategic merge patch that puts `ca_bundle` (PEM) into the `caBundle` of every
/// webhook of `current` that calls `service` in `namespace`, and writes nothing else: the
/// chart owns the configuration (its `failurePolicy` is a value of the chart), the
/// operator only the CAs that it alone knows. Webhooks merge by name, so the others are left
/// alone; the patch carries the resourceVersion read, so it applies to exactly the
/// webhooks that were seen. `None` when every such webhook already has it, or when
/// none calls the service (the chart and the operator disagree on names).
pub fn ca_bundle_patch(
    current: &MutatingWebhookConfiguration,
    namespace: &str,
    service: &str,
    ca_bundle: &str,
) -> Option<Value> {
    let ca_bundle = ByteString(ca_bundle.as_bytes().to_vec());
    let stale: Vec<Value> = current
        .webhooks
        .iter()
        .flatten()
        .filter(|hook| calls_service(hook, namespace, service))
        .filter(|hook| hook.client_config.ca_bundle.as_ref() != Some(&ca_bundle))
        .map(|hook| json!({"name": hook.name, "clientConfig": {"caBundle": ca_bundle}}))
        .collect();
    (!stale.is_empty()).then(|| {
        json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "webhooks": stale,
        })
    })
}

/// Whether any webhook of `configuration` calls `service` in `namespace`.
pub fn calls(configuration: &MutatingWebhookConfiguration, namespace: &str, service: &str) -> bool {
    configuration
        .webhooks
        .iter()
        .flatten()
        .any(|hook| calls_service(hook, namespace, service))
}

fn calls_service(hook: &MutatingWebhook, namespace: &str, service: &str) -> bool {
    hook.client_config
        .service
        .as_ref()
        .is_some_and(|s| s.name == service && s.namespace == namespace)
}

// The edge.

/// Leader only: makes sure a valid certificate is in the Secret and the CAs the API
/// server must trust in the caBundle of the chart's webhook configuration. Returns the
/// bundle in force.
///
/// The caBundle is written first and the Secret after: a replica serves whatever the
/// Secret holds, so the API server trusts a new CA before any replica can serve the
/// certificate it signed. A failure in between leaves the Secret as it was, and the next
/// round starts over.
pub async fn ensure(
    client: &Client,
    namespace: &str,
    service: &str,
    domain: &ClusterDomain,
    now: Timestamp,
) -> kube::Result<Bundle> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let stored = secrets
        .get_opt(SECRET_NAME)
        .await?
        .as_ref()
        .and_then(stored_in);
    let next = match &stored {
        Some(s) if !needs_renewal(Some(&s.bundle), now) => pruned(s, now),
        _ => {
            let fresh = generate(service, namespace, domain, now)
                .map_err(|e| kube::Error::Service(Box::new(e)))?;
            renewed(stored.as_ref(), fresh, now)
        }
    };
    publish_ca_bundle(client, namespace, service, &next.ca_bundle()).await?;
    if stored.as_ref() != Some(&next) {
        secrets
            .patch(
                SECRET_NAME,
                &crate::controller::apply_params(),
                &Patch::Apply(&secret(&next, namespace)),
            )
            .await?;
        if stored.as_ref().map(|s| &s.bundle) != Some(&next.bundle) {
            tracing::info!(not_after = %next.bundle.not_after, "generated the webhook certificate");
        }
    }
    Ok(next.bundle)
}

/// Writes `ca_bundle` into the chart's webhook configuration where it differs.
async fn publish_ca_bundle(
    client: &Client,
    namespace: &str,
    service: &str,
    ca_bundle: &str,
) -> kube::Result<()> {
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    match configurations.get_opt(CONFIGURATION_NAME).await? {
        None => tracing::warn!(
            configuration = CONFIGURATION_NAME,
            "the webhook configuration is missing (the chart creates it); no caBundle to write"
        ),
        Some(current) if !calls(&current, namespace, service) => tracing::error!(
            configuration = CONFIGURATION_NAME,
            service,
            "no webhook of the configuration calls the operator's service; caBundle not written"
        ),
        Some(current) => {
            if let Some(patch) = ca_bundle_patch(&current, namespace, service, ca_bundle) {
                configurations
                    .patch(
                        CONFIGURATION_NAME,
                        &PatchParams {
                            field_manager: Some(FIELD_MANAGER.to_owned()),
                            ..PatchParams::default()
                        },
                        &Patch::Strategic(patch),
                    )
                    .await?;
                tracing::info!("wrote the webhook configuration's caBundle");
            }
        }
    }
    Ok(())
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
    use clap::Parser as _;

    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_790_000_000).unwrap()
    }

    #[test]
    fn a_generated_bundle_round_trips_through_its_secret() {
        let bundle = generate(
            WEBHOOK_SERVICE,
            "finflow-system",
            &ClusterDomain::default(),
            now(),
        )
        .unwrap();
        assert!(bundle.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(bundle.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(bundle.key_pem.contains("PRIVATE KEY"));
        let stored = Stored {
            bundle: bundle.clone(),
            retired: None,
        };
        let s = secret(&stored, "finflow-system");
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(from_secret(&s), Some(bundle));
        assert_eq!(stored_in(&s), Some(stored));
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

    const CONFIGURATIONS: &str =
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";

    /// The chart's MutatingWebhookConfiguration as Helm renders it into `namespace`: the
    /// template's expressions replaced by these values, its directives and comments
    /// dropped.
    fn rendered_by_the_chart(namespace: &str, failure_policy: &str) -> serde_json::Value {
        let template = include_str!("../../charts/finflow-operator/templates/mutatingwebhook.yaml");
        let rendered = template
            .lines()
            .filter(|l| !l.trim_start().starts_with("{{-") && !l.trim_start().starts_with('#'))
            .map(|l| {
                l.replace("{{ .Values.webhook.failurePolicy }}", failure_policy)
                    .replace(
                        "{{ .Release.Namespace | quote }}",
                        &format!("{namespace:?}"),
                    )
                    .replace("{{ .Release.Namespace }}", namespace)
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            !rendered.contains("{{"),
            "an expression the test does not render:\n{rendered}"
        );
        let parsed: MutatingWebhookConfiguration = serde_saphyr::from_str(&rendered).unwrap();
        serde_json::to_value(parsed).unwrap()
    }

    #[test]
    fn the_charts_configuration_calls_the_operators_webhook_for_annotated_pods_only() {
        let chart: MutatingWebhookConfiguration =
            serde_json::from_value(rendered_by_the_chart("finflow-system", "Fail")).unwrap();
        assert_eq!(chart.metadata.name.as_deref(), Some(CONFIGURATION_NAME));
        assert!(calls(&chart, "finflow-system", WEBHOOK_SERVICE));
        let default = crate::config::Config::try_parse_from(["finflow-operator"]).unwrap();
        assert_eq!(default.webhook_service, WEBHOOK_SERVICE);
        let hook = &chart.webhooks.as_ref().unwrap()[0];
        assert_eq!(hook.name, WEBHOOK_NAME);
        let service = hook.client_config.service.as_ref().unwrap();
        assert_eq!(service.path.as_deref(), Some(crate::webhook::MUTATE_PATH));
        assert_eq!(service.port, Some(443));
        assert!(
            hook.client_config.ca_bundle.is_none(),
            "the operator fills it in"
        );
        let condition = &hook.match_conditions.as_ref().unwrap()[0];
        assert!(
            condition
                .expression
                .contains(crate::inject::INJECT_ANNOTATION)
        );
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
        // The Service of that name, in front of the operator's webhook port.
        let services = include_str!("../../charts/finflow-operator/templates/services.yaml");
        assert!(services.contains(&format!("  name: {WEBHOOK_SERVICE}\n")));
        assert!(services.contains("port: 443\n      targetPort: webhook"));
    }

    #[test]
    fn a_ca_bundle_already_in_place_is_not_written_again() {
        let mut chart: MutatingWebhookConfiguration =
            serde_json::from_value(rendered_by_the_chart("ns", "Fail")).unwrap();
        chart.metadata.resource_version = Some("7".into());
        let patch = ca_bundle_patch(&chart, "ns", WEBHOOK_SERVICE, "CA").unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        chart.webhooks.as_mut().unwrap()[0].client_config.ca_bundle =
            Some(ByteString(b"CA".to_vec()));
        assert_eq!(ca_bundle_patch(&chart, "ns", WEBHOOK_SERVICE, "CA"), None);
        assert_eq!(
            ca_bundle_patch(&chart, "ns", "another-service", "NEW"),
            None
        );
    }

    #[tokio::test]
    async fn only_the_ca_bundle_of_the_charts_configuration_is_written() {
        use crate::controller::fake::{Fake, NS};
        let (fake, ctx) = Fake::start(crate::finservice::fixtures::settings());
        let chart = rendered_by_the_chart(NS, "Ignore");
        fake.create(CONFIGURATIONS, chart.clone());

        let bundle = ensure(
            &ctx.client,
            NS,
            WEBHOOK_SERVICE,
            &ClusterDomain::default(),
            Timestamp::now(),
        )
        .await
        .unwrap();

        let stored = fake.get(CONFIGURATIONS, CONFIGURATION_NAME).unwrap();
        let hooks = stored["webhooks"].as_array().unwrap();
        assert_eq!(hooks.len(), 1);
        let mut hook = hooks[0].clone();
        let ca_bundle = hook["clientConfig"]
            .as_object_mut()
            .unwrap()
            .remove("caBundle")
            .unwrap();
        assert_eq!(
            serde_json::from_value::<ByteString>(ca_bundle).unwrap().0,
            bundle.ca_pem.as_bytes()
        );
        // Everything else is the chart's: its failurePolicy too.
        assert_eq!(hook, chart["webhooks"][0]);
        assert_eq!(hook["failurePolicy"], "Ignore");
        assert_eq!(stored["metadata"]["labels"], chart["metadata"]["labels"]);
        assert_eq!(
            stored["metadata"]["annotations"],
            chart["metadata"]["annotations"]
        );

        let state = fake.state();
        let writes: Vec<_> = state
            .sent
            .iter()
            .filter(|w| w.path.starts_with(CONFIGURATIONS))
            .collect();
        assert_eq!(writes.len(), 1);
        assert_eq!(
            writes[0].content_type,
            "application/strategic-merge-patch+json"
        );
        assert_eq!(
            writes[0].body["webhooks"],
            serde_json::json!([{"name": WEBHOOK_NAME, "clientConfig": {"caBundle": hooks[0]["clientConfig"]["caBundle"]}}])
        );
        assert!(
            writes[0]
                .params()
                .contains(&"fieldManager=finflow-operator")
        );
    }

    /// Whether a client trusting the CAs of `ca_bundle` (PEM) accepts `cert_pem` for the
    /// webhook Service at `at`, as the API server checks it.
    fn verifies(ca_bundle: &[u8], cert_pem: &str, at: Timestamp) -> bool {
        use rustls::client::danger::ServerCertVerifier as _;
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_bundle) {
            roots.add(ca.unwrap()).unwrap();
        }
        let Ok(verifier) = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build() else {
            return false;
        };
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let name = ServerName::try_from(format!("{WEBHOOK_SERVICE}.finflow.svc")).unwrap();
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(at.as_second()).unwrap(),
        ));
        verifier
            .verify_server_cert(&cert, &[], &name, &[], at)
            .is_ok()
    }

    /// The caBundle the fake's webhook configuration holds.
    fn ca_bundle_in(fake: &crate::controller::fake::Fake) -> Vec<u8> {
        let stored = fake.get(CONFIGURATIONS, CONFIGURATION_NAME).unwrap();
        serde_json::from_value::<ByteString>(
            stored["webhooks"][0]["clientConfig"]["caBundle"].clone(),
        )
        .unwrap()
        .0
    }

    #[test]
    fn a_renewal_keeps_the_old_ca_trusted_until_the_certificate_it_signed_expires() {
        let old = generate(WEBHOOK_SERVICE, "finflow", &ClusterDomain::default(), now()).unwrap();
        let renewal = old.not_after - SignedDuration::from_hours(24 * 29);
        assert!(needs_renewal(Some(&old), renewal));
        let stored = Stored {
            bundle: old.clone(),
            retired: None,
        };
        let new = generate(
            WEBHOOK_SERVICE,
            "finflow",
            &ClusterDomain::default(),
            renewal,
        )
        .unwrap();
        let rotated = renewed(Some(&stored), new.clone(), renewal);
        assert_eq!(rotated.bundle, new);
        let trusted = rotated.ca_bundle();
        assert!(verifies(trusted.as_bytes(), &old.cert_pem, renewal));
        assert!(verifies(trusted.as_bytes(), &new.cert_pem, renewal));
        // It survives the Secret.
        assert_eq!(
            stored_in(&secret(&rotated, "finflow")),
            Some(rotated.clone())
        );

        let just_before = old.not_after - SignedDuration::from_secs(1);
        assert_eq!(pruned(&rotated, just_before), rotated);
        let after = pruned(&rotated, old.not_after);
        assert_eq!(after.retired, None);
        assert_eq!(after.ca_bundle(), new.ca_pem);
        assert!(!verifies(
            after.ca_bundle().as_bytes(),
            &old.cert_pem,
            renewal
        ));
        assert!(
            !secret(&after, "finflow")
                .data
                .unwrap()
                .contains_key(RETIRED_CA_KEY)
        );
    }

    #[test]
    fn a_first_certificate_or_one_replacing_an_expired_one_retires_nothing() {
        let old = generate(WEBHOOK_SERVICE, "finflow", &ClusterDomain::default(), now()).unwrap();
        let fresh = generate(WEBHOOK_SERVICE, "finflow", &ClusterDomain::default(), now()).unwrap();
        assert_eq!(renewed(None, fresh.clone(), now()).retired, None);
        let stored = Stored {
            bundle: old.clone(),
            retired: None,
        };
        assert_eq!(renewed(Some(&stored), fresh, old.not_after).retired, None);
    }

    #[tokio::test]
    async fn a_rotation_trusts_the_new_ca_first_and_the_old_one_until_its_certificate_expires() {
        use crate::controller::fake::{Fake, NS};
        const SECRETS: &str = "/api/v1/namespaces/finflow/secrets";
        let (fake, ctx) = Fake::start(crate::finservice::fixtures::settings());
        let issued = now();
        let old = generate(WEBHOOK_SERVICE, NS, &ClusterDomain::default(), issued).unwrap();
        // Trusted by the configuration and served by every replica.
        let mut chart = rendered_by_the_chart(NS, "Fail");
        chart["webhooks"][0]["clientConfig"]["caBundle"] =
            serde_json::to_value(ByteString(old.ca_pem.clone().into_bytes())).unwrap();
        fake.create(CONFIGURATIONS, chart);
        let before = Stored {
            bundle: old.clone(),
            retired: None,
        };
        fake.create(SECRETS, serde_json::to_value(secret(&before, NS)).unwrap());
        let in_secret = || {
            stored_in(&serde_json::from_value(fake.get(SECRETS, SECRET_NAME).unwrap()).unwrap())
                .unwrap()
        };

        // A month before it expires.
        let renewal = old.not_after - SignedDuration::from_hours(24 * 29);
        let new = ensure(
            &ctx.client,
            NS,
            WEBHOOK_SERVICE,
            &ClusterDomain::default(),
            renewal,
        )
        .await
        .unwrap();
        assert_ne!(new, old, "renewed");
        assert_eq!(in_secret().bundle, new);
        // Replicas that have not reloaded the Secret yet serve the old certificate, the
        // others the new one: the API server trusts both.
        let trusted = ca_bundle_in(&fake);
        assert!(
            verifies(&trusted, &old.cert_pem, renewal),
            "the old certificate"
        );
        assert!(
            verifies(&trusted, &new.cert_pem, renewal),
            "the new certificate"
        );
        // And it trusted the new CA before the Secret held the certificate it signed.
        let paths = |fake: &Fake| -> Vec<String> {
            fake.state().sent.iter().map(|w| w.path.clone()).collect()
        };
        let configuration = format!("{CONFIGURATIONS}/{CONFIGURATION_NAME}");
        let secret_path = format!("{SECRETS}/{SECRET_NAME}");
        assert_eq!(paths(&fake), [configuration.clone(), secret_path.clone()]);

        // Until the old certificate expires, nothing changes.
        fake.state().sent.clear();
        let later = old.not_after - SignedDuration::from_secs(60);
        assert_eq!(
            ensure(
                &ctx.client,
                NS,
                WEBHOOK_SERVICE,
                &ClusterDomain::default(),
                later
            )
            .await
            .unwrap(),
            new
        );
        assert!(paths(&fake).is_empty());

        // Then the old CA leaves the caBundle and the Secret, and the next round is quiet.
        ensure(
            &ctx.client,
            NS,
            WEBHOOK_SERVICE,
            &ClusterDomain::default(),
            old.not_after,
        )
        .await
        .unwrap();
        assert_eq!(paths(&fake), [configuration, secret_path]);
        let trusted = ca_bundle_in(&fake);
        assert!(!verifies(&trusted, &old.cert_pem, renewal));
        assert!(verifies(&trusted, &new.cert_pem, renewal));
        assert_eq!(in_secret().retired, None);
        fake.state().sent.clear();
        ensure(
            &ctx.client,
            NS,
            WEBHOOK_SERVICE,
            &ClusterDomain::default(),
            old.not_after,
        )
        .await
        .unwrap();
        assert!(paths(&fake).is_empty());
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
