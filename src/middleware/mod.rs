//! Cross-cutting layers, one concern each. `app` stacks them in order.

pub mod auth;
pub mod limits;
pub mod request_id;
