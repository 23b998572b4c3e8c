//! `KafkaSource`: partitions are splits, each split's state is the next offset to read, and the
//! consumer is `assign()`ed explicit offsets (never group-managed positions), so checkpoints and
//! savepoints, not the broker, say where a restored job resumes. Offsets are committed to the
//! consumer group when a checkpoint completes, for lag monitoring only (as Flink does).

use crate::client::{self, Brokers};
use crate::deserialize::{Deserializer, KafkaRecord, UndeserializableRecord};
use crate::owner::partition_owner;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use weir::{
    BoxError, CheckpointId, Collector, Exclusive, OutputTag, SourcePoll, SourceSplit, SplitContext, SplitIndex,
    SplitReader, SplitSource, Unrecoverable,
};

/// Where a partition is read from when no checkpoint or savepoint says (Flink's
/// `OffsetsInitializer`). Partitions found after the start, or unknown to a restored snapshot,
/// are read from the earliest offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartingOffsets {
    Earliest,
    Latest,
    /// The consumer group's committed offsets; partitions without one start at `reset`.
    Committed {
        reset: Reset,
    },
    /// The first record whose timestamp is at or after this many milliseconds since the epoch.
    Timestamp(i64),
}

/// Where a partition without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    Earliest,
    Latest,
}

#[derive(Debug, Clone)]
enum Topics {
    List(Vec<String>),
    Pattern(Regex),
}

/// A partition and the next offset to read. A split found at the start may carry where to start
/// instead (`start`), until the reader resolves it to an offset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KafkaSplit {
    pub topic: String,
    pub partition: i32,
    /// The next offset to read; `None` until the start is resolved.
    pub offset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<Start>,
}

/// A starting position not yet resolved to an offset (never in a snapshot: the reader resolves
/// it before it reads, and a snapshot holds offsets).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
enum Start {
    Earliest,
    Latest,
    Committed { reset_latest: bool },
    Timestamp(i64),
}

impl SourceSplit for KafkaSplit {
    /// `<topic>-<partition>`, as Flink's `TopicPartition.toString()`.
    fn split_id(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }
}

/// Reads Kafka topics. Build it with [`KafkaSource::utf8`], [`KafkaSource::bytes`],
/// [`KafkaSource::json`] or [`KafkaSource::with_deserializer`], then name the topics.
pub struct KafkaSource<T> {
    brokers: Brokers,
    topics: Topics,
    group_id: Option<String>,
    starting: StartingOffsets,
    discovery: Option<Duration>,
    properties: Vec<(String, String)>,
    commit_on_checkpoint: bool,
    deserializer: Deserializer<T>,
    /// Where records the deserializer refuses go (default: they fail the job).
    undeserializable: Option<OutputTag<UndeserializableRecord>>,
    /// A metadata client, made at the first discovery.
    metadata: Exclusive<Option<BaseConsumer>>,
}

impl<T> Clone for KafkaSource<T> {
    fn clone(&self) -> Self {
        KafkaSource {
            brokers: self.brokers.clone(),
            topics: self.topics.clone(),
            group_id: self.group_id.clone(),
            starting: self.starting,
            discovery: self.discovery,
            properties: self.properties.clone(),
            commit_on_checkpoint: self.commit_on_checkpoint,
            deserializer: self.deserializer.clone(),
            undeserializable: self.undeserializable.clone(),
            // Each copy (one per subtask) has a client of its own, dropped with it.
            metadata: Exclusive::new(None),
        }
    }
}

impl KafkaSource<String> {
    /// Record values as UTF-8 text. A value that is not UTF-8, or a null value, fails the job
    /// naming the topic, partition and offset.
    pub fn utf8(brokers: impl Into<String>) -> Self {
        Self::with_deserializer(brokers, crate::deserialize::utf8_value)
    }
}

impl KafkaSource<Vec<u8>> {
    /// Record values as bytes (a null value is empty).
    pub fn bytes(brokers: impl Into<String>) -> Self {
        Self::with_deserializer(brokers, |r: &KafkaRecord<'_>| Ok(r.value.unwrap_or_default().to_vec()))
    }
}

impl<T: serde::de::DeserializeOwned + 'static> KafkaSource<T> {
    /// Record values as JSON documents of type `T`.
    pub fn json(brokers: impl Into<String>) -> Self {
        Self::with_deserializer(brokers, crate::deserialize::json_value::<T>)
    }
}

