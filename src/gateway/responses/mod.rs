//! The Responses API served through Chat Completions (issue 5, in
//! progress: the translation and the streaming events are here and tested;
//! the endpoint and storage are not wired yet, so nothing serves
//! `/responses`).
//!
//! `translate.rs`: a Responses request as a Chat Completions body
//! (`to_chat`), and a `chat.completion` as a Response object
//! (`to_response`). `stream.rs`: chat chunks as Responses streaming events,
//! in the SDKs' order (`ResponseStream`).

pub mod stream;
pub mod translate;
