//! Upstreams over TLS: a server behind a private CA is reached when the
//! provider's `ca_file` names that CA, over HTTP/2 when the server offers it
//! by ALPN, streamed and not; without the CA its certificate is refused and
//! the provider is unavailable. The server is an in-process axum app behind
//! rustls on 127.0.0.1, its certificate (for localhost) signed by the test
//! CA in tests/it/certs.

use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::routing::post;
use axum::Router;
use http::Version;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::support::gateway::UP_KEY_ENV;
use crate::support::upstream::{answer, completion, respond, sse_response};
use crate::support::{
    chat_body, content_of, error_reply, post_chat, GatewayConfig, Sse, TestGateway, UP_KEY,
};

const CERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/certs");

/// An HTTPS upstream that records the HTTP version of each request.
struct TlsUpstream {
    port: u16,
    versions: Arc<Mutex<Vec<Version>>>,
    task: JoinHandle<()>,
}

impl TlsUpstream {
    async fn start() -> Self {
        let certificates = CertificateDer::pem_file_iter(format!("{CERTS}/cert.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(format!("{CERTS}/key.pem")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certificates, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let versions = Arc::new(Mutex::new(Vec::new()));
        let record = versions.clone();
        let chat = move |request: Request| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(request.version());
                let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                if body["stream"] == true {
                    sse_response(answer(&["over", " TLS"]), None)
                } else {
                    let text = completion("over TLS").to_string();
                    let headers = [("content-type".to_string(), "application/json".to_string())];
                    respond(200, &headers, text.into())
                }
            }
        };
        let app: Router = Router::new().route("/v1/chat/completions", post(chat));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let service = TowerToHyperService::new(app);
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            port,
            versions,
            task,
        }
    }

    fn base_url(&self) -> String {
        format!("https://localhost:{}/v1", self.port)
    }

    fn versions(&self) -> Vec<Version> {
        self.versions.lock().unwrap().clone()
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_server_behind_a_private_ca_is_reached_over_http2_when_ca_file_names_it() {
    let upstream = TlsUpstream::start().await;
    let config =
        GatewayConfig::openai(&upstream.base_url()).provider("ca_file", format!("{CERTS}/ca.pem"));
    let gw = TestGateway::start_with_env(&config.toml(), &[(UP_KEY_ENV, UP_KEY)]).await;

    let response = post_chat(&gw, &chat_body("up/m", false)).await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "over TLS");

    let response = post_chat(&gw, &chat_body("up/m", true)).await;
    assert_eq!(response.status(), 200);
    let frames = Sse::new(response).rest().await;
    assert_eq!(content_of(&frames), "over TLS");
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]"));

    assert_eq!(
        upstream.versions(),
        [Version::HTTP_2, Version::HTTP_2],
        "ALPN picked HTTP/2 for both calls"
    );
}

#[tokio::test]
async fn without_its_ca_the_servers_certificate_is_refused() {
    let upstream = TlsUpstream::start().await;
    let gw = TestGateway::for_upstream(&upstream.base_url()).await;

    let reply = error_reply(post_chat(&gw, &chat_body("up/m", false)).await).await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(
        reply.error["code"], "provider_unreachable",
        "{}",
        reply.text
    );
    let message = reply.error["message"].as_str().unwrap();
    assert!(
        message.starts_with("Provider up "),
        "the message names the provider: {message}"
    );
    assert!(upstream.versions().is_empty(), "no request was sent to it");
}
