//! `DataStream`, `KeyedStream` and `SinkStream`: the typed handles users build jobs with.

use crate::env::{EnvInner, PendingEdge};
use crate::functions::{BoxError, Collector, Context, KeyedProcessFunction, OutputTag, RuntimeContext, SinkFunction};
use crate::operators::{ChainedSpec, FilterOp, FlatMapOp, KeySelector, KeyedProcessSpec, MapOp, SinkSpec};
use crate::watermarks::{WatermarkStrategy, WatermarksSpec};
use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;
use weir_runtime::channel::{KeyHashFn, Record, TypeOps};
use weir_runtime::graph::{EdgeKind, NodeBuilder, NodeSpec};
use weir_runtime::metrics::OperatorMetrics;
use weir_runtime::Output;
use weir_state::{Key, StateData, ValueState, ValueStateDescriptor};

/// A stream of `T` produced by one operator. Settings (`uid`, `name`, parallelism) apply to that
/// operator.
pub struct DataStream<T> {
    pub(crate) env: Rc<RefCell<EnvInner>>,
    pub(crate) node: usize,
    pub(crate) edge: EdgeKind,
    /// Set for a side output: the stream is the producer's records of this tag.
    pub(crate) side_output: Option<String>,
    pub(crate) _types: PhantomData<fn() -> T>,
}

macro_rules! operator_settings {
    () => {
        /// Sets the operator's uid: the stable identity its state is stored under. Set it on
        /// every stateful operator, and never change it once a job has taken a savepoint.
        pub fn uid(self, uid: &str) -> Self {
            self.env.borrow_mut().nodes[self.node].uid = Some(uid.to_string());
            self
        }
        /// Sets the operator's display name.
        pub fn name(self, name: &str) -> Self {
            self.env.borrow_mut().nodes[self.node].name = name.to_string();
            self
        }
        pub fn set_parallelism(self, parallelism: u32) -> Self {
            self.env.borrow_mut().nodes[self.node].parallelism = Some(parallelism);
            self
        }
        /// Sets the max parallelism: the number of key groups, fixed for the life of the state.
        pub fn set_max_parallelism(self, max_parallelism: u32) -> Self {
            self.env.borrow_mut().nodes[self.node].max_parallelism = Some(max_parallelism);
            self
        }
    };
}

impl<T> Clone for DataStream<T> {
    /// Another handle to the same stream, to attach a second consumer (fan-out).
    fn clone(&self) -> Self {
        DataStream {
            env: self.env.clone(),
            node: self.node,
            edge: self.edge,
            side_output: self.side_output.clone(),
            _types: PhantomData,
        }
    }
}

impl<T: Record> DataStream<T> {
    operator_settings!();

    /// The main output of node `node`.
    pub(crate) fn new(env: Rc<RefCell<EnvInner>>, node: usize) -> Self {
        DataStream { env, node, edge: EdgeKind::Forward, side_output: None, _types: PhantomData }
    }

    /// The edge from this stream's producer to a new consumer.
    pub(crate) fn edge_out(&self, key_hash: Option<Arc<dyn std::any::Any + Send + Sync>>) -> PendingEdge {
        PendingEdge { from: self.node, kind: self.edge, key_hash, side_output: self.side_output.clone() }
    }

    fn add<O: Record>(
        &self,
        name: &str,
        stateful: bool,
        spec: Arc<dyn NodeSpec>,
        key_hash: Option<Arc<dyn std::any::Any + Send + Sync>>,
    ) -> DataStream<O> {
        self.add_node(
            NodeBuilder { stateful, ..NodeBuilder::new(name, spec, Some(Arc::new(TypeOps::<O>::new()))) },
            key_hash,
        )
    }

    pub(crate) fn add_node<O: Record>(
        &self,
        node: NodeBuilder,
        key_hash: Option<Arc<dyn std::any::Any + Send + Sync>>,
    ) -> DataStream<O> {
        let index = self.env.borrow_mut().add_node(node, Some(self.edge_out(key_hash)));
        DataStream::new(self.env.clone(), index)
    }

