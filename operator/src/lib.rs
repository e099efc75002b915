//! The FinFlow operator's runtime: the controllers, the admission webhook, leader
//! election, the webhook's certificates, the process ([`app`]) and the `kubectl
//! finflow` plugin.
//!
//! The decisions are in `finflow-operator-core` (pure, no client) and the resource
//! types in `finflow-crd`; both are re-exported here under their old paths. This crate
//! reads the cluster, calls the decisions, and writes with server-side apply (field
//! manager `finflow-operator`) only what differs. How the parts fit is told in
//! `docs/architecture.md`.

pub use finflow_crd as crd;
pub use finflow_operator_core::{
    analysis, conditions, dns, finservice, graph, inject, listmap, messagequeue, meta,
    pod_security, rbac, reconcile, rediscache, rollout,
};

pub mod app;
pub mod certs;
pub mod config;
pub mod controller;
pub mod crdgen;
pub mod leader;
pub mod plugin;
pub mod webhook;
