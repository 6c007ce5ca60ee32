//! HTTP bootstrap: bind first (port 0 in tests), learn the port, then serve until cancelled.

use std::net::SocketAddr;

use axum::{
    Router,
    serve::{ListenerExt as _, TapIo},
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// A bound listener waiting for its router.
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    addr: SocketAddr,
}

impl HttpServer {
    /// Binds `addr`, e.g. `0.0.0.0:8080`, or `127.0.0.1:0` for any free port.
    pub async fn bind(addr: &str) -> Result<Self> {
        let bind_err = |source| Error::Bind {
            addr: addr.to_owned(),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        Ok(Self { listener, addr })
    }

    /// The address actually bound (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and lets requests in flight
    /// finish before returning. Handlers can extract the peer address with
    /// `ConnectInfo<SocketAddr>`.
    ///
    /// Logs `listening` with the bound `addr` first: the testkit reads that line to find a
    /// child process's port.
    pub async fn serve(self, router: Router, shutdown: CancellationToken) -> Result<()> {
        let addr = self.addr;
        tracing::info!(%addr, "listening");
        axum::serve(
            without_nagle(self.listener),
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|source| Error::Serve { addr, source })?;
        tracing::info!(%addr, "HTTP server stopped");
        Ok(())
    }
}

/// `listener`, with `TCP_NODELAY` set on every connection it accepts. With Nagle's algorithm
/// on, the kernel holds a response's or a WebSocket frame's last partial segment until the
/// client acknowledges the one before, and a client delays that acknowledgement by up to
/// 40 ms (200 ms on some systems): a 2 KiB frame over a 1,500-byte MTU is two segments, so
/// every such frame would wait. Our writes are whole responses and frames, so nothing is
/// gained by holding them.
fn without_nagle(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    fn set_nodelay(stream: &mut TcpStream) {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY on a connection");
        }
    }
    listener.tap_io(set_nodelay)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::routing::get;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
        sync::oneshot,
    };

    use super::*;
    use axum::serve::Listener as _;

    #[tokio::test]
    async fn port_zero_gets_a_real_port() {
        let server = HttpServer::bind("127.0.0.1:0").await.expect("bind");
        assert_ne!(server.local_addr().port(), 0);
    }

    #[tokio::test]
    async fn accepted_connections_do_not_wait_for_acknowledgements() {
        let server = HttpServer::bind("127.0.0.1:0").await.expect("bind");
        let addr = server.local_addr();
        let mut listener = without_nagle(server.listener);
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (stream, _) = listener.accept().await;
        assert!(stream.nodelay().expect("read TCP_NODELAY"));
    }

    #[tokio::test]
    async fn a_taken_port_is_a_bind_error_naming_it() {
        let first = HttpServer::bind("127.0.0.1:0").await.expect("bind");
        let addr = first.local_addr().to_string();
        let err = HttpServer::bind(&addr).await.expect_err("taken");
        assert!(err.to_string().contains(&addr), "{err}");
    }

    #[tokio::test]
    async fn shutdown_waits_for_the_request_in_flight() {
        let (entered_tx, entered_rx) = oneshot::channel::<()>();
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let slots = std::sync::Mutex::new(Some((entered_tx, release_rx)));
        let slots = std::sync::Arc::new(slots);
        let router = Router::new().route(
            "/slow",
            get(move || {
                let slot = slots.lock().expect("lock").take();
                async move {
                    if let Some((entered, release)) = slot {
                        let _ = entered.send(());
                        let _ = release.await;
                    }
                    "done"
                }
            }),
        );
        let server = HttpServer::bind("127.0.0.1:0").await.expect("bind");
        let addr = server.local_addr();
        let token = CancellationToken::new();
        let serving = tokio::spawn(server.serve(router, token.clone()));

        let mut conn = TcpStream::connect(addr).await.expect("connect");
        conn.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        entered_rx.await.expect("handler entered");
        token.cancel();
        // The server must still be running: the request has not finished.
        assert!(!serving.is_finished());
        release_tx.send(()).expect("release");
        let mut response = String::new();
        conn.read_to_string(&mut response).await.expect("read");
        assert!(response.ends_with("done"), "{response}");
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("server stopped")
            .expect("join")
            .expect("served");
    }
}
