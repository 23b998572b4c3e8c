//! Channels between tasks: batches of records, barriers and watermarks on bounded queues, the
//! partitioners that pick a channel, and the input side that aligns barriers and combines
//! watermarks across channels.

use crate::metrics::WriterMetrics;
use crate::operator::{
    Barrier, ChainEvent, Control, Next, Output, SnapshotCapture, TaskEnv, TaskError, TaskResult, WatermarkStatus,
};
use crossbeam_channel::{Receiver, Select, Sender};
use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;
use weir_core::key_group::{key_group_for_hash, operator_index_for_key_group};
use weir_core::watermark::{Timestamp, WatermarkValve};

/// Anything that flows between operators.
pub trait Record: Clone + Send + 'static {}
impl<T: Clone + Send + 'static> Record for T {}

/// Records as they travel between tasks, with their event timestamps. Timestamps take no space
/// until a record carries one: `timestamps` is empty or as long as `records`, with
/// [`NO_TIMESTAMP`] for records without one.
pub struct Batch<T> {
    records: Vec<T>,
    timestamps: Vec<Timestamp>,
}

/// A record without event timestamp, in a batch that holds some with one (Flink uses the same
/// value as "no timestamp").
pub const NO_TIMESTAMP: Timestamp = i64::MIN;

impl<T> Batch<T> {
    pub fn with_capacity(capacity: usize) -> Self {
        Batch { records: Vec::with_capacity(capacity), timestamps: Vec::new() }
    }

    #[inline]
    pub fn push(&mut self, record: T, timestamp: Option<Timestamp>) {
        match timestamp {
            Some(ts) => {
                if self.timestamps.len() < self.records.len() {
                    self.timestamps.resize(self.records.len(), NO_TIMESTAMP);
                }
                self.timestamps.push(ts);
            }
            None if !self.timestamps.is_empty() => self.timestamps.push(NO_TIMESTAMP),
            None => {}
        }
        self.records.push(record);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Sends every record, with its timestamp, to `out`.
    pub fn emit_to(self, out: &mut dyn Output<T>) -> TaskResult {
        if self.timestamps.is_empty() {
            for r in self.records {
                out.emit(r, None)?;
            }
        } else {
            for (r, ts) in self.records.into_iter().zip(self.timestamps) {
                out.emit(r, (ts != NO_TIMESTAMP).then_some(ts))?;
            }
        }
        Ok(())
    }
}

/// What travels on a channel.
pub enum Message<T> {
    Records(Batch<T>),
    Barrier(Barrier),
    /// The producer's event time reached this point: no record with an earlier timestamp follows.
    Watermark(Timestamp),
    /// The producer became idle (no watermarks for a while) or active again.
    Status(WatermarkStatus),
    /// No more records on this channel; barriers may still follow (stop with drain).
    EndOfData,
    EndOfInput,
}

/// Extracts the stable key hash (Java `hashCode`-compatible) of a record's key.
pub type KeyHashFn<T> = Arc<dyn Fn(&T) -> i32 + Send + Sync>;

/// How a producer picks the channel of a record.
pub enum Partitioner<T> {
    /// To the consumer subtask with the same index.
    Forward,
    /// Round robin.
    Rebalance,
    /// By key group: `kg * p / max_p` (routing equals state ownership).
    KeyGroup { key_hash: KeyHashFn<T>, max_parallelism: u32 },
    /// To every consumer.
    Broadcast,
}

/// The producer side of one edge for one subtask: a batch buffer per consumer channel.
pub struct NetworkWriter<T> {
    senders: Vec<Sender<Message<T>>>,
    buffers: Vec<Batch<T>>,
    partitioner: Partitioner<T>,
    batch_size: usize,
    next: usize,
    metrics: WriterMetrics,
}

impl<T: Record> NetworkWriter<T> {
    pub fn new(
        senders: Vec<Sender<Message<T>>>,
        partitioner: Partitioner<T>,
        batch_size: usize,
        metrics: WriterMetrics,
    ) -> Self {
        let buffers = senders.iter().map(|_| Batch::with_capacity(batch_size)).collect();
        NetworkWriter { senders, buffers, partitioner, batch_size: batch_size.max(1), next: 0, metrics }
    }

