//! Split sources (Flink's FLIP-27 shape): a source finds its splits (Kafka partitions, files,
//! ranges of a generator), each split is read by one subtask, and each reader keeps its splits'
//! positions in operator state, so a restore at any parallelism deals the splits out again and
//! every record is read once.
//!
//! Where Flink runs one enumerator on the JobManager that hands splits to readers, Weir's subtasks
//! agree without messages: a split's owner is a pure function of its id and the parallelism
//! ([`weir_core::splits`]), and every subtask sees every split's position on restore (union
//! state). Discovery runs in each subtask and keeps only the new splits it owns. The same rule
//! works when subtasks run on several machines.
//!
//! Positions are stored as the union list `source-splits` of the source's split type (MessagePack),
//! a split per element; a split that is finished stays in it, so it is not read again.

use crate::exclusive::Exclusive;
use crate::functions::{put_list, BoxError, Collector, SourceContext, SourceFunction, SourcePoll};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::time::{Duration, Instant};
use weir_core::metadata::Redistribution;
use weir_core::splits::{split_owner, SplitAssignment};
use weir_core::CheckpointId;
use weir_runtime::{SplitEvent, SplitIndex};
use weir_state::{OperatorStateSnapshot, OperatorStateStore};

/// The operator list state split sources keep their splits in.
pub const SPLITS_STATE: &str = "source-splits";

/// A split and its position: what is saved in snapshots.
pub trait SourceSplit: Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static {
    /// A stable identity: the same split has the same id in every run and version (Kafka:
    /// `topic-partition`). Owners are computed from it.
    fn split_id(&self) -> String;
}

/// Splits restored from a layout a source wrote before it was a split source.
pub enum LegacySplits<S> {
    /// Every subtask's splits (union state): each subtask keeps the ones it owns.
    All(Vec<S>),
    /// This subtask's share, as the runtime dealt a split-redistributed list: all of them are
    /// read here. A source restored this way must not discover splits later (the subtask does not
    /// know the other subtasks' splits).
    Dealt(Vec<S>),
}

/// Where a split source runs.
#[derive(Debug, Clone, Copy)]
pub struct SplitContext {
    pub subtask: u32,
    pub parallelism: u32,
    /// Whether this source's splits came from a checkpoint or savepoint (the first splits a
    /// reader gets are then the restored ones).
    pub restored: bool,
}

/// A source made of splits. One copy per subtask finds splits; its reader reads them.
pub trait SplitSource<T>: Clone + Send + Sync + 'static {
    type Split: SourceSplit;
    type Reader: SplitReader<T, Self::Split>;

    /// The splits that exist now, each at the position to start from. `initial` is true on a
    /// fresh start (Kafka: the configured starting offsets) and false for splits found later or
    /// on a restore (Kafka: from the earliest offset, so nothing written to a new partition is
    /// missed). Splits already known are ignored, so it may return them again.
    fn discover(&mut self, ctx: &SplitContext, initial: bool) -> Result<Vec<Self::Split>, BoxError>;

    /// How often to look for new splits while running (`None`: never).
    fn discovery_interval(&self) -> Option<Duration> {
        None
    }

    /// Whether the source ends once its splits are finished. By default, when it does not look
    /// for new splits; a source whose splits never finish (Kafka partitions) says false.
    fn is_bounded(&self) -> bool {
        self.discovery_interval().is_none()
    }

    /// The subtask that reads `split` at `parallelism`: by default the Java string hash of its
    /// id. Must depend only on the split's id and the parallelism.
    fn owner(&self, split: &Self::Split, parallelism: u32) -> u32 {
        split_owner(&split.split_id(), parallelism)
    }

    fn create_reader(&self, ctx: &SplitContext) -> Result<Self::Reader, BoxError>;

    /// Splits of a snapshot written before this source kept `source-splits`.
    fn restore_legacy(&self, _state: &OperatorStateStore) -> Result<Option<LegacySplits<Self::Split>>, BoxError> {
        Ok(None)
    }
}

