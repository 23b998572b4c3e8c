//! The window operator (Flink's `WindowOperator`): per key and window, the contents in namespaced
//! keyed state (`window-contents`, the window is the namespace); a trigger timer at the window's
//! last timestamp and a cleanup timer at that plus the allowed lateness, in the timer service
//! `window-timers` with the window as the timer's namespace; session windows merged as elements
//! bridge them (`merging-window-set` lists a key's open sessions). Everything is keyed state, so
//! checkpoints, savepoints, restores and rescales carry open windows exactly.

use super::assigners::{Trigger, WindowAssigner, WindowTime};
use super::{Finish, Incremental, WindowContext};
use crate::functions::Collector;
use crate::keyed::KeyedCore;
use crate::operators::{user_error, KeySelector};
use std::any::Any;
use std::marker::PhantomData;
use weir_core::window::{merge_windows, TimeWindow};
use weir_runtime::channel::{erase_output, unerase_output, Record, SideOutputs};
use weir_runtime::graph::{Instance, NodeSpec};
use weir_runtime::operator::OperatorContext;
use weir_runtime::{ChainEvent, Output, ProcessingTimeService, TaskError, TaskResult, Timestamp};
use weir_state::{
    codec, Key, KeyScope, NamespacedState, StateError, TimeDomain, TimerServiceId, ValueState, ValueStateDescriptor,
};

const WINDOW_TIMERS: &str = "window-timers";

/// How one window operator is configured.
#[derive(Clone)]
pub(crate) struct WindowSettings {
    pub assigner: WindowAssigner,
    pub trigger: Trigger,
    pub allowed_lateness: Timestamp,
    /// Where elements too late for every window go (tag id); dropped when `None`.
    pub late_data: Option<String>,
}

pub(crate) struct WindowSpec<K, T, O, I, F> {
    pub key: KeySelector<K, T>,
    pub settings: WindowSettings,
    pub incremental: I,
    pub finish: F,
    pub _output: PhantomData<fn() -> O>,
}

impl<K, T, O, I, F> NodeSpec for WindowSpec<K, T, O, I, F>
where
    K: Key,
    T: Record,
    O: Record,
    I: Incremental<T>,
    F: Finish<K, I::Out, O>,
{
    fn instantiate(
        &self,
        ctx: OperatorContext,
        downstream: Box<dyn Any + Send>,
        side_outputs: SideOutputs,
    ) -> TaskResult<Instance> {
        let next = unerase_output::<O>(downstream)?;
        let mut core = KeyedCore::<K>::new(&ctx, side_outputs, WINDOW_TIMERS)?;
        let namespace = self.settings.assigner.namespace();
        let backend = &mut core.backend;
        let declared = (|| {
            let contents = backend.namespaced_state("window-contents", &namespace)?;
            let counts = match self.settings.trigger {
                Trigger::Count(_) => Some(backend.namespaced_state("count-trigger", &namespace)?),
                Trigger::Default => None,
            };
            let sessions = match self.settings.assigner.is_merging() {
                true => Some(backend.value_state(&ValueStateDescriptor::new("merging-window-set"))?),
                false => None,
            };
            Ok::<_, StateError>((contents, counts, sessions))
        })();
        let (contents, counts, sessions) = declared.map_err(|e| core.restore_error(e))?;
        let windows = Windows {
            settings: self.settings.clone(),
            incremental: self.incremental.clone(),
            contents,
            counts,
            sessions,
            timers: core.time.timers,
            clock: core.time.processing.clone(),
            name: core.name.clone(),
            scratch: Vec::new(),
            _types: PhantomData,
        };
        let op =
            WindowOperator { key: self.key.clone(), spare_key: None, windows, finish: self.finish.clone(), core, next };
        Ok(Instance::Operator(erase_output::<T>(Box::new(op))))
    }
}

