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
//!   when a status does; [`listmap`] merges the operator's and a user's entries of a
//!   keyed list (`env`, `volumeMounts`, `volumes`) into one per key, the user's winning;
//!   [`meta`] decides whether an object must be written at all;
//!   [`graph`] gives deploy and rollback order; [`analysis`] reads the sidecars' metrics
//!   of a version's pods and judges them against thresholds; [`leader`] decides create, acquire,
//!   renew or follow on its own clock; [`certs`] builds the webhook's certificate, what
//!   the caBundle trusts across a renewal, and the patch of that caBundle alone;
//!   [`rbac`] lists every permission; [`pod_security`] holds the security contexts that
//!   keep every pod the operator builds within the `restricted` Pod Security Standard,
//!   and the test that checks each pod template against it. All of it is tested with
//!   plain `#[test]`s.
//! - **The edge.** [`controller`] reads the cluster, calls the decisions, and writes
//!   with server-side apply (field manager `finflow-operator`) only what differs, the
//!   status only when it changed, and an Event per step that changed something; a
//!   reconcile that fails puts the API server's message in the status (Ready=False,
//!   kstatus' Stalled or Reconciling) and in a Warning Event before it is retried; its
//!   tests run the reconcilers against a fake API server that checks every request.
//!   [`webhook`] answers AdmissionReviews over TLS. [`app`] wires the process: metrics
//!   and health, the webhook, leader election, and the controllers on the leader.
//! - **Generated files.** [`crdgen`] renders the CRDs and the ClusterRole; a test fails
//!   when `crds/` or `operator/rbac.yaml` differ from it.
//!
//! What a FinService gets: a ServiceAccount, a ConfigMap with the sidecar's
//! configuration and the token issuer's epoch, Deployments `<name>-blue` and
//! `<name>-green`, Services `<name>` (the active color) and `<name>-preview` (the
//! other). While a MessageQueue, RedisCache or FinService it names is missing, changes
//! are held and the phase is `Waiting`.
//!
//! Rollouts (issue 9): [`rollout`] is the blue-green engine as pure decisions over the
//! [`graph`] and what is observed per service (order, the pre-promotion gate on the
//! preview's `/health`, promotion, the observation window, scale-down, abort, rollback
//! and cascade rollback in reverse deploy waves, holds, manual promotion and user
//! requests through the annotations `finflow.dev/promote`, `finflow.dev/abort` and
//! `finflow.dev/rollback: cascade|single`). The FinService reconciler
//! (`controller::finservice`) drives it: it lists the namespace's FinServices, sees the
//! others through their status and itself through its Deployments, pods and `/health`
//! probes (through the API server's service proxy), takes the engine's step, keeps the
//! rollout state in the status ([`finservice::advance`]: active color, version and
//! since when, preview, previous version and whether it is retained, failed version,
//! observation window, a rollback under way), applies the objects that state implies
//! ([`finservice::color_plans`]), labels pods with their role (`finflow.dev/role`; app
//! pods read it from a downward API file and consume work queues only when `active`),
//! records the step as an Event and the Progressing/Degraded conditions (and from them
//! kstatus' Reconciling/Stalled; Ready only once the spec's version is live and
//! settled), and removes a request annotation once handled. When module A goes live with another version, every
//! sidecar ConfigMap gets the new epoch and the sidecars refetch the JWK set.
//! [`plugin`] is the pure half of the `kubectl-finflow` binary.
//!
//! A new version rolls out blue-green; other spec changes (environment, resources,
//! sidecar settings, replicas) are applied to both colors in place.

pub mod analysis;
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
pub mod listmap;
pub mod messagequeue;
pub mod meta;
pub mod plugin;
pub mod pod_security;
pub mod rbac;
pub mod rediscache;
pub mod rollout;
pub mod webhook;
