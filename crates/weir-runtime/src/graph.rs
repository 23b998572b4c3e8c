//! The job graph: operators with their resolved parallelism and operator ids, the edges between
//! them, and the chains (forward edges of equal parallelism) that become tasks.

use crate::channel::{ErasedPartitioner, SideOutputs, StreamType};
use crate::operator::{OperatorContext, SourceRunner, TaskResult};
use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use weir_core::config::{keys, Configuration};
use weir_core::key_group::{check_parallelism, default_max_parallelism};
use weir_core::operator_id::{self, OperatorId};

/// How records cross an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    Forward,
    Rebalance,
    KeyGroup,
    Broadcast,
}

/// An operator's implementation, able to instantiate it for one subtask.
pub trait NodeSpec: Send + Sync {
    /// `downstream` is the erased `Box<dyn Output<O>>` the operator emits to (`()` for sinks);
    /// `side_outputs` the consumers of its side outputs (empty unless the node declares some).
    fn instantiate(
        &self,
        ctx: OperatorContext,
        downstream: Box<dyn Any + Send>,
        side_outputs: SideOutputs,
    ) -> TaskResult<Instance>;
}

/// An instantiated operator: a source drives its task; any other operator is an erased
/// `Box<dyn Output<I>>` that consumes records.
pub enum Instance {
    Source(Box<dyn SourceRunner>),
    Operator(Box<dyn Any + Send>),
}

/// An operator as the API declares it.
pub struct NodeBuilder {
    pub name: String,
    pub uid: Option<String>,
    pub parallelism: Option<u32>,
    pub max_parallelism: Option<u32>,
    /// Whether the operator keeps state (a stateful operator needs a uid when auto-generated uids
    /// are disabled).
    pub stateful: bool,
    pub is_source: bool,
    pub spec: Arc<dyn NodeSpec>,
    /// Operations on the operator's output type; `None` for sinks.
    pub output: Option<Arc<dyn StreamType>>,
    /// The side outputs other operators consume, by tag id, with their types. Only operators
    /// that emit side outputs (process functions, windows) accept them.
    pub side_outputs: Vec<(String, Arc<dyn StreamType>)>,
    /// Whether the operator can emit side outputs.
    pub emits_side_outputs: bool,
}

impl NodeBuilder {
    /// A node with default settings: no uid, parallelism and max parallelism from the job, no
    /// side outputs.
    pub fn new(name: &str, spec: Arc<dyn NodeSpec>, output: Option<Arc<dyn StreamType>>) -> Self {
        NodeBuilder {
            name: name.to_string(),
            uid: None,
            parallelism: None,
            max_parallelism: None,
            stateful: false,
            is_source: false,
            spec,
            output,
            side_outputs: Vec::new(),
            emits_side_outputs: false,
        }
    }
}

/// An edge as the API declares it.
pub struct EdgeBuilder {
    pub from: usize,
    pub to: usize,
    pub kind: EdgeKind,
    /// For `KeyGroup` edges: the producer type's `KeyHashFn<T>`.
    pub key_hash: Option<Arc<dyn Any + Send + Sync>>,
    /// The side output (tag id) the edge carries; `None` for the main output.
    pub side_output: Option<String>,
}

pub struct Node {
    pub index: usize,
    pub name: String,
    pub uid: Option<String>,
    pub operator_id: OperatorId,
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub max_parallelism_configured: bool,
    pub stateful: bool,
    pub is_source: bool,
    pub spec: Arc<dyn NodeSpec>,
    pub output: Option<Arc<dyn StreamType>>,
    pub side_outputs: Vec<(String, Arc<dyn StreamType>)>,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    /// The chain (vertex) this operator runs in.
    pub chain: usize,
}

pub struct Edge {
    pub from: usize,
    pub to: usize,
    pub kind: EdgeKind,
    pub key_hash: Option<Arc<dyn Any + Send + Sync>>,
    pub side_output: Option<String>,
    pub chained: bool,
}

/// A chain of operators that runs as one task per subtask.
#[derive(Debug, Clone)]
pub struct Chain {
    pub head: usize,
    pub nodes: Vec<usize>,
    pub parallelism: u32,
}

