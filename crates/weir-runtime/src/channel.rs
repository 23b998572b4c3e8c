//! Channels between tasks: batches of records and barriers on bounded queues, the partitioners that
//! pick a channel, and the input side that aligns barriers across channels.

use crate::operator::{Barrier, ChainEvent, Control, Next, Output, SnapshotCapture, TaskEnv, TaskError, TaskResult};
use crossbeam_channel::{Receiver, Select, Sender};
use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;
use weir_core::key_group::{key_group_for_hash, operator_index_for_key_group};

/// Anything that flows between operators.
pub trait Record: Clone + Send + 'static {}
impl<T: Clone + Send + 'static> Record for T {}

/// What travels on a channel.
pub enum Message<T> {
    Records(Vec<T>),
    Barrier(Barrier),
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
    buffers: Vec<Vec<T>>,
    partitioner: Partitioner<T>,
    batch_size: usize,
    next: usize,
}

impl<T: Record> NetworkWriter<T> {
    pub fn new(senders: Vec<Sender<Message<T>>>, partitioner: Partitioner<T>, batch_size: usize) -> Self {
        let buffers = senders.iter().map(|_| Vec::with_capacity(batch_size)).collect();
        NetworkWriter { senders, buffers, partitioner, batch_size: batch_size.max(1), next: 0 }
    }

    #[inline]
    fn push(&mut self, channel: usize, record: T) -> TaskResult {
        let buf = &mut self.buffers[channel];
        buf.push(record);
        if buf.len() >= self.batch_size {
            self.send_batch(channel)?;
        }
        Ok(())
    }

    fn send_batch(&mut self, channel: usize) -> TaskResult {
        let batch = std::mem::replace(&mut self.buffers[channel], Vec::with_capacity(self.batch_size));
        self.senders[channel].send(Message::Records(batch)).map_err(|_| TaskError::Disconnected)
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
        for s in &self.senders {
            s.send(make()).map_err(|_| TaskError::Disconnected)?;
        }
        Ok(())
    }
}

impl<T: Record> Output<T> for NetworkWriter<T> {
    #[inline]
    fn emit(&mut self, record: T) -> TaskResult {
        match &self.partitioner {
            Partitioner::Forward => self.push(0, record),
            Partitioner::Rebalance => {
                let c = self.next;
                self.next = (c + 1) % self.senders.len();
                self.push(c, record)
            }
            Partitioner::KeyGroup { key_hash, max_parallelism } => {
                let kg = key_group_for_hash(key_hash(&record), *max_parallelism);
                let c = operator_index_for_key_group(*max_parallelism, self.senders.len() as u32, kg) as usize;
                self.push(c, record)
            }
            Partitioner::Broadcast => {
                let last = self.senders.len() - 1;
                for c in 0..last {
                    self.push(c, record.clone())?;
                }
                self.push(last, record)
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
            ChainEvent::EndOfData => self.broadcast_message(|| Message::EndOfData),
            ChainEvent::EndOfInput => self.broadcast_message(|| Message::EndOfInput),
            ChainEvent::CheckpointComplete(_) | ChainEvent::CheckpointAborted(_) => Ok(()),
        }
    }
}

/// Fan-out of one operator's output to several downstream outputs.
pub struct Tee<T> {
    outputs: Vec<Box<dyn Output<T>>>,
}

impl<T: Record> Output<T> for Tee<T> {
    fn emit(&mut self, record: T) -> TaskResult {
        let last = self.outputs.len() - 1;
        for o in &mut self.outputs[..last] {
            o.emit(record.clone())?;
        }
        self.outputs[last].emit(record)
    }
    fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult {
        for o in &mut self.outputs {
            o.event(event)?;
        }
        Ok(())
    }
}

/// An output that drops records: the end of a chain whose operator has no consumers.
pub struct Discard;

impl<T: Send> Output<T> for Discard {
    fn emit(&mut self, _: T) -> TaskResult {
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

/// The consumer side of a task: one channel per producer subtask, with barrier alignment.
pub struct InputGate<T> {
    inputs: Vec<Receiver<Message<T>>>,
    head: Box<dyn Output<T>>,
    blocked: Vec<bool>,
    ended: Vec<bool>,
    /// Channels that delivered end-of-data.
    drained: Vec<bool>,
    end_of_data_sent: bool,
    aligning: Option<Barrier>,
}

enum Ready<T> {
    Control(Control),
    Input(usize, Message<T>),
    Disconnected,
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
        }
    }

    fn next(&self, env: &TaskEnv, block: bool) -> Option<Ready<T>> {
        let mut sel = Select::new();
        let control_index = sel.recv(&env.control);
        let mut channels = Vec::with_capacity(self.inputs.len());
        for (i, rx) in self.inputs.iter().enumerate() {
            if !self.blocked[i] && !self.ended[i] {
                channels.push((sel.recv(rx), i));
            }
        }
        let op = if block { sel.select() } else { sel.try_select().ok()? };
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
            let ready = match self.next(env, false) {
                Some(r) => r,
                None => {
                    self.head.event(&mut ChainEvent::Flush)?;
                    match self.next(env, true) {
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
                Ready::Disconnected => return Err(TaskError::Disconnected),
                Ready::Input(_, Message::Records(batch)) => {
                    for r in batch {
                        self.head.emit(r)?;
                    }
                }
                Ready::Input(i, Message::Barrier(b)) => self.on_barrier(i, b, env)?,
                Ready::Input(i, Message::EndOfData) => {
                    self.drained[i] = true;
                    if !self.end_of_data_sent && self.drained.iter().zip(&self.ended).all(|(d, e)| *d || *e) {
                        self.end_of_data_sent = true;
                        self.head.event(&mut ChainEvent::EndOfData)?;
                    }
                }
                Ready::Input(i, Message::EndOfInput) => {
                    self.ended[i] = true;
                    self.maybe_aligned(env)?;
                }
            }
        }
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
    ) -> TaskResult<Box<dyn Any + Send>>;
    /// A `Box<dyn Output<T>>` fanning out to `outputs` (each a `Box<dyn Output<T>>`).
    fn tee(&self, outputs: Vec<Box<dyn Any + Send>>) -> TaskResult<Box<dyn Any + Send>>;
    /// A `Box<dyn Output<T>>` that drops everything.
    fn discard(&self) -> Box<dyn Any + Send>;
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
    b.downcast::<X>().map(|b| *b).map_err(|_| TaskError::Internal(format!("type mismatch while wiring {what}")))
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
        Ok(erase_output::<T>(Box::new(NetworkWriter::new(senders, partitioner, batch_size))))
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
