//! Issue 9 item 12: JSON Lines input that is not clean text, is still being written, or changed
//! under its checkpoint.

use std::{io::Write, path::Path, time::Duration};

use serde_json::Value;
use sluice_producer::{Summary, config::RunArgs, run};
use sluice_testkit::{TestAmqp, eventually};
use tokio_util::sync::CancellationToken;

use crate::support::{args, dead_letters, drain, queue_len, spawn, topology};

struct Fixture {
    amqp: TestAmqp,
    exchange: String,
    queue: String,
    dir: std::path::PathBuf,
}

impl Fixture {
    async fn new() -> anyhow::Result<Self> {
        let amqp = TestAmqp::create().await?;
        let (exchange, queue) = topology(&amqp);
        let dir = std::env::temp_dir().join(sluice_testkit::unique_name("jsonl"));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            amqp,
            exchange,
            queue,
            dir,
        })
    }

    fn args(&self, input: &Path, extra: &[&str]) -> RunArgs {
        let input = input.to_string_lossy().into_owned();
        let checkpoint = self.dir.join("checkpoint.json");
        let checkpoint = checkpoint.to_string_lossy().into_owned();
        let mut a = vec![
            "--source",
            "jsonl",
            "--input",
            &input,
            "--checkpoint-file",
            &checkpoint,
            "--sink",
            "rabbitmq",
            "--amqp-url",
            self.amqp.url(),
            "--exchange",
            &self.exchange,
            "--queue",
            &self.queue,
        ];
        a.extend_from_slice(extra);
        args(&a)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn finish(a: RunArgs) -> anyhow::Result<Summary> {
    tokio::time::timeout(Duration::from_secs(60), run(a, CancellationToken::new()))
        .await
        .map_err(|_| anyhow::anyhow!("the run is wedged"))?
        .map_err(Into::into)
}

/// A line that is not UTF-8 stopped the run, and every restart, at the same offset.
#[tokio::test]
async fn a_line_that_is_not_utf8_is_dead_lettered() -> anyhow::Result<()> {
    let f = Fixture::new().await?;
    let input = f.dir.join("in.jsonl");
    std::fs::write(&input, b"{\"n\":1}\n{\"n\":\"\xff\xfe\"}\n{\"n\":3}\n")?;
    let summary = finish(f.args(&input, &[])).await?;
    assert_eq!(
        (summary.sent, summary.dead_lettered, summary.complete),
        (2, 1, true)
    );
    let ch = f.amqp.channel().await?;
    let dead = dead_letters(&ch, &format!("{}.dead", f.queue)).await?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0.as_deref(), Some("in.jsonl:line-2"));
    assert!(dead[0].2.contains("invalid UTF-8"), "{}", dead[0].2);
    Ok(())
}

/// Under --watch, a last line still being written was dead-lettered half, and its tail became
/// a second poison record.
#[tokio::test]
async fn watch_waits_for_the_newline_of_a_half_written_line() -> anyhow::Result<()> {
    let f = Fixture::new().await?;
    let input = f.dir.join("in.jsonl");
    std::fs::write(&input, "{\"n\":1}\n{\"n\":")?;
    let a = f.args(&input, &["--watch", "--poll-interval-ms", "50"]);
    let token = CancellationToken::new();
    let running = tokio::spawn(run(a, token.clone()));
    // The first line and the half line are read in the same batch.
    eventually("the first line queued", Duration::from_secs(30), || async {
        (queue_len(&f.amqp, &f.queue).await.ok()? >= 1).then_some(())
    })
    .await?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)?
        .write_all(b"2}\n")?;
    let queued = eventually(
        "the completed line queued",
        Duration::from_secs(30),
        || async { (queue_len(&f.amqp, &f.queue).await.ok()? >= 2).then_some(()) },
    )
    .await;
    token.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(30), running).await???;
    let ch = f.amqp.channel().await?;
    let dead = dead_letters(&ch, &format!("{}.dead", f.queue)).await?;
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
    queued?;
    let (_, bodies, _) = drain(&ch, &f.queue, 2).await?;
    assert_eq!(
        bodies.get("in.jsonl:line-2"),
        Some(&serde_json::json!({"n": 2}))
    );
    assert_eq!((summary.sent, summary.dead_lettered), (2, 0));
    Ok(())
}

/// A file truncated, or replaced by another, since the checkpoint: the run used to resume at
/// the old offset in other data, or read nothing and say `complete`.
#[tokio::test]
async fn a_truncated_or_replaced_input_is_refused_not_completed() -> anyhow::Result<()> {
    let f = Fixture::new().await?;
    let input = f.dir.join("in.jsonl");
    let lines =
        |tag: &str, n: u32| -> String { (0..n).map(|i| format!("{{\"{tag}\":{i}}}\n")).collect() };
    std::fs::write(&input, lines("first", 20))?;
    // A watch run leaves the checkpoint `in_progress` at the end of the file.
    let token = CancellationToken::new();
    let running = tokio::spawn(run(
        f.args(&input, &["--watch", "--poll-interval-ms", "50"]),
        token.clone(),
    ));
    let checkpoint = f.dir.join("checkpoint.json");
    eventually(
        "the checkpoint covers the file",
        Duration::from_secs(30),
        || async {
            let saved: Value = serde_json::from_slice(&std::fs::read(&checkpoint).ok()?).ok()?;
            (saved["count"] == 20).then_some(())
        },
    )
    .await?;
    token.cancel();
    tokio::time::timeout(Duration::from_secs(30), running).await???;

    // Replaced by a longer file with other content (rename over it, as a rotation does).
    let other = f.dir.join("other.jsonl");
    std::fs::write(&other, lines("second", 40))?;
    std::fs::rename(&other, &input)?;
    let err = finish(f.args(&input, &[]))
        .await
        .expect_err("a replaced file is refused");
    assert!(format!("{err:#}").contains("replaced"), "{err:#}");

    // Truncated below the checkpoint's offset.
    std::fs::write(&input, lines("first", 3))?;
    let err = finish(f.args(&input, &[]))
        .await
        .expect_err("a truncated file is refused");
    assert!(format!("{err:#}").contains("truncated"), "{err:#}");
    Ok(())
}

/// Issue 9 item 13: without `--checkpoint-file` a restart replays everything; the run says so.
#[tokio::test]
async fn a_run_without_checkpoint_file_warns_that_a_restart_replays_everything()
-> anyhow::Result<()> {
    let f = Fixture::new().await?;
    let input = f.dir.join("in.jsonl");
    std::fs::write(&input, "{\"n\":1}\n")?;
    let input = input.to_string_lossy().into_owned();
    let cli: Vec<String> = [
        "--source",
        "jsonl",
        "--input",
        &input,
        "--sink",
        "rabbitmq",
        "--amqp-url",
        f.amqp.url(),
        "--exchange",
        &f.exchange,
        "--queue",
        &f.queue,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let mut child = spawn(&cli).await?;
    let exit = child.wait(Duration::from_secs(60)).await?;
    assert!(exit.success(), "{exit}");
    let logs = child.logs();
    assert!(
        logs.iter().any(|l| l.contains("WARN")
            && l.contains("--checkpoint-file")
            && l.contains("restart")),
        "{logs:?}"
    );
    Ok(())
}
