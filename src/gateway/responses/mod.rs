//! The Responses API served through Chat Completions (issue 5, in
//! progress: the translation is here and tested; the endpoint, storage and
//! streaming events are not wired yet, so nothing serves `/responses`).
//!
//! `translate.rs`: a Responses request as a Chat Completions body
//! (`to_chat`), and a `chat.completion` as a Response object
//! (`to_response`).

pub mod translate;
