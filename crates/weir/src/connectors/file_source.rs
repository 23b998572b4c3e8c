//! Reads lines from a file. In follow mode it keeps reading lines appended while it runs (a
//! replayable log, like a Kafka partition without a broker); bounded mode ends at end of file.
//! The byte offset after the last emitted line is operator state, so a restore resumes exactly
//! after it. Only subtask 0 reads; the file is one partition. The offset is union state, so it
//! reaches subtask 0 whatever the parallelism at restore.

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

pub struct FileSource {
    path: PathBuf,
    follow: bool,
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
        FileSource { path: path.into(), follow: true, active: false, offset: 0, reader: None, partial: Vec::new() }
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
            let mut line = std::mem::take(&mut self.partial);
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            self.offset += len;
            out.collect(String::from_utf8_lossy(&line).into_owned());
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