impl<T> KafkaSource<T> {
    /// Records through a deserializer of your own (it sees the key, value, timestamp and where
    /// the record is); an error fails the job naming the topic, partition and offset.
    pub fn with_deserializer(
        brokers: impl Into<String>,
        deserialize: impl Fn(&KafkaRecord<'_>) -> Result<T, BoxError> + Send + Sync + 'static,
    ) -> Self {
        KafkaSource {
            brokers: Brokers(brokers.into()),
            topics: Topics::List(Vec::new()),
            group_id: None,
            starting: StartingOffsets::Earliest,
            discovery: Some(Duration::from_secs(300)),
            properties: Vec::new(),
            commit_on_checkpoint: true,
            deserializer: Arc::new(deserialize),
            undeserializable: None,
            metadata: Exclusive::new(None),
        }
    }

    /// Reads these topics.
    pub fn topics<S: AsRef<str>>(mut self, topics: &[S]) -> Self {
        self.topics = Topics::List(topics.iter().map(|t| t.as_ref().to_string()).collect());
        self
    }

    /// Reads every topic whose whole name matches `pattern` (a regular expression), including
    /// topics created while the job runs (found at the next partition discovery).
    pub fn topic_pattern(mut self, pattern: &str) -> Result<Self, regex::Error> {
        self.topics = Topics::Pattern(Regex::new(&format!("^(?:{pattern})$"))?);
        Ok(self)
    }

    /// The consumer group offsets are committed to when checkpoints complete (for monitoring),
    /// and read from with [`StartingOffsets::Committed`].
    pub fn group_id(mut self, group: impl Into<String>) -> Self {
        self.group_id = Some(group.into());
        self
    }

    /// Where partitions start when the job does not restore them (default: earliest).
    pub fn starting_offsets(mut self, starting: StartingOffsets) -> Self {
        self.starting = starting;
        self
    }

    /// How often to look for new partitions and topics (Flink's `partition.discovery.interval.ms`,
    /// default 5 minutes); `None` reads only those found at the start.
    pub fn partition_discovery_interval(mut self, interval: Option<Duration>) -> Self {
        self.discovery = interval;
        self
    }

    /// Any librdkafka consumer property (`security.protocol`, `client.id`, ...). Properties that
    /// would hand positions to the broker (`enable.auto.commit`) are overridden.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }

    /// Sends records the deserializer refuses to the side output `tag` (read it with
    /// `get_side_output(&tag)` on the source's stream) instead of failing the job.
    pub fn undeserializable_to(mut self, tag: OutputTag<UndeserializableRecord>) -> Self {
        self.undeserializable = Some(tag);
        self
    }

    /// Whether completed checkpoints commit offsets to the group (default true; without a
    /// group id nothing is committed).
    pub fn commit_offsets_on_checkpoint(mut self, commit: bool) -> Self {
        self.commit_on_checkpoint = commit;
        self
    }

    fn consumer(&self, purpose: &str) -> Result<BaseConsumer, BoxError> {
        client::consumer(&self.brokers, self.group_id.as_deref(), &self.properties, purpose)
    }

    fn start(&self, initial: bool) -> Start {
        if !initial {
            return Start::Earliest;
        }
        match self.starting {
            StartingOffsets::Earliest => Start::Earliest,
            StartingOffsets::Latest => Start::Latest,
            StartingOffsets::Committed { reset } => Start::Committed { reset_latest: reset == Reset::Latest },
            StartingOffsets::Timestamp(ts) => Start::Timestamp(ts),
        }
    }

    /// The partitions of the topics to read, as the brokers know them now.
    fn partitions(&mut self) -> Result<Vec<(String, i32)>, BoxError> {
        if self.metadata.get_mut().is_none() {
            let client = self.consumer("metadata")?;
            *self.metadata.get_mut() = Some(client);
        }
        let client = self.metadata.get_mut().as_ref().expect("made above");
        let mut found = Vec::new();
        match &self.topics {
            Topics::List(topics) if topics.is_empty() => {
                return Err(Unrecoverable::boxed(
                    "the Kafka source has no topics: name them with .topics(&[...]) or .topic_pattern(...)",
                ))
            }
            Topics::List(topics) => {
                for topic in topics {
                    let metadata = client.fetch_metadata(Some(topic), client::TIMEOUT).map_err(|e| {
                        self.brokers.unreachable(&format!("reading the metadata of topic '{topic}'"), e)
                    })?;
                    for t in metadata.topics() {
                        if t.error().is_some() || t.partitions().is_empty() {
                            return Err(format!(
                                "topic '{}' does not exist on the Kafka brokers {}: create it, or correct the topic name",
                                t.name(),
                                self.brokers
                            )
                            .into());
                        }
                        found.extend(t.partitions().iter().map(|p| (t.name().to_string(), p.id())));
                    }
                }
            }
            Topics::Pattern(pattern) => {
                let metadata = client
                    .fetch_metadata(None, client::TIMEOUT)
                    .map_err(|e| self.brokers.unreachable("listing topics", e))?;
                for t in metadata.topics().iter().filter(|t| t.error().is_none() && pattern.is_match(t.name())) {
                    found.extend(t.partitions().iter().map(|p| (t.name().to_string(), p.id())));
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

impl<T: Send + 'static> SplitSource<T> for KafkaSource<T> {
    type Split = KafkaSplit;
    type Reader = KafkaReader<T>;

    fn discover(&mut self, _: &SplitContext, initial: bool) -> Result<Vec<KafkaSplit>, BoxError> {
        let start = self.start(initial);
        Ok(self
            .partitions()?
            .into_iter()
            .map(|(topic, partition)| KafkaSplit { topic, partition, offset: None, start: Some(start) })
            .collect())
    }

    fn discovery_interval(&self) -> Option<Duration> {
        self.discovery
    }

    /// Partitions are never finished: the source is unbounded, discovery or not.
    fn is_bounded(&self) -> bool {
        false
    }

    /// Flink's formula: a topic's partitions go round robin from a start derived from its name.
    fn owner(&self, split: &KafkaSplit, parallelism: u32) -> u32 {
        partition_owner(&split.topic, split.partition, parallelism)
    }

    fn create_reader(&self, ctx: &SplitContext) -> Result<KafkaReader<T>, BoxError> {
        Ok(KafkaReader {
            consumer: self.consumer(&format!("reader {}", ctx.subtask))?,
            brokers: self.brokers.clone(),
            deserializer: self.deserializer.clone(),
            undeserializable: self.undeserializable.clone(),
            commit: self.commit_on_checkpoint && self.group_id.is_some(),
            subtask: ctx.subtask,
            log_restored: ctx.restored,
            partitions: Vec::new(),
            pending_commits: BTreeMap::new(),
            broker_trouble: None,
        })
    }
}

struct Partition {
    index: SplitIndex,
    split: KafkaSplit,
}

/// Reads the partitions of one subtask through one consumer.
pub struct KafkaReader<T> {
    consumer: BaseConsumer,
    brokers: Brokers,
    deserializer: Deserializer<T>,
    undeserializable: Option<OutputTag<UndeserializableRecord>>,
    commit: bool,
    subtask: u32,
    /// The first splits are restored ones: log them as Flink does.
    log_restored: bool,
    partitions: Vec<Partition>,
    /// Offsets to commit per checkpoint once it completes.
    pending_commits: BTreeMap<CheckpointId, TopicPartitionList>,
    /// The last client error seen, logged once until records flow again.
    broker_trouble: Option<String>,
}

const RECORDS_PER_POLL: usize = 1024;
const IDLE: Duration = Duration::from_millis(5);
/// At most this many checkpoints wait for their offsets to be committed (Flink keeps 100).
const MAX_PENDING_COMMITS: usize = 100;

impl<T> KafkaReader<T> {
    /// Turns each split's start into an offset (Flink's enumerator does this before assigning).
    fn resolve(&self, split: &mut KafkaSplit) -> Result<(), BoxError> {
        let Some(start) = split.start.take() else { return Ok(()) };
        if split.offset.is_some() {
            return Ok(());
        }
        let (topic, partition) = (split.topic.as_str(), split.partition);
        let where_ = format!("the start of partition {topic}-{partition}");
        let watermarks = || {
            self.consumer
                .fetch_watermarks(topic, partition, client::TIMEOUT)
                .map_err(|e| self.brokers.unreachable(&format!("reading {where_}"), e))
        };
        let offset = match start {
            Start::Earliest => watermarks()?.0,
            Start::Latest => watermarks()?.1,
            Start::Timestamp(ts) => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(topic, partition, Offset::Offset(ts))?;
                let found = self
                    .consumer
                    .offsets_for_times(tpl, client::TIMEOUT)
                    .map_err(|e| self.brokers.unreachable(&format!("reading {where_}"), e))?;
                match found.find_partition(topic, partition).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    // No record at or after the timestamp: start at the end.
                    _ => watermarks()?.1,
                }
            }
            Start::Committed { reset_latest } => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, partition);
                let committed = self
                    .consumer
                    .committed_offsets(tpl, client::TIMEOUT)
                    .map_err(|e| self.brokers.unreachable(&format!("reading the committed offset of {where_}"), e))?;
                match committed.find_partition(topic, partition).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) if o >= 0 => o,
                    _ if reset_latest => watermarks()?.1,
                    _ => watermarks()?.0,
                }
            }
        };
        split.offset = Some(offset);
        Ok(())
    }

    fn assign(&self) -> Result<(), BoxError> {
        let mut tpl = TopicPartitionList::new();
        for p in &self.partitions {
            let offset = p.split.offset.map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(&p.split.topic, p.split.partition, offset)?;
        }
        self.consumer.assign(&tpl)?;
        Ok(())
    }
}