    /// The records the producer of this stream emitted to the side output `tag` (from a keyed
    /// process function's `ctx.output(&tag, value)`, or a window's late data). Settings such as
    /// `uid` belong to the producer, not to a side output.
    pub fn get_side_output<X: Record>(&self, tag: &OutputTag<X>) -> DataStream<X> {
        let mut env = self.env.borrow_mut();
        let sides = &mut env.nodes[self.node].side_outputs;
        match sides.iter().find(|(id, _)| id == tag.id()) {
            Some((_, ty)) => assert!(
                ty.type_name() == std::any::type_name::<X>(),
                "side output '{}' is read as {} and as {}; one tag id, one type",
                tag.id(),
                ty.type_name(),
                std::any::type_name::<X>()
            ),
            None => sides.push((tag.id().to_string(), Arc::new(TypeOps::<X>::new()))),
        }
        DataStream {
            env: self.env.clone(),
            node: self.node,
            edge: EdgeKind::Forward,
            side_output: Some(tag.id().to_string()),
            _types: PhantomData,
        }
    }

    /// Assigns event timestamps and generates watermarks here (Flink's
    /// `assignTimestampsAndWatermarks`); watermarks from upstream are replaced by this strategy's.
    /// Prefer setting the strategy on the source (`StreamEnv::from_source`).
    pub fn assign_timestamps_and_watermarks(self, strategy: WatermarkStrategy<T>) -> DataStream<T> {
        self.add("Timestamps/Watermarks", false, Arc::new(WatermarksSpec { strategy }), None)
    }