/// The window logic of one operator subtask: its settings, state handles and decisions, applied
/// to one key's state scope at a time.
struct Windows<K, T, I: Incremental<T>> {
    settings: WindowSettings,
    incremental: I,
    contents: NamespacedState<TimeWindow, I::Acc>,
    counts: Option<NamespacedState<TimeWindow, u64>>,
    sessions: Option<ValueState<Vec<TimeWindow>>>,
    timers: TimerServiceId,
    clock: ProcessingTimeService,
    name: String,
    /// The windows of the element being added (reused: no allocation per element).
    scratch: Vec<TimeWindow>,
    _types: PhantomData<fn(K, T)>,
}

/// What a trigger decided for a window (Flink's `TriggerResult`).
#[derive(PartialEq, Eq)]
enum TriggerResult {
    Continue,
    Fire,
    /// Fire, then empty the window.
    FireAndPurge,
}

/// A window to emit, with its contents.
type Fired<A> = (TimeWindow, A);

/// The window to emit after adding an element, if any, and whether the trigger purged it.
type AfterAdd<A> = (Option<Fired<A>>, bool);

/// What adding an element did.
enum Added<A> {
    /// Windows to emit now (a count trigger, or an element late but within the lateness).
    Fired(Vec<Fired<A>>),
    /// Every window of the element is past its cleanup time.
    Late,
}

impl<K: Key, T: Record, I: Incremental<T>> Windows<K, T, I> {
    fn err(&self, e: StateError) -> Box<TaskError> {
        Box::new(TaskError::State { operator: self.name.clone(), error: e })
    }

    fn domain(&self) -> TimeDomain {
        match self.settings.assigner.time() {
            WindowTime::EventTime => TimeDomain::EventTime,
            WindowTime::ProcessingTime => TimeDomain::ProcessingTime,
        }
    }

    /// When a window's state goes: event time allows lateness, processing time does not.
    fn cleanup_time(&self, window: &TimeWindow) -> Timestamp {
        if self.settings.assigner.is_event_time() {
            window.cleanup_time(self.settings.allowed_lateness)
        } else {
            window.max_timestamp()
        }
    }

    /// A window the watermark has passed for good (its cleanup time is behind it).
    fn is_late(&self, window: &TimeWindow, watermark: Timestamp) -> bool {
        self.settings.assigner.is_event_time() && self.cleanup_time(window) <= watermark
    }

    /// An element whose windows are gone is late data when it is behind the watermark by more
    /// than the allowed lateness; otherwise it is dropped quietly (Flink's rule).
    fn is_late_element(&self, time: Timestamp, watermark: Timestamp) -> bool {
        self.settings.assigner.is_event_time() && time.saturating_add(self.settings.allowed_lateness) <= watermark
    }

    /// Registers the trigger and cleanup timers of `window` for the current key.
    fn register_timers(&self, scope: &mut KeyScope<'_, K>, window: &TimeWindow) -> Result<(), StateError> {
        if self.settings.assigner.is_global() {
            return Ok(()); // the end of time never comes
        }
        let ns = window_bytes(window)?;
        let domain = self.domain();
        if self.settings.trigger == Trigger::Default {
            scope.register_timer(self.timers, domain, window.max_timestamp(), &ns)?;
        }
        scope.register_timer(self.timers, domain, self.cleanup_time(window), &ns)?;
        if domain == TimeDomain::ProcessingTime {
            self.clock.request_wakeup(window.max_timestamp());
        }
        Ok(())
    }

    fn delete_timers(&self, scope: &mut KeyScope<'_, K>, window: &TimeWindow) -> Result<(), StateError> {
        if self.settings.assigner.is_global() {
            return Ok(());
        }
        let ns = window_bytes(window)?;
        let domain = self.domain();
        scope.delete_timer(self.timers, domain, window.max_timestamp(), &ns)?;
        scope.delete_timer(self.timers, domain, self.cleanup_time(window), &ns)
    }

