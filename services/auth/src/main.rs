//! `finflow-auth`: the platform's service `main` around [`finflow_auth::Auth`], and the
//! operator command `finflow-auth grant-role EMAIL ROLE` ([`finflow_auth::admin`]).

use clap::Parser;

// Every request and message allocates and frees buffers, maps and JSON values;
// mimalloc's thread-local free lists make that cheaper than glibc's malloc, as in the
// sidecar (finflow-bench payments: CPU per payment by process).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("grant-role") {
        return grant_role();
    }
    finflow_platform::service::main::<finflow_auth::Auth>()
}

#[tokio::main]
async fn grant_role() -> anyhow::Result<()> {
    let command = finflow_auth::admin::GrantRole::parse_from(std::env::args().skip(1));
    let email = command.email.clone();
    let roles = command.run().await?;
    println!("{email}: {}", roles.join(", "));
    Ok(())
}