impl<T: Send + 'static> SplitReader<T, KafkaSplit> for KafkaReader<T> {
    fn add_splits(&mut self, splits: Vec<(SplitIndex, KafkaSplit)>) -> Result<(), BoxError> {
        if std::mem::take(&mut self.log_restored) {
            let offsets: Vec<String> =
                splits.iter().map(|(_, s)| format!("{}={}", s.split_id(), s.offset.unwrap_or(-2))).collect();
            tracing::info!(
                "Consumer subtask {} will start reading {} partitions with offsets in restored state: {{{}}}",
                self.subtask,
                splits.len(),
                offsets.join(", ")
            );
        }
        for (index, mut split) in splits {
            self.resolve(&mut split)?;
            self.partitions.push(Partition { index, split });
        }
        self.assign()
    }

    fn poll(&mut self, out: &mut Collector<'_, T>) -> Result<SourcePoll, BoxError> {
        if self.partitions.is_empty() {
            return Ok(SourcePoll::Exhausted);
        }
        let mut emitted = 0;
        while emitted < RECORDS_PER_POLL {
            let message = match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    // librdkafka reconnects by itself: a lost broker shows up as errors here
                    // until it is back, and reading resumes from the positions it had.
                    let text = e.to_string();
                    if self.broker_trouble.as_deref() != Some(text.as_str()) {
                        tracing::warn!("Kafka consumer of subtask {} (brokers {}): {text}", self.subtask, self.brokers);
                        self.broker_trouble = Some(text);
                    }
                    return Ok(SourcePoll::Idle(Duration::from_millis(50)));
                }
            };
            let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
            let Some(p) = self.partitions.iter().position(|p| p.split.partition == partition && p.split.topic == topic)
            else {
                continue;
            };
            // Records before the position are left from an earlier assignment.
            if self.partitions[p].split.offset.is_some_and(|next| offset < next) {
                continue;
            }
            let record = KafkaRecord {
                topic,
                partition,
                offset,
                timestamp: message.timestamp().to_millis(),
                key: message.key(),
                value: message.payload(),
            };
            let value = match (self.deserializer)(&record) {
                Ok(value) => Some(value),
                Err(e) => match &self.undeserializable {
                    Some(tag) => {
                        out.output(
                            tag,
                            UndeserializableRecord {
                                topic: topic.to_string(),
                                partition,
                                offset,
                                timestamp: record.timestamp,
                                key: record.key.map(<[u8]>::to_vec),
                                value: record.value.map(<[u8]>::to_vec),
                                error: e.to_string(),
                            },
                        );
                        None
                    }
                    None => {
                        return Err(Unrecoverable::boxed(format!(
                            "cannot deserialize the record at offset {offset} of partition {topic}-{partition}: {e}. Fix the producer, or route such records to a side output (KafkaSource::undeserializable_to)"
                        )))
                    }
                },
            };
            let timestamp = record.timestamp;
            let entry = &mut self.partitions[p];
            entry.split.offset = Some(offset + 1);
            if let Some(value) = value {
                out.collect_in_split(entry.index, value, timestamp);
            }
            emitted += 1;
        }
        if emitted > 0 {
            self.broker_trouble = None;
            Ok(SourcePoll::More)
        } else {
            Ok(SourcePoll::Idle(IDLE))
        }
    }

    fn snapshot(&mut self, checkpoint_id: CheckpointId) -> Result<Vec<KafkaSplit>, BoxError> {
        if self.commit {
            let mut tpl = TopicPartitionList::new();
            for p in &self.partitions {
                if let Some(next) = p.split.offset {
                    tpl.add_partition_offset(&p.split.topic, p.split.partition, Offset::Offset(next))?;
                }
            }
            self.pending_commits.insert(checkpoint_id, tpl);
            while self.pending_commits.len() > MAX_PENDING_COMMITS {
                self.pending_commits.pop_first();
            }
        }
        Ok(self.partitions.iter().map(|p| p.split.clone()).collect())
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: CheckpointId) -> Result<(), BoxError> {
        let Some(offsets) = self.pending_commits.remove(&checkpoint_id) else { return Ok(()) };
        self.pending_commits.retain(|id, _| *id > checkpoint_id);
        if offsets.count() == 0 {
            return Ok(());
        }
        // For monitoring only: a failed commit is logged and the job goes on (as in Flink).
        if let Err(e) = self.consumer.commit(&offsets, CommitMode::Async) {
            tracing::warn!("Failed to commit consumer offsets for checkpoint {checkpoint_id}: {e}");
        }
        Ok(())
    }
}
