use proptest::prelude::*;

use super::*;

/// One sidecar's `/metrics` as it renders them: its own families, then the app's.
const SCRAPE: &str = r#"# HELP finflow_sidecar_requests_total Requests answered by the proxy
# TYPE finflow_sidecar_requests_total counter
finflow_sidecar_requests_total{status="200",origin="upstream",traffic="api"} 160
finflow_sidecar_requests_total{status="503",origin="upstream",traffic="api"} 40
finflow_sidecar_requests_total{status="200",origin="upstream",traffic="probe"} 30
finflow_sidecar_requests_total{status="500",origin="upstream",traffic="probe"} 3
finflow_sidecar_requests_total{status="502",origin="proxy",traffic="api"} 5
finflow_sidecar_requests_total{status="401",origin="proxy",traffic="api"} 10
finflow_sidecar_requests_total{status="503",origin="proxy",traffic="api"} 2
# TYPE finflow_sidecar_jwt_rejections_total counter
finflow_sidecar_jwt_rejections_total{reason="expired"} 6
finflow_sidecar_jwt_rejections_total{reason="missing_token"} 4
# TYPE finflow_sidecar_upstream_duration_seconds histogram
finflow_sidecar_upstream_duration_seconds_bucket{traffic="api",le="0.005"} 100
finflow_sidecar_upstream_duration_seconds_bucket{traffic="api",le="0.01"} 180
finflow_sidecar_upstream_duration_seconds_bucket{traffic="api",le="0.1"} 200
finflow_sidecar_upstream_duration_seconds_bucket{traffic="api",le="+Inf"} 205
finflow_sidecar_upstream_duration_seconds_sum{traffic="api"} 1.5
finflow_sidecar_upstream_duration_seconds_count{traffic="api"} 205
finflow_sidecar_upstream_duration_seconds_bucket{traffic="probe",le="0.005"} 0
finflow_sidecar_upstream_duration_seconds_bucket{traffic="probe",le="+Inf"} 33
finflow_sidecar_upstream_metrics_up 1
# TYPE finflow_http_requests_total counter
finflow_http_requests_total{method="GET",route="/api/v1/wallets/{id}",status="503"} 40
finflow_sidecar_requests_total{status="500",origin="upstream",traffic="api"} 999
"#;

fn limits() -> Thresholds {
    Thresholds {
        min_requests: 100,
        max_app_error_percent: Some(5),
        max_p99_micros: None,
        max_jwt_rejection_percent: None,
    }
}

#[test]
fn a_sidecars_exposition_reads_as_requests_app_errors_latency_and_rejections() {
    let sample = parse(SCRAPE).unwrap();
    assert_eq!(
        sample,
        Sample {
            pods: 1,
            // Probes are neither requests nor latency; what follows the sidecar's own
            // families is the app's, whatever it names. The 502s never reached an app
            // that answers: its failures; the 503s are the sidecar's own.
            requests: 217,
            forwarded: 205,
            app_errors: 45,
            proxy_errors: 2,
            jwt_rejections: 10,
            latency: vec![(5_000, 100), (10_000, 180), (100_000, 200), (u64::MAX, 205)],
        }
    );
}

#[test]
fn labels_are_read_in_any_order_with_escapes_and_commas_in_values() {
    let text = "finflow_sidecar_requests_total{traffic=\"api\", status=\"500\",origin=\"upstream\",note=\"a,b=\\\"c\\\"\"} 7\n";
    let sample = parse(text).unwrap();
    assert_eq!((sample.requests, sample.app_errors), (7, 7));
}

#[test]
fn a_sidecar_without_origin_labels_or_no_sidecar_at_all_is_refused() {
    let old = "finflow_sidecar_requests_total{status=\"200\"} 9\n";
    assert!(parse(old).unwrap_err().contains("origin"));
    assert!(parse("echo_app_orders_total 42\n").is_err());
    let broken =
        "finflow_sidecar_requests_total{status=\"200\",origin=\"upstream\",traffic=\"api\"} 1.5\n";
    assert!(parse(broken).is_err(), "a count is whole");
    let unclosed = "finflow_sidecar_requests_total{status=\"200 3\n";
    assert!(parse(unclosed).is_err());
}

