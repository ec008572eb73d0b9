//! The listener loop: hyper's HTTP/1.1 server with the settings axum's own
//! `serve` does not expose. TCP_NODELAY on every accepted socket, a
//! header-read timeout that really fires (hyper needs a timer for that),
//! header caps, and graceful shutdown that lets in-flight streams finish.
//!
//! Thread per core: `server.threads` threads each run a single-threaded
//! runtime. The caller's runtime accepts and hands each new connection,
//! in turn, to one of them (itself included), which then serves it for
//! its whole life. A request's tasks, its upstream connection (the
//! provider clients keep one pool per thread) and its timers all live on
//! that one thread, so serving it wakes no other thread unless it needs
//! a shared pool (a store lookup, Redis); a work-stealing runtime would
//! wake one at nearly every hand-over between tasks.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;

#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    pub header_read_timeout: Duration,
    /// The JSON 431 limits are enforced by middleware; hyper's hard caps are
    /// set above them so that middleware sees (and explains) most cases.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub shutdown_grace: Duration,
    /// Serving threads, the caller's included (at least 1).
    pub threads: usize,
}

impl From<&ServerConfig> for ServerOptions {
    fn from(s: &ServerConfig) -> Self {
        Self {
            header_read_timeout: s.header_read_timeout,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            shutdown_grace: s.shutdown_grace,
            threads: s.threads,
        }
    }
}

/// How long shutdown waits for the work its last requests left behind
/// (their settlements) once their connections are closed.
const BACKGROUND_WAIT: Duration = Duration::from_secs(10);

/// The connections one thread serves.
struct Connections {
    http: hyper::server::conn::http1::Builder,
    graceful: GracefulShutdown,
    app: Router,
    /// The connections' tasks, so that those still open when the grace
    /// period ends can be ended while the runtime still runs.
    tasks: Mutex<JoinSet<()>>,
    /// Work a request leaves behind when it ends (its settlement), which
    /// must finish before the runtime it runs on stops.
    background: TaskTracker,
}

impl Connections {
    fn new(app: Router, options: &ServerOptions, background: TaskTracker) -> Self {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            .max_buf_size((options.max_header_bytes * 4).max(64 << 10))
            .max_headers(options.max_headers * 4);
        Self {
            http,
            graceful: GracefulShutdown::new(),
            app,
            tasks: Mutex::default(),
            background,
        }
    }

    /// Serves `stream` on a task of the current runtime.
    fn serve(&self, stream: TcpStream) {
        let service = TowerToHyperService::new(self.app.clone());
        let connection = self.http.serve_connection(TokioIo::new(stream), service);
        let connection = self.graceful.watch(connection);
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        // The ended ones are let go of here, so the set holds only open
        // connections.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }

    /// Lets the open connections finish their requests, for at most
    /// `grace`, then ends those still open, and waits for the work their
    /// requests left behind. False if the grace period ran out.
    async fn drain(self, grace: Duration) -> bool {
        let drained = tokio::select! {
            () = self.graceful.shutdown() => true,
            () = tokio::time::sleep(grace) => false,
        };
        // Ended here, while the runtime runs: a request dropped with its
        // connection settles its charge from what it delivered, on this
        // runtime. Dropped with the runtime instead, its settlement would
        // never run, and the sweeper would charge its hold in full.
        let mut tasks = self
            .tasks
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        tasks.shutdown().await;
        self.background.close();
        if tokio::time::timeout(BACKGROUND_WAIT, self.background.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "settlements still running {BACKGROUND_WAIT:?} after the last connection closed; the sweeper resolves what they leave"
            );
        }
        drained
    }
}

/// A serving thread: the connections handed to it go down `handoff`;
/// `done` fires once it has drained them after the hand-over stopped. Its
/// runtime keeps running until `release` fires or is dropped: sockets
/// that it opened for shared pools (a Postgres connection, say) may serve
/// other threads' requests until the very end.
struct Worker {
    handoff: mpsc::UnboundedSender<std::net::TcpStream>,
    done: oneshot::Receiver<bool>,
    release: oneshot::Sender<()>,
}

