//! A task: one subtask of a chain, on its own thread, with a snapshot writer thread beside it.
//!
//! Life of a task: build the chain (operators restore their state here, so restores of all
//! subtasks run in parallel), report initialized, wait for the master's start (so a job never runs
//! half-restored), then run the source loop or the input loop until the input ends, the task is
//! cancelled, or it fails. Panics are caught and reported as failures.

use crate::channel::{InputEnd, SideOutputs};
use crate::graph::{Instance, JobGraph};
use crate::operator::{Control, OperatorContext, RestoredState, SnapshotCapture, TaskEnv, TaskError, TaskResult};
use crate::protocol::{AckedState, FailureCause, MasterMsg, RestorePlan, TaskFailure};
use crate::storage::{CheckpointStorage, SnapshotUri};
use crossbeam_channel::{Receiver, Sender};
use std::any::Any;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use weir_core::assignment::SubtaskAssignment;
use weir_core::coordinator::TaskKey;
use weir_core::metadata::SubtaskSnapshot;
use weir_core::JobId;
use weir_state::{NewFile, ResolvedNativeHandle, RestoredKeyedState, SnapshotFiles, WrittenKeyedState};

/// Everything a task needs, moved into its thread.
pub(crate) struct TaskPlan {
    pub key: TaskKey,
    pub attempt: u32,
    pub job_id: JobId,
    pub graph: Arc<JobGraph>,
    pub restore: Option<Arc<RestorePlan>>,
    /// This subtask's senders per non-chained output edge of the chain's operators.
    pub senders: HashMap<usize, Vec<Box<dyn Any + Send>>>,
    /// Receivers of the chain head's input edges (one per producer subtask).
    pub receivers: Vec<Box<dyn Any + Send>>,
    pub control: Receiver<Control>,
    pub master: Sender<MasterMsg>,
    pub storage: Option<Arc<dyn CheckpointStorage>>,
    pub batch_size: usize,
    pub state_backend: weir_state::StateBackend,
    pub auto_watermark_interval: Option<std::time::Duration>,
    pub restore_watermarks: bool,
    /// The task's wake-ups, shared by its operators.
    pub processing_time: crate::operator::ProcessingTimeService,
    /// Where its operators and network writers count.
    pub metrics: Arc<crate::metrics::JobMetrics>,
}

pub(crate) fn spawn(plan: TaskPlan) -> std::io::Result<JoinHandle<()>> {
    let chain = &plan.graph.chains[plan.key.vertex as usize];
    let name = format!("{} ({}/{})", plan.graph.nodes[chain.head].name, plan.key.subtask + 1, chain.parallelism);
    std::thread::Builder::new().name(name.clone()).spawn(move || {
        let (key, attempt, master) = (plan.key, plan.attempt, plan.master.clone());
        let outcome = catch_unwind(AssertUnwindSafe(|| run(plan)));
        let msg = match outcome {
            Ok(Ok(InputEnd::Finished)) => MasterMsg::TaskFinished { attempt, task: key },
            Ok(Ok(InputEnd::Canceled)) => MasterMsg::TaskCanceled { attempt, task: key },
            Ok(Err(e)) => MasterMsg::TaskFailed {
                attempt,
                task: key,
                failure: TaskFailure { task: name, cause: FailureCause::Error(*e) },
            },
            Err(panic) => MasterMsg::TaskFailed {
                attempt,
                task: key,
                failure: TaskFailure { task: name, cause: FailureCause::Panic(panic_message(&panic)) },
            },
        };
        let _ = master.send(msg);
    })
}

pub(crate) fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

fn run(mut plan: TaskPlan) -> TaskResult<InputEnd> {
    let (snap_tx, snap_rx) = crossbeam_channel::bounded::<SnapshotCapture>(4);
    {
        let (storage, master, key, attempt) = (plan.storage.clone(), plan.master.clone(), plan.key, plan.attempt);
        std::thread::Builder::new()
            .name(format!("snapshot-writer-{}-{}", key.vertex, key.subtask))
            .spawn(move || snapshot_writer(snap_rx, storage, master, key, attempt))
            .map_err(|e| TaskError::Internal(format!("cannot start snapshot writer: {e}")))?;
    }
    let env = TaskEnv {
        key: plan.key,
        attempt: plan.attempt,
        control: plan.control.clone(),
        master: plan.master.clone(),
        snapshots: snap_tx,
        processing_time: plan.processing_time.clone(),
    };
    let graph = plan.graph.clone();
    let head = graph.chains[plan.key.vertex as usize].head;
    let instance = build_node(&mut plan, head)?;
    let _ = plan.master.send(MasterMsg::TaskInitialized { attempt: plan.attempt, task: plan.key });
    loop {
        match env.control.recv() {
            Ok(Control::Start) => break,
            Ok(Control::Cancel) | Err(_) => return Ok(InputEnd::Canceled),
            Ok(_) => {}
        }
    }
    let mut env = env;
    match instance {
        Instance::Source(mut runner) => runner.run(&mut env),
        Instance::Operator(head_output) => {
            let ty = graph
                .edge_type(graph.nodes[head].inputs[0])
                .ok_or_else(|| TaskError::Internal("input edge from an operator without output".into()))?;
            let receivers = std::mem::take(&mut plan.receivers);
            let mut gate = ty.input_gate(receivers, head_output)?;
            gate.run(&env)
        }
    }
}

