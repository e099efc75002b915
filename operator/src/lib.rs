//! The FinFlow operator.
//!
//! It reconciles three custom resources (group `finflow.dev`, version `v1alpha1`,
//! DESIGN section 8) and injects the FinFlow sidecar. The model, from the inside out:
//!
//! - **Pure decisions.** [`crd`] holds the resource types (the source of the generated
//!   CRDs in `crds/`). [`finservice`], [`messagequeue`] and [`rediscache`] turn a
//!   resource and what was observed into the objects it should own and the status it
//!   should report; [`inject`] turns a pod spec into the same pod with the sidecar in
//!   front of the app; [`conditions`] merges conditions so transition times move only
//!   when a status does; [`meta`] decides whether an object must be written at all;
//!   [`graph`] gives deploy and rollback order; [`leader`] decides acquire, renew or
//!   follow; [`certs`] builds the webhook's certificate and configuration; [`rbac`]
//!   lists every permission. All of it is tested with plain `#[test]`s.
//! - **The edge.** [`controller`] reads the cluster, calls the decisions, and writes
//!   with server-side apply (field manager `finflow-operator`) only what differs, the
//!   status only when it changed, and an Event per step that changed something; its
//!   tests run the reconcilers against a fake API server that checks every request.
//!   [`webhook`] answers AdmissionReviews over TLS. [`app`] wires the process: metrics
//!   and health, the webhook, leader election, and the controllers on the leader.
//! - **Generated files.** [`crdgen`] renders the CRDs and the ClusterRole; a test fails
//!   when `crds/` or `operator/rbac.yaml` differ from it.
//!
//! What a FinService gets today: a ServiceAccount, a ConfigMap with the sidecar's
//! configuration, Deployments `<name>-blue` and `<name>-green`, Services `<name>` (the
//! active color) and `<name>-preview` (the other). The spec's version is deployed in
//! place to the active color (blue for a new service) and the other color is kept at
//! zero replicas; while a dependency (a FinService in `dependsOn`, the queue, the
//! cache) is missing or not Ready, changes are held and the phase is `Waiting`.
//!
//! Rollouts (issue 9): [`rollout`] is the blue-green engine as pure decisions over the
//! [`graph`] and what is observed per service (order, the pre-promotion gate on the
//! preview's `/health`, promotion, the observation window, scale-down, abort, rollback
//! and cascade rollback in reverse deploy waves, holds, manual promotion and user
//! requests through the annotations `finflow.dev/promote`, `finflow.dev/abort` and
//! `finflow.dev/rollback: cascade|single`). `controller::rollout` is its edge: the
//! health probe through the API server's service proxy, pod role labels
//! (`finflow.dev/role`), the sidecars' `finflow.dev/jwks-epoch`, and an Event per step.
//! App pods get `FINFLOW_ROLE` (from the role label, at start) and the live role in the
//! file `$FINFLOW_ROLE_FILE` (a downward API volume). [`plugin`] is the pure half of the
//! `kubectl-finflow` binary.
//!
//! Not yet here: the FinService reconciler does not call [`rollout::plan`] yet; it still
//! deploys a new version in place to the active color. Wiring it (reading the
//! FinServices of the namespace, keeping the rollout state in the status, switching the
//! selector on `Promote`/`Rollback`, clearing request annotations) is the next step.

pub mod app;
pub mod certs;
pub mod conditions;
pub mod config;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod finservice;
pub mod graph;
pub mod inject;
pub mod leader;
pub mod messagequeue;
pub mod meta;
pub mod plugin;
pub mod rbac;
pub mod rediscache;
pub mod rollout;
pub mod webhook;
