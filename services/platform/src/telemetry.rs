//! Logs, traces and W3C trace context.
//!
//! Every process installs one subscriber: an `EnvFilter` (`RUST_LOG`), a JSON or pretty
//! log layer, and an OpenTelemetry layer. The OpenTelemetry layer is always present so
//! spans have real trace ids and `traceparent` flows through HTTP and AMQP even when
//! nothing is exported; the OTLP/HTTP exporter is added only when an endpoint is set
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or its flag), and sends to `<endpoint>/v1/traces`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use http::HeaderMap;
#[cfg(feature = "events")]
use lapin::types::{AMQPValue, FieldTable, ShortString};
#[cfg(feature = "events")]
use opentelemetry::propagation::Extractor;
use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryConfig};

/// Flushes spans still buffered when the process ends.
#[must_use = "dropping the guard flushes and stops trace export"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("trace export did not shut down cleanly: {e}");
        }
    }
}

/// Installs the global subscriber and propagator. Call once, first thing in `main`.
pub fn init(
    service: &'static str,
    config: &TelemetryConfig,
) -> Result<TelemetryGuard, Box<dyn std::error::Error + Send + Sync>> {
    let provider = tracer_provider(service, config.otlp_endpoint.as_deref())?;
    let fmt = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().compact().boxed(),
    };
    tracing_subscriber::registry()
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with(fmt)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer(service)))
        .try_init()?;
    global::set_text_map_propagator(TraceContextPropagator::new());
    global::set_tracer_provider(provider.clone());
    Ok(TelemetryGuard { provider })
}

/// The standard variable naming the traces' endpoint alone (a full URL).
const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";

fn tracer_provider(
    service: &'static str,
    endpoint: Option<&str>,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig as _;

    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    match endpoint {
        // Nothing is exported: new traces are not recorded (spans still get ids, so
        // `traceparent` still propagates), and a caller's sampled trace still is.
        None => builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff))),
        Some(endpoint) => {
            // The exporter's reqwest client needs a rustls provider even for http.
            crate::client::use_ring();
            let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
            // The standard traces-only variable wins, as it does when the exporter reads
            // the variables itself; otherwise the base URL, from the flag or the standard
            // variable, gets the traces' path as the variable would (an endpoint given in
            // code is taken as is, and over the traces-only variable).
            if std::env::var_os(TRACES_ENDPOINT).is_none_or(|v| v.is_empty()) {
                exporter =
                    exporter.with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')));
            }
            let exporter = exporter.build()?;
            builder = builder.with_batch_exporter(exporter);
        }
    }
    Ok(builder.build())
}

/// A subscriber for tests: traces without export, logs to the test's captured output.
/// Safe to call from every test; only the first call installs anything.
pub fn init_for_tests() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let provider = tracer_provider("test", None).expect("a provider without exporter");
        // Per-layer filters: test output stays quiet while spans still carry context.
        let logs = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
        let _ = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(logs),
            )
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("test"))
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
            )
            .try_init();
        global::set_text_map_propagator(TraceContextPropagator::new());
    });
}

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// Makes `span` a child of the trace context carried by incoming HTTP headers.
pub fn set_parent_from_http(span: &tracing::Span, headers: &HeaderMap) {
    let cx = propagator().extract(&opentelemetry_http::HeaderExtractor(headers));
    set_parent(span, cx);
}

/// Makes `span` a child of the trace context carried by AMQP message headers.
#[cfg(feature = "events")]
pub fn set_parent_from_amqp(span: &tracing::Span, headers: Option<&FieldTable>) {
    let Some(headers) = headers else { return };
    let cx = propagator().extract(&AmqpExtractor(headers));
    set_parent(span, cx);
}

fn set_parent(span: &tracing::Span, cx: Context) {
    use opentelemetry::trace::TraceContextExt as _;
    if cx.span().span_context().is_valid() {
        // Fails only when the span is disabled by the filter: then there is nothing to link.
        let _ = span.set_parent(cx);
    }
}

/// Makes the request in `headers` a hop of its own in the caller's trace without
/// recording a span: the same trace (a new one when none came), a new parent span id,
/// the caller's sampling decision and `tracestate`. What a proxy that exports no traces
/// does: a header rewrite per request instead of a span.
pub fn hop_http(headers: &mut HeaderMap) {
    // Written directly rather than through the propagator: a proxy does this on every
    // request, and a `Context` and two formatted ids per request are most of its cost.
    // The caller's trace id goes on as the digits it came in, checked but not converted.
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
    match headers
        .get(TRACEPARENT)
        .and_then(|v| parse_traceparent(v.as_bytes()))
    {
        Some((trace_id, sampled)) => {
            value[3..35].copy_from_slice(&trace_id);
            if sampled {
                value[54] = b'1';
            }
        }
        None => {
            // A new trace: the caller's `tracestate` belongs to no trace of ours.
            headers.remove(TRACESTATE);
            put_hex(
                &mut value[3..35],
                &nonzero(rand::random::<u128>).to_be_bytes(),
            );
        }
    }
    put_hex(
        &mut value[36..52],
        &nonzero(rand::random::<u64>).to_be_bytes(),
    );
    if let Ok(value) = http::HeaderValue::from_bytes(&value) {
        headers.insert(TRACEPARENT, value);
    }
}

