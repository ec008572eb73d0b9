//! The configured models: resolving a public id, and describing models in
//! OpenAI's list shape with OpenRouter's extra fields.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::error::{ErrorKind, GatewayError};
use crate::config::{per_token_usd_string, ModelConfig};

pub struct Catalog {
    by_id: HashMap<String, Arc<ModelConfig>>,
    ordered: Vec<Arc<ModelConfig>>,
    /// `created` for every model: when this gateway loaded its config.
    created: u64,
}

/// A model id as an error message quotes it: at most 200 characters, so a
/// huge id is not sent back whole.
pub fn shown(id: &str) -> String {
    match id.char_indices().nth(200) {
        Some((cut, _)) => format!("{:?}…", &id[..cut]),
        None => format!("{id:?}"),
    }
}

impl Catalog {
    pub fn new(models: &[ModelConfig], created: u64) -> Self {
        let ordered: Vec<Arc<ModelConfig>> = models.iter().cloned().map(Arc::new).collect();
        let by_id = ordered.iter().map(|m| (m.id.clone(), m.clone())).collect();
        Self {
            by_id,
            ordered,
            created,
        }
    }

    /// The model a request names, or a 400 that says where to look.
    pub fn resolve(&self, id: &str) -> Result<&Arc<ModelConfig>, GatewayError> {
        self.by_id.get(id).ok_or_else(|| {
            GatewayError::bad_request(
                "model_not_found",
                format!("Model {} is not served by this gateway. Use an id from GET /api/v1/models, in provider/model form.", shown(id)),
                Some("model"),
            )
        })
    }

    /// Every model, in config order.
    pub fn models(&self) -> &[Arc<ModelConfig>] {
        &self.ordered
    }

    pub fn list_json(&self) -> Value {
        let data: Vec<Value> = self.ordered.iter().map(|m| self.describe(m)).collect();
        json!({"object": "list", "data": data})
    }

    /// One model, or a 404 (the route is `GET /models/{id}`).
    pub fn model_json(&self, id: &str) -> Result<Value, GatewayError> {
        match self.by_id.get(id) {
            Some(m) => Ok(self.describe(m)),
            None => Err(GatewayError::new(
                ErrorKind::NotFound,
                "model_not_found",
                format!(
                    "Model {} does not exist here. GET /api/v1/models lists the ids.",
                    shown(id)
                ),
            )),
        }
    }

    fn describe(&self, m: &ModelConfig) -> Value {
        json!({
            "id": m.id,
            "object": "model",
            "created": self.created,
            "owned_by": m.provider,
            "name": m.name,
            "context_length": m.context_length,
            "pricing": {
                "prompt": per_token_usd_string(m.prompt_price),
                "completion": per_token_usd_string(m.completion_price),
            },
            "top_provider": {
                "context_length": m.context_length,
                "max_completion_tokens": m.max_output_tokens,
            },
            "architecture": {
                "input_modalities": if m.takes_images { json!(["text", "image"]) } else { json!(["text"]) },
                "output_modalities": ["text"],
            },
        })
    }
}
