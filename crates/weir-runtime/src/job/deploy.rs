//! Deployment: one task per subtask of every chain, wired with bounded channels, and stopping them.

use super::master::Master;
use crate::operator::Control;
use crate::protocol::RestorePlan;
use crate::task::{self, TaskPlan};
use crossbeam_channel::Sender;
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use weir_core::coordinator::TaskKey;

pub(super) struct DeployedTask {
    pub key: TaskKey,
    pub control: Sender<Control>,
    pub thread: JoinHandle<()>,
    pub is_source: bool,
}

impl Master {
    pub(super) fn deploy(&mut self, restore: Option<Arc<RestorePlan>>) -> Result<(), String> {
        let graph = self.graph.clone();
        let cap = self.settings.channel_capacity;
        // senders[edge][producer subtask] and receivers[edge][consumer subtask]
        let mut senders: HashMap<usize, Vec<Vec<Box<dyn std::any::Any + Send>>>> = HashMap::new();
        let mut receivers: HashMap<usize, Vec<Vec<Box<dyn std::any::Any + Send>>>> = HashMap::new();
        for (e, edge) in graph.edges.iter().enumerate() {
            if edge.chained {
                continue;
            }
            let (pf, pt) = (graph.nodes[edge.from].parallelism as usize, graph.nodes[edge.to].parallelism as usize);
            let ty = graph.edge_type(e).ok_or("an edge leaves an operator without that output")?;
            let mut s: Vec<Vec<_>> = (0..pf).map(|_| Vec::new()).collect();
            let mut r: Vec<Vec<_>> = (0..pt).map(|_| Vec::new()).collect();
            for (i, si) in s.iter_mut().enumerate() {
                for (j, rj) in r.iter_mut().enumerate() {
                    if edge.kind == crate::graph::EdgeKind::Forward && i != j {
                        continue;
                    }
                    let (tx, rx) = ty.channel(cap);
                    si.push(tx);
                    rj.push(rx);
                }
            }
            senders.insert(e, s);
            receivers.insert(e, r);
        }
        self.tasks.clear();
        self.shared.metrics.reset();
        for (v, chain) in graph.chains.iter().enumerate() {
            for s in 0..chain.parallelism as usize {
                let mut task_senders = HashMap::new();
                for &n in &chain.nodes {
                    for &e in &graph.nodes[n].outputs {
                        if let Some(per_producer) = senders.get_mut(&e) {
                            task_senders.insert(e, std::mem::take(&mut per_producer[s]));
                        }
                    }
                }
                let mut task_receivers = Vec::new();
                for &e in &graph.nodes[chain.head].inputs {
                    if let Some(per_consumer) = receivers.get_mut(&e) {
                        task_receivers.extend(std::mem::take(&mut per_consumer[s]));
                    }
                }
                let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
                let key = TaskKey { vertex: v as u32, subtask: s as u32 };
                let plan = TaskPlan {
                    key,
                    attempt: self.attempt,
                    job_id: self.job_id,
                    graph: graph.clone(),
                    restore: restore.clone(),
                    senders: task_senders,
                    receivers: task_receivers,
                    control: ctl_rx,
                    master: self.tx.clone(),
                    storage: Some(self.storage.clone()),
                    batch_size: self.settings.batch_size,
                    state_backend: self.state_backend.clone(),
                    auto_watermark_interval: self.settings.auto_watermark_interval,
                    restore_watermarks: self.settings.restore_watermarks,
                    processing_time: Default::default(),
                    metrics: self.shared.metrics.clone(),
                };
                let thread = task::spawn(plan).map_err(|e| format!("cannot start a task thread: {e}"))?;
                self.tasks.push(DeployedTask {
                    key,
                    control: ctl_tx,
                    thread,
                    is_source: graph.nodes[chain.head].is_source,
                });
            }
        }
        Ok(())
    }

    /// Cancels every task and waits for its thread.
    pub(super) fn stop_tasks(&mut self) {
        for t in &self.tasks {
            let _ = t.control.send(Control::Cancel);
        }
        for t in self.tasks.drain(..) {
            drop(t.control);
            let _ = t.thread.join();
        }
    }
}