#[test]
fn the_sidecars_own_503_is_not_the_apps_but_an_app_that_does_not_answer_fails() {
    let sample = parse(&exposition(&Traffic {
        ok: 100,
        proxy_errors: 50,
        ..Traffic::default()
    }))
    .unwrap();
    assert_eq!((sample.app_errors, sample.proxy_errors), (0, 50));
    assert_eq!(judge(&sample, &limits()).verdict, Verdict::Passed);
    // An app that hangs on every call but its health: every request a 504.
    let hung = parse(&exposition(&Traffic {
        unanswered: 100,
        latency_millis: 12_000,
        ..Traffic::default()
    }))
    .unwrap();
    let judged = judge(&hung, &limits());
    assert_eq!(judged.verdict, Verdict::Failed);
    assert_eq!(
        judged.message,
        "100 of 100 requests failed at the app (100.0% > 5%)"
    );
}

#[test]
fn a_share_is_judged_only_on_enough_requests_of_its_own() {
    // Scanners without tokens make up the minimum; two requests reached the app.
    let sample = parse(&exposition(&Traffic {
        ok: 1,
        app_errors: 1,
        jwt_rejections: 98,
        ..Traffic::default()
    }))
    .unwrap();
    assert_eq!(judge(&sample, &limits()).verdict, Verdict::Passed);
}

#[test]
fn the_p99_is_interpolated_within_its_bucket() {
    // 200 observations: the 198th is the 99th percentile, 18 of the 20 in (10, 100] ms.
    let latency = [(5_000, 100), (10_000, 180), (100_000, 200), (u64::MAX, 200)];
    assert_eq!(p99(&latency), Some(P99::Micros(91_000)));
    assert_eq!(p99(&[(1_000, 0), (u64::MAX, 0)]), None);
    assert_eq!(p99(&[]), None);
}

#[test]
fn a_p99_beyond_the_last_bucket_exceeds_any_threshold() {
    let sample = Sample {
        pods: 1,
        requests: 100,
        forwarded: 100,
        latency: vec![(10_000_000, 98), (u64::MAX, 100)],
        ..Sample::default()
    };
    let t = Thresholds {
        max_p99_micros: Some(u64::MAX - 1),
        ..limits()
    };
    let judged = judge(&sample, &t);
    assert_eq!(judged.p99, Some(P99::Above(10_000_000)));
    assert_eq!(judged.verdict, Verdict::Failed, "{}", judged.message);
}

#[test]
fn fewer_requests_than_the_minimum_judge_nothing() {
    let sample = parse(&exposition(&Traffic {
        ok: 50,
        app_errors: 49,
        ..Traffic::default()
    }))
    .unwrap();
    let judged = judge(&sample, &limits());
    assert_eq!(judged.verdict, Verdict::Inconclusive);
    assert_eq!(
        judged.message,
        "99 requests, fewer than the 100 needed to judge"
    );
    let nobody = judge(&Sample::default(), &limits());
    assert_eq!(nobody.verdict, Verdict::Unavailable);
}

#[test]
fn twenty_percent_app_5xx_fails_five_percent_and_four_passes() {
    let failing = parse(&exposition(&Traffic {
        ok: 80,
        app_errors: 20,
        latency_millis: 3,
        ..Traffic::default()
    }))
    .unwrap();
    let judged = judge(&failing, &limits());
    assert_eq!(judged.verdict, Verdict::Failed);
    assert_eq!(
        judged.message,
        "20 of 100 requests failed at the app (20.0% > 5%)"
    );
    let passing = parse(&exposition(&Traffic {
        ok: 96,
        app_errors: 4,
        latency_millis: 3,
        ..Traffic::default()
    }))
    .unwrap();
    let judged = judge(&passing, &limits());
    assert_eq!(judged.verdict, Verdict::Passed, "{}", judged.message);
    // Exactly at the limit is within it.
    let at_limit = Sample {
        app_errors: 5,
        ..passing
    };
    assert_eq!(judge(&at_limit, &limits()).verdict, Verdict::Passed);
}