    pub fn map<O: Record, F: FnMut(T) -> O + Clone + Send + Sync + 'static>(self, f: F) -> DataStream<O> {
        fn build<T, O: Send + 'static, F: FnMut(T) -> O + Send + 'static>(
            f: F,
            next: Box<dyn Output<O>>,
            metrics: OperatorMetrics,
        ) -> Box<dyn Output<T>> {
            Box::new(MapOp { f, next, metrics })
        }
        self.add("Map", false, Arc::new(ChainedSpec::<T, O, F> { f, build: build::<T, O, F> }), None)
    }

    /// One stream of the records of this stream and of `others` (all of this job, of the same
    /// type), as Flink's `union`: no order between the inputs; checkpoint barriers are aligned
    /// across all of them.
    pub fn union(self, others: impl IntoIterator<Item = DataStream<T>>) -> DataStream<T> {
        let others: Vec<DataStream<T>> = others.into_iter().collect();
        if others.is_empty() {
            return self;
        }
        assert!(
            others.iter().all(|o| Rc::ptr_eq(&o.env, &self.env)),
            "union: every stream must come from the same StreamEnv"
        );
        fn build<T: Send + 'static>(_: (), next: Box<dyn Output<T>>, metrics: OperatorMetrics) -> Box<dyn Output<T>> {
            Box::new(MapOp { f: |record: T| record, next, metrics })
        }
        let spec = Arc::new(ChainedSpec::<T, T, ()> { f: (), build: build::<T> });
        let node = NodeBuilder::new("Union", spec, Some(Arc::new(TypeOps::<T>::new())));
        let inputs: Vec<PendingEdge> = std::iter::once(&self).chain(&others).map(|s| s.edge_out(None)).collect();
        let index = self.env.borrow_mut().add_node(node, inputs);
        DataStream::new(self.env.clone(), index)
    }

    pub fn filter<F: FnMut(&T) -> bool + Clone + Send + Sync + 'static>(self, f: F) -> DataStream<T> {
        fn build<T: Send + 'static, F: FnMut(&T) -> bool + Send + 'static>(
            f: F,
            next: Box<dyn Output<T>>,
            metrics: OperatorMetrics,
        ) -> Box<dyn Output<T>> {
            Box::new(FilterOp { f, next, metrics })
        }
        self.add("Filter", false, Arc::new(ChainedSpec::<T, T, F> { f, build: build::<T, F> }), None)
    }

    pub fn flat_map<
        O: Record,
        R: IntoIterator<Item = O> + 'static,
        F: FnMut(T) -> R + Clone + Send + Sync + 'static,
    >(
        self,
        f: F,
    ) -> DataStream<O> {
        fn build<T, O: Send + 'static, R: IntoIterator<Item = O>, F: FnMut(T) -> R + Send + 'static>(
            f: F,
            next: Box<dyn Output<O>>,
            metrics: OperatorMetrics,
        ) -> Box<dyn Output<T>> {
            Box::new(FlatMapOp { f, next, metrics })
        }
        self.add("FlatMap", false, Arc::new(ChainedSpec::<T, O, F> { f, build: build::<T, O, R, F> }), None)
    }

    /// Distributes records round robin to the next operator.
    pub fn rebalance(mut self) -> Self {
        self.edge = EdgeKind::Rebalance;
        self
    }

    /// Sends every record to every subtask of the next operator.
    pub fn broadcast(mut self) -> Self {
        self.edge = EdgeKind::Broadcast;
        self
    }

    /// Partitions the stream by key. `key` must be deterministic: it decides the key group.
    pub fn key_by<K: Key, F: Fn(&T) -> K + Send + Sync + 'static>(self, key: F) -> KeyedStream<K, T> {
        KeyedStream { stream: self, key: KeySelector::Computed(Arc::new(key)) }
    }

    /// Partitions the stream by a key borrowed from each record: `.key_by_ref(|e: &Event| &e.user)`
    /// partitions exactly as `.key_by(|e: &Event| e.user.clone())` (same key groups, same state,
    /// savepoints interchangeable), but the keyed operator copies each key into memory it keeps
    /// instead of allocating a new key per record.
    pub fn key_by_ref<K: Key, F>(self, key: F) -> KeyedStream<K, T>
    where
        F: for<'a> Fn(&'a T) -> &'a K + Send + Sync + 'static,
    {
        KeyedStream { stream: self, key: KeySelector::Borrowed(Arc::new(key)) }
    }

    pub fn sink<S: SinkFunction<T> + Clone + Sync>(self, sink: S) -> SinkStream {
        let stateful = sink.is_stateful();
        let spec = Arc::new(SinkSpec::<T, S> { sink, _types: PhantomData });
        let node = NodeBuilder { stateful, ..NodeBuilder::new("Sink", spec, None) };
        let index = self.env.borrow_mut().add_node(node, Some(self.edge_out(None)));
        SinkStream { env: self.env.clone(), node: index }
    }
}

/// The handle of a sink, for its settings.
pub struct SinkStream {
    env: Rc<RefCell<EnvInner>>,
    node: usize,
}

impl SinkStream {
    operator_settings!();
}

/// A stream partitioned by key: records with equal keys go to the same subtask and see the same
/// keyed state.
pub struct KeyedStream<K, T> {
    stream: DataStream<T>,
    pub(crate) key: KeySelector<K, T>,
}

impl<K: Key, T: Record> KeyedStream<K, T> {
    /// Processes each record with keyed state and timers; side outputs it emits are read with
    /// `get_side_output` on the result.
    pub fn process<O: Record, F: KeyedProcessFunction<K, T, O> + Clone + Sync>(self, f: F) -> DataStream<O> {
        let spec = Arc::new(KeyedProcessSpec { f, key: self.key.clone(), _types: PhantomData });
        self.add_keyed("KeyedProcess", spec)
    }

