//! Windows over keyed streams (Flink's `WindowedStream`): `key_by(..).window(assigner)`, then
//! `reduce`, `aggregate` or `process` (alone, or an incremental `reduce`/`aggregate` whose result a
//! process function sees with the window), with allowed lateness and late data to a side output.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use weir::{StreamEnv, WatermarkStrategy, TumblingEventTimeWindows};
//! # use weir::connectors::GeneratorSource;
//! # let env = StreamEnv::new();
//! let strategy = WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(100))
//!     .with_timestamp_assigner(|r: &(String, i64), _| r.1);
//! env.from_source(GeneratorSource::new(|i| (format!("w{}", i % 10), i as i64)), strategy)
//!     .key_by(|r: &(String, i64)| r.0.clone())
//!     .window(TumblingEventTimeWindows::of(Duration::from_secs(1)))
//!     .aggregate(weir::CountAggregate::default());
//! ```

mod assigners;
mod operator;

pub use assigners::{
    CountTrigger, EventTimeSessionWindows, GlobalWindows, ProcessingTimeSessionWindows, SlidingEventTimeWindows,
    SlidingProcessingTimeWindows, Trigger, TumblingEventTimeWindows, TumblingProcessingTimeWindows, WindowAssigner,
    GLOBAL_WINDOW,
};
pub use weir_core::window::TimeWindow;

use crate::functions::{BoxError, Collector, OutputTag};
use crate::stream::{DataStream, KeyedStream};
use operator::{WindowSettings, WindowSpec};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use weir_runtime::channel::Record;
use weir_state::{Key, StateData};

/// Incremental aggregation of a window's elements (Flink's `AggregateFunction`): the accumulator
/// is the window's state, so a window holds one value however many elements it has.
pub trait AggregateFunction<T>: Clone + Send + Sync + 'static {
    type Acc: StateData;
    type Output: Record;
    fn create_accumulator(&self) -> Self::Acc;
    fn add(&self, value: T, acc: Self::Acc) -> Self::Acc;
    fn get_result(&self, acc: &Self::Acc) -> Self::Output;
    /// Combines two accumulators (session windows merging).
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
}

/// Counts a window's elements.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountAggregate;

impl<T> AggregateFunction<T> for CountAggregate {
    type Acc = u64;
    type Output = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, _: T, acc: u64) -> u64 {
        acc + 1
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

/// What a window function sees besides the elements: the window and the operator's time.
pub struct WindowContext<'a> {
    window: &'a TimeWindow,
    watermark: i64,
    processing_time: i64,
}

impl WindowContext<'_> {
    /// The window that fired; `start()` and `end()` bound it (`end` exclusive).
    pub fn window(&self) -> &TimeWindow {
        self.window
    }
    pub fn current_watermark(&self) -> i64 {
        self.watermark
    }
    pub fn current_processing_time(&self) -> i64 {
        self.processing_time
    }
}

/// A function of a whole window (Flink's `ProcessWindowFunction`): called when the window fires,
/// with its key, the window and its elements (or the one incremental result when combined with
/// `reduce_with` / `aggregate_with`).
pub trait ProcessWindowFunction<K, I, O>: Clone + Send + Sync + 'static {
    fn process(
        &mut self,
        key: &K,
        ctx: &WindowContext<'_>,
        elements: Vec<I>,
        out: &mut Collector<'_, O>,
    ) -> Result<(), BoxError>;
}

/// How a window's contents accumulate: the state per window (`Acc`) and what a firing yields.
pub(crate) trait Incremental<T>: Clone + Send + Sync + 'static {
    type Acc: StateData;
    type Out;
    fn add(&self, acc: Option<Self::Acc>, value: T) -> Self::Acc;
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
    fn result(&self, acc: Self::Acc) -> Vec<Self::Out>;
}

/// What a firing window emits from its contents' results.
pub(crate) trait Finish<K, X, O>: Clone + Send + Sync + 'static {
    fn finish(
        &mut self,
        key: &K,
        ctx: &WindowContext<'_>,
        results: Vec<X>,
        out: &mut Collector<'_, O>,
    ) -> Result<(), BoxError>;
}

#[derive(Clone)]
struct Reduce<F>(F);

impl<T: StateData, F: Fn(T, T) -> T + Clone + Send + Sync + 'static> Incremental<T> for Reduce<F> {
    type Acc = T;
    type Out = T;
    fn add(&self, acc: Option<T>, value: T) -> T {
        match acc {
            Some(acc) => (self.0)(acc, value),
            None => value,
        }
    }
    fn merge(&self, a: T, b: T) -> T {
        (self.0)(a, b)
    }
    fn result(&self, acc: T) -> Vec<T> {
        vec![acc]
    }
}

#[derive(Clone)]
struct Aggregate<A>(A);

impl<T, A: AggregateFunction<T>> Incremental<T> for Aggregate<A> {
    type Acc = A::Acc;
    type Out = A::Output;
    fn add(&self, acc: Option<A::Acc>, value: T) -> A::Acc {
        self.0.add(value, acc.unwrap_or_else(|| self.0.create_accumulator()))
    }
    fn merge(&self, a: A::Acc, b: A::Acc) -> A::Acc {
        self.0.merge(a, b)
    }
    fn result(&self, acc: A::Acc) -> Vec<A::Output> {
        vec![self.0.get_result(&acc)]
    }
}

