//! The HTTP client under every provider's transport: hyper_util's pooled
//! client over rustls (webpki's roots and the provider's `ca_file`, HTTP/2
//! offered by ALPN), with TCP_NODELAY, TCP keepalive, a connect timeout and
//! no redirects (hyper follows none: an upstream's redirect never takes the
//! gateway's key elsewhere). One pool per provider and serving thread, so
//! that a request's upstream connection is driven by the runtime of the
//! thread serving it (see server.rs).
//!
//! The proxy comes from the environment, read once at start: `HTTP_PROXY`
//! for http upstreams, `HTTPS_PROXY` for https ones, `ALL_PROXY` for both
//! when the specific one is unset (upper case first, then lower case), and
//! `NO_PROXY` to exempt hosts, domains and networks. The variables are
//! ignored when `REQUEST_METHOD` is set (a CGI environment, where
//! `HTTP_PROXY` can come from a request header). An http upstream behind a
//! proxy is asked through it in absolute form; an https one through a
//! `CONNECT` tunnel, with TLS to the upstream inside it.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use thread_local::ThreadLocal;
use tokio::net::TcpStream;
use tower_service::Service;

type Body = Full<Bytes>;
type Https = HttpsConnector<HttpConnector>;
type BoxError = Box<dyn StdError + Send + Sync>;

/// How long an idle upstream connection stays in the pool.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle upstream connections kept per host and thread.
const POOL_IDLE_PER_HOST: usize = 1024;
/// TCP keepalive: first probe after this much idleness, then this often.
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);
/// Longest time sent data may stay unacknowledged before the connection
/// is dropped (TCP_USER_TIMEOUT, where the system has it).
#[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// The proxy settings of the environment, as `env` reads them.
pub struct Proxies(Matcher);

impl Proxies {
    /// `env` looks up an environment variable (tests inject their own).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let first = |names: [&str; 2]| names.into_iter().find_map(env).unwrap_or_default();
        if env("REQUEST_METHOD").is_some() {
            return Self(Matcher::builder().build());
        }
        Self(
            Matcher::builder()
                .all(first(["ALL_PROXY", "all_proxy"]))
                .http(first(["HTTP_PROXY", "http_proxy"]))
                .https(first(["HTTPS_PROXY", "https_proxy"]))
                .no(first(["NO_PROXY", "no_proxy"]))
                .build(),
        )
    }
}

/// How requests to one upstream travel.
enum Route {
    Direct,
    /// An http upstream through a proxy: the proxy gets the request in
    /// absolute form, with its credentials, if any, in `Proxy-Authorization`.
    Forward {
        proxy: Uri,
        auth: Option<HeaderValue>,
    },
    /// An https upstream through a proxy's `CONNECT` tunnel.
    Tunnel {
        proxy: Uri,
        auth: Option<HeaderValue>,
    },
}

/// The client of one upstream host.
pub struct HttpClient {
    route: Route,
    connect_timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
    per_thread: ThreadLocal<Pool>,
}