    /// Adds a keyed operator (state, timers, side outputs) behind a key-group edge.
    pub(crate) fn add_keyed<O: Record>(self, name: &str, spec: Arc<dyn NodeSpec>) -> DataStream<O> {
        let key = self.key.clone();
        let hash: KeyHashFn<T> = Arc::new(move |t: &T| key.key_hash(t));
        let mut stream = self.stream;
        stream.edge = EdgeKind::KeyGroup;
        let node = NodeBuilder {
            stateful: true,
            emits_side_outputs: true,
            ..NodeBuilder::new(name, spec, Some(Arc::new(TypeOps::<O>::new())))
        };
        stream.add_node(node, Some(Arc::new(hash)))
    }

    /// Combines the records of each key with `f`, emitting the running result.
    pub fn reduce<F: Fn(T, T) -> T + Clone + Send + Sync + 'static>(self, f: F) -> DataStream<T>
    where
        T: StateData,
    {
        self.process(ReduceFunction { f: move |a, b| Some(f(a, b)), state: None, sum_type: "" }).name("Reduce")
    }

    /// Sums the field `field` per key, keeping the other fields of the key's first record (like
    /// Flink's `sum`): `.sum(|wc: &mut WordCount| &mut wc.frequency)`. A sum that overflows its
    /// type fails the job, naming the key (a restart would replay the same records; Flink's Java
    /// sum wraps around silently).
    pub fn sum<N: SumField, F: Fn(&mut T) -> &mut N + Clone + Send + Sync + 'static>(self, field: F) -> DataStream<T>
    where
        T: StateData,
    {
        let sum = move |mut acc: T, mut next: T| {
            let total = field(&mut acc).checked_sum(*field(&mut next))?;
            *field(&mut acc) = total;
            Some(acc)
        };
        let sum_type = std::any::type_name::<N>();
        self.process(ReduceFunction { f: sum, state: None, sum_type }).name("Sum")
    }
}

/// A numeric field `sum` adds up: integers add with overflow checks, floats as IEEE does.
pub trait SumField: Copy + Send + Sync + 'static {
    fn checked_sum(self, other: Self) -> Option<Self>;
}

macro_rules! checked_integers {
    ($($t:ty),*) => {$(
        impl SumField for $t {
            fn checked_sum(self, other: Self) -> Option<Self> {
                self.checked_add(other)
            }
        }
    )*};
}
checked_integers!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

impl SumField for f32 {
    fn checked_sum(self, other: Self) -> Option<Self> {
        Some(self + other)
    }
}

impl SumField for f64 {
    fn checked_sum(self, other: Self) -> Option<Self> {
        Some(self + other)
    }
}

/// Combines a key's records; `f` returns `None` when a sum overflows its field's type.
#[derive(Clone)]
struct ReduceFunction<F, T> {
    f: F,
    state: Option<ValueState<T>>,
    /// The summed field's type, named in the overflow error (a plain reduce never overflows).
    sum_type: &'static str,
}

impl<K: Key, T: StateData + Record, F: Fn(T, T) -> Option<T> + Clone + Send + Sync + 'static>
    KeyedProcessFunction<K, T, T> for ReduceFunction<F, T>
{
    fn open(&mut self, ctx: &mut RuntimeContext<'_, K>) -> Result<(), BoxError> {
        self.state = Some(ctx.value_state(&ValueStateDescriptor::new("reduce"))?);
        Ok(())
    }

    fn process(&mut self, value: T, state: &mut Context<'_, K>, out: &mut Collector<'_, T>) -> Result<(), BoxError> {
        let Some(handle) = self.state else {
            return Err("reduce state used before open".into());
        };
        let result = match handle.value(state)? {
            Some(acc) => (self.f)(acc, value).ok_or_else(|| {
                crate::Unrecoverable::boxed(format!(
                    "the sum of key {:?} overflows {}; a restart would replay the same records. Use a wider type",
                    state.key(),
                    self.sum_type
                ))
            })?,
            None => value,
        };
        handle.update(state, result.clone())?;
        out.collect(result);
        Ok(())
    }
}
