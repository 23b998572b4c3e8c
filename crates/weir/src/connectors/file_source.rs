//! Reads lines from a file. In follow mode it keeps reading lines appended while it runs (a
//! replayable log, like a Kafka partition without a broker); bounded mode ends at end of file.
//! The byte offset after the last emitted line is operator state, so a restore resumes exactly
//! after it. Only subtask 0 reads; the file is one partition. The offset is union state, so it
//! reaches subtask 0 whatever the parallelism at restore.
//!
//! Lines are UTF-8: a leading byte order mark is skipped, and a line that is not valid UTF-8 is
//! skipped with a warning showing its start (never merged into another line by lossy decoding).
//! A followed file must only grow. When it is truncated (shorter than the read position) or
//! replaced (the path names another file, as after `mv new words.jsonl`), the job fails with a
//! message saying so, or, with [`FileSource::start_over_when_replaced`], reads the new file from
//! its start. Truncation is seen at the next poll; a file truncated and refilled past the read
//! position in between cannot be told from one that grew.

use crate::functions::{put_list, BoxError, Collector, SourceContext, SourceFunction, SourcePoll, Unrecoverable};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;
use weir_core::metadata::Redistribution;
use weir_core::CheckpointId;
use weir_state::OperatorStateSnapshot;

const STATE: &str = "file-offset";
const LINES_PER_POLL: usize = 1024;
const IDLE: Duration = Duration::from_millis(50);
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How much of a bad line a log message shows.
pub const LOGGED_PREFIX: usize = 120;

/// The start of a line for a log message: at most [`LOGGED_PREFIX`] bytes, escaped, with the
/// full length when it is cut.
pub fn log_prefix(line: &[u8]) -> String {
    let shown = &line[..line.len().min(LOGGED_PREFIX)];
    let escaped: String = shown.escape_ascii().to_string();
    if line.len() > LOGGED_PREFIX {
        format!("\"{escaped}\"... ({} bytes)", line.len())
    } else {
        format!("\"{escaped}\"")
    }
}

pub struct FileSource {
    path: PathBuf,
    follow: bool,
    start_over: bool,
    active: bool,
    offset: u64,
    reader: Option<BufReader<File>>,
    /// Bytes of a line whose newline has not been written yet.
    partial: Vec<u8>,
}

impl Clone for FileSource {
    fn clone(&self) -> Self {
        FileSource {
            path: self.path.clone(),
            follow: self.follow,
            start_over: self.start_over,
            active: false,
            offset: 0,
            reader: None,
            partial: Vec::new(),
        }
    }
}

impl FileSource {
    /// Follows the file: reads it from the start, then every line appended later. Never ends.
    pub fn follow(path: impl Into<PathBuf>) -> Self {
        FileSource {
            path: path.into(),
            follow: true,
            start_over: false,
            active: false,
            offset: 0,
            reader: None,
            partial: Vec::new(),
        }
    }

    /// When the followed file is truncated or replaced, read the new file from its start instead
    /// of failing the job (for inputs that are rotated on purpose).
    pub fn start_over_when_replaced(self) -> Self {
        FileSource { start_over: true, ..self }
    }

    /// Why the open file is no longer the one to follow, if it is not.
    fn replaced_or_truncated(&self) -> Result<Option<String>, BoxError> {
        use std::os::unix::fs::MetadataExt;
        let Some(reader) = &self.reader else { return Ok(None) };
        let open = reader.get_ref().metadata()?;
        if open.len() < self.offset {
            return Ok(Some(format!("was truncated to {} bytes below the read position {}", open.len(), self.offset)));
        }
        match std::fs::metadata(&self.path) {
            Ok(now) if (now.dev(), now.ino()) != (open.dev(), open.ino()) => {
                Ok(Some("was replaced by another file".to_string()))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some("was removed".to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the file to its end, then finishes.
    pub fn bounded(path: impl Into<PathBuf>) -> Self {
        FileSource { follow: false, ..Self::follow(path) }
    }

    fn open_reader(&mut self) -> Result<bool, BoxError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.follow => return Ok(false),
            Err(e) => return Err(format!("cannot open input file '{}': {e}", self.path.display()).into()),
        };
        let len = file.metadata()?.len();
        if len < self.offset {
            return Err(Unrecoverable::boxed(format!(
                "input file '{}' is shorter ({len} bytes) than the restored read offset {}: it was truncated or replaced since the snapshot. The file source reads an append-only file; restore with the file the snapshot read, or start without -s",
                self.path.display(),
                self.offset
            )));
        }
        let mut reader = BufReader::with_capacity(1 << 16, file);
        reader.seek(SeekFrom::Start(self.offset))?;
        self.reader = Some(reader);
        Ok(true)
    }
}

impl SourceFunction<String> for FileSource {
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<(), BoxError> {
        self.active = ctx.subtask == 0;
        let restored: Vec<u64> = ctx.state.list(STATE)?;
        self.offset = restored.into_iter().max().unwrap_or(0);
        Ok(())
    }

    fn poll(&mut self, out: &mut Collector<'_, String>) -> Result<SourcePoll, BoxError> {
        if !self.active {
            return Ok(SourcePoll::Exhausted);
        }
        if self.reader.is_none() && !self.open_reader()? {
            return Ok(SourcePoll::Idle(IDLE));
        }
        if self.follow {
            if let Some(what) = self.replaced_or_truncated()? {
                let message = format!("input file '{}' {what} while the file source followed it", self.path.display());
                if !self.start_over {
                    return Err(Unrecoverable::boxed(format!(
                        "{message}; the file source follows a file that only grows. Append to it instead, or let the source start over from the new file (FileSource::start_over_when_replaced)"
                    )));
                }
                tracing::warn!("{message}; reading the new file from its start");
                self.reader = None;
                self.partial.clear();
                self.offset = 0;
                return Ok(SourcePoll::More);
            }
        }
        let Some(reader) = self.reader.as_mut() else {
            return Ok(SourcePoll::Idle(IDLE));
        };
        for _ in 0..LINES_PER_POLL {
            let n = reader.read_until(b'\n', &mut self.partial)?;
            let complete = self.partial.last() == Some(&b'\n');
            // At the end of the data: wait for the rest of the line when following; in a bounded
            // file, a last line without newline is a line all the same.
            let at_end = n == 0 || !complete;
            if at_end && self.follow {
                return Ok(SourcePoll::Idle(IDLE));
            }
            if at_end && self.partial.is_empty() {
                return Ok(SourcePoll::Exhausted);
            }
            let len = self.partial.len() as u64;
            let at = self.offset;
            let mut line = std::mem::take(&mut self.partial);
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            self.offset += len;
            if at == 0 && line.starts_with(BOM) {
                line.drain(..BOM.len());
            }
            match String::from_utf8(line) {
                Ok(line) => out.collect(line),
                Err(e) => tracing::warn!(
                    "skipping the line at byte {at} of '{}': not valid UTF-8 ({}); it starts {}",
                    self.path.display(),
                    e.utf8_error(),
                    log_prefix(e.as_bytes())
                ),
            }
        }
        Ok(SourcePoll::More)
    }

    fn snapshot_state(&mut self, _: CheckpointId, state: &mut OperatorStateSnapshot) -> Result<(), BoxError> {
        if self.active {
            put_list(state, STATE, Redistribution::Union, &[self.offset])
        } else {
            Ok(())
        }
    }
}
