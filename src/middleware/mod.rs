//! Cross-cutting layers, one concern each. `app` stacks them in order.

pub mod limits;
pub mod request_id;