/// Writes `bytes` as lowercase hex into `out` (two digits per byte).
fn put_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// An id that is not all zeros (W3C trace context: zero means invalid).
fn nonzero<T: PartialEq + Default>(mut draw: impl FnMut() -> T) -> T {
    loop {
        let id = draw();
        if id != T::default() {
            return id;
        }
    }
}

/// The trace id (its 32 hex digits) and sampled flag of a valid W3C `traceparent`:
/// version `00` exactly as specified, a later version by its first four fields (the
/// spec's forward compatibility rule); ids lowercase hex and not all zeros.
fn parse_traceparent(value: &[u8]) -> Option<([u8; 32], bool)> {
    // version(2) "-" trace-id(32) "-" parent-id(16) "-" flags(2), then (for a later
    // version only) more fields, each after a "-".
    let (head, rest) = value.trim_ascii().split_at_checked(55)?;
    let hex = |field: &[u8]| field.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |field: &[u8]| field.iter().all(|&b| b == b'0');
    let (version, trace_id, parent_id, flags) =
        (&head[0..2], &head[3..35], &head[36..52], &head[53..55]);
    let dashes = [2, 35, 52].iter().all(|&at| head[at] == b'-');
    let rest_ok = match version {
        b"ff" => false,
        b"00" => rest.is_empty(),
        _ => rest.first().is_none_or(|&b| b == b'-'),
    };
    let valid = dashes
        && [version, trace_id, parent_id, flags].into_iter().all(hex)
        && rest_ok
        && !zero(trace_id)
        && !zero(parent_id);
    let sampled = char::from(flags[1])
        .to_digit(16)
        .is_some_and(|low| low & 1 == 1);
    valid.then_some((trace_id.try_into().ok()?, sampled))
}

/// Writes the current span's `traceparent` (and `tracestate`) into outgoing HTTP headers.
pub fn inject_http(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    propagator().inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers));
}

/// The current span's trace context as plain strings, to store beside an outbox row
/// so the relay publishes the event under the producer's trace, not its own.
pub fn current_context_map() -> BTreeMap<String, String> {
    let cx = tracing::Span::current().context();
    let mut map = BTreeMap::new();
    propagator().inject_context(&cx, &mut MapInjector(&mut map));
    map
}

/// AMQP headers holding the given trace context entries.
#[cfg(feature = "events")]
pub fn amqp_headers(context: &BTreeMap<String, String>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in context {
        table.insert(
            ShortString::from(k.as_str()),
            AMQPValue::LongString(v.as_str().into()),
        );
    }
    table
}

/// The `traceparent` of the current span, if it has a valid context.
pub fn current_traceparent() -> Option<String> {
    current_context_map().remove("traceparent")
}

struct MapInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

#[cfg(feature = "events")]
struct AmqpExtractor<'a>(&'a FieldTable);

