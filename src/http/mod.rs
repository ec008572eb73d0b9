//! The HTTP layer: axum handlers that extract, call the domain once, and
//! build a response. No routing, billing or translation logic lives here.

pub mod account;
pub mod admin;
pub mod chat;
pub mod error;
pub mod extract;
pub mod health;
pub mod models;
pub mod responses;
pub mod sse;
pub mod views;
