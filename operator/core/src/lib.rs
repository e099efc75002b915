//! The operator's decisions, as pure functions of a resource and what was observed.
//!
//! Nothing here talks to the API server or waits: the runtime crate (`finflow-operator`)
//! reads the cluster, calls these, and writes what they return. The crate depends on
//! no Kubernetes client and no async runtime, so the compiler keeps that direction.
//!
//! - [`rollout`]: the blue-green engine (order, gates, promotion, observation window,
//!   rollback and cascade, the schema barrier); [`graph`]: deploy and rollback order;
//!   [`analysis`]: judging the sidecars' traffic figures; [`reconcile`]: one FinService
//!   reconcile as values (what was read, what to probe, the plan, the Events).
//! - [`finservice`], [`messagequeue`], [`rediscache`]: the objects each resource should
//!   own and the status it should report; [`conditions`]: conditions whose transition
//!   times move only when a status does.
//! - [`inject`]: the sidecar in front of the app; [`listmap`]: keyed lists merged, the
//!   user's entries winning; [`meta`]: owned metadata and whether a write is needed;
//!   [`pod_security`]: the `restricted` Pod Security Standard; [`rbac`]: every
//!   permission the operator holds; [`dns`]: the cluster's DNS domain.

pub use finflow_crd as crd;

pub mod analysis;
pub mod conditions;
pub mod dns;
pub mod finservice;
pub mod graph;
pub mod inject;
pub mod listmap;
pub mod messagequeue;
pub mod meta;
pub mod pod_security;
pub mod rbac;
pub mod reconcile;
pub mod rediscache;
pub mod rollout;
