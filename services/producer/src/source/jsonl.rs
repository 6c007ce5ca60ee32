//! A JSON Lines file, resumed by byte offset (and line number) after a restart.

use std::{io::SeekFrom, path::PathBuf};

use serde_json::{Value, json};
use tokio::{
    fs::File,
    io::{AsyncBufReadExt, AsyncSeekExt, BufReader},
};

use crate::{Result, record::Record};

/// The file and how far it has been read.
#[derive(Debug)]
pub struct JsonlSource {
    path: PathBuf,
    reader: BufReader<File>,
    offset: u64,
    line: u64,
    total_lines: u64,
}

impl JsonlSource {
    /// Opens `path` at `position` (`{"offset": bytes, "line": n}`), or at the start.
    pub async fn open(path: PathBuf, position: Option<&Value>) -> Result<Self> {
        let offset = position.and_then(|p| p["offset"].as_u64()).unwrap_or(0);
        let line = position.and_then(|p| p["line"].as_u64()).unwrap_or(0);
        let content = tokio::fs::read(&path)
            .await
            .map_err(|e| crate::Error::Io(format!("{}: {e}", path.display())))?;
        let total_lines = content.iter().filter(|b| **b == b'\n').count() as u64
            + u64::from(content.last().is_some_and(|b| *b != b'\n'));
        let mut file = File::open(&path)
            .await
            .map_err(|e| crate::Error::Io(format!("{}: {e}", path.display())))?;
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| crate::Error::Io(e.to_string()))?;
        Ok(Self {
            path,
            reader: BufReader::new(file),
            offset,
            line,
            total_lines,
        })
    }

    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        let mut buf = String::new();
        while records.len() < max {
            buf.clear();
            let n = self
                .reader
                .read_line(&mut buf)
                .await
                .map_err(|e| crate::Error::Io(format!("{}: {e}", self.path.display())))?;
            if n == 0 {
                break;
            }
            self.offset += n as u64;
            self.line += 1;
            let text = buf.trim();
            if text.is_empty() {
                continue;
            }
            // `<file name>:line-<n>`: unique across files (consumers deduplicate by it).
            let name = self
                .path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            let id = format!("{name}:line-{}", self.line);
            records.push(match serde_json::from_str::<Value>(text) {
                Ok(body) => {
                    let topic = body.get("topic").and_then(Value::as_str).map(str::to_owned);
                    Record::new(id, topic, body)
                }
                Err(e) => Record::poison(id, format!("line {}: invalid JSON: {e}", self.line)),
            });
        }
        Ok(records)
    }

    pub fn position(&self) -> Value {
        json!({"offset": self.offset, "line": self.line})
    }

    pub fn remaining(&self) -> Option<u64> {
        Some(self.total_lines.saturating_sub(self.line))
    }
}