impl HttpClient {
    /// A client for requests to `upstream`'s scheme and host, trusting
    /// `ca_certificates` besides the public roots. Fails on a SOCKS proxy,
    /// which it does not speak, and on a TLS setup error.
    pub fn new(
        upstream: &Uri,
        proxies: &Proxies,
        connect_timeout: Duration,
        ca_certificates: &[CertificateDer<'static>],
    ) -> Result<Self, String> {
        let route = match proxies.0.intercept(upstream) {
            None => Route::Direct,
            Some(proxy) => {
                let (uri, auth) = (proxy.uri().clone(), proxy.basic_auth().cloned());
                match (uri.scheme_str(), upstream.scheme_str()) {
                    (Some("http" | "https"), Some("https")) => Route::Tunnel { proxy: uri, auth },
                    (Some("http" | "https"), _) => Route::Forward { proxy: uri, auth },
                    _ => {
                        return Err(format!(
                            "the environment's proxy for {} is {uri}, a SOCKS proxy, which the gateway does not support: name an HTTP proxy, or exempt the host in NO_PROXY",
                            upstream.host().unwrap_or_default()
                        ))
                    }
                }
            }
        };
        let tls = tls(ca_certificates).map_err(|e| format!("TLS: {e}"))?;
        Ok(Self {
            route,
            connect_timeout,
            tls: Arc::new(tls),
            per_thread: ThreadLocal::new(),
        })
    }

    /// The proxy requests go through, if any (for the startup log).
    pub fn proxy(&self) -> Option<&Uri> {
        match &self.route {
            Route::Direct => None,
            Route::Forward { proxy, .. } | Route::Tunnel { proxy, .. } => Some(proxy),
        }
    }

    /// Sends `request` on this thread's pool.
    pub fn send(&self, mut request: Request<Body>) -> ResponseFuture {
        let pool = self
            .per_thread
            .get_or(|| Pool::new(&self.route, self.connect_timeout, &self.tls));
        match pool {
            Pool::Direct(client) => client.request(request),
            Pool::Forward(client, auth) => {
                if let Some(auth) = auth {
                    let headers = request.headers_mut();
                    headers.insert(http::header::PROXY_AUTHORIZATION, auth.clone());
                }
                client.request(request)
            }
            Pool::Tunnel(client) => client.request(request),
        }
    }
}

/// One thread's connection pool for one upstream, by route.
enum Pool {
    Direct(Client<Timed<Lean>, Body>),
    Forward(Client<Timed<ToProxy>, Body>, Option<HeaderValue>),
    Tunnel(Client<Timed<HttpsConnector<Tunnel<Https>>>, Body>),
}

impl Pool {
    fn new(route: &Route, connect_timeout: Duration, tls: &rustls::ClientConfig) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        // A peer that vanished (a dropped NAT entry, a dead host) is found
        // by TCP keepalive on an idle pooled connection, and by the
        // unacknowledged-data timeout on a busy one.
        tcp.set_keepalive(Some(TCP_KEEPALIVE));
        tcp.set_keepalive_interval(Some(TCP_KEEPALIVE));
        tcp.set_keepalive_retries(Some(3));
        #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
        tcp.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
        // The TLS layer above decides the scheme.
        tcp.enforce_http(false);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .pool_timer(TokioTimer::new());
        let timed = |inner| Timed {
            inner,
            limit: connect_timeout,
        };
        match route {
            Route::Direct => Pool::Direct(builder.build(timed(Lean(https(tcp, tls, true))))),
            Route::Forward { proxy, auth } => {
                let connector = ToProxy {
                    proxy: proxy.clone(),
                    inner: https(tcp, tls, false),
                };
                Pool::Forward(
                    builder.build(Timed {
                        inner: connector,
                        limit: connect_timeout,
                    }),
                    auth.clone(),
                )
            }
            Route::Tunnel { proxy, auth } => {
                let mut tunnel = Tunnel::new(proxy.clone(), https(tcp, tls, false));
                if let Some(auth) = auth {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let connector = HttpsConnectorBuilder::new()
                    .with_tls_config(tls.clone())
                    .https_only()
                    .enable_http1()
                    .enable_http2()
                    .wrap_connector(tunnel);
                Pool::Tunnel(builder.build(Timed {
                    inner: connector,
                    limit: connect_timeout,
                }))
            }
        }
    }
}

/// TLS where the URI says https, plain TCP where it says http. Upstreams
/// are offered HTTP/2 by ALPN; proxies (`upstream` false) only HTTP/1.1.
fn https(tcp: HttpConnector, tls: &rustls::ClientConfig, upstream: bool) -> Https {
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1();
    match upstream {
        true => builder.enable_http2().wrap_connector(tcp),
        false => builder.wrap_connector(tcp),
    }
}

/// The TLS configuration: ring's primitives, TLS 1.2 and 1.3, webpki's
/// roots and the provider's own CAs.
fn tls(ca_certificates: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for certificate in ca_certificates {
        roots.add(certificate.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A connector whose whole connection (the lookup, the TCP connect, a
/// proxy's CONNECT, the TLS handshake) must be made within `limit`, the
/// provider's `connect_timeout`: the TCP connector bounds only its own
/// part, so a port that accepts and a handshake that never ends waited for
/// the whole request's time limit.
#[derive(Clone)]
struct Timed<C> {
    inner: C,
    limit: Duration,
}

impl<C> Service<Uri> for Timed<C>
where
    C: Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        let connecting = self.inner.call(destination);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(format!("no connection made within {limit:?}").into()),
            }
        })
    }
}

/// The direct route's connector: hyper-rustls's, with a TLS session
/// (about 1 KiB of state) moved to the heap, so that a plain-TCP upstream
/// connection, which lives as long as the stream it carries, does not hold
/// room for one.
#[derive(Clone)]
struct Lean(Https);

type HttpsStream = MaybeHttpsStream<TokioIo<TcpStream>>;

impl Service<Uri> for Lean {
    type Response = LeanStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<LeanStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        let connecting = self.0.call(destination);
        Box::pin(async move {
            Ok(match connecting.await? {
                MaybeHttpsStream::Http(tcp) => LeanStream::Plain(tcp),
                tls => LeanStream::Tls(Box::new(tls)),
            })
        })
    }
}

/// A connection made by [`Lean`].
enum LeanStream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<HttpsStream>),
}

