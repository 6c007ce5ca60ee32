//! `sluice-dashboard-ws-bench` (feature `bench`, run by `make bench` through
//! scripts/bench/dashboard.sh): N WebSocket clients of which 5 % never read, an update every
//! 100 ms, through the dashboard's broadcast and then through a naive one that awaits every
//! client (seed 002's `gather()`). Prints delivery latency percentiles for the reading clients,
//! deliveries, and the server process's RSS and CPU time.
//!
//! # Three processes
//! Run without arguments it is the *orchestrator*: for each broadcast it starts itself twice,
//! as the **server** (`serve dashboard|naive`: the real dashboard, or the naive server, with the
//! publisher) and as the **clients** (`clients ADDR`: N real WebSocket clients over TCP). Each
//! process has its own open-file limit, so 10,000 clients fit under a 20,000 limit, and the
//! server's memory and CPU time are its own. They talk over stdin/stdout, one line each:
//!
//! ```text
//! server  → orch: cookie C (N times, dashboard only), then  ready ADDR
//! orch    → clients: cookie C (N times), end;   clients → orch: connected OK FAILED SECS
//! orch    → server: go;        server  → orch: done PUBLISHED RSS_CONNECTED RSS_PEAK CPU_S TCP_MIB
//! orch    → clients: stop;     clients → orch: result READERS COUNT P50 P99 MAX RSS CPU_S
//! orch    → server: exit;      server  → orch: metric LINE…, bye
//! ```
//!
//! # Latency
//! Each update carries the wall-clock time it was *due* (`due_us`, Unix µs: start + seq ×
//! 100 ms); a client records `now − due` when its task has the frame. Both processes read the
//! same system clock. An update a broadcast could not even start on time counts as late, and
//! time a frame waited for a CPU in the client process counts too.
//!
//! Every dashboard client has its own session (10,000 browsers are 10,000 sessions), created
//! straight in Redis: logging in 10,000 times would measure argon2, not sockets. The clients
//! that never read use a 4 KiB receive buffer, like a stalled mobile client (the server's
//! kernel still queues a few MiB for each, autotuned, before a write to it would block). Needs
//! the servers of scripts/deps.sh.
//!
//! Settings (environment): `SLUICE_BENCH_CLIENTS` (10000), `SLUICE_BENCH_SECONDS` (20),
//! `SLUICE_BENCH_FRAME_BYTES` (2048), `SLUICE_BENCH_POSTGRES` (`postgres://postgres@127.0.0.1:5432`),
//! `SLUICE_BENCH_ONLY` (`dashboard` or `naive`: run one broadcast only, e.g. under `perf`).

#![allow(clippy::print_stdout, reason = "a benchmark prints its report")]

#[path = "ws_bench/clients.rs"]
mod clients;
#[path = "ws_bench/histogram.rs"]
mod histogram;
#[path = "ws_bench/naive.rs"]
mod naive;
#[path = "ws_bench/proc_stats.rs"]
mod proc_stats;
#[path = "ws_bench/serve.rs"]
mod serve;

use std::{
    io::{BufRead, BufReader, Lines, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};

/// One update every this long.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);
/// One client in this many never reads (5 %).
pub(crate) const SILENT_EVERY: usize = 20;

pub(crate) fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => orchestrate(),
        ["serve", kind] => runtime()?.block_on(serve::run(kind)),
        ["clients", addr] => runtime()?.block_on(clients::run(addr)),
        _ => bail!("usage: sluice-dashboard-ws-bench [serve dashboard|naive | clients ADDR]"),
    }
}

/// A child process of this binary, spoken to line by line.
struct Peer {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    fn spawn(name: &'static str, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the {name} process"))?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        Ok(Self {
            name,
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("writing to the {} process", self.name))
    }

    /// The next line, split on spaces after its expected first word.
    fn expect(&mut self, word: &str) -> anyhow::Result<Vec<String>> {
        let line = self
            .lines
            .next()
            .with_context(|| format!("the {} process ended before `{word}`", self.name))??;
        let mut parts = line.split(' ').map(str::to_owned);
        if parts.next().as_deref() != Some(word) {
            bail!(
                "the {} process said `{line}`, expected `{word} …`",
                self.name
            );
        }
        Ok(parts.collect())
    }
}