    #[inline]
    fn push(&mut self, channel: usize, record: T, timestamp: Option<Timestamp>) -> TaskResult {
        let buf = &mut self.buffers[channel];
        buf.push(record, timestamp);
        if buf.len() >= self.batch_size {
            self.send_batch(channel)?;
        }
        Ok(())
    }

    /// Sends a full or flushed batch; counted here, once per batch, not per record. A broadcast
    /// edge counts what its first channel gets (every channel gets every record).
    fn send_batch(&mut self, channel: usize) -> TaskResult {
        let batch = std::mem::replace(&mut self.buffers[channel], Batch::with_capacity(self.batch_size));
        if channel == 0 || !matches!(self.partitioner, Partitioner::Broadcast) {
            self.metrics.records_sent.add(batch.len() as u64);
        }
        self.send(channel, Message::Records(batch))
    }

    /// Sends, timing the wait when the channel is full: the consumer is back-pressuring.
    fn send(&mut self, channel: usize, message: Message<T>) -> TaskResult {
        let message = match self.senders[channel].try_send(message) {
            Ok(()) => return Ok(()),
            Err(crossbeam_channel::TrySendError::Full(m)) => m,
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err(TaskError::Disconnected.into()),
        };
        let blocked = std::time::Instant::now();
        let sent = self.senders[channel].send(message).map_err(|_| TaskError::Disconnected.into());
        self.metrics.backpressured_nanos.add(blocked.elapsed().as_nanos() as u64);
        sent
    }

    fn flush(&mut self) -> TaskResult {
        for c in 0..self.buffers.len() {
            if !self.buffers[c].is_empty() {
                self.send_batch(c)?;
            }
        }
        Ok(())
    }

    fn broadcast_message(&mut self, make: impl Fn() -> Message<T>) -> TaskResult {
        self.flush()?;
        for c in 0..self.senders.len() {
            self.send(c, make())?;
        }
        Ok(())
    }
}

impl<T: Record> Output<T> for NetworkWriter<T> {
    #[inline]
    fn emit(&mut self, record: T, timestamp: Option<Timestamp>) -> TaskResult {
        match &self.partitioner {
            Partitioner::Forward => self.push(0, record, timestamp),
            Partitioner::Rebalance => {
                let c = self.next;
                self.next = (c + 1) % self.senders.len();
                self.push(c, record, timestamp)
            }
            Partitioner::KeyGroup { key_hash, max_parallelism } => {
                let kg = key_group_for_hash(key_hash(&record), *max_parallelism);
                let c = operator_index_for_key_group(*max_parallelism, self.senders.len() as u32, kg) as usize;
                self.push(c, record, timestamp)
            }
            Partitioner::Broadcast => {
                let last = self.senders.len() - 1;
                for c in 0..last {
                    self.push(c, record.clone(), timestamp)?;
                }
                self.push(last, record, timestamp)
            }
        }
    }

    fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult {
        match event {
            ChainEvent::Barrier(capture) => {
                let barrier = capture.barrier.clone();
                self.broadcast_message(|| Message::Barrier(barrier.clone()))
            }
            ChainEvent::Flush => self.flush(),
            ChainEvent::Watermark(w) => {
                let w = *w;
                self.broadcast_message(|| Message::Watermark(w))
            }
            ChainEvent::Status(status) => {
                let status = *status;
                self.broadcast_message(|| Message::Status(status))
            }
            ChainEvent::EndOfData => self.broadcast_message(|| Message::EndOfData),
            ChainEvent::EndOfInput => self.broadcast_message(|| Message::EndOfInput),
            ChainEvent::CheckpointComplete(_) | ChainEvent::CheckpointAborted(_) | ChainEvent::ProcessingTime(_) => {
                Ok(())
            }
        }
    }
}

/// Fan-out of one operator's output to several downstream outputs.
pub struct Tee<T> {
    outputs: Vec<Box<dyn Output<T>>>,
}

impl<T: Record> Output<T> for Tee<T> {
    fn emit(&mut self, record: T, timestamp: Option<Timestamp>) -> TaskResult {
        let last = self.outputs.len() - 1;
        for o in &mut self.outputs[..last] {
            o.emit(record.clone(), timestamp)?;
        }
        self.outputs[last].emit(record, timestamp)
    }
    fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult {
        for o in &mut self.outputs {
            o.event(event)?;
        }
        Ok(())
    }
}

/// An output whose record type is erased, to pass events to it (side outputs).
pub trait ErasedOutput: Send {
    fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult;
    /// The `Box<dyn Output<T>>` inside.
    fn as_any(&mut self) -> &mut dyn Any;
}

/// A typed output behind [`ErasedOutput`].
struct Typed<T>(Box<dyn Output<T>>);

impl<T: Record> ErasedOutput for Typed<T> {
    fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult {
        self.0.event(event)
    }
    fn as_any(&mut self) -> &mut dyn Any {
        &mut self.0
    }
}

/// The consumers of an operator's side outputs, by tag id. Every event (barriers, watermarks,
/// end of input) goes to them too, so their consumers align and end like the main output's.
#[derive(Default)]
pub struct SideOutputs {
    outputs: Vec<(String, Box<dyn ErasedOutput>)>,
}

impl SideOutputs {
    pub fn new(outputs: Vec<(String, Box<dyn ErasedOutput>)>) -> Self {
        SideOutputs { outputs }
    }

    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    /// The output of side output `tag`, if anything consumes it (and its type is `T`).
    pub fn get<T: Record>(&mut self, tag: &str) -> Option<&mut dyn Output<T>> {
        let (_, out) = self.outputs.iter_mut().find(|(t, _)| t == tag)?;
        out.as_any().downcast_mut::<Box<dyn Output<T>>>().map(|b| &mut **b as &mut dyn Output<T>)
    }

    /// Passes an event to every side output.
    pub fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult {
        for (_, out) in &mut self.outputs {
            out.event(event)?;
        }
        Ok(())
    }
}

/// An output that drops records: the end of a chain whose operator has no consumers.
pub struct Discard;

impl<T: Send> Output<T> for Discard {
    fn emit(&mut self, _: T, _: Option<Timestamp>) -> TaskResult {
        Ok(())
    }
    fn event(&mut self, _: &mut ChainEvent<'_>) -> TaskResult {
        Ok(())
    }
}

/// Result of running a task's input loop.
pub enum InputEnd {
    Finished,
    Canceled,
}

/// The consumer side of a task: one channel per producer subtask, with barrier alignment and the
/// watermark valve that combines the channels' event time.
pub struct InputGate<T> {
    inputs: Vec<Receiver<Message<T>>>,
    head: Box<dyn Output<T>>,
    blocked: Vec<bool>,
    ended: Vec<bool>,
    /// Channels that delivered end-of-data.
    drained: Vec<bool>,
    end_of_data_sent: bool,
    aligning: Option<Barrier>,
    valve: WatermarkValve,
}

enum Ready<T> {
    Control(Control),
    Input(usize, Message<T>),
    Disconnected,
}

/// How long [`InputGate::next`] may wait.
enum Wait {
    No,
    Until(Option<std::time::Duration>),
}

impl<T: Record> InputGate<T> {
    pub fn new(inputs: Vec<Receiver<Message<T>>>, head: Box<dyn Output<T>>) -> Self {
        let n = inputs.len();
        InputGate {
            inputs,
            head,
            blocked: vec![false; n],
            ended: vec![false; n],
            drained: vec![false; n],
            end_of_data_sent: false,
            aligning: None,
            valve: WatermarkValve::new(n),
        }
    }