pub struct JobGraph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub chains: Vec<Chain>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("uid '{uid}' is used by two operators ('{first}' and '{second}'); every uid must be unique within a job")]
    DuplicateUid { uid: String, first: String, second: String },
    #[error("operator '{name}' keeps state but has no uid, and pipeline.auto-generate-uids is false; give it one with .uid(\"...\")")]
    MissingUid { name: String },
    #[error("operator '{name}': {reason}")]
    Parallelism { name: String, reason: String },
    #[error("the job has no operators")]
    Empty,
    #[error(
        "operator '{name}' emits no side outputs; get_side_output works on the result of process and window operators"
    )]
    NoSideOutputs { name: String },
}

impl JobGraph {
    /// Resolves parallelism, max parallelism and operator ids, and cuts the graph into chains.
    pub fn build(
        builders: Vec<NodeBuilder>,
        edges: Vec<EdgeBuilder>,
        config: &Configuration,
    ) -> Result<JobGraph, GraphError> {
        if builders.is_empty() {
            return Err(GraphError::Empty);
        }
        let default_p = config.get_int(keys::PARALLELISM_DEFAULT).unwrap_or(1).max(1) as u32;
        let config_max = config.get_int(keys::MAX_PARALLELISM).filter(|m| *m > 0).map(|m| m as u32);
        let auto_uids = config.get_bool(keys::AUTO_GENERATE_UIDS).unwrap_or(true);

        let mut nodes: Vec<Node> = Vec::with_capacity(builders.len());
        for (index, b) in builders.into_iter().enumerate() {
            if !b.side_outputs.is_empty() && !b.emits_side_outputs {
                return Err(GraphError::NoSideOutputs { name: b.name });
            }
            let parallelism = b.parallelism.unwrap_or(default_p);
            let explicit_max = b.max_parallelism.or(config_max);
            let max_parallelism = explicit_max.unwrap_or_else(|| default_max_parallelism(parallelism));
            check_parallelism(parallelism, max_parallelism)
                .map_err(|e| GraphError::Parallelism { name: b.name.clone(), reason: e.to_string() })?;
            nodes.push(Node {
                index,
                name: b.name,
                uid: b.uid,
                operator_id: OperatorId([0; 16]),
                parallelism,
                max_parallelism,
                max_parallelism_configured: explicit_max.is_some(),
                stateful: b.stateful,
                is_source: b.is_source,
                spec: b.spec,
                output: b.output,
                side_outputs: b.side_outputs,
                inputs: Vec::new(),
                outputs: Vec::new(),
                chain: usize::MAX,
            });
        }

        let mut resolved_edges = Vec::with_capacity(edges.len());
        for e in edges {
            let (pf, pt) = (nodes[e.from].parallelism, nodes[e.to].parallelism);
            // Like Flink's default partitioning: forward between different parallelisms rebalances.
            let kind = if e.kind == EdgeKind::Forward && pf != pt { EdgeKind::Rebalance } else { e.kind };
            let idx = resolved_edges.len();
            nodes[e.from].outputs.push(idx);
            nodes[e.to].inputs.push(idx);
            resolved_edges.push(Edge {
                from: e.from,
                to: e.to,
                kind,
                key_hash: e.key_hash,
                side_output: e.side_output,
                chained: false,
            });
        }
        for e in resolved_edges.iter_mut() {
            let (f, t) = (&nodes[e.from], &nodes[e.to]);
            let single_input = t.inputs.len() == 1;
            let same = f.parallelism == t.parallelism;
            // Forward edges of equal parallelism chain; with parallelism 1 on both sides every
            // partitioner is the identity, so those chain too.
            e.chained = single_input && same && (e.kind == EdgeKind::Forward || f.parallelism == 1);
        }

        assign_operator_ids(&mut nodes, &resolved_edges, auto_uids)?;

        let mut chains = Vec::new();
        for head in 0..nodes.len() {
            let is_head = !nodes[head].inputs.iter().any(|&e| resolved_edges[e].chained);
            if !is_head {
                continue;
            }
            let chain_index = chains.len();
            let mut members = vec![head];
            let mut i = 0;
            while i < members.len() {
                let n = members[i];
                nodes[n].chain = chain_index;
                for &e in &nodes[n].outputs {
                    if resolved_edges[e].chained {
                        members.push(resolved_edges[e].to);
                    }
                }
                i += 1;
            }
            chains.push(Chain { head, nodes: members, parallelism: nodes[head].parallelism });
        }
        Ok(JobGraph { nodes, edges: resolved_edges, chains })
    }