/// Reads the splits of one subtask (Flink's `SourceReader`).
pub trait SplitReader<T, S>: Send + 'static {
    /// Starts reading splits, each from its position. Finished splits may be among them (they
    /// are kept in state so they are not read again): report them with
    /// [`Collector::split_finished`].
    fn add_splits(&mut self, splits: Vec<(SplitIndex, S)>) -> Result<(), BoxError>;

    /// Emits a bounded number of records with [`Collector::collect_in_split`], so the task can
    /// serve barriers in between. `Exhausted` when every split given so far is finished.
    fn poll(&mut self, out: &mut Collector<'_, T>) -> Result<SourcePoll, BoxError>;

    /// Every split given to this reader, at the position after the last record emitted.
    fn snapshot(&mut self, checkpoint_id: CheckpointId) -> Result<Vec<S>, BoxError>;

    fn notify_checkpoint_complete(&mut self, _checkpoint_id: CheckpointId) -> Result<(), BoxError> {
        Ok(())
    }
}

/// What [`crate::StreamEnv::source`] and [`crate::StreamEnv::from_source`] accept: a
/// [`SourceFunction`], polled as it is, or a [`SplitSource`], run by a [`SplitSourceFunction`].
/// `Kind` is inferred ([`source_kind`]); it only keeps the two apart.
pub trait Source<T, Kind> {
    type Function: SourceFunction<T> + Clone + Sync;
    fn into_function(self) -> Self::Function;
}

/// The kinds of [`Source`].
pub mod source_kind {
    /// A [`crate::SourceFunction`].
    pub enum Function {}
    /// A [`crate::SplitSource`].
    pub enum Splits {}
}

impl<T, F: SourceFunction<T> + Clone + Sync> Source<T, source_kind::Function> for F {
    type Function = F;
    fn into_function(self) -> F {
        self
    }
}

impl<T: Send + 'static, S: SplitSource<T>> Source<T, source_kind::Splits> for S {
    type Function = SplitSourceFunction<T, S>;
    fn into_function(self) -> Self::Function {
        SplitSourceFunction::new(self)
    }
}

/// Runs a [`SplitSource`] as a source subtask: assigns splits, discovers new ones, keeps their
/// positions in state and tells the source's watermark strategy which split each record is from.
pub struct SplitSourceFunction<T, S: SplitSource<T>> {
    source: S,
    ctx: SplitContext,
    assignment: SplitAssignment,
    /// Readers (Kafka consumers) need not be `Sync`.
    reader: Exclusive<Option<S::Reader>>,
    next_index: SplitIndex,
    /// Splits given to the reader whose watermark clocks are not started yet (they start at the
    /// next poll, which has an output).
    unannounced: Vec<SplitIndex>,
    reading_announced: bool,
    /// Whether any split was given to the reader.
    has_splits: bool,
    next_discovery: Option<Instant>,
    _records: PhantomData<fn() -> T>,
}

impl<T, S: SplitSource<T>> Clone for SplitSourceFunction<T, S> {
    fn clone(&self) -> Self {
        Self::new(self.source.clone())
    }
}

impl<T, S: SplitSource<T>> SplitSourceFunction<T, S> {
    pub fn new(source: S) -> Self {
        SplitSourceFunction {
            source,
            ctx: SplitContext { subtask: 0, parallelism: 1, restored: false },
            assignment: SplitAssignment::default(),
            reader: Exclusive::new(None),
            next_index: 0,
            unannounced: Vec::new(),
            reading_announced: false,
            has_splits: false,
            next_discovery: None,
            _records: PhantomData,
        }
    }

    fn reader(&mut self) -> Option<&mut S::Reader> {
        self.reader.get_mut().as_mut()
    }

    fn add(&mut self, splits: Vec<S::Split>) -> Result<(), BoxError> {
        if splits.is_empty() {
            return Ok(());
        }
        let indexed: Vec<(SplitIndex, S::Split)> = splits
            .into_iter()
            .map(|s| {
                let index = self.next_index;
                self.next_index += 1;
                self.unannounced.push(index);
                (index, s)
            })
            .collect();
        tracing::debug!(subtask = self.ctx.subtask, splits = ?indexed, "reading splits");
        self.has_splits = true;
        self.reader().map_or(Ok(()), |r| r.add_splits(indexed))
    }

