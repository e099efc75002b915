//! Identity journeys through the gateway: the whole chain (gateway, sidecar with JWT
//! validation, service A, PostgreSQL, Redis, RabbitMQ), started by the launcher.

use finflow_e2e::client::{Client, PASSWORD};
use finflow_e2e::journey::platform;
use finflow_e2e::mail::{self, MAIL_PATIENCE};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_user_registers_logs_in_and_reads_their_profile_through_the_gateway() {
    let mut platform = platform().await;
    let anonymous = platform.client();
    let user = anonymous.new_user("e2e").await;

    let me = user.client.get("/api/v1/users/me").await;
    let data = me.data(StatusCode::OK);
    assert_eq!(data["id"], user.id.as_str());
    assert_eq!(data["email"], user.email.as_str());
    assert!(me.headers.contains_key("x-request-id"));

    let refused = anonymous.get("/api/v1/users/me").await;
    assert_eq!(refused.error(StatusCode::UNAUTHORIZED), "UNAUTHORIZED");
    assert!(
        refused.headers.contains_key("x-finflow-proxy-error"),
        "the refusal is the sidecar's, and says so"
    );
    platform.stop().await;
}

#[tokio::test]
async fn refresh_rotates_logout_revokes_and_a_replayed_refresh_token_revokes_its_family() {
    let mut platform = platform().await;
    let anonymous = platform.client();
    let user = anonymous.new_user("e2e").await;
    let first = &user.session;
    let refresh = |token: &serde_json::Value| {
        let c = anonymous.clone();
        let body = json!({"refresh_token": token});
        async move { c.post("/api/v1/auth/refresh", body).await }
    };

    let rotated = refresh(&first["refresh_token"]).await;
    let second = rotated.data(StatusCode::OK).clone();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    let me = anonymous
        .with_token(second["access_token"].as_str().unwrap())
        .get("/api/v1/users/me")
        .await;
    assert_eq!(me.status, StatusCode::OK, "the rotated access token works");

    let replay = refresh(&first["refresh_token"]).await;
    assert_eq!(replay.error(StatusCode::UNAUTHORIZED), "UNAUTHORIZED");
    let successor = refresh(&second["refresh_token"]).await;
    assert_eq!(
        successor.status,
        StatusCode::UNAUTHORIZED,
        "the whole family is revoked"
    );

    let again = anonymous
        .post(
            "/api/v1/auth/login",
            json!({"email": user.email, "password": finflow_e2e::client::PASSWORD}),
        )
        .await;
    let session = again.data(StatusCode::OK).clone();
    let out = anonymous
        .post(
            "/api/v1/auth/logout",
            json!({"refresh_token": session["refresh_token"]}),
        )
        .await;
    out.data(StatusCode::OK);
    let after = refresh(&session["refresh_token"]).await;
    assert_eq!(
        after.status,
        StatusCode::UNAUTHORIZED,
        "logout revoked the session"
    );
    platform.stop().await;
}

#[tokio::test]
async fn spoofed_identity_headers_and_internal_routes_are_refused_at_the_edge() {
    let mut platform = platform().await;
    let anonymous = platform.client();
    let victim = anonymous.new_user("victim").await;
    let attacker = anonymous.new_user("attacker").await;

    // A client-sent identity never reaches the app: the token's subject wins.
    let me = attacker
        .client
        .send(
            attacker
                .client
                .http
                .get(attacker.client.url("/api/v1/users/me"))
                .header("x-user-id", &victim.id)
                .header("x-user-roles", "ops,service:wallet"),
        )
        .await;
    assert_eq!(me.data(StatusCode::OK)["id"], attacker.id.as_str());

    // Without a token, a spoofed identity is stripped and the request is refused.
    let spoofed = anonymous
        .send(
            anonymous
                .http
                .get(anonymous.url("/api/v1/users/me"))
                .header("x-user-id", &victim.id),
        )
        .await;
    assert_eq!(spoofed.status, StatusCode::UNAUTHORIZED);

    // /internal/* is never routed by the gateway ...
    let path = format!("/internal/users/{}", victim.id);
    let routed = attacker.client.get(&path).await;
    assert_eq!(routed.error(StatusCode::NOT_FOUND), "NOT_FOUND");

    // ... and A's sidecar refuses it to a user token.
    let direct = Client::new(&platform.services[0].sidecar_url)
        .with_token(attacker.session["access_token"].as_str().unwrap())
        .get(&path)
        .await;
    assert_eq!(direct.error(StatusCode::FORBIDDEN), "FORBIDDEN");
    platform.stop().await;
}