impl Worker {
    fn start(
        index: usize,
        app: Router,
        options: ServerOptions,
        background: TaskTracker,
    ) -> std::io::Result<Self> {
        let (handoff, mut incoming) = mpsc::unbounded_channel::<std::net::TcpStream>();
        let (finished, done) = oneshot::channel();
        let (release, released) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("mume-serve-{index}"))
            .spawn(move || {
                // Built (and dropped) on this thread: a runtime must not be
                // dropped inside another one. If it cannot be built, the
                // hand-over fails and the accepting thread serves instead.
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::warn!("serving thread {index} cannot start: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let connections = Connections::new(app, &options, background);
                    while let Some(stream) = incoming.recv().await {
                        // Registered with this thread's reactor from here on.
                        match TcpStream::from_std(stream) {
                            Ok(stream) => connections.serve(stream),
                            Err(e) => tracing::debug!("cannot adopt a connection: {e}"),
                        }
                    }
                    let _ = finished.send(connections.drain(options.shutdown_grace).await);
                    let _ = released.await;
                });
            })?;
        Ok(Self {
            handoff,
            done,
            release,
        })
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits up to
/// the grace period for open connections to finish their requests, ends
/// the rest, and waits for the `background` work (the settlements) of the
/// requests it ended.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServerOptions,
    background: TaskTracker,
    shutdown: impl Future<Output = ()>,
) {
    let mut workers = Vec::new();
    for index in 1..options.threads.max(1) {
        match Worker::start(index, app.clone(), options, background.clone()) {
            Ok(worker) => workers.push(worker),
            Err(e) => {
                tracing::warn!("cannot start serving thread {index}: {e}; serving on fewer");
                break;
            }
        }
    }
    let local = Connections::new(app, &options, background);
    let mut turn = 0usize;
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("set_nodelay failed: {e}");
        }
        turn = (turn + 1) % (workers.len() + 1);
        let Some(worker) = turn.checked_sub(1).and_then(|i| workers.get(i)) else {
            local.serve(stream);
            continue;
        };
        match stream.into_std() {
            Ok(stream) => {
                if let Err(back) = worker.handoff.send(stream) {
                    // That thread is gone (its runtime could not be built,
                    // or it panicked): serve the connection here instead.
                    if let Ok(stream) = TcpStream::from_std(back.0) {
                        local.serve(stream);
                    }
                }
            }
            Err(e) => tracing::debug!("cannot hand a connection over: {e}"),
        }
    }
    drop(listener);
    tracing::info!(
        "shutting down: no new connections; waiting up to {:?} for in-flight requests",
        options.shutdown_grace
    );
    // Closing the hand-over channels starts every thread's own drain.
    let mut waits = Vec::new();
    let mut releases = Vec::new();
    for worker in workers {
        drop(worker.handoff);
        waits.push(worker.done);
        releases.push(worker.release);
    }
    let mut drained = local.drain(options.shutdown_grace).await;
    for done in waits {
        drained &= done.await.unwrap_or(false);
    }
    for release in releases {
        let _ = release.send(());
    }
    if drained {
        tracing::info!("all connections closed");
    } else {
        tracing::warn!("grace period over; closing remaining connections");
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use axum::routing::get;

    use super::*;

    fn options(threads: usize) -> ServerOptions {
        ServerOptions {
            header_read_timeout: Duration::from_secs(5),
            max_header_bytes: 16 << 10,
            max_headers: 100,
            shutdown_grace: Duration::from_secs(5),
            threads,
        }
    }

    /// Which thread served the request.
    async fn thread_name() -> String {
        std::thread::current().name().unwrap_or("?").to_string()
    }

    /// A client with one connection of its own (no pool shared with the
    /// others), kept alive between its requests.
    fn one_connection() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(1)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn connections_are_dealt_out_to_every_thread_and_stay_on_theirs() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let app = Router::new().route("/", get(thread_name));
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve(
            listener,
            app,
            options(3),
            TaskTracker::new(),
            async {
                let _ = stopped.await;
            },
        ));
        let here = std::thread::current().name().unwrap_or("?").to_string();

        let mut seen = HashSet::new();
        for _ in 0..6 {
            let client = one_connection();
            let first = client.get(&url).send().await.unwrap().text().await.unwrap();
            for _ in 0..3 {
                let again = client.get(&url).send().await.unwrap().text().await.unwrap();
                assert_eq!(again, first, "a connection moved between threads");
            }
            seen.insert(first);
        }
        let expected: HashSet<String> = [here, "mume-serve-1".into(), "mume-serve-2".into()]
            .into_iter()
            .collect();
        assert_eq!(seen, expected);

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("every thread drains and serve returns")
            .unwrap();
    }

    #[tokio::test]
    async fn a_request_in_flight_on_another_thread_finishes_after_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/slow", listener.local_addr().unwrap());
        let app = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                thread_name().await
            }),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve(
            listener,
            app,
            options(2),
            TaskTracker::new(),
            async {
                let _ = stopped.await;
            },
        ));
        // The first connection goes to the other thread.
        let pending = tokio::spawn(one_connection().get(&url).send());
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        let reply = pending.await.unwrap().unwrap();
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.text().await.unwrap(), "mume-serve-1");
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("serve returns once the thread has drained")
            .unwrap();
    }
}
