//! The legacy HTTP+SSE transport (MCP 2024-11-05), for servers that do not
//! speak Streamable HTTP; rmcp 0.11 and later have only the latter.
//!
//! The client opens a `GET` event stream on the server URL; the server's
//! first event, `endpoint`, names the URL to `POST` messages to (it must
//! be on the same origin), and every later `message` event is one JSON-RPC
//! message from the server. rmcp runs the protocol (the initialize
//! handshake, requests, pagination) over this as over any transport.

use eventsource_stream::Eventsource;
use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest_mcp::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use reqwest_mcp::{Client, Url};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::RoleClient;

use super::McpError;
use crate::providers::sse::EventSizeGuard;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LegacyError(String);

pub struct LegacySse {
    client: Client,
    endpoint: Url,
    headers: HeaderMap,
    messages: BoxStream<'static, ServerJsonRpcMessage>,
}

fn failed(e: impl std::fmt::Display) -> McpError {
    McpError::Failed(e.to_string())
}

impl LegacySse {
    /// Opens the event stream and reads the endpoint event. `max_event`
    /// bounds one event's size.
    pub async fn open(
        client: &Client,
        url: &Url,
        headers: HeaderMap,
        max_event: usize,
    ) -> Result<Self, McpError> {
        let response = client
            .get(url.clone())
            .headers(headers.clone())
            .header(ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(failed)?;
        if !response.status().is_success() {
            return Err(failed(format!(
                "GET {url} for an event stream answered {}",
                response.status()
            )));
        }
        let mut guard = EventSizeGuard::new(max_event);
        let mut events = response
            .bytes_stream()
            .map(move |chunk| match chunk {
                Ok(bytes) if guard.admit(&bytes) => Ok(bytes),
                Ok(_) => Err(LegacyError(format!("an event grew past {max_event} bytes"))),
                Err(e) => Err(LegacyError(e.to_string())),
            })
            .eventsource();
        let endpoint = loop {
            match events.next().await {
                Some(Ok(event)) if event.event == "endpoint" => {
                    break url.join(event.data.trim()).map_err(failed)?
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(failed(e)),
                None => return Err(failed("the event stream ended before its endpoint event")),
            }
        };
        if endpoint.origin() != url.origin() {
            return Err(McpError::Refused(format!(
                "the server's message endpoint {endpoint} is not on the origin of {url}"
            )));
        }
        let messages = events
            .take_while(|e| std::future::ready(e.is_ok()))
            .filter_map(|event| async move {
                let event = event.ok()?;
                if event.event != "message" && !event.event.is_empty() {
                    return None;
                }
                match serde_json::from_str::<ServerJsonRpcMessage>(&event.data) {
                    Ok(message) => Some(message),
                    Err(e) => {
                        tracing::debug!(error = %e, "an MCP server sent a message that is not JSON-RPC");
                        None
                    }
                }
            })
            .boxed();
        Ok(Self {
            client: client.clone(),
            endpoint,
            headers,
            messages,
        })
    }
}

impl Transport<RoleClient> for LegacySse {
    type Error = LegacyError;

    fn send(
        &mut self,
        item: ClientJsonRpcMessage,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        let request = self
            .client
            .post(self.endpoint.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&item).unwrap_or_default());
        async move {
            let response = request
                .send()
                .await
                .map_err(|e| LegacyError(e.to_string()))?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(LegacyError(format!(
                    "the message endpoint answered {}",
                    response.status()
                )))
            }
        }
    }

    fn receive(
        &mut self,
    ) -> impl std::future::Future<Output = Option<ServerJsonRpcMessage>> + Send {
        self.messages.next()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}
