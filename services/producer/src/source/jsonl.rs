//! A JSON Lines file, resumed by byte offset (and line number) after a restart.
//!
//! Lines are read as bytes: a line that is not UTF-8 or not JSON becomes a poison record
//! (dead-lettered with the reason), never an error that would stop every restart at the same
//! offset. Under `--watch` a last line without its newline is still being written: it is left
//! for a later poll rather than read half.
//!
//! The offset only means something in the file it was taken in. The position therefore also
//! holds a fingerprint of the file's first bytes (`head`, FNV-1a of up to 4 KiB); on open a
//! file shorter than the offset is *truncated* and one whose first bytes changed is *replaced*,
//! and both stop the run with an error instead of resuming in other data (or reporting
//! `complete` having read nothing). While reading, reaching the end of a file that has shrunk
//! below the offset, or whose path now names another file, fails the same way.

use std::{io::SeekFrom, path::PathBuf};

use serde_json::{Value, json};
use tokio::{
    fs::File,
    io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader},
};

use crate::{Error, Result, record::Record};

/// Bytes of the file's start covered by the fingerprint.
const HEAD_BYTES: u64 = 4096;

/// The file and how far it has been read.
#[derive(Debug)]
pub struct JsonlSource {
    path: PathBuf,
    reader: BufReader<File>,
    offset: u64,
    line: u64,
    total_lines: u64,
    /// Leave a last line without newline for later (watch mode).
    wait_for_newline: bool,
    /// FNV-1a of the first `head_len` bytes, once that many have been read.
    head: Option<(u64, u64)>,
}

impl JsonlSource {
    /// Opens `path` at `position` (`{"offset": bytes, "line": n, "head": …, "head_len": …}`),
    /// or at the start; refuses a file that was truncated or replaced since `position`.
    pub async fn open(path: PathBuf, position: Option<&Value>, watch: bool) -> Result<Self> {
        let io = |e: std::io::Error| Error::Io(format!("{}: {e}", path.display()));
        let offset = position.and_then(|p| p["offset"].as_u64()).unwrap_or(0);
        let line = position.and_then(|p| p["line"].as_u64()).unwrap_or(0);
        let content = tokio::fs::read(&path).await.map_err(io)?;
        let len = content.len() as u64;
        if offset > len {
            return Err(Error::InputChanged(format!(
                "{} is {len} bytes, shorter than the checkpoint's offset {offset}: it was \
                 truncated or replaced since the checkpoint was saved",
                path.display()
            )));
        }
        let saved_head =
            position.and_then(|p| Some((p["head"].as_u64()?, p["head_len"].as_u64()?)));
        if let Some((hash, head_len)) = saved_head
            && head_len <= len
            && fnv1a(&content[..to_usize(head_len)]) != hash
        {
            return Err(Error::InputChanged(format!(
                "the first {head_len} bytes of {} differ from those the checkpoint was taken in: \
                 it was replaced since",
                path.display()
            )));
        }
        let total_lines = content.iter().filter(|b| **b == b'\n').count() as u64
            + u64::from(content.last().is_some_and(|b| *b != b'\n'));
        let head_len = offset.min(HEAD_BYTES);
        let head = (head_len > 0).then(|| (fnv1a(&content[..to_usize(head_len)]), head_len));
        let mut file = File::open(&path).await.map_err(io)?;
        file.seek(SeekFrom::Start(offset)).await.map_err(io)?;
        Ok(Self {
            path,
            reader: BufReader::new(file),
            offset,
            line,
            total_lines,
            wait_for_newline: watch,
            head,
        })
    }

    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        let mut buf = Vec::new();
        while records.len() < max {
            buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut buf)
                .await
                .map_err(|e| self.io(&e))?;
            if n == 0 {
                self.check_still_the_same_file().await?;
                break;
            }
            if self.wait_for_newline && buf.last() != Some(&b'\n') {
                // Half written: read it again, whole, at a later poll.
                self.reader
                    .seek(SeekFrom::Start(self.offset))
                    .await
                    .map_err(|e| self.io(&e))?;
                break;
            }
            self.offset += n as u64;
            self.line += 1;
            if let Some(record) = self.parse(&buf) {
                records.push(record);
            }
        }
        if self
            .head
            .is_none_or(|(_, len)| len < HEAD_BYTES.min(self.offset))
        {
            self.head = self.read_head().await?;
        }
        Ok(records)
    }

    /// One line as a record, `None` for a blank line.
    fn parse(&self, bytes: &[u8]) -> Option<Record> {
        // `<file name>:line-<n>`: unique across files (consumers deduplicate by it).
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let id = format!("{name}:line-{}", self.line);
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text.trim(),
            Err(e) => {
                let reason = format!(
                    "line {}: invalid UTF-8 after {} bytes",
                    self.line,
                    e.valid_up_to()
                );
                return Some(Record::poison(id, reason));
            }
        };
        if text.is_empty() {
            return None;
        }
        Some(match serde_json::from_str::<Value>(text) {
            Ok(body) => {
                let topic = body.get("topic").and_then(Value::as_str).map(str::to_owned);
                Record::new(id, topic, body)
            }
            Err(e) => Record::poison(id, format!("line {}: invalid JSON: {e}", self.line)),
        })
    }

    /// At the end of the file: fails if the file at `path` is no longer what is being read
    /// (shorter than what was read, or another file renamed over it).
    async fn check_still_the_same_file(&mut self) -> Result<()> {
        let at_path = tokio::fs::metadata(&self.path)
            .await
            .map_err(|e| self.io(&e))?;
        if at_path.len() < self.offset {
            return Err(Error::InputChanged(format!(
                "{} shrank to {} bytes while {} had been read: it was truncated",
                self.path.display(),
                at_path.len(),
                self.offset
            )));
        }
        let open = self
            .reader
            .get_ref()
            .metadata()
            .await
            .map_err(|e| self.io(&e))?;
        if !same_file(&open, &at_path) {
            return Err(Error::InputChanged(format!(
                "{} was replaced by another file while it was read",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// The fingerprint of the first `min(offset, HEAD_BYTES)` bytes, read from the file.
    async fn read_head(&self) -> Result<Option<(u64, u64)>> {
        let len = self.offset.min(HEAD_BYTES);
        if len == 0 {
            return Ok(None);
        }
        let mut file = File::open(&self.path).await.map_err(|e| self.io(&e))?;
        let mut bytes = vec![0; to_usize(len)];
        file.read_exact(&mut bytes).await.map_err(|e| self.io(&e))?;
        Ok(Some((fnv1a(&bytes), len)))
    }

    fn io(&self, e: &std::io::Error) -> Error {
        Error::Io(format!("{}: {e}", self.path.display()))
    }

    pub fn position(&self) -> Value {
        let (head, head_len) = self.head.map_or((None, None), |(h, l)| (Some(h), Some(l)));
        json!({"offset": self.offset, "line": self.line, "head": head, "head_len": head_len})
    }

    pub fn remaining(&self) -> Option<u64> {
        Some(self.total_lines.saturating_sub(self.line))
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// FNV-1a, 64 bits: a stable fingerprint (std's hasher may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    true
}
