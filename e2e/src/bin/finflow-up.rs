//! `finflow-up`: runs the platform locally until Ctrl-C (what `dev/up` calls).

use clap::Parser;
use finflow_e2e::launcher::{Options, Platform};
use finflow_e2e::mail;

/// Runs the FinFlow platform locally: backing services, every service with its sidecar
/// in dependency order, the gateway on :8000.
#[derive(Parser)]
#[command(name = "finflow-up")]
struct Cli {
    /// Build and run optimized binaries (slower to build; what benchmarks measure).
    #[arg(long)]
    release: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    eprintln!("starting FinFlow locally: backing services, build, services in dependency order");
    let mut options = Options::local();
    options.release = cli.release;
    let mut platform = match Platform::start(options).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("\nFinFlow did not start: {e:#}");
            std::process::exit(1);
        }
    };
    let staff = match platform.create_staff().await {
        Ok(password) => password,
        Err(e) => {
            eprintln!("\nthe staff accounts were not created: {e:#}");
            platform.stop().await;
            std::process::exit(1);
        }
    };
    println!("\nFinFlow is up.\n\n{}", platform.table());
    println!(
        "Staff accounts (roles granted by `finflow-auth grant-role`), password {staff} \
         (new each run; an account kept from an earlier run keeps its password):"
    );
    for (email, role) in finflow_e2e::launcher::STAFF {
        println!("  {email} ({role})");
    }
    let gateway = &platform.gateway_url;
    println!(
        "Try (sign up: 202 whatever the address; the verification mail with its token is \
         printed here, below):\n  \
         curl -s {gateway}/api/v1/auth/register -H 'content-type: application/json' \\\n    \
         -d '{{\"email\":\"ada@example.com\",\"password\":\"correct horse battery\",\"full_name\":\"Ada Lovelace\",\"phone\":\"+14155550123\"}}'\n\
         then confirm the address with the token from that mail, and log in:\n  \
         curl -s {gateway}/api/v1/auth/verify -H 'content-type: application/json' \\\n    \
         -d '{{\"token\":\"<token>\",\"password\":\"correct horse battery\"}}'\n  \
         curl -s {gateway}/api/v1/auth/login -H 'content-type: application/json' \\\n    \
         -d '{{\"email\":\"ada@example.com\",\"password\":\"correct horse battery\"}}'\n"
    );
    // The platform's mail goes to a sink: keep each message as a file to read, and show
    // the new ones on the console (recipient, subject, and the token line of a
    // verification mail), so a developer can verify the addresses they sign up.
    let mail_dir = finflow_e2e::launcher::repo_root().join("target/finflow/mail");
    std::fs::create_dir_all(&mail_dir)?;
    let mailbox = platform.mailbox.clone();
    let dir = mail_dir.clone();
    // The staff accounts' mails came before the instructions: kept, not shown.
    let shown_from = mail::mark(&mailbox);
    let verify_url = format!("{gateway}/api/v1/auth/verify");
    let reset_url = format!("{gateway}/api/v1/auth/password-reset/confirm");
    tokio::spawn(async move {
        let mut written = 0;
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let mails: Vec<_> = mailbox
                .lock()
                .map(|m| m[written..].to_vec())
                .unwrap_or_default();
            for (to, data) in mails {
                written += 1;
                let _ = std::fs::write(
                    dir.join(format!("{written:05}.eml")),
                    format!("X-Envelope-To: {}\n{data}", to.join(", ")),
                );
                if written <= shown_from {
                    continue;
                }
                println!(
                    "mail to {}: {}",
                    to.join(", "),
                    mail::subject(&data).unwrap_or("(no subject)")
                );
                if let Some(token) = mail::mailed_token(&data) {
                    // A verification mail or a reset mail: each says where its token goes.
                    let (url, field, what) = if data.contains("/api/v1/auth/password-reset") {
                        (&reset_url, "new_password", "<a new password>")
                    } else {
                        (&verify_url, "password", "<your password>")
                    };
                    println!(
                        "  curl -s {url} -H 'content-type: application/json' -d '{{\"token\":\"{token}\",\"{field}\":\"{what}\"}}'"
                    );
                }
            }
        }
    });
    println!(
        "Mail is not sent anywhere: it is kept in {}, and each new one is shown here.",
        mail_dir.display()
    );
    println!("Ctrl-C stops everything.");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("\nstopping ...");
    platform.stop().await;
    eprintln!("stopped.");
    Ok(())
}
