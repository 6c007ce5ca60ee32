//! Running a service under test: in this process with a cancellation token, or as a child
//! process on port 0 whose address is read from its `listening` log line.

use std::{
    future::Future,
    net::SocketAddr,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::oneshot,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

/// An app future running in this process, stopped by cancelling its token.
#[derive(Debug)]
pub struct InProcess<T> {
    token: CancellationToken,
    handle: JoinHandle<T>,
}

impl<T: Send + 'static> InProcess<T> {
    /// Spawns `run(token)`.
    pub fn spawn<F, Fut>(run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let token = CancellationToken::new();
        let handle = tokio::spawn(run(token.clone()));
        Self { token, handle }
    }

    /// Cancels the token and waits for the app to return, at most `timeout`.
    pub async fn stop(self, timeout: Duration) -> anyhow::Result<T> {
        self.token.cancel();
        tokio::time::timeout(timeout, self.handle)
            .await
            .map_err(|_| anyhow!("app did not stop within {timeout:?} of cancellation"))?
            .context("app task panicked")
    }

    /// The token the app watches.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// A service binary running as a child process; killed if still running when dropped.
#[derive(Debug)]
pub struct ChildService {
    child: Child,
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl ChildService {
    /// Starts `command` (stdout piped) and waits up to `timeout` for its JSON log line
    /// `{"message":"listening","addr":"…"}`, as `sluice_core::http::HttpServer` writes it.
    /// Every line the child prints, on stdout or stderr (a panic message), is kept (see
    /// [`logs`](Self::logs)) and echoed to stderr.
    pub async fn spawn(mut command: Command, timeout: Duration) -> anyhow::Result<Self> {
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            // The log lines are read as JSON, whatever the developer's shell exports.
            .env("SLUICE_LOG_FORMAT", "json")
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let stderr = child.stderr.take().context("child stderr")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = oneshot::channel();
        tokio::spawn(read_logs(stdout, logs.clone(), Some(addr_tx)));
        tokio::spawn(read_logs(stderr, logs.clone(), None));
        let addr = match tokio::time::timeout(timeout, addr_rx).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(_)) => {
                let status = child.wait().await?;
                bail!(
                    "child exited ({status}) before listening; logs: {:?}",
                    lines(&logs)
                );
            }
            Err(_) => bail!(
                "child not listening within {timeout:?}; logs: {:?}",
                lines(&logs)
            ),
        };
        Ok(Self { child, addr, logs })
    }

    /// Where the child listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Lines the child printed so far.
    pub fn logs(&self) -> Vec<String> {
        lines(&self.logs)
    }

    /// Sends `signal` (a `kill` name: `TERM`, `KILL`, `STOP`, `CONT`, …) to the child.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("child already exited")?;
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed: {status}");
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `timeout` for a graceful exit.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal("TERM")?;
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .map_err(|_| anyhow!("child did not exit within {timeout:?} of SIGTERM"))?
            .context("waiting for child")
    }

    /// Waits up to `timeout` for the child to exit by itself.
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .map_err(|_| {
                anyhow!(
                    "child still running after {timeout:?}; logs: {:?}",
                    lines(&self.logs)
                )
            })?
            .context("waiting for child")
    }

    /// SIGKILL: the crash a test wants to survive.
    pub async fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        self.child.start_kill().context("SIGKILL")?;
        Ok(self.child.wait().await?)
    }
}

fn lines(logs: &Mutex<Vec<String>>) -> Vec<String> {
    logs.lock().map(|l| l.clone()).unwrap_or_default()
}

async fn read_logs(
    output: impl tokio::io::AsyncRead + Unpin,
    logs: Arc<Mutex<Vec<String>>>,
    mut addr_tx: Option<oneshot::Sender<SocketAddr>>,
) {
    let mut reader = BufReader::new(output).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        eprintln!("[child] {line}");
        if let Some(addr) = listening_addr(&line)
            && let Some(tx) = addr_tx.take()
        {
            let _ = tx.send(addr);
        }
        if let Ok(mut logs) = logs.lock() {
            logs.push(line);
        }
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value.get("message")?.as_str()? != "listening" {
        return None;
    }
    value.get("addr")?.as_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_address_from_the_listening_line() {
        let line =
            r#"{"timestamp":"t","level":"INFO","message":"listening","addr":"127.0.0.1:4321"}"#;
        assert_eq!(
            listening_addr(line),
            Some("127.0.0.1:4321".parse().expect("addr"))
        );
        assert_eq!(listening_addr(r#"{"message":"started"}"#), None);
        assert_eq!(listening_addr("not json"), None);
    }
}