fn num(fields: &[String], i: usize) -> anyhow::Result<f64> {
    fields
        .get(i)
        .context("a short report line")?
        .parse()
        .context("a number in a report line")
}

/// Runs one broadcast with its server and clients processes and prints its table row.
fn one_run(kind: &str, label: &str) -> anyhow::Result<()> {
    let mut server = Peer::spawn("server", &["serve", kind])?;
    let mut cookies = Vec::new();
    let addr = loop {
        let line = server.lines.next().context("the server process ended")??;
        match line.split_once(' ') {
            Some(("cookie", c)) => cookies.push(c.to_owned()),
            Some(("ready", addr)) => break addr.to_owned(),
            _ => bail!("the server process said `{line}`"),
        }
    };
    let mut clients = Peer::spawn("clients", &["clients", &addr])?;
    for c in &cookies {
        clients.send(&format!("cookie {c}"))?;
    }
    clients.send("end")?;
    let connected = clients.expect("connected")?;
    server.send("go")?;
    let done = server.expect("done")?;
    std::thread::sleep(Duration::from_secs(2)); // let the last updates arrive
    clients.send("stop")?;
    let result = clients.expect("result")?;
    server.send("exit")?;
    let mut metrics = Vec::new();
    loop {
        let line = server.lines.next().context("the server process ended")??;
        match line.split_once(' ') {
            Some(("metric", m)) => metrics.push(m.to_owned()),
            _ if line == "bye" => break,
            _ => bail!("the server process said `{line}`"),
        }
    }
    let _ = (server.child.wait(), clients.child.wait());

    let (published, readers) = (num(&done, 0)?, num(&result, 0)?);
    let (count, expected) = (num(&result, 1)?, published * readers);
    let ms = |i| num(&result, i).map(|us| format!("{:.1}", us / 1000.0));
    println!(
        "| {label} | {} | {published} | {count} / {expected} ({:.1} %) | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} |",
        num(&connected, 0)?,
        100.0 * count / expected.max(1.0),
        ms(2)?,
        ms(3)?,
        ms(4)?,
        num(&done, 1)?,
        num(&done, 2)?,
        num(&done, 4)?,
        num(&done, 3)?,
        num(&result, 6)?,
        num(&connected, 2)?,
    );
    if num(&connected, 1)? > 0.0 {
        println!("|  | ({} clients failed to connect) |", num(&connected, 1)?);
    }
    for m in metrics {
        println!("|  | {m} |");
    }
    Ok(())
}

fn orchestrate() -> anyhow::Result<()> {
    let n = env_num("SLUICE_BENCH_CLIENTS", 10_000);
    let seconds = env_num("SLUICE_BENCH_SECONDS", 20);
    let frame_bytes = env_num("SLUICE_BENCH_FRAME_BYTES", 2048);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "{n} clients ({} never read), an update of {frame_bytes} bytes every {INTERVAL:?} for {seconds} s; {} CPUs, load average {} at the start\n",
        n as usize / SILENT_EVERY,
        std::thread::available_parallelism().map_or(0, usize::from),
        load.join(" "),
    );
    println!(
        "| broadcast | clients | updates sent | deliveries to readers | p50 ms | p99 ms | max ms | server RSS connected MiB | server RSS peak MiB | kernel TCP peak MiB | server CPU s | clients CPU s | connect s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let only = std::env::var("SLUICE_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "dashboard" {
        one_run("dashboard", "sluice-dashboard (bounded queue, skip/drop)")?;
    }
    if only.is_empty() || only == "naive" {
        one_run("naive", "naive (awaits every client)")?;
    }
    Ok(())
}
