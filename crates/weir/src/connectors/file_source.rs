//! Reads lines from a file. In follow mode it keeps reading lines appended while it runs (a
//! replayable log, like a Kafka partition without a broker); bounded mode ends at end of file.
//!
//! A split source with one split, the file: the byte offset after the last emitted line is the
//! split's state, so a restore resumes exactly after it, at any parallelism (the subtask that owns
//! the split reads it). The offset belongs to the source, not to a path: a restore reads the path
//! the job names now (a log moved to another disk resumes where it was), and says so when that
//! is not the path the snapshot read. Snapshots from before split sources (the union list
//! `file-offset`) restore too.
//!
//! Lines are UTF-8: a leading byte order mark is skipped, and a line that is not valid UTF-8 is
//! skipped with a warning showing its start (never merged into another line by lossy decoding).
//! A followed file must only grow. When it is truncated (shorter than the read position) or
//! replaced (the path names another file, as after `mv new words.jsonl`), the job fails with a
//! message saying so, or, with [`FileSource::start_over_when_replaced`], reads the new file from
//! its start. Truncation is seen at the next poll; a file truncated and refilled past the read
//! position in between cannot be told from one that grew.

use crate::functions::{BoxError, Collector, SourcePoll, Unrecoverable};
use crate::split_source::{LegacySplits, SourceSplit, SplitContext, SplitReader, SplitSource};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;
use weir_core::CheckpointId;
use weir_runtime::SplitIndex;
use weir_state::OperatorStateStore;

/// The union list older versions kept the read offset in.
const LEGACY_STATE: &str = "file-offset";
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

/// The file source's one split: the byte offset after the last line emitted, and the path read
/// (for messages: the path read is the one the job names).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileSplit {
    path: PathBuf,
    offset: u64,
}

impl SourceSplit for FileSplit {
    fn split_id(&self) -> String {
        "file".to_string()
    }
}

#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
    follow: bool,
    start_over: bool,
}

impl FileSource {
    /// Follows the file: reads it from the start, then every line appended later. Never ends.
    pub fn follow(path: impl Into<PathBuf>) -> Self {
        FileSource { path: path.into(), follow: true, start_over: false }
    }

    /// Reads the file to its end, then finishes.
    pub fn bounded(path: impl Into<PathBuf>) -> Self {
        FileSource { follow: false, ..Self::follow(path) }
    }

    /// When the followed file is truncated or replaced, read the new file from its start instead
    /// of failing the job (for inputs that are rotated on purpose).
    pub fn start_over_when_replaced(self) -> Self {
        FileSource { start_over: true, ..self }
    }
}

impl SplitSource<String> for FileSource {
    type Split = FileSplit;
    type Reader = FileReader;

    fn discover(&mut self, _: &SplitContext, _initial: bool) -> Result<Vec<FileSplit>, BoxError> {
        Ok(vec![FileSplit { path: self.path.clone(), offset: 0 }])
    }

    fn create_reader(&self, _: &SplitContext) -> Result<FileReader, BoxError> {
        Ok(FileReader { path: self.path.clone(), follow: self.follow, start_over: self.start_over, files: Vec::new() })
    }

    fn restore_legacy(&self, state: &OperatorStateStore) -> Result<Option<LegacySplits<FileSplit>>, BoxError> {
        if !state.has_list(LEGACY_STATE) {
            return Ok(None);
        }
        let offsets: Vec<u64> = state.list(LEGACY_STATE)?;
        let offset = offsets.into_iter().max().unwrap_or(0);
        Ok(Some(LegacySplits::All(vec![FileSplit { path: self.path.clone(), offset }])))
    }
}

/// One file being read.
struct OpenFile {
    index: SplitIndex,
    split: FileSplit,
    reader: Option<BufReader<File>>,
    /// Bytes of a line whose newline has not been written yet.
    partial: Vec<u8>,
    finished: bool,
    finished_reported: bool,
}

/// Reads its files one after the other (a followed file never ends).
pub struct FileReader {
    /// The file the job names.
    path: PathBuf,
    follow: bool,
    start_over: bool,
    files: Vec<OpenFile>,
}