    /// The trigger's decision for an element just added to `window`.
    fn on_element(
        &self,
        scope: &mut KeyScope<'_, K>,
        window: &TimeWindow,
        watermark: Timestamp,
    ) -> Result<TriggerResult, StateError> {
        if let (Trigger::Count(n), Some(counts)) = (self.settings.trigger, &self.counts) {
            let count = counts.get(scope, window)?.unwrap_or(0) + 1;
            if count >= n {
                counts.remove(scope, window)?;
                return Ok(TriggerResult::FireAndPurge);
            }
            counts.compute(scope, *window, |_| Some(count))?;
            return Ok(TriggerResult::Continue);
        }
        // An element late but within the allowed lateness fires its window again at once.
        let passed = self.settings.assigner.is_event_time() && window.max_timestamp() <= watermark;
        Ok(if passed && !self.settings.assigner.is_global() { TriggerResult::Fire } else { TriggerResult::Continue })
    }

    /// Adds `value` to `window` (whose contents merge with `absorbed`, the contents of the
    /// sessions it absorbed) and lets the trigger decide. Returns the window to fire with its
    /// contents, and whether they were purged. The window's timers are registered when it had no
    /// contents yet (or is `new_window`): a window with contents has them already.
    fn add_to_window(
        &self,
        scope: &mut KeyScope<'_, K>,
        window: &TimeWindow,
        absorbed: Option<I::Acc>,
        value: T,
        watermark: Timestamp,
        new_window: bool,
    ) -> Result<AfterAdd<I::Acc>, StateError> {
        let fire = self.on_element(scope, window, watermark)?;
        let (mut fired, mut fresh) = (None, new_window);
        let incremental = &self.incremental;
        self.contents.compute(scope, *window, |old| {
            fresh |= old.is_none();
            let base = match (absorbed, old) {
                (Some(a), Some(o)) => Some(incremental.merge(a, o)),
                (a, o) => a.or(o),
            };
            let acc = incremental.add(base, value);
            match fire {
                TriggerResult::Continue => Some(acc),
                TriggerResult::Fire => {
                    fired = Some(acc.clone());
                    Some(acc)
                }
                TriggerResult::FireAndPurge => {
                    fired = Some(acc);
                    None
                }
            }
        })?;
        let purged = fire == TriggerResult::FireAndPurge;
        if fresh && !purged {
            self.register_timers(scope, window)?;
        }
        Ok((fired.map(|acc| (*window, acc)), purged))
    }

    /// Adds an element at `time` to the windows it belongs to; a session merges with the open
    /// sessions of its key it touches. Changes nothing when every window is late.
    fn add(
        &mut self,
        scope: &mut KeyScope<'_, K>,
        record: T,
        time: Timestamp,
        watermark: Timestamp,
    ) -> Result<Added<I::Acc>, StateError> {
        let mut windows = std::mem::take(&mut self.scratch);
        windows.clear();
        self.settings.assigner.assign_into(time, &mut windows);
        let added = self.add_to_windows(scope, record, &mut windows, watermark);
        self.scratch = windows;
        added
    }

    fn add_to_windows(
        &self,
        scope: &mut KeyScope<'_, K>,
        record: T,
        windows: &mut Vec<TimeWindow>,
        watermark: Timestamp,
    ) -> Result<Added<I::Acc>, StateError> {
        let Some(sessions) = self.sessions else {
            windows.retain(|w| !self.is_late(w, watermark));
            if windows.is_empty() {
                return Ok(Added::Late);
            }
            let mut fired = Vec::new();
            let mut record = Some(record);
            for (i, window) in windows.iter().enumerate() {
                let value = if i + 1 == windows.len() { record.take() } else { record.clone() };
                let Some(value) = value else { break };
                fired.extend(self.add_to_window(scope, window, None, value, watermark, false)?.0);
            }
            return Ok(Added::Fired(fired));
        };
        let (merged, absorbed, mut open) = plan_merge(scope, sessions, windows[0])?;
        if self.is_late(&merged, watermark) {
            return Ok(Added::Late);
        }
        let mut acc: Option<I::Acc> = None;
        let mut count = 0;
        for w in &absorbed {
            if let Some(a) = self.contents.get(scope, w)? {
                acc = Some(match acc {
                    Some(x) => self.incremental.merge(x, a),
                    None => a,
                });
            }
            if let Some(counts) = &self.counts {
                count += counts.get(scope, w)?.unwrap_or(0);
                counts.remove(scope, w)?;
            }
            self.contents.remove(scope, w)?;
            self.delete_timers(scope, w)?;
        }
        if let (Some(counts), true) = (&self.counts, count > 0) {
            counts.compute(scope, merged, |_| Some(count))?;
        }
        open.retain(|w| !absorbed.contains(w));
        // The merged window is new, or an absorbed session whose timers were just deleted.
        let (fired, purged) = self.add_to_window(scope, &merged, acc, record, watermark, true)?;
        if !purged {
            open.push(merged);
        }
        self.save_sessions(scope, sessions, open)?;
        Ok(Added::Fired(fired.into_iter().collect()))
    }