    fn next(&self, env: &TaskEnv, wait: Wait) -> Option<Ready<T>> {
        let mut sel = Select::new();
        let control_index = sel.recv(&env.control);
        let mut channels = Vec::with_capacity(self.inputs.len());
        for (i, rx) in self.inputs.iter().enumerate() {
            if !self.blocked[i] && !self.ended[i] {
                channels.push((sel.recv(rx), i));
            }
        }
        let op = match wait {
            Wait::No => sel.try_select().ok()?,
            Wait::Until(None) => sel.select(),
            Wait::Until(Some(timeout)) => sel.select_timeout(timeout).ok()?,
        };
        let index = op.index();
        if index == control_index {
            return Some(match op.recv(&env.control) {
                Ok(c) => Ready::Control(c),
                Err(_) => Ready::Control(Control::Cancel),
            });
        }
        let Some(&(_, i)) = channels.iter().find(|(s, _)| *s == index) else {
            return Some(Ready::Disconnected);
        };
        Some(match op.recv(&self.inputs[i]) {
            Ok(m) => Ready::Input(i, m),
            Err(_) => Ready::Disconnected,
        })
    }

    /// Processes input until every channel has ended or the task is cancelled.
    pub fn run(&mut self, env: &TaskEnv) -> TaskResult<InputEnd> {
        loop {
            if self.ended.iter().all(|e| *e) {
                self.head.event(&mut ChainEvent::EndOfInput)?;
                return Ok(InputEnd::Finished);
            }
            env.fire_processing_time(&mut *self.head)?;
            let ready = match self.next(env, Wait::No) {
                Some(r) => r,
                None => {
                    self.head.event(&mut ChainEvent::Flush)?;
                    match self.next(env, Wait::Until(env.time_to_wakeup(None))) {
                        Some(r) => r,
                        None => continue,
                    }
                }
            };
            match ready {
                Ready::Control(c) => match env.apply_common(c.clone(), &mut self.head)? {
                    Next::Cancel => return Ok(InputEnd::Canceled),
                    Next::Finish | Next::Continue => {
                        if let Control::CheckpointAborted(id) = c {
                            if self.aligning.as_ref().is_some_and(|b| b.id == id) {
                                self.release_alignment();
                            }
                        }
                    }
                },
                Ready::Disconnected => return Err(TaskError::Disconnected.into()),
                Ready::Input(_, Message::Records(batch)) => batch.emit_to(&mut *self.head)?,
                Ready::Input(i, Message::Barrier(b)) => self.on_barrier(i, b, env)?,
                Ready::Input(i, Message::Watermark(w)) => {
                    let out = self.valve.on_watermark(i, w);
                    self.forward_valve(out)?;
                }
                Ready::Input(i, Message::Status(status)) => {
                    let out = self.valve.on_status(i, status == WatermarkStatus::Active);
                    self.forward_valve(out)?;
                }
                Ready::Input(i, Message::EndOfData) => {
                    self.drained[i] = true;
                    if !self.end_of_data_sent && self.drained.iter().zip(&self.ended).all(|(d, e)| *d || *e) {
                        self.end_of_data_sent = true;
                        self.head.event(&mut ChainEvent::EndOfData)?;
                    }
                }
                Ready::Input(i, Message::EndOfInput) => {
                    // An ended channel keeps its last watermark: a bounded input sent the maximum
                    // before ending, and a stopped one (stop with savepoint) must not move event
                    // time on, or windows the savepoint holds open would fire now and again
                    // after a restore.
                    self.ended[i] = true;
                    self.maybe_aligned(env)?;
                }
            }
        }
    }