#[cfg(feature = "events")]
impl Extractor for AmqpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(ShortString::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn a_trace_context_survives_http_in_and_amqp_out() {
        init_for_tests();
        let mut incoming = HeaderMap::new();
        incoming.insert(
            "traceparent",
            format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
                .parse()
                .unwrap(),
        );
        let span = tracing::info_span!("request");
        set_parent_from_http(&span, &incoming);
        let context = span.in_scope(current_context_map);
        let traceparent = context
            .get("traceparent")
            .expect("a traceparent is injected");
        assert!(traceparent.contains(TRACE_ID), "{traceparent}");

        let headers = amqp_headers(&context);
        let consumer_span = tracing::info_span!("consume");
        set_parent_from_amqp(&consumer_span, Some(&headers));
        let mut outgoing = HeaderMap::new();
        consumer_span.in_scope(|| inject_http(&mut outgoing));
        let out = outgoing["traceparent"].to_str().unwrap();
        assert!(out.contains(TRACE_ID), "{out}");
        assert_ne!(out, traceparent, "each hop is a new span in the same trace");
    }

    #[test]
    fn a_hop_keeps_the_trace_and_sampling_and_takes_a_new_parent_id() {
        let sent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", sent.parse().unwrap());
        headers.insert("tracestate", "vendor=1".parse().unwrap());
        hop_http(&mut headers);
        let hop = headers["traceparent"].to_str().unwrap().to_owned();
        let parts: Vec<&str> = hop.split('-').collect();
        assert_eq!(parts.len(), 4, "{hop}");
        assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE_ID, "01"));
        assert_ne!(parts[2], "00f067aa0ba902b7", "a new parent span id");
        assert_eq!(parts[2].len(), 16);
        assert_eq!(headers["tracestate"], "vendor=1");

        // Nothing (or garbage) came: a new, unsampled trace.
        for incoming in [None, Some("00-zz-yy-01")] {
            let mut headers = HeaderMap::new();
            if let Some(v) = incoming {
                headers.insert("traceparent", v.parse().unwrap());
            }
            hop_http(&mut headers);
            let fresh = headers["traceparent"].to_str().unwrap();
            assert!(
                fresh.starts_with("00-") && fresh.ends_with("-00"),
                "{fresh}"
            );
            assert!(!fresh.contains("zz"));
        }
    }

    #[test]
    fn a_hop_accepts_exactly_the_valid_traceparents() {
        let valid = format!("00-{TRACE_ID}-00f067aa0ba902b7-00");
        assert_eq!(
            parse_traceparent(valid.as_bytes()),
            Some((*TRACE_ID.as_bytes().first_chunk().unwrap(), false))
        );
        let later_version = format!("01-{TRACE_ID}-00f067aa0ba902b7-03-more");
        assert!(parse_traceparent(later_version.as_bytes()).is_some_and(|(_, s)| s));
        for invalid in [
            format!("ff-{TRACE_ID}-00f067aa0ba902b7-01"),
            format!("00-{TRACE_ID}-00f067aa0ba902b7-01-extra"),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{TRACE_ID}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", TRACE_ID.to_uppercase()),
            format!("00-{TRACE_ID}-00f067aa0ba902b-01"),
            "00-zz-yy-01".to_owned(),
            String::new(),
        ] {
            assert_eq!(parse_traceparent(invalid.as_bytes()), None, "{invalid}");
        }
        // A new trace drops a tracestate that came without a valid traceparent.
        let mut headers = HeaderMap::new();
        headers.insert("tracestate", "vendor=1".parse().unwrap());
        hop_http(&mut headers);
        assert!(headers.get("tracestate").is_none());
    }

    /// The W3C rules read field by field, as the spec states them: the oracle for the
    /// byte-offset parser the proxy runs.
    fn spec_traceparent(text: &str) -> Option<([u8; 32], bool)> {
        let text = text.trim_ascii();
        let mut fields = text.split('-');
        let (version, trace_id, parent_id, flags) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let lower_hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !lower_hex(version, 2) || version == "ff" || (version == "00" && fields.next().is_some())
        {
            return None;
        }
        if !lower_hex(trace_id, 32) || !lower_hex(parent_id, 16) || !lower_hex(flags, 2) {
            return None;
        }
        let digits = *trace_id.as_bytes().first_chunk()?;
        let trace_id = u128::from_str_radix(trace_id, 16).ok()?;
        let parent_id = u64::from_str_radix(parent_id, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && parent_id != 0).then_some((digits, flags & 1 == 1))
    }

    proptest::proptest! {
        #[test]
        fn the_traceparent_parser_agrees_with_the_spec_field_by_field(
            version in "(00|01|fe|ff|0g|0)",
            trace_id in "([0-9a-f]{32}|0{32}|[0-9a-fA-F]{30,33})",
            parent_id in "([0-9a-f]{16}|0{16}|[0-9a-fG]{15,17})",
            flags in "([0-9a-f]{2}|[0-9a-fx]{1,3})",
            rest in "(|-|-[a-z0-9]{1,8}|[a-z0-9]{1,3}| )",
            pad in "( |\\t)?",
        ) {
            let text = format!("{pad}{version}-{trace_id}-{parent_id}-{flags}{rest}{pad}");
            proptest::prop_assert_eq!(
                parse_traceparent(text.as_bytes()),
                spec_traceparent(&text),
                "{}", text
            );
        }

        #[test]
        fn a_hop_keeps_any_valid_trace_id_and_sampled_flag(trace_id in 1u128.., sampled: bool) {
            let sent = format!("00-{trace_id:032x}-00f067aa0ba902b7-0{}", u8::from(sampled));
            let mut headers = HeaderMap::new();
            headers.insert("traceparent", sent.parse().unwrap());
            hop_http(&mut headers);
            let hop = headers["traceparent"].to_str().unwrap();
            let digits = format!("{trace_id:032x}");
            proptest::prop_assert_eq!(
                parse_traceparent(hop.as_bytes()),
                Some((*digits.as_bytes().first_chunk().unwrap(), sampled))
            );
            proptest::prop_assert_eq!(&hop[..36], &sent[..36]);
            proptest::prop_assert_ne!(&hop[36..52], "0000000000000000");
        }
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        init_for_tests();
        let mut incoming = HeaderMap::new();
        incoming.insert("traceparent", "00-zz-yy-01".parse().unwrap());
        let span = tracing::info_span!("request");
        set_parent_from_http(&span, &incoming);
        let traceparent = span.in_scope(current_traceparent).expect("a new trace");
        assert!(!traceparent.contains("zz"));
    }
}
