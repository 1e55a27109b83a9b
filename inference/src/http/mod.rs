//! The HTTP layer: everything between a socket and the engine.
//!
//! [`server`] binds the listener, loads the model in the background, mounts the routes and
//! drains on SIGTERM. Requests arrive at [`predict`] (the seed's `/predict`), [`v2`] (the Open
//! Inference Protocol, its binary extension in `v2::wire`) or [`ops`] (health, readiness, version, metrics); the first two read and
//! decode their images through [`request`], under the limits of [`gates`], and queue them on the
//! engine, dropping the work when [`peer`] sees the client go. [`state`] is what every handler
//! shares, and [`error`] the one error type they all answer with.

pub mod error;
pub mod gates;
pub mod ops;
pub mod peer;
pub mod predict;
pub mod request;
pub mod server;
pub mod state;
pub mod v2;