    /// Passes what the valve decided down the chain: the combined watermark, then the status.
    fn forward_valve(&mut self, out: Option<weir_core::watermark::ValveOutput>) -> TaskResult {
        let Some(out) = out else { return Ok(()) };
        if let Some(w) = out.watermark {
            self.head.event(&mut ChainEvent::Watermark(w))?;
        }
        if let Some(active) = out.active {
            let status = if active { WatermarkStatus::Active } else { WatermarkStatus::Idle };
            self.head.event(&mut ChainEvent::Status(status))?;
        }
        Ok(())
    }

    fn on_barrier(&mut self, channel: usize, barrier: Barrier, env: &TaskEnv) -> TaskResult {
        match &self.aligning {
            Some(current) if current.id == barrier.id => {}
            Some(current) if current.id > barrier.id => return Ok(()), // stale barrier
            _ => {
                // A newer barrier: an older alignment can no longer complete.
                self.release_alignment();
                self.aligning = Some(barrier);
            }
        }
        self.blocked[channel] = true;
        self.maybe_aligned(env)
    }

    fn maybe_aligned(&mut self, env: &TaskEnv) -> TaskResult {
        let Some(barrier) = &self.aligning else {
            return Ok(());
        };
        let all = self.blocked.iter().zip(&self.ended).all(|(b, e)| *b || *e);
        if !all {
            return Ok(());
        }
        let mut capture = SnapshotCapture { barrier: barrier.clone(), operators: Vec::new() };
        self.release_alignment();
        self.head.event(&mut ChainEvent::Barrier(&mut capture))?;
        env.submit_snapshot(capture)
    }

    fn release_alignment(&mut self) {
        self.aligning = None;
        self.blocked.iter_mut().for_each(|b| *b = false);
    }
}

/// Type-erased operations on streams of one record type, so the job graph can wire channels,
/// writers and fan-outs without knowing the types. Erasure happens once, at deployment: records
/// themselves always travel typed.
pub trait StreamType: Send + Sync {
    /// A bounded channel: `(Sender<Message<T>>, Receiver<Message<T>>)`.
    fn channel(&self, capacity: usize) -> (Box<dyn Any + Send>, Box<dyn Any + Send>);
    /// A `Box<dyn Output<T>>` writing to `senders` with a partitioner from the edge.
    fn writer(
        &self,
        senders: Vec<Box<dyn Any + Send>>,
        partitioner: &ErasedPartitioner,
        batch_size: usize,
        metrics: WriterMetrics,
    ) -> TaskResult<Box<dyn Any + Send>>;
    /// A `Box<dyn Output<T>>` fanning out to `outputs` (each a `Box<dyn Output<T>>`).
    fn tee(&self, outputs: Vec<Box<dyn Any + Send>>) -> TaskResult<Box<dyn Any + Send>>;
    /// A `Box<dyn Output<T>>` that drops everything.
    fn discard(&self) -> Box<dyn Any + Send>;
    /// The record type's name, to tell two types apart when wiring.
    fn type_name(&self) -> &'static str;
    /// An erased `Box<dyn Output<T>>` as a side output that events can reach.
    fn side_output(&self, output: Box<dyn Any + Send>) -> TaskResult<Box<dyn ErasedOutput>>;
    /// The input loop of a task whose head consumes this type.
    fn input_gate(
        &self,
        receivers: Vec<Box<dyn Any + Send>>,
        head: Box<dyn Any + Send>,
    ) -> TaskResult<Box<dyn InputLoop>>;
}

/// A task's input loop with its types erased.
pub trait InputLoop: Send {
    fn run(&mut self, env: &TaskEnv) -> TaskResult<InputEnd>;
}

impl<T: Record> InputLoop for InputGate<T> {
    fn run(&mut self, env: &TaskEnv) -> TaskResult<InputEnd> {
        InputGate::run(self, env)
    }
}

/// An edge's partitioner, as stored in the graph.
pub enum ErasedPartitioner {
    Forward,
    Rebalance,
    Broadcast,
    /// `key_hash` holds a `KeyHashFn<T>`; the max parallelism is the consumer's.
    KeyGroup {
        key_hash: Arc<dyn Any + Send + Sync>,
        max_parallelism: u32,
    },
}

pub struct TypeOps<T>(PhantomData<fn() -> T>);

impl<T> TypeOps<T> {
    pub fn new() -> Self {
        TypeOps(PhantomData)
    }
}

impl<T> Default for TypeOps<T> {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) fn downcast<X: 'static>(b: Box<dyn Any + Send>, what: &str) -> TaskResult<X> {
    b.downcast::<X>().map(|b| *b).map_err(|_| TaskError::Internal(format!("type mismatch while wiring {what}")).into())
}