/// What one operator subtask restores, with its files' local paths (staged copies for a snapshot
/// on object storage).
fn restored_state(
    r: &RestorePlan,
    assigned: Option<&Vec<SubtaskAssignment>>,
    subtask: u32,
    restore_watermarks: bool,
    operator: &str,
) -> TaskResult<RestoredState> {
    let Some(a) = assigned.and_then(|subs| subs.get(subtask as usize)) else {
        return Ok(RestoredState::default());
    };
    let local = |reference: &str| {
        r.snapshot.local_path(reference).ok_or_else(|| {
            Box::new(TaskError::Internal(format!(
                "operator '{operator}': {} was not downloaded before the restore",
                r.snapshot.resolve(reference)
            )))
        })
    };
    let files = a.keyed.iter().map(|h| Ok((local(&h.file.path)?, h.clone()))).collect::<TaskResult<_>>()?;
    let native = a
        .native
        .iter()
        .map(|h| {
            Ok(ResolvedNativeHandle {
                locations: h.files.iter().map(|f| r.snapshot.resolve(&f.file.path)).collect(),
                paths: h.files.iter().map(|f| local(&f.file.path)).collect::<TaskResult<_>>()?,
                handle: h.clone(),
            })
        })
        .collect::<TaskResult<_>>()?;
    Ok(RestoredState {
        keyed: RestoredKeyedState { files, native, checked: r.checked_files.clone() },
        operator_lists: a.operator_lists.clone(),
        watermark: a.watermark.filter(|_| restore_watermarks),
    })
}

fn build_node(plan: &mut TaskPlan, node: usize) -> TaskResult<Instance> {
    let graph = plan.graph.clone();
    let n = &graph.nodes[node];
    let downstream: Box<dyn Any + Send> = match &n.output {
        None => Box::new(()),
        Some(ty) => build_outputs(plan, node, None, ty.as_ref())?,
    };
    let mut side_outputs = Vec::new();
    for (tag, ty) in &n.side_outputs {
        let out = build_outputs(plan, node, Some(tag), ty.as_ref())?;
        side_outputs.push((tag.clone(), ty.side_output(out)?));
    }
    let side_outputs = SideOutputs::new(side_outputs);
    let subtask = plan.key.subtask;
    let key_groups = weir_core::key_group::key_group_range_for_subtask(n.max_parallelism, n.parallelism, subtask);
    let restored = match &plan.restore {
        Some(r) => Some(restored_state(r, r.operators.get(&n.operator_id), subtask, plan.restore_watermarks, &n.name)?),
        None => None,
    };
    let ctx = OperatorContext {
        operator_id: n.operator_id,
        name: n.name.clone(),
        uid: n.uid.clone(),
        subtask,
        parallelism: n.parallelism,
        max_parallelism: n.max_parallelism,
        key_groups,
        restored,
        attempt: plan.attempt,
        job_id: plan.job_id,
        state_backend: plan.state_backend.clone(),
        processing_time: plan.processing_time.clone(),
        auto_watermark_interval: plan.auto_watermark_interval,
        metrics: plan.metrics.operator(node, subtask),
    };
    n.spec.instantiate(ctx, downstream, side_outputs)
}

/// The erased `Box<dyn Output<T>>` of one of `node`'s outputs (`side`: a side output's tag): the
/// chained operators and network writers of its edges, fanned out.
fn build_outputs(
    plan: &mut TaskPlan,
    node: usize,
    side: Option<&String>,
    ty: &dyn crate::channel::StreamType,
) -> TaskResult<Box<dyn Any + Send>> {
    let graph = plan.graph.clone();
    let mut outputs = Vec::new();
    for &e in &graph.nodes[node].outputs {
        let edge = &graph.edges[e];
        if edge.side_output.as_ref() != side {
            continue;
        }
        if edge.chained {
            match build_node(plan, edge.to)? {
                Instance::Operator(o) => outputs.push(o),
                Instance::Source(_) => {
                    return Err(TaskError::Internal("a source cannot be chained behind an operator".into()).into())
                }
            }
        } else {
            let senders =
                plan.senders.remove(&e).ok_or_else(|| TaskError::Internal(format!("no channels for edge {e}")))?;
            let partitioner = graph.partitioner(e, graph.nodes[edge.to].max_parallelism);
            let metrics = plan.metrics.writer(e, plan.key.subtask);
            outputs.push(ty.writer(senders, &partitioner, plan.batch_size, metrics)?);
        }
    }
    if outputs.is_empty() {
        Ok(ty.discard())
    } else {
        ty.tee(outputs)
    }
}