    /// Operations on the type of the records an edge carries: the producer's main output type,
    /// or the type of the side output it carries.
    pub fn edge_type(&self, edge: usize) -> Option<Arc<dyn StreamType>> {
        let e = &self.edges[edge];
        let producer = &self.nodes[e.from];
        match &e.side_output {
            None => producer.output.clone(),
            Some(tag) => producer.side_outputs.iter().find(|(t, _)| t == tag).map(|(_, ty)| ty.clone()),
        }
    }

    /// The partitioner of a non-chained edge, with the consumer's max parallelism.
    pub fn partitioner(&self, edge: usize, consumer_max_parallelism: u32) -> ErasedPartitioner {
        let e = &self.edges[edge];
        match (e.kind, &e.key_hash) {
            (EdgeKind::Forward, _) => ErasedPartitioner::Forward,
            (EdgeKind::Rebalance, _) => ErasedPartitioner::Rebalance,
            (EdgeKind::Broadcast, _) => ErasedPartitioner::Broadcast,
            (EdgeKind::KeyGroup, Some(f)) => {
                ErasedPartitioner::KeyGroup { key_hash: f.clone(), max_parallelism: consumer_max_parallelism }
            }
            (EdgeKind::KeyGroup, None) => ErasedPartitioner::Rebalance,
        }
    }

    pub fn operator_infos(&self) -> Vec<weir_core::assignment::OperatorInfo> {
        self.nodes
            .iter()
            .map(|n| weir_core::assignment::OperatorInfo {
                operator_id: n.operator_id,
                uid: n.uid.clone(),
                name: n.name.clone(),
                parallelism: n.parallelism,
                max_parallelism: n.max_parallelism,
                max_parallelism_configured: n.max_parallelism_configured,
            })
            .collect()
    }
}

/// Operator ids: from the uid when set, else generated from the topology in breadth-first order
/// from the sources (see `weir_core::operator_id::generated`).
fn assign_operator_ids(nodes: &mut [Node], edges: &[Edge], auto_uids: bool) -> Result<(), GraphError> {
    let mut by_uid: HashMap<&str, usize> = HashMap::new();
    for n in nodes.iter() {
        if let Some(uid) = &n.uid {
            if let Some(&first) = by_uid.get(uid.as_str()) {
                return Err(GraphError::DuplicateUid {
                    uid: uid.clone(),
                    first: nodes[first].name.clone(),
                    second: n.name.clone(),
                });
            }
            by_uid.insert(uid, n.index);
        } else if n.stateful && !auto_uids {
            return Err(GraphError::MissingUid { name: n.name.clone() });
        }
    }
    let mut hashed: Vec<Option<OperatorId>> = vec![None; nodes.len()];
    let mut queue: VecDeque<usize> = nodes.iter().filter(|n| n.inputs.is_empty()).map(|n| n.index).collect();
    let mut position = 0u32;
    while let Some(i) = queue.pop_front() {
        if hashed[i].is_some() {
            continue;
        }
        let inputs: Option<Vec<OperatorId>> = nodes[i].inputs.iter().map(|&e| hashed[edges[e].from]).collect();
        let Some(inputs) = inputs else { continue }; // revisited once every input is hashed
        let chainable = nodes[i].outputs.iter().filter(|&&e| edges[e].chained).count() as u32;
        let generated = operator_id::generated(position, chainable, &inputs);
        position += 1;
        let id = match &nodes[i].uid {
            Some(uid) => OperatorId::from_uid(uid),
            // A stateless operator's id may change freely: nothing is stored under it.
            None if !nodes[i].stateful => generated,
            None => {
                tracing::warn!(
                    operator = %nodes[i].name,
                    id = %generated,
                    "operator has no uid; its generated id changes when the job's topology changes, which would orphan its state. Set one with .uid(\"...\")"
                );
                generated
            }
        };
        hashed[i] = Some(id);
        for &e in &nodes[i].outputs {
            queue.push_back(edges[e].to);
        }
    }
    for n in nodes.iter_mut() {
        n.operator_id = hashed[n.index].unwrap_or_else(|| operator_id::generated(u32::MAX, 0, &[]));
    }
    Ok(())
}