impl OpenFile {
    fn path(&self) -> std::path::Display<'_> {
        self.split.path.display()
    }

    fn open_reader(&mut self, follow: bool) -> Result<bool, BoxError> {
        let offset = self.split.offset;
        let file = match File::open(&self.split.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => return Ok(false),
            Err(e) => return Err(format!("cannot open input file '{}': {e}", self.path()).into()),
        };
        let len = file.metadata()?.len();
        if len < offset {
            return Err(Unrecoverable::boxed(format!(
                "input file '{}' is shorter ({len} bytes) than the restored read offset {offset}: it was truncated or replaced since the snapshot. The file source reads an append-only file; restore with the file the snapshot read, or start without -s",
                self.path(),
            )));
        }
        let mut reader = BufReader::with_capacity(1 << 16, file);
        reader.seek(SeekFrom::Start(offset))?;
        self.reader = Some(reader);
        Ok(true)
    }

    /// Why the open file is no longer the one to follow, if it is not.
    fn replaced_or_truncated(&self) -> Result<Option<String>, BoxError> {
        use std::os::unix::fs::MetadataExt;
        let Some(reader) = &self.reader else { return Ok(None) };
        let open = reader.get_ref().metadata()?;
        let offset = self.split.offset;
        if open.len() < offset {
            return Ok(Some(format!("was truncated to {} bytes below the read position {offset}", open.len())));
        }
        match std::fs::metadata(&self.split.path) {
            Ok(now) if (now.dev(), now.ino()) != (open.dev(), open.ino()) => {
                Ok(Some("was replaced by another file".to_string()))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some("was removed".to_string())),
            Err(e) => Err(e.into()),
        }
    }

    fn poll(
        &mut self,
        follow: bool,
        start_over: bool,
        out: &mut Collector<'_, String>,
    ) -> Result<SourcePoll, BoxError> {
        if self.reader.is_none() && !self.open_reader(follow)? {
            return Ok(SourcePoll::Idle(IDLE));
        }
        if follow {
            if let Some(what) = self.replaced_or_truncated()? {
                let message = format!("input file '{}' {what} while the file source followed it", self.path());
                if !start_over {
                    return Err(Unrecoverable::boxed(format!(
                        "{message}; the file source follows a file that only grows. Append to it instead, or let the source start over from the new file (FileSource::start_over_when_replaced)"
                    )));
                }
                tracing::warn!("{message}; reading the new file from its start");
                self.reader = None;
                self.partial.clear();
                self.split.offset = 0;
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
            if at_end && follow {
                return Ok(SourcePoll::Idle(IDLE));
            }
            if at_end && self.partial.is_empty() {
                self.finished = true;
                return Ok(SourcePoll::Exhausted);
            }
            let len = self.partial.len() as u64;
            let at = self.split.offset;
            let mut line = std::mem::take(&mut self.partial);
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            self.split.offset += len;
            if at == 0 && line.starts_with(BOM) {
                line.drain(..BOM.len());
            }
            match String::from_utf8(line) {
                Ok(line) => out.collect_in_split(self.index, line, None),
                Err(e) => tracing::warn!(
                    "skipping the line at byte {at} of '{}': not valid UTF-8 ({}); it starts {}",
                    self.split.path.display(),
                    e.utf8_error(),
                    log_prefix(e.as_bytes())
                ),
            }
        }
        Ok(SourcePoll::More)
    }
}

impl SplitReader<String, FileSplit> for FileReader {
    fn add_splits(&mut self, splits: Vec<(SplitIndex, FileSplit)>) -> Result<(), BoxError> {
        let path = &self.path;
        self.files.extend(splits.into_iter().map(|(index, mut split)| {
            if split.path != *path {
                tracing::info!(
                    "the snapshot read '{}'; reading '{}' from the restored offset {}",
                    split.path.display(),
                    path.display(),
                    split.offset
                );
                split.path = path.clone();
            }
            OpenFile { index, split, reader: None, partial: Vec::new(), finished: false, finished_reported: false }
        }));
        Ok(())
    }

    fn poll(&mut self, out: &mut Collector<'_, String>) -> Result<SourcePoll, BoxError> {
        for file in self.files.iter_mut().filter(|f| f.finished && !f.finished_reported) {
            file.finished_reported = true;
            out.split_finished(file.index);
        }
        let Some(file) = self.files.iter_mut().find(|f| !f.finished) else {
            return Ok(SourcePoll::Exhausted);
        };
        match file.poll(self.follow, self.start_over, out)? {
            // The next poll reports it and moves on to the next file.
            SourcePoll::Exhausted => Ok(SourcePoll::More),
            other => Ok(other),
        }
    }

    fn snapshot(&mut self, _: CheckpointId) -> Result<Vec<FileSplit>, BoxError> {
        Ok(self.files.iter().map(|f| f.split.clone()).collect())
    }
}
