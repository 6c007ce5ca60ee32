//! A TCP proxy a test controls, to simulate outages of a dependency without stopping the
//! shared server: point the code under test at [`FaultProxy::addr`] instead of the server.
//!
//! | call | effect |
//! |---|---|
//! | [`cut`](FaultProxy::cut) | closes every open connection; new ones still pass |
//! | [`refuse`](FaultProxy::refuse) | closes every open connection and resets new ones at once |
//! | [`set_latency`](FaultProxy::set_latency) | delays every chunk forwarded, both ways |
//! | [`restore`](FaultProxy::restore) | passes everything again, without delay |

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    refusing: AtomicBool,
    latency_us: AtomicU64,
    open: AtomicUsize,
    /// Cancelled by `cut`/`refuse` to end the connections open at that moment.
    generation: Mutex<CancellationToken>,
}

impl Shared {
    fn current_generation(&self) -> CancellationToken {
        self.generation
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    fn cut_all(&self) {
        if let Ok(mut generation) = self.generation.lock() {
            generation.cancel();
            *generation = CancellationToken::new();
        }
    }

    fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::SeqCst))
    }
}

/// A proxy on `127.0.0.1:<random port>` forwarding to one upstream address.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            refusing: AtomicBool::new(false),
            latency_us: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            generation: Mutex::new(CancellationToken::new()),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            addr,
            shared,
            accept_task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection; later connections pass.
    pub fn cut(&self) {
        self.shared.cut_all();
    }

    /// Closes every open connection and resets each new one until [`restore`](Self::restore).
    pub fn refuse(&self) {
        self.shared.refusing.store(true, Ordering::SeqCst);
        self.shared.cut_all();
    }

    /// Delays each chunk of data by `latency` in both directions.
    pub fn set_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.shared.latency_us.store(micros, Ordering::SeqCst);
    }

    /// Back to passing everything at once.
    pub fn restore(&self) {
        self.shared.refusing.store(false, Ordering::SeqCst);
        self.set_latency(Duration::ZERO);
    }

    /// Connections currently being forwarded.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.shared.cut_all();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if shared.refusing.load(Ordering::SeqCst) {
            reset(client);
            continue;
        }
        tokio::spawn(forward(client, shared.clone()));
    }
}

/// Closes with a reset, so the client sees "connection reset" rather than a clean EOF.
#[expect(
    deprecated,
    reason = "linger 0 resets at once; the blocking close it warns of needs a timeout > 0"
)]
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

async fn forward(client: TcpStream, shared: Arc<Shared>) {
    let generation = shared.current_generation();
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        reset(client);
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    shared.open.fetch_add(1, Ordering::SeqCst);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = generation.cancelled() => {}
        _ = pipe(client_read, server_write, &shared) => {}
        _ = pipe(server_read, client_write, &shared) => {}
    }
    // Dropping both halves of both sockets closes them.
    shared.open.fetch_sub(1, Ordering::SeqCst);
}

/// Copies one direction until EOF or error; the connection ends when either direction does.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: &Shared) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let latency = shared.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}
