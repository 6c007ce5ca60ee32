//! The clients process: N real WebSocket clients over TCP, 5 % of them never reading.
//!
//! Each client does the RFC 6455 opening handshake (a random key, the server's
//! `Sec-WebSocket-Accept` checked) and then reads frames straight off its socket into a
//! reused buffer: it parses each frame's header, answers pings, stops at a close, and for a
//! text frame finds `due_us` in the first bytes and adds `now − due` to a shared histogram. No
//! per-client vectors, no message objects, no zeroed read buffers: the process shares the two
//! CPUs with the server, so every microsecond it spends per frame is taken from the server.
//! (tokio-tungstenite took 6 µs per frame here, a tenth of it zeroing its read buffer.)

use std::{
    io::BufRead,
    net::SocketAddr,
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail, ensure};
use futures::{StreamExt, stream};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

use crate::{SILENT_EVERY, env_num, histogram::Histogram, proc_stats};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The `due_us` at the start of a frame's payload: no need to parse 2 KiB of JSON.
fn due_us(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"due_us\":";
    let head = &payload[..payload.len().min(128)];
    let at = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = payload[at..].iter().take_while(|b| b.is_ascii_digit());
    Some(digits.fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Opens `/api/ws?topics=winners` on `tcp`; returns what the server sent after its answer.
async fn handshake(
    tcp: &mut TcpStream,
    addr: SocketAddr,
    cookie: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    let key = generate_key();
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET /api/ws?topics=winners HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{cookie}\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        if tcp.read_buf(&mut buf).await? == 0 {
            bail!("the server closed during the handshake");
        }
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status = head.lines().next().unwrap_or_default();
        ensure!(
            status.starts_with("HTTP/1.1 101"),
            "upgrade refused: {status}"
        );
        let accept = derive_accept_key(key.as_bytes());
        ensure!(
            head.lines().any(|l| {
                let (name, value) = l.split_once(':').unwrap_or_default();
                name.eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == accept
            }),
            "a wrong Sec-WebSocket-Accept"
        );
        buf.drain(..end + 4);
        return Ok(buf);
    }
}

/// A complete frame at the start of `b`: (opcode, payload start, payload end).
fn frame(b: &[u8]) -> Option<(u8, usize, usize)> {
    let (&first, &second) = (b.first()?, b.get(1)?);
    let (mut start, len) = match second & 0x7F {
        126 => (4, usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]))),
        127 => (
            10,
            usize::try_from(u64::from_be_bytes(b.get(2..10)?.try_into().ok()?)).ok()?,
        ),
        n => (2, usize::from(n)),
    };
    if second & 0x80 != 0 {
        start += 4; // a masked frame (servers must not send one; its payload is skipped)
    }
    (b.len() >= start + len).then_some((first & 0x0F, start, start + len))
}

/// Reads frames until the socket or the server closes it.
async fn read_frames(mut tcp: TcpStream, mut buf: Vec<u8>, histogram: &Histogram) {
    let mut at = 0;
    loop {
        while let Some((opcode, start, end)) = frame(&buf[at..]) {
            let payload = &buf[at + start..at + end];
            match opcode {
                0x1 => {
                    if let Some(due) = due_us(payload) {
                        histogram.record(now_us().saturating_sub(due));
                    }
                }
                0x8 => return,
                0x9 if payload.len() < 126 => {
                    // A pong with the ping's payload, masked with a zero key as a client must.
                    let mut pong = vec![0x8A, 0x80 | payload.len() as u8, 0, 0, 0, 0];
                    pong.extend_from_slice(payload);
                    if tcp.write_all(&pong).await.is_err() {
                        return;
                    }
                }
                _ => {}
            }
            at += end;
        }
        buf.drain(..at);
        at = 0;
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
        }
        match tcp.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The cookies from stdin, one `cookie C` line each, until `end`.
fn read_cookies() -> Vec<String> {
    let mut cookies = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match line.strip_prefix("cookie ") {
            Some(c) => cookies.push(c.to_owned()),
            None => break,
        }
    }
    cookies
}

pub(crate) async fn run(addr: &str) -> anyhow::Result<()> {
    let addr: SocketAddr = addr.parse().context("the server's address")?;
    let cookies = read_cookies();
    let asked = env_num("SLUICE_BENCH_CLIENTS", 10_000) as usize;
    let n = asked.min(proc_stats::open_files_limit().map_or(asked, |l| l.saturating_sub(200)));
    let started = Instant::now();
    let connects = stream::iter(0..n).map(|i| {
        let cookie = cookies.get(i % cookies.len().max(1)).cloned();
        async move {
            let socket = TcpSocket::new_v4()?;
            if i % SILENT_EVERY == 0 {
                socket.set_recv_buffer_size(4096)?;
            }
            let mut tcp = socket.connect(addr).await?;
            let rest = handshake(&mut tcp, addr, cookie.as_deref()).await?;
            anyhow::Ok((i, tcp, rest))
        }
    });
    let sockets: Vec<_> = connects.buffer_unordered(200).collect().await;
    let connect_secs = started.elapsed().as_secs_f64();
    let histogram = Arc::new(Histogram::new());
    let (mut silent, mut readers, mut failed) = (Vec::new(), 0_usize, 0_usize);
    let mut first_error = None;
    for s in sockets {
        let (i, tcp, rest) = match s {
            Ok(s) => s,
            Err(err) => {
                failed += 1;
                first_error.get_or_insert(err);
                continue;
            }
        };
        if i % SILENT_EVERY == 0 {
            silent.push(tcp);
            continue;
        }
        readers += 1;
        let histogram = histogram.clone();
        tokio::spawn(async move { read_frames(tcp, rest, &histogram).await });
    }
    if let Some(err) = first_error {
        eprintln!("clients: {failed} failed to connect, the first: {err:#}");
    }
    println!(
        "connected {} {failed} {connect_secs:.2}",
        readers + silent.len()
    );
    let cpu_before = proc_stats::cpu_secs();
    // Wait for `stop` (or the orchestrator's end) off the runtime's threads. The initial
    // state each client got at connect has no `due_us`, so only timed updates are counted.
    tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await??;
    let h = &histogram;
    println!(
        "result {readers} {} {} {} {} {:.0} {:.1}",
        h.count(),
        h.quantile_us(0.5),
        h.quantile_us(0.99),
        h.max_us(),
        proc_stats::rss_mib(),
        proc_stats::cpu_secs() - cpu_before,
    );
    drop(silent);
    Ok(())
}