/// What hyper needs of a connection, as one trait object.
trait Io: Read + Write + Unpin {}
impl<T: Read + Write + Unpin> Io for T {}

impl LeanStream {
    fn io(self: Pin<&mut Self>) -> Pin<&mut dyn Io> {
        match self.get_mut() {
            LeanStream::Plain(tcp) => Pin::new(tcp),
            LeanStream::Tls(tls) => Pin::new(&mut **tls),
        }
    }
}

impl Connection for LeanStream {
    fn connected(&self) -> Connected {
        match self {
            LeanStream::Plain(tcp) => tcp.connected(),
            LeanStream::Tls(tls) => tls.connected(),
        }
    }
}

impl Read for LeanStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl Write for LeanStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            LeanStream::Plain(tcp) => tcp.is_write_vectored(),
            LeanStream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }
}

/// Connects to the proxy whatever the destination, and marks the
/// connection as proxied so that hyper writes requests in absolute form.
#[derive(Clone)]
struct ToProxy {
    proxy: Uri,
    inner: Https,
}

impl Service<Uri> for ToProxy {
    type Response = Proxied<HttpsStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, _destination: Uri) -> Self::Future {
        let connecting = self.inner.call(self.proxy.clone());
        Box::pin(async move { connecting.await.map(Proxied) })
    }
}

/// A connection to a forward proxy.
struct Proxied<T>(T);

impl<T: Connection> Connection for Proxied<T> {
    fn connected(&self) -> Connected {
        self.0.connected().proxy(true)
    }
}

impl<T: Read + Unpin> Read for Proxied<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Proxied<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

/// An answer whose status and headers have arrived; the body has not been
/// read.
pub type Answer = Response<Incoming>;

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment variable: name, value.
    type Var = (&'static str, &'static str);

    /// The proxy `vars` give requests to `upstream`.
    fn proxy_of(vars: &[Var], upstream: &str) -> Result<Option<String>, String> {
        let env = |name: &str| {
            let found = vars.iter().find(|(k, _)| *k == name);
            found.map(|(_, v)| v.to_string())
        };
        let upstream = upstream.parse().expect("a URI");
        let proxies = Proxies::from_env(&env);
        let client = HttpClient::new(&upstream, &proxies, Duration::from_secs(1), &[])?;
        Ok(client.proxy().map(Uri::to_string))
    }

    #[test]
    fn the_environment_names_a_proxy_per_scheme_and_no_proxy_exempts() {
        let both = [
            ("HTTP_PROXY", "http://p1:3128"),
            ("HTTPS_PROXY", "http://p2:3128"),
        ];
        // Upper case before lower case; ALL_PROXY where the scheme's is unset.
        let mixed = [
            ("https_proxy", "http://lower:1"),
            ("HTTPS_PROXY", "http://upper:1"),
            ("all_proxy", "http://all:1"),
        ];
        // Credentials become a header, never part of the proxy's address.
        let secret = [("HTTPS_PROXY", "http://user:pw@p:1")];
        let exempt = [
            ("ALL_PROXY", "http://p:1"),
            ("NO_PROXY", "openai.com, 10.0.0.0/8"),
        ];
        let cgi = [("HTTP_PROXY", "http://p:1"), ("REQUEST_METHOD", "GET")];
        let cases: [(&[Var], &str, Option<&str>); 10] = [
            (&[], "https://api.openai.com/v1", None),
            (&both, "http://vllm:8000/v1", Some("http://p1:3128/")),
            (&both, "https://api.openai.com/v1", Some("http://p2:3128/")),
            (&mixed, "https://api.openai.com/v1", Some("http://upper:1/")),
            (&mixed, "http://vllm:8000/v1", Some("http://all:1/")),
            (&secret, "https://api.openai.com/v1", Some("http://p:1/")),
            (&exempt, "https://api.openai.com/v1", None),
            (&exempt, "http://10.1.2.3:8000/v1", None),
            (&exempt, "https://api.anthropic.com/v1", Some("http://p:1/")),
            (&cgi, "http://vllm:8000/v1", None),
        ];
        for (vars, upstream, proxy) in cases {
            let want = Ok(proxy.map(str::to_string));
            assert_eq!(proxy_of(vars, upstream), want, "{vars:?} {upstream}");
        }
    }

    #[test]
    fn a_socks_proxy_is_refused_with_what_to_do() {
        let vars = [("ALL_PROXY", "socks5://p:1080")];
        let error = proxy_of(&vars, "https://api.openai.com/v1").unwrap_err();
        assert!(
            error.contains("SOCKS") && error.contains("NO_PROXY"),
            "{error}"
        );
    }
}