/// A password that leaked: the thief logged in on their own device. The owner changes
/// the password through the gateway; the thief's session can no longer refresh, the
/// old password no longer logs in, and D mails the owner the notice. Signing out
/// everywhere then ends the owner's new session too.
#[tokio::test]
async fn a_changed_password_ends_a_thief_s_session_and_the_owner_is_mailed() {
    let mut platform = platform().await;
    let anonymous = platform.client();
    let owner = anonymous.new_user("owner").await;
    let thief = anonymous.sign_in(&owner.email, &owner.id).await;
    let since = mail::mark(&platform.mailbox);

    let new_password = "another long passphrase";
    let changed = owner
        .client
        .post(
            "/api/v1/auth/password",
            json!({"current_password": PASSWORD, "new_password": new_password}),
        )
        .await;
    let session = changed.data(StatusCode::OK).clone();

    let refresh = |token: &serde_json::Value| {
        anonymous.post("/api/v1/auth/refresh", json!({"refresh_token": token}))
    };
    assert_eq!(
        refresh(&thief.session["refresh_token"]).await.status,
        StatusCode::UNAUTHORIZED,
        "the thief's session outlived the change"
    );
    let old = anonymous
        .post(
            "/api/v1/auth/login",
            json!({"email": owner.email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(old.error(StatusCode::UNAUTHORIZED), "UNAUTHORIZED");

    let notice = mail::next_mail_to(&platform.mailbox, &owner.email, since, MAIL_PATIENCE, |m| {
        mail::subject(m) == Some("Your FinFlow password was changed")
    })
    .await;
    assert!(notice.is_some(), "no notice mailed to {}", owner.email);

    let fresh = anonymous.with_token(session["access_token"].as_str().unwrap());
    let ended = fresh.post("/api/v1/auth/logout-all", json!({})).await;
    assert_eq!(
        ended.data(StatusCode::OK)["sessions_ended"],
        1,
        "{}",
        ended.body
    );
    assert_eq!(
        refresh(&session["refresh_token"]).await.status,
        StatusCode::UNAUTHORIZED,
        "signing out everywhere left the session the change started"
    );
    platform.stop().await;
}

/// A forgotten password, through the gateway: the reset form answers, D mails the token
/// to the account's address, the token sets a new password, and the old one is gone.
#[tokio::test]
async fn a_forgotten_password_is_reset_with_the_token_d_mails() {
    let mut platform = platform().await;
    let anonymous = platform.client();
    let owner = anonymous.new_user("forgetful").await;
    let since = mail::mark(&platform.mailbox);

    let asked = anonymous
        .post("/api/v1/auth/password-reset", json!({"email": owner.email}))
        .await;
    assert_eq!(
        asked.data(StatusCode::ACCEPTED)["status"],
        "reset_requested"
    );
    let reset_mail =
        mail::next_mail_to(&platform.mailbox, &owner.email, since, MAIL_PATIENCE, |m| {
            mail::subject(m) == Some("Reset your FinFlow password")
        })
        .await
        .expect("the reset mail reaches the account's address");
    let token = mail::mailed_token(&reset_mail).expect("the mail carries the token");

    let new_password = "a remembered passphrase";
    let done = anonymous
        .post(
            "/api/v1/auth/password-reset/confirm",
            json!({"token": token, "new_password": new_password}),
        )
        .await;
    assert_eq!(done.data(StatusCode::OK)["id"], owner.id.as_str());
    let refreshed = anonymous
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": owner.session["refresh_token"]}),
        )
        .await;
    assert_eq!(
        refreshed.status,
        StatusCode::UNAUTHORIZED,
        "a session outlived the reset"
    );
    let old = anonymous
        .post(
            "/api/v1/auth/login",
            json!({"email": owner.email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(old.error(StatusCode::UNAUTHORIZED), "UNAUTHORIZED");
    let new = anonymous
        .post(
            "/api/v1/auth/login",
            json!({"email": owner.email, "password": new_password}),
        )
        .await;
    new.data(StatusCode::OK);
    platform.stop().await;
}