#[test]
fn a_latency_regression_fails_only_where_a_limit_is_set() {
    let slow = parse(&exposition(&Traffic {
        ok: 200,
        latency_millis: 400,
        ..Traffic::default()
    }))
    .unwrap();
    assert_eq!(judge(&slow, &limits()).verdict, Verdict::Passed);
    let judged = judge(
        &slow,
        &Thresholds {
            max_p99_micros: Some(200_000),
            ..limits()
        },
    );
    assert_eq!(judged.verdict, Verdict::Failed);
    assert_eq!(judged.message, "p99 latency 497.5 ms > 200.0 ms");
}

#[test]
fn jwt_rejections_are_judged_as_a_share_of_all_requests() {
    let sample = parse(&exposition(&Traffic {
        ok: 90,
        jwt_rejections: 10,
        ..Traffic::default()
    }))
    .unwrap();
    let t = |max| Thresholds {
        max_jwt_rejection_percent: Some(max),
        ..limits()
    };
    assert_eq!(judge(&sample, &t(10)).verdict, Verdict::Passed);
    assert_eq!(judge(&sample, &t(9)).verdict, Verdict::Failed);
}

#[test]
fn the_pod_proxy_path_names_the_pod_and_the_admin_port() {
    assert_eq!(
        pod_metrics_path("shop", "b-blue-7d9-x2", 15020),
        "/api/v1/namespaces/shop/pods/b-blue-7d9-x2:15020/proxy/metrics"
    );
}

fn traffic() -> impl Strategy<Value = Traffic> {
    (
        (0_u64..500, 0_u64..100, 0_u64..30),
        (0_u64..50, 0_u64..50, 0_u64..50, 0_u64..12_000),
    )
        .prop_map(
            |(
                (ok, app_errors, unanswered),
                (proxy_errors, jwt_rejections, probes, latency_millis),
            )| {
                Traffic {
                    ok,
                    app_errors,
                    unanswered,
                    proxy_errors,
                    jwt_rejections,
                    probes,
                    latency_millis,
                }
            },
        )
}

proptest! {
    #[test]
    fn an_exposition_reads_back_as_its_traffic(t in traffic()) {
        let sample = parse(&exposition(&t)).unwrap();
        let sent = t.ok + t.app_errors + t.unanswered;
        prop_assert_eq!(sample.requests, sent + t.proxy_errors + t.jwt_rejections);
        prop_assert_eq!(sample.forwarded, sent);
        prop_assert_eq!(sample.app_errors, t.app_errors + t.unanswered);
        prop_assert_eq!(sample.proxy_errors, t.proxy_errors);
        prop_assert_eq!(sample.jwt_rejections, t.jwt_rejections);
        prop_assert_eq!(sample.latency.last().map(|l| l.1), Some(sent));
    }

    /// The operator sums the pods it could read: how the same requests fell on them
    /// does not change the verdict.
    #[test]
    fn the_verdict_does_not_depend_on_how_requests_split_over_pods(
        pods in proptest::collection::vec(traffic(), 1..5),
        max_errors in 0_u32..30,
        max_p99_ms in proptest::option::of(1_u64..12_000),
    ) {
        let t = Thresholds {
            min_requests: 50,
            max_app_error_percent: Some(max_errors),
            max_p99_micros: max_p99_ms.map(|ms| ms * 1000),
            max_jwt_rejection_percent: None,
        };
        let samples: Vec<Sample> = pods.iter().map(|p| parse(&exposition(p)).unwrap()).collect();
        let together = Sample::sum(&samples);
        let reversed = Sample::sum(samples.iter().rev());
        prop_assert_eq!(&together, &reversed);
        prop_assert_eq!(together.pods, u32::try_from(pods.len()).unwrap());
        let judged = judge(&together, &t);
        // Failing on errors is exactly the share rule on the summed counts.
        let errors: u64 = pods.iter().map(|p| p.app_errors + p.unanswered).sum();
        let forwarded: u64 = pods.iter().map(|p| p.ok + p.app_errors + p.unanswered).sum();
        if forwarded >= t.min_requests && errors * 100 > forwarded * u64::from(max_errors) {
            prop_assert_eq!(judged.verdict, Verdict::Failed);
        }
        if together.requests < t.min_requests {
            prop_assert_eq!(judged.verdict, Verdict::Inconclusive);
        }
    }
}