/// Writes captures off the task thread and acknowledges (or declines) each to the master.
fn snapshot_writer(
    rx: Receiver<SnapshotCapture>,
    storage: Option<Arc<dyn CheckpointStorage>>,
    master: Sender<MasterMsg>,
    key: TaskKey,
    attempt: u32,
) {
    for capture in rx {
        let id = capture.barrier.id;
        let outcome = catch_unwind(AssertUnwindSafe(|| write_capture(&capture, storage.as_deref(), key.subtask)));
        let msg = match outcome {
            Ok(Ok(states)) => MasterMsg::Ack { attempt, id, task: key, states },
            Ok(Err(reason)) => MasterMsg::Decline { attempt, id, task: key, reason },
            Err(panic) => MasterMsg::Decline {
                attempt,
                id,
                task: key,
                reason: format!("snapshot writer panicked: {}", panic_message(&panic)),
            },
        };
        if master.send(msg).is_err() {
            return;
        }
    }
}

fn write_capture(
    capture: &SnapshotCapture,
    storage: Option<&dyn CheckpointStorage>,
    subtask: u32,
) -> Result<AckedState, String> {
    let location = capture.barrier.location.as_ref();
    let mut states = Vec::with_capacity(capture.operators.len());
    for op in &capture.operators {
        let mut written = WrittenKeyedState::default();
        if let Some(snapshot) = &op.keyed {
            let name = format!("keyed-{}-{}", op.operator_id, subtask);
            let what = |e: &dyn std::fmt::Display| format!("writing {}: {e}", location.join(&name));
            let shared = (!capture.barrier.kind.is_savepoint()).then(|| shared_dir(location));
            let storage = storage.ok_or("keyed state needs checkpoint storage; set execution.checkpointing.dir")?;
            let files = StorageFiles { storage, location, shared };
            written = snapshot.write(&files, &name).map_err(|e| what(&e))?;
        }
        states.push((
            op.operator_id,
            SubtaskSnapshot {
                subtask,
                keyed: written.keyed,
                operator_lists: op.operator_state.clone().into_lists(),
                native: written.native,
                watermark: op.watermark,
            },
        ));
    }
    Ok(states)
}

/// The `shared/` directory of the job a checkpoint directory `chk-<n>` belongs to.
pub(crate) fn shared_dir(location: &SnapshotUri) -> SnapshotUri {
    location.parent().unwrap_or_else(|| location.clone()).join("shared")
}

/// One snapshot's files on a [`CheckpointStorage`]: exclusive files in the snapshot's directory,
/// shared files in the job's `shared/` (checkpoints) or with the others (savepoints).
struct StorageFiles<'a> {
    storage: &'a dyn CheckpointStorage,
    location: &'a SnapshotUri,
    shared: Option<SnapshotUri>,
}

impl StorageFiles<'_> {
    fn reference(&self, file: &SnapshotUri) -> std::io::Result<String> {
        file_reference(self.location, file).ok_or_else(|| std::io::Error::other(format!("{file} is outside the job")))
    }
}

impl SnapshotFiles for StorageFiles<'_> {
    fn create_exclusive(&self, name: &str) -> std::io::Result<NewFile> {
        let out = self.storage.create_state_file(self.location, name)?;
        Ok(NewFile { out, reference: name.to_string(), location: self.location.join(name) })
    }

    fn create_shared(&self, name: &str) -> std::io::Result<NewFile> {
        match &self.shared {
            Some(dir) => {
                self.storage.store().make_dirs(dir)?;
                let out = self.storage.create_state_file(dir, name)?;
                let location = dir.join(name);
                Ok(NewFile { out, reference: self.reference(&location)?, location })
            }
            None => self.create_exclusive(name),
        }
    }

    fn reuse(&self, file: &SnapshotUri) -> std::io::Result<(String, SnapshotUri)> {
        if let Some(reference) = file_reference(self.location, file) {
            return Ok((reference, file.clone()));
        }
        let Some(shared) = &self.shared else {
            return Err(std::io::Error::other("a savepoint references no file of another snapshot"));
        };
        self.storage.store().make_dirs(shared)?;
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let adopted = shared.join(&format!("{}-{}", &unique[..16], file.file_name().unwrap_or_default()));
        self.storage.store().link_or_copy(file, &adopted)?;
        Ok((self.reference(&adopted)?, adopted))
    }

    fn delete(&self, file: &SnapshotUri) -> std::io::Result<()> {
        self.storage.store().delete(file)
    }
}

/// The reference `_metadata` in `location` records for `file`, when `file` lies in the snapshot's
/// directory or in its job's `shared/` directory: relative, so the job's directory can move as
/// a whole.
pub(crate) fn file_reference(location: &SnapshotUri, file: &SnapshotUri) -> Option<String> {
    if let Some(rel) = file.relative_to(location).filter(|r| !r.is_empty()) {
        return Some(rel);
    }
    let rel = file.relative_to(&shared_dir(location)).filter(|r| !r.is_empty())?;
    Some(format!("../shared/{rel}"))
}