/// Keeps every element (for a process function without incremental aggregation).
#[derive(Clone)]
struct Buffer;

impl<T: StateData> Incremental<T> for Buffer {
    type Acc = Vec<T>;
    type Out = T;
    fn add(&self, acc: Option<Vec<T>>, value: T) -> Vec<T> {
        let mut acc = acc.unwrap_or_default();
        acc.push(value);
        acc
    }
    fn merge(&self, mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
        a.extend(b);
        a
    }
    fn result(&self, acc: Vec<T>) -> Vec<T> {
        acc
    }
}

/// Emits the results as they are.
#[derive(Clone)]
struct Direct;

impl<K, X: Send + 'static> Finish<K, X, X> for Direct {
    fn finish(
        &mut self,
        _: &K,
        _: &WindowContext<'_>,
        results: Vec<X>,
        out: &mut Collector<'_, X>,
    ) -> Result<(), BoxError> {
        for r in results {
            out.collect(r);
        }
        Ok(())
    }
}

/// Hands the results to a process window function.
#[derive(Clone)]
struct Process<P>(P);

impl<K, X, O, P: ProcessWindowFunction<K, X, O>> Finish<K, X, O> for Process<P> {
    fn finish(
        &mut self,
        key: &K,
        ctx: &WindowContext<'_>,
        results: Vec<X>,
        out: &mut Collector<'_, O>,
    ) -> Result<(), BoxError> {
        self.0.process(key, ctx, results, out)
    }
}

/// A keyed stream cut into windows; finish it with `reduce`, `aggregate` or `process`.
pub struct WindowedStream<K, T> {
    keyed: KeyedStream<K, T>,
    settings: WindowSettings,
    _types: PhantomData<fn() -> T>,
}

impl<K: Key, T: Record> KeyedStream<K, T> {
    /// Cuts each key's records into the windows of `assigner`.
    pub fn window(self, assigner: WindowAssigner) -> WindowedStream<K, T> {
        let settings = WindowSettings { assigner, trigger: Trigger::Default, allowed_lateness: 0, late_data: None };
        WindowedStream { keyed: self, settings, _types: PhantomData }
    }

    /// Windows of `n` elements per key (Flink's `countWindow(n)`): global windows fired and
    /// emptied every `n` elements.
    pub fn count_window(self, n: u64) -> WindowedStream<K, T> {
        self.window(GlobalWindows::create()).trigger(CountTrigger::of(n))
    }
}

impl<K: Key, T: Record> WindowedStream<K, T> {
    /// Keeps each event-time window's state for `lateness` after its end: an element that
    /// arrives that late still counts and fires the window again with the update.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.settings.allowed_lateness = lateness.as_millis().min(i64::MAX as u128) as i64;
        self
    }

    /// Sends elements too late for every window (behind the watermark by more than the allowed
    /// lateness) to the side output `tag`, instead of dropping them.
    pub fn side_output_late_data(mut self, tag: &OutputTag<T>) -> Self {
        self.settings.late_data = Some(tag.id().to_string());
        self
    }

    /// Replaces the assigner's trigger.
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.settings.trigger = trigger;
        self
    }

    fn build<O: Record, I: Incremental<T>, F: Finish<K, I::Out, O>>(self, incremental: I, finish: F) -> DataStream<O> {
        let spec = WindowSpec {
            key: self.keyed.key.clone(),
            settings: self.settings,
            incremental,
            finish,
            _output: PhantomData::<fn() -> O>,
        };
        self.keyed.add_keyed("Window", Arc::new(spec))
    }

    /// Combines each window's elements with `f` as they arrive; emits the result when it fires.
    pub fn reduce<F: Fn(T, T) -> T + Clone + Send + Sync + 'static>(self, f: F) -> DataStream<T>
    where
        T: StateData,
    {
        self.build(Reduce(f), Direct)
    }

    /// Aggregates each window's elements incrementally; emits the result when it fires.
    pub fn aggregate<A: AggregateFunction<T>>(self, aggregate: A) -> DataStream<A::Output> {
        self.build(Aggregate(aggregate), Direct)
    }

    /// Keeps each window's elements and hands them to `f` with the window when it fires.
    pub fn process<O: Record, P: ProcessWindowFunction<K, T, O>>(self, f: P) -> DataStream<O>
    where
        T: StateData,
    {
        self.build(Buffer, Process(f))
    }

    /// Reduces incrementally and hands the one result to `f` with the window.
    pub fn reduce_with<O: Record, F, P>(self, reduce: F, f: P) -> DataStream<O>
    where
        T: StateData,
        F: Fn(T, T) -> T + Clone + Send + Sync + 'static,
        P: ProcessWindowFunction<K, T, O>,
    {
        self.build(Reduce(reduce), Process(f))
    }

    /// Aggregates incrementally and hands the one result to `f` with the window.
    pub fn aggregate_with<O: Record, A, P>(self, aggregate: A, f: P) -> DataStream<O>
    where
        A: AggregateFunction<T>,
        P: ProcessWindowFunction<K, A::Output, O>,
    {
        self.build(Aggregate(aggregate), Process(f))
    }
}