    fn save_sessions(
        &self,
        scope: &mut KeyScope<'_, K>,
        sessions: ValueState<Vec<TimeWindow>>,
        open: Vec<TimeWindow>,
    ) -> Result<(), StateError> {
        if open.is_empty() {
            sessions.clear(scope)
        } else {
            sessions.update(scope, open)
        }
    }

    /// A window's timer at `at`: the trigger timer returns the window's contents to emit; the
    /// cleanup timer drops its state and timers.
    fn on_timer(
        &self,
        scope: &mut KeyScope<'_, K>,
        window: &TimeWindow,
        at: Timestamp,
    ) -> Result<Option<I::Acc>, StateError> {
        let mut emit = None;
        if self.settings.trigger == Trigger::Default && at == window.max_timestamp() {
            emit = self.contents.get(scope, window)?;
        }
        if at == self.cleanup_time(window) {
            self.contents.remove(scope, window)?;
            if let Some(counts) = &self.counts {
                counts.remove(scope, window)?;
            }
            if let Some(sessions) = self.sessions {
                let mut open = sessions.value(scope)?.unwrap_or_default();
                open.retain(|w| w != window);
                self.save_sessions(scope, sessions, open)?;
            }
            self.delete_timers(scope, window)?;
        }
        Ok(emit)
    }
}

/// The session `window` of a new element merged with the open sessions of the key it touches:
/// `(merged window, open sessions it absorbs, open sessions)`.
fn plan_merge<K: Key>(
    scope: &mut KeyScope<'_, K>,
    sessions: ValueState<Vec<TimeWindow>>,
    window: TimeWindow,
) -> Result<(TimeWindow, Vec<TimeWindow>, Vec<TimeWindow>), StateError> {
    let open = sessions.value(scope)?.unwrap_or_default();
    let mut all = open.clone();
    all.push(window);
    let Some((merged, mut members)) = merge_windows(&all).into_iter().find(|(_, m)| m.contains(&window)) else {
        return Ok((window, Vec::new(), open));
    };
    if let Some(i) = members.iter().position(|w| *w == window) {
        members.remove(i); // the new element's own window; the rest are open sessions
    }
    Ok((merged, members, open))
}

struct WindowOperator<K, T, O, I: Incremental<T>, F> {
    key: KeySelector<K, T>,
    /// The last record's key, whose memory the next key reuses.
    spare_key: Option<K>,
    windows: Windows<K, T, I>,
    finish: F,
    core: KeyedCore<K>,
    next: Box<dyn Output<O>>,
}

