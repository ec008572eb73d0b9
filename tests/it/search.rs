//! The web search backends (issue 8 groundwork) against local fakes that
//! speak each API's format: SearXNG and Brave (GET), Tavily and Exa (POST).
//! Checks what is sent (only the operator's key, in each API's header;
//! domain filters), what is read back, and the error paths.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Query;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::Router;
use mume_gateway::search::{
    SearchBackendKind, SearchConfig, SearchError, SearchQuery, Searcher, RESULT_BYTES,
};
use serde_json::{json, Value};

use crate::support::upstream::{respond, Upstream};

/// What a fake GET backend saw: its query parameters and headers.
type Seen = Arc<Mutex<Vec<(HashMap<String, String>, HeaderMap)>>>;

/// A GET backend at `path` answering `status` with `body` after `delay`.
async fn get_backend(path: &str, status: u16, body: Value, delay: Duration) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = Router::new().route(
        path,
        get(
            move |Query(q): Query<HashMap<String, String>>, headers: HeaderMap| {
                let (record, body) = (record.clone(), body.clone());
                async move {
                    record.lock().unwrap().push((q, headers));
                    tokio::time::sleep(delay).await;
                    respond(status, &[], Body::from(body.to_string()))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

fn config(backend: SearchBackendKind, url: &str, key_env: Option<&str>) -> SearchConfig {
    SearchConfig {
        backend,
        url: url.to_string(),
        api_key_env: key_env.map(str::to_string),
        timeout: Duration::from_millis(500),
        max_results: 5,
        price: 5_000_000,
        max_searches: 3,
    }
}

fn env(name: &str) -> Option<String> {
    (name == "SEARCH_KEY").then(|| "search-secret-123".to_string())
}

fn query(text: &str) -> SearchQuery {
    SearchQuery {
        query: text.into(),
        max_results: 2,
        ..Default::default()
    }
}

#[tokio::test]
async fn searxng_results_are_read_filtered_and_capped() {
    let body = json!({"query": "rust", "results": [
        {"title": "Rust 2026", "url": "https://blog.rust-lang.org/2026", "content": "The release."},
        {"title": "Elsewhere", "url": "https://other.example/x", "content": "Not allowed."},
        {"title": "Docs", "url": "https://doc.rust-lang.org/std", "content": "The std docs."},
        {"title": "Third", "url": "https://www.rust-lang.org/", "content": "Home."},
        {"title": "No URL"}
    ]});
    let (url, seen) = get_backend("/search", 200, body, Duration::ZERO).await;
    let searcher = Searcher::build(&config(SearchBackendKind::Searxng, &url, None), &env);
    let mut q = query("rust news");
    q.allowed_domains = vec!["rust-lang.org".into()];
    let results = searcher.search(&q).await.unwrap();
    let urls: Vec<&str> = results.iter().map(|r| r.url.as_str()).collect();
    assert_eq!(
        urls,
        [
            "https://blog.rust-lang.org/2026",
            "https://doc.rust-lang.org/std"
        ]
    );
    assert_eq!(results[0].snippet, "The release.");
    let (params, headers) = seen.lock().unwrap()[0].clone();
    assert_eq!(params["format"], "json");
    assert_eq!(params["q"], "rust news site:rust-lang.org");
    assert!(
        headers.get("authorization").is_none(),
        "no key configured, none sent"
    );
}

#[tokio::test]
async fn long_results_are_cut_to_what_a_hold_counts_on() {
    let body = json!({"results": [
        {"title": "T".repeat(500), "url": "https://a.example/", "content": format!("x{}", "é".repeat(5000))},
        {"title": "Long URL", "url": format!("https://long.example/{}", "a".repeat(500)), "content": "left out"},
        {"title": "Short", "url": "https://b.example/", "content": "kept whole"}
    ]});
    let (url, _) = get_backend("/search", 200, body, Duration::ZERO).await;
    let searcher = Searcher::build(&config(SearchBackendKind::Searxng, &url, None), &env);
    let results = searcher.search(&query("rust")).await.unwrap();
    let urls: Vec<&str> = results.iter().map(|r| r.url.as_str()).collect();
    assert_eq!(
        urls,
        ["https://a.example/", "https://b.example/"],
        "a URL is never cut: a result with one too long is left out"
    );
    assert_eq!(results[0].title, "T".repeat(150));
    assert_eq!(
        results[0].snippet,
        format!("x{}", "é".repeat(499)),
        "cut within 1,000 bytes, at a character boundary"
    );
    assert_eq!(results[1].snippet, "kept whole");
    for r in &results {
        assert!(r.title.len() + r.url.len() + r.snippet.len() + 20 <= RESULT_BYTES);
    }
}

#[tokio::test]
async fn brave_gets_the_operator_key_in_its_header_and_nothing_else() {
    let body = json!({"web": {"results": [
        {"title": "A", "url": "https://a.example/", "description": "alpha"},
        {"title": "B", "url": "https://b.example/", "description": "beta"}
    ]}});
    let (url, seen) = get_backend("/res/v1/web/search", 200, body, Duration::ZERO).await;
    let searcher = Searcher::build(
        &config(SearchBackendKind::Brave, &url, Some("SEARCH_KEY")),
        &env,
    );
    let results = searcher.search(&query("alpha")).await.unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[1].snippet, "beta");
    let (params, headers) = seen.lock().unwrap()[0].clone();
    assert_eq!(params["q"], "alpha");
    assert_eq!(params["count"], "2");
    assert_eq!(headers["x-subscription-token"], "search-secret-123");
    assert!(headers.get("authorization").is_none());
    assert!(!headers.contains_key("x-api-key"));
}

#[tokio::test]
async fn tavily_and_exa_are_asked_with_their_own_json_and_key_headers() {
    for (kind, header, answer) in [
        (
            SearchBackendKind::Tavily,
            "authorization",
            json!({"results": [{"title": "T", "url": "https://t.example/", "content": "tav"}]}),
        ),
        (
            SearchBackendKind::Exa,
            "x-api-key",
            json!({"results": [{"title": "E", "url": "https://e.example/", "text": "exa"}]}),
        ),
    ] {
        let backend = Upstream::start_at("/search", move |_| {
            let answer = answer.clone();
            async move { respond(200, &[], Body::from(answer.to_string())) }
        })
        .await;
        let root = backend.base_url.trim_end_matches("/v1").to_string();
        let searcher = Searcher::build(&config(kind, &root, Some("SEARCH_KEY")), &env);
        let mut q = query("news");
        q.excluded_domains = vec!["spam.example".into()];
        let results = searcher.search(&q).await.unwrap();
        assert_eq!(results.len(), 1);
        assert!(!results[0].snippet.is_empty());
        let sent = backend.only_request();
        let key = sent.headers[header].to_str().unwrap();
        assert!(key.ends_with("search-secret-123"), "{kind:?}: {key}");
        match kind {
            SearchBackendKind::Tavily => {
                assert_eq!(sent.body["query"], "news");
                assert_eq!(sent.body["max_results"], 2);
                assert_eq!(sent.body["exclude_domains"], json!(["spam.example"]));
            }
            _ => {
                assert_eq!(sent.body["numResults"], 2);
                assert_eq!(sent.body["excludeDomains"], json!(["spam.example"]));
            }
        }
    }
}

#[tokio::test]
async fn failures_are_named_and_never_leak_the_key() {
    let (url, _) = get_backend(
        "/res/v1/web/search",
        429,
        json!({"error": "quota for search-secret-123 exceeded"}),
        Duration::ZERO,
    )
    .await;
    let brave = config(SearchBackendKind::Brave, &url, Some("SEARCH_KEY"));
    match Searcher::build(&brave, &env).search(&query("x")).await {
        Err(SearchError::Failed { status, message }) => {
            assert_eq!(status, 429);
            assert!(!message.contains("search-secret-123"), "{message}");
            assert!(message.contains("[redacted]"));
        }
        other => panic!("{other:?}"),
    }
    // A key that the 200-character cut of the message would split leaves
    // none of itself behind.
    let padding = "x".repeat(183);
    let (url, _) = get_backend(
        "/res/v1/web/search",
        401,
        json!({"error": format!("{padding}search-secret-123")}),
        Duration::ZERO,
    )
    .await;
    let brave = config(SearchBackendKind::Brave, &url, Some("SEARCH_KEY"));
    match Searcher::build(&brave, &env).search(&query("x")).await {
        Err(SearchError::Failed { message, .. }) => {
            assert!(!message.contains("search-"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    let (slow, _) = get_backend(
        "/search",
        200,
        json!({"results": []}),
        Duration::from_secs(3),
    )
    .await;
    let err = Searcher::build(&config(SearchBackendKind::Searxng, &slow, None), &env)
        .search(&query("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, SearchError::Timeout(_)), "{err:?}");

    let (odd, _) = get_backend("/search", 200, json!({"answers": []}), Duration::ZERO).await;
    let err = Searcher::build(&config(SearchBackendKind::Searxng, &odd, None), &env)
        .search(&query("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, SearchError::Invalid(_)), "{err:?}");

    let unset = config(SearchBackendKind::Brave, &url, Some("UNSET_SEARCH_KEY"));
    let err = Searcher::build(&unset, &env)
        .search(&query("x"))
        .await
        .unwrap_err();
    assert_eq!(err, SearchError::NotConfigured("UNSET_SEARCH_KEY".into()));

    let gone = crate::support::upstream::closed_port_url();
    let err = Searcher::build(
        &config(
            SearchBackendKind::Searxng,
            gone.trim_end_matches("/v1"),
            None,
        ),
        &env,
    )
    .search(&query("x"))
    .await
    .unwrap_err();
    assert!(matches!(err, SearchError::Unreachable(_)), "{err:?}");
}
