//! `finflow-auth`: the platform's service `main` around [`finflow_auth::Auth`], and the
//! operator commands `finflow-auth grant-role|revoke-role EMAIL ROLE`
//! ([`finflow_auth::admin`]).

use clap::{CommandFactory, FromArgMatches};

// Every request and message allocates and frees buffers, maps and JSON values;
// mimalloc's thread-local free lists make that cheaper than glibc's malloc, as in the
// sidecar (finflow-bench payments: CPU per payment by process).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    use finflow_auth::admin::Change;
    match std::env::args().nth(1).as_deref() {
        Some("grant-role") => change_role(Change::Grant),
        Some("revoke-role") => change_role(Change::Revoke),
        _ => finflow_platform::service::main::<finflow_auth::Auth>(),
    }
}

#[tokio::main]
async fn change_role(change: finflow_auth::admin::Change) -> anyhow::Result<()> {
    use finflow_auth::admin::{Change, RoleCommand};
    let name = match change {
        Change::Grant => "finflow-auth grant-role",
        Change::Revoke => "finflow-auth revoke-role",
    };
    // The subcommand's word stands where clap expects the binary's name.
    let matches = RoleCommand::command()
        .name(name)
        .get_matches_from(std::env::args().skip(1));
    let command = RoleCommand::from_arg_matches(&matches)?;
    let email = command.email.clone();
    let roles = command.run(change).await?;
    println!("{email}: {}", roles.join(", "));
    Ok(())
}
