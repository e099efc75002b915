//! What FinFlow's parts say to each other, defined once and read by both sides: the
//! six services, their ports, dependencies and gateway routes ([`catalog`]), the
//! identity a sidecar forwards and the token claims it verifies ([`identity`]), money
//! as it travels and is stored ([`money`]), E's KYC and AML decisions ([`kyc`]), A's account events ([`user`]), the names of the events services publish
//! ([`events`]) and the payments they carry ([`payment`]), a wallet as B shows it and
//! the transfers C asks B for ([`wallet`]), a credential A seals for D alone
//! (`sealed`, feature `sealing`), and the sidecar's configuration
//! file that the operator writes ([`sidecar`]). No IO: the operator's pure core links
//! this crate too.

pub mod catalog;
pub mod events;
pub mod identity;
pub mod kyc;
pub mod money;
pub mod payment;
#[cfg(feature = "sealing")]
pub mod sealed;
pub mod sidecar;
pub mod user;
pub mod wallet;
