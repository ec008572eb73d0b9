//! Integration tests: the gateway runs in-process on a real port, its
//! upstreams are real HTTP servers on 127.0.0.1, and the client is reqwest
//! or a raw TCP socket. One binary; one module per feature.

mod support;

mod admin;
mod anthropic;
mod cli;
mod credits;
mod disconnect;
mod errors;
mod https;
mod idempotency;
mod input;
mod keys;
mod keys_cli;
mod limiter_contract;
mod limits;
mod mcp;
mod mcp_tools;
mod mock;
mod models;
mod multi_instance;
mod passthrough;
mod proxy;
mod request_id;
mod responses;
mod responses_api;
mod routing;
mod search;
mod server;
mod shutdown;
mod store_contract;
mod stream_failures;
mod streaming;
mod web_search;