    fn discover(&mut self, initial: bool) -> Result<Vec<S::Split>, BoxError> {
        let found = self.source.discover(&self.ctx, initial)?;
        let source = &self.source;
        Ok(self.assignment.discovered(found, |s, p| (s.split_id(), source.owner(s, p))))
    }

    fn discovery_due(&mut self) -> Result<(), BoxError> {
        let (Some(at), Some(interval)) = (self.next_discovery, self.source.discovery_interval()) else {
            return Ok(());
        };
        if Instant::now() < at {
            return Ok(());
        }
        self.next_discovery = Instant::now().checked_add(interval);
        let new = self.discover(false)?;
        if !new.is_empty() {
            tracing::info!(
                subtask = self.ctx.subtask,
                "discovered {} new split(s): {}",
                new.len(),
                new.iter().map(|s| s.split_id()).collect::<Vec<_>>().join(", ")
            );
        }
        self.add(new)
    }

    /// How long to wait with nothing to read: until the next discovery, at most `cap`.
    fn wait(&self, cap: Duration) -> Duration {
        match self.next_discovery {
            Some(at) => at.saturating_duration_since(Instant::now()).min(cap),
            None => cap,
        }
    }
}

impl<T: Send + 'static, S: SplitSource<T>> SourceFunction<T> for SplitSourceFunction<T, S> {
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<(), BoxError> {
        self.ctx = SplitContext { subtask: ctx.subtask, parallelism: ctx.parallelism, restored: false };
        self.assignment = SplitAssignment::new(ctx.subtask, ctx.parallelism);
        let source = &self.source;
        let id_and_owner = |s: &S::Split, p| (s.split_id(), source.owner(s, p));
        let (mine, restored) = if ctx.state.has_list(SPLITS_STATE) {
            let all: Vec<S::Split> = ctx.state.list(SPLITS_STATE)?;
            (self.assignment.restore(all, id_and_owner), true)
        } else {
            match self.source.restore_legacy(ctx.state)? {
                Some(LegacySplits::All(all)) => (self.assignment.restore(all, id_and_owner), true),
                Some(LegacySplits::Dealt(mine)) => (self.assignment.restore_dealt(mine, |s| s.split_id()), true),
                None => (Vec::new(), false),
            }
        };
        self.ctx.restored = restored;
        if restored {
            tracing::info!(
                subtask = ctx.subtask,
                "restored {} split(s) for this subtask: {}",
                mine.len(),
                mine.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
            );
        }
        *self.reader.get_mut() = Some(self.source.create_reader(&self.ctx)?);
        self.add(mine)?;
        let new = self.discover(!restored)?;
        self.add(new)?;
        self.next_discovery = self.source.discovery_interval().and_then(|d| Instant::now().checked_add(d));
        Ok(())
    }

    fn poll(&mut self, out: &mut Collector<'_, T>) -> Result<SourcePoll, BoxError> {
        for index in self.unannounced.drain(..) {
            out.split_event(SplitEvent::Added(index));
        }
        if !self.reading_announced {
            self.reading_announced = true;
            out.split_event(SplitEvent::Reading);
        }
        self.discovery_due()?;
        let bounded = self.source.is_bounded();
        let has_splits = self.has_splits;
        let poll = match self.reader() {
            Some(reader) if has_splits => reader.poll(out)?,
            _ => SourcePoll::Exhausted,
        };
        Ok(match poll {
            SourcePoll::Exhausted if !bounded => SourcePoll::Idle(self.wait(Duration::from_millis(100))),
            other => other,
        })
    }

    fn snapshot_state(
        &mut self,
        checkpoint_id: CheckpointId,
        state: &mut OperatorStateSnapshot,
    ) -> Result<(), BoxError> {
        let splits = match self.reader() {
            Some(reader) => reader.snapshot(checkpoint_id)?,
            None => Vec::new(),
        };
        put_list(state, SPLITS_STATE, Redistribution::Union, &splits)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: CheckpointId) -> Result<(), BoxError> {
        match self.reader() {
            Some(reader) => reader.notify_checkpoint_complete(checkpoint_id),
            None => Ok(()),
        }
    }
}
