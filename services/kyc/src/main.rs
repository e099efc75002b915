//! `finflow-kyc`: the platform's service `main` around [`finflow_kyc::Kyc`].

// Every request and message allocates and frees buffers, maps and JSON values;
// mimalloc's thread-local free lists make that cheaper than glibc's malloc, as in the
// sidecar (finflow-bench payments: CPU per payment by process).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    finflow_platform::service::main::<finflow_kyc::Kyc>()
}