/// Creates a `Box<dyn Output<T>>` erased for the graph.
pub fn erase_output<T: Record>(o: Box<dyn Output<T>>) -> Box<dyn Any + Send> {
    Box::new(o)
}

/// Recovers a `Box<dyn Output<T>>` erased by [`erase_output`].
pub fn unerase_output<T: Record>(b: Box<dyn Any + Send>) -> TaskResult<Box<dyn Output<T>>> {
    downcast::<Box<dyn Output<T>>>(b, "an operator's output")
}

impl<T: Record> StreamType for TypeOps<T> {
    fn channel(&self, capacity: usize) -> (Box<dyn Any + Send>, Box<dyn Any + Send>) {
        let (tx, rx) = crossbeam_channel::bounded::<Message<T>>(capacity);
        (Box::new(tx), Box::new(rx))
    }

    fn writer(
        &self,
        senders: Vec<Box<dyn Any + Send>>,
        partitioner: &ErasedPartitioner,
        batch_size: usize,
        metrics: WriterMetrics,
    ) -> TaskResult<Box<dyn Any + Send>> {
        let senders = senders
            .into_iter()
            .map(|s| downcast::<Sender<Message<T>>>(s, "a channel"))
            .collect::<TaskResult<Vec<_>>>()?;
        let partitioner = match partitioner {
            ErasedPartitioner::Forward => Partitioner::Forward,
            ErasedPartitioner::Rebalance => Partitioner::Rebalance,
            ErasedPartitioner::Broadcast => Partitioner::Broadcast,
            ErasedPartitioner::KeyGroup { key_hash, max_parallelism } => {
                let key_hash = key_hash
                    .downcast_ref::<KeyHashFn<T>>()
                    .cloned()
                    .ok_or_else(|| TaskError::Internal("type mismatch in key partitioner".into()))?;
                Partitioner::KeyGroup { key_hash, max_parallelism: *max_parallelism }
            }
        };
        Ok(erase_output::<T>(Box::new(NetworkWriter::new(senders, partitioner, batch_size, metrics))))
    }

    fn tee(&self, outputs: Vec<Box<dyn Any + Send>>) -> TaskResult<Box<dyn Any + Send>> {
        let mut outputs = outputs.into_iter().map(unerase_output::<T>).collect::<TaskResult<Vec<_>>>()?;
        if outputs.len() == 1 {
            return Ok(erase_output::<T>(outputs.remove(0)));
        }
        Ok(erase_output::<T>(Box::new(Tee { outputs })))
    }

    fn discard(&self) -> Box<dyn Any + Send> {
        erase_output::<T>(Box::new(Discard))
    }

    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }

    fn side_output(&self, output: Box<dyn Any + Send>) -> TaskResult<Box<dyn ErasedOutput>> {
        Ok(Box::new(Typed(unerase_output::<T>(output)?)))
    }

    fn input_gate(
        &self,
        receivers: Vec<Box<dyn Any + Send>>,
        head: Box<dyn Any + Send>,
    ) -> TaskResult<Box<dyn InputLoop>> {
        let receivers = receivers
            .into_iter()
            .map(|r| downcast::<Receiver<Message<T>>>(r, "a channel"))
            .collect::<TaskResult<Vec<_>>>()?;
        Ok(Box::new(InputGate::new(receivers, unerase_output::<T>(head)?)))
    }
}
