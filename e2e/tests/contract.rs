//! Schema-driven fuzzing: schemathesis calls every operation of each service's published
//! OpenAPI document through the gateway, as a verified user with a wallet and as each
//! staff role, with every check on (server errors, answers the document does not
//! describe, rules it states or leaves out, authentication, the stateful links). Any
//! failure fails the test, with schemathesis's report of it.
//!
//! Needs schemathesis: `dev/test` installs it (`dev/fuzz-tools`) and sets `SCHEMATHESIS`
//! to its `st`; without it the test says so and passes without running.

use std::path::PathBuf;
use std::time::Duration;

use finflow_e2e::journey::platform;
use finflow_platform::testing::body_of;

/// Examples per operation and phase: enough for every status an operation has, and the
/// whole suite in a few minutes.
const MAX_EXAMPLES: &str = "20";

#[tokio::test]
async fn every_service_answers_fuzzed_requests_as_its_published_document_says() {
    let Some(st) = std::env::var_os("SCHEMATHESIS").map(PathBuf::from) else {
        eprintln!("skipped: SCHEMATHESIS is not set (dev/test installs schemathesis and sets it)");
        return;
    };
    let mut platform = platform().await;
    let client = platform.client();
    let (user, _wallet) = client.new_user("fuzz").await.with_wallet("USD").await;
    let mut tokens = vec![("user", token(&user))];
    for (email, role) in [
        ("ops@finflow.local", "ops"),
        ("compliance@finflow.local", "compliance"),
    ] {
        let staff = platform
            .staff_user(&client, email, role)
            .await
            .unwrap_or_else(|e| panic!("granting {role}: {e:#}"));
        tokens.push((role, token(&staff)));
    }

    // The gateway's one document holds every service's published paths, nothing else.
    let merged: serde_json::Value = finflow_platform::client::default_client()
        .get(format!("{}/openapi.json", platform.gateway_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .expect("the gateway serves its document");
    let merged_paths = merged["paths"].as_object().expect("paths");
    assert!(
        merged_paths.keys().all(|p| !p.starts_with("/internal")),
        "{:?}",
        merged_paths.keys()
    );

    let out = finflow_e2e::launcher::repo_root().join("target/contract");
    std::fs::create_dir_all(&out).unwrap();
    let http = finflow_platform::client::default_client();
    let mut failed = Vec::new();
    // `CONTRACT_SERVICES=auth,payment` narrows a run while fixing what it found.
    let only = std::env::var("CONTRACT_SERVICES").ok();
    let selected = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|s| s == name))
    };
    for service in platform.services.iter().filter(|s| selected(s.name)) {
        let document = body_of(http.get(format!("{}/openapi.json", service.sidecar_url))).await;
        let published: serde_json::Value = serde_json::from_str(&document).unwrap();
        // Named and described as the catalog says, like its `--help`.
        let entry = finflow_contracts::catalog::named(service.name).expect("a catalog service");
        assert_eq!(published["info"]["title"], entry.title, "{}", service.name);
        assert_eq!(
            published["info"]["description"],
            format!("{}.", entry.about),
            "{}",
            service.name
        );
        for path in published["paths"].as_object().expect("paths").keys() {
            assert!(
                merged_paths.contains_key(path),
                "{path} of {} is not in the gateway's document",
                service.name
            );
        }
        let path = out.join(format!("{}.json", service.name));
        std::fs::write(&path, document).unwrap();
        let roles = std::env::var("CONTRACT_ROLES").ok();
        let tokens = tokens.iter().filter(|(role, _)| {
            roles
                .as_deref()
                .is_none_or(|r| r.split(',').any(|x| x == *role))
        });
        for (role, token) in tokens {
            let run = tokio::time::timeout(
                Duration::from_secs(300),
                tokio::process::Command::new(&st)
                    // Its cache of examples found goes with the outputs, not the sources.
                    .current_dir(&out)
                    .arg("run")
                    .arg(&path)
                    .args(["--url", &platform.gateway_url, "--checks", "all"])
                    .args(["--header", &format!("Authorization: Bearer {token}")])
                    .args(["--max-examples", MAX_EXAMPLES, "--seed", "1"])
                    .args(["--phases", "examples,coverage,fuzzing,stateful"])
                    // The sidecar allows a user 50 requests a second.
                    .args(["--rate-limit", "40/s", "--workers", "1"])
                    .args(["--generation-database", "none", "--request-timeout", "15"])
                    .args(["--suppress-health-check", "all", "--no-color"])
                    .output(),
            )
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "schemathesis on {} as {role}: no end in 300 s",
                    service.name
                )
            })
            .unwrap_or_else(|e| panic!("running {}: {e}", st.display()));
            let report = String::from_utf8_lossy(&run.stdout);
            let verdict = report
                .lines()
                .rev()
                .find(|l| l.starts_with('=') && l.contains(" in "))
                .unwrap_or("(no summary line)")
                .to_owned();
            eprintln!("{} as {role}: {verdict}", service.name);
            if !run.status.success() {
                failed.push(format!(
                    "--- {} as {role}: {verdict}\n{report}\n{}",
                    service.name,
                    String::from_utf8_lossy(&run.stderr)
                ));
            }
        }
    }
    platform.stop().await;
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

fn token(user: &finflow_e2e::client::User) -> String {
    user.session["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}
