//! The local launcher and the end-to-end tests of the whole platform.
//!
//! [`launcher`] starts the backing services, every service with its sidecar in
//! dependency order, and the gateway, all on loopback; `dev/up` runs it for people
//! (`finflow-up`), and the tests in `tests/` run it with ports and databases of their
//! own and then drive the platform through the gateway only, as a client would, with
//! the helpers in [`journey`]. Signing up reads the verification mail from the
//! launcher's SMTP sink ([`mail`]).
//! [`cost`] reads what a payment costs off the machine, for the payments benchmark.
//! The cluster tests (`tests/operator.rs`, `tests/rollouts.rs`, helpers in [`cluster`])
//! run the operator against a real cluster only when `KUBECONFIG` is set; on a bare API
//! server (no nodes) [`bare`] plays the kubelet and the built-in controllers.

pub mod bare;
pub mod client;
pub mod cluster;
pub mod cost;
pub mod journey;
pub mod launcher;
pub mod mail;
pub mod tools;