impl<K, T, O, I, F> WindowOperator<K, T, O, I, F>
where
    K: Key,
    T: Record,
    O: Record,
    I: Incremental<T>,
    F: Finish<K, I::Out, O>,
{
    /// Emits the result of `window` for `key`, stamped with the window's last timestamp.
    fn emit_window(&mut self, key: &K, window: &TimeWindow, acc: I::Acc) -> TaskResult {
        let ctx = WindowContext {
            window,
            watermark: self.core.time.watermark,
            processing_time: self.core.time.processing.now(),
        };
        let results = self.windows.incremental.result(acc);
        let mut out = Collector::new(&mut *self.next, Some(window.max_timestamp()));
        let result = self.finish.finish(key, &ctx, results, &mut out);
        out.finish()?;
        result.map_err(|e| user_error(&self.core.name, e))
    }

    /// Late data goes to its side output when one is set.
    fn route_late(&mut self, record: T, timestamp: Option<Timestamp>) -> TaskResult {
        let Some(tag) = &self.windows.settings.late_data else {
            self.core.metrics.late_records_dropped.inc();
            return Ok(());
        };
        match self.core.side.outputs.get::<T>(tag) {
            Some(out) => out.emit(record, timestamp),
            None => Ok(()),
        }
    }

    fn fire_timers(&mut self, domain: TimeDomain, time: Timestamp) -> TaskResult {
        while let Some(timer) = self.core.pop_timer(domain, time)? {
            let window: TimeWindow = codec::decode(&timer.namespace).map_err(|detail| {
                self.windows.err(StateError::Decode {
                    name: WINDOW_TIMERS.into(),
                    key_group: 0,
                    what: "window",
                    detail,
                })
            })?;
            let mut scope = self.core.backend.scope(&timer.key).map_err(|e| self.windows.err(e))?;
            let emit = self.windows.on_timer(&mut scope, &window, timer.timestamp).map_err(|e| self.windows.err(e))?;
            if let Some(acc) = emit {
                self.emit_window(&timer.key, &window, acc)?;
            }
        }
        if domain == TimeDomain::ProcessingTime {
            self.core.schedule_processing_timers();
        }
        Ok(())
    }
}

impl<K, T, O, I, F> Output<T> for WindowOperator<K, T, O, I, F>
where
    K: Key,
    T: Record,
    O: Record,
    I: Incremental<T>,
    F: Finish<K, I::Out, O>,
{
    fn emit(&mut self, record: T, timestamp: Option<Timestamp>) -> TaskResult {
        self.core.metrics.records_in.inc();
        let assigner = &self.windows.settings.assigner;
        let time = match (assigner.time(), timestamp) {
            (WindowTime::ProcessingTime, _) => self.core.time.processing.now(),
            (WindowTime::EventTime, Some(ts)) => ts,
            (WindowTime::EventTime, None) if assigner.is_global() => 0,
            (WindowTime::EventTime, None) => {
                return Err(Box::new(TaskError::Unrecoverable {
                    operator: self.core.name.clone(),
                    message: "a record without an event timestamp reached an event-time window; give its source a watermark strategy with a timestamp assigner (StreamEnv::from_source or assign_timestamps_and_watermarks), or use processing-time windows".into(),
                }))
            }
        };
        let mut current = self.spare_key.take();
        let key = self.key.select(&record, &mut current);
        let watermark = self.core.time.watermark;
        let late_copy = self.windows.is_late_element(time, watermark).then(|| record.clone());
        let mut scope = self.core.backend.scope(&key).map_err(|e| self.windows.err(e))?;
        let added = self.windows.add(&mut scope, record, time, watermark).map_err(|e| self.windows.err(e))?;
        let result = match added {
            Added::Fired(fired) => fired.into_iter().try_for_each(|(window, acc)| self.emit_window(&key, &window, acc)),
            Added::Late => match late_copy {
                Some(record) => self.route_late(record, timestamp),
                None => {
                    self.core.metrics.late_records_dropped.inc();
                    Ok(())
                }
            },
        };
        self.spare_key = current;
        result
    }

    fn event(&mut self, event: &mut ChainEvent<'_>) -> TaskResult {
        if let Some((domain, time)) = self.core.on_event(event)? {
            self.fire_timers(domain, time)?;
        }
        self.core.forward(event, &mut *self.next)
    }
}

/// The namespace bytes of a window in timers: its canonical encoding.
fn window_bytes(window: &TimeWindow) -> Result<Vec<u8>, StateError> {
    codec::encode(window).map_err(|detail| StateError::Encode { name: WINDOW_TIMERS.into(), detail })
}
