//! State assignment on restore: which state each subtask of the new job receives.
//!
//! Maps snapshot state to operators by operator id, refuses state that maps to no operator unless
//! allowed, applies the max-parallelism rules, intersects keyed handles with each new subtask's
//! key-group range, and redistributes operator list state (split, union, broadcast) like Flink's
//! `StateAssignmentOperation` and `RoundRobinOperatorStateRepartitioner` (digest §3).

use crate::key_group::{key_group_range_for_subtask, KeyGroupRange};
use crate::metadata::{KeyedStateHandle, NativeStateHandle, OperatorListState, OperatorSnapshot, Redistribution};
use crate::operator_id::OperatorId;
use std::collections::{BTreeMap, HashMap};

/// An operator of the job being started.
#[derive(Debug, Clone)]
pub struct OperatorInfo {
    pub operator_id: OperatorId,
    pub uid: Option<String>,
    pub name: String,
    pub parallelism: u32,
    pub max_parallelism: u32,
    /// True when the user set the max parallelism; a derived one may adopt the snapshot's.
    pub max_parallelism_configured: bool,
}

/// The state one new subtask restores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubtaskAssignment {
    pub key_groups: KeyGroupRange,
    /// Keyed state handles (already intersected with `key_groups`).
    pub keyed: Vec<KeyedStateHandle>,
    /// Native keyed state handles overlapping `key_groups`, whole: the backend clips them.
    pub native: Vec<NativeStateHandle>,
    /// Operator list states by name, after redistribution.
    pub operator_lists: Vec<OperatorListState>,
    /// Where the subtask's event time starts: the minimum watermark of the old subtasks whose
    /// key groups it takes over (keyed operators) or of all old subtasks (others, after a
    /// rescale); `None` when one of them recorded none.
    pub watermark: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Assignment {
    /// Per operator id, one entry per new subtask.
    pub operators: HashMap<OperatorId, Vec<SubtaskAssignment>>,
    /// Max parallelism adopted from the snapshot for operators whose max was derived.
    pub adopted_max_parallelism: HashMap<OperatorId, u32>,
    /// Snapshot operators skipped (no operator in the new job), with their uid if known.
    pub skipped: Vec<(OperatorId, Option<String>, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    #[error("Failed to restore from {snapshot}: it holds state for operator {id} (uid {uid}, name '{name}') which is not in the new job. Restore with --allow-non-restored-state (-n) or execution.state-recovery.ignore-unclaimed-state: true to skip that state, or give the operator that holds it uid {uid} again.")]
    UnmappedState { snapshot: String, id: OperatorId, uid: String, name: String },
    #[error("Failed to restore from {snapshot}: operator '{name}' (uid {uid}, id {id}) has max parallelism {snapshot_max} in the snapshot but {job_max} in the new job. The max parallelism fixes the key groups of keyed state and cannot change; set the operator's max parallelism back to {snapshot_max}.")]
    MaxParallelismMismatch {
        snapshot: String,
        id: OperatorId,
        uid: String,
        name: String,
        snapshot_max: u32,
        job_max: u32,
    },
    #[error("Failed to restore from {snapshot}: operator '{name}' (uid {uid}, id {id}) runs with parallelism {parallelism}, above the max parallelism {snapshot_max} of its state. Lower the parallelism to at most {snapshot_max}.")]
    ParallelismAboveMax {
        snapshot: String,
        id: OperatorId,
        uid: String,
        name: String,
        parallelism: u32,
        snapshot_max: u32,
    },
}

fn uid_text(uid: &Option<String>) -> String {
    uid.as_ref().map(|u| format!("'{u}'")).unwrap_or_else(|| "<none>".to_string())
}

/// Computes what every subtask of `operators` restores from `snapshot_ops`.
/// `snapshot` names the snapshot in errors.
pub fn assign(
    snapshot: &str,
    snapshot_ops: &[OperatorSnapshot],
    operators: &[OperatorInfo],
    allow_non_restored_state: bool,
) -> Result<Assignment, AssignmentError> {
    let by_id: HashMap<OperatorId, &OperatorSnapshot> = snapshot_ops.iter().map(|o| (o.operator_id, o)).collect();
    let known: HashMap<OperatorId, &OperatorInfo> = operators.iter().map(|o| (o.operator_id, o)).collect();
    let mut result = Assignment::default();

    for op in snapshot_ops {
        if known.contains_key(&op.operator_id) {
            continue;
        }
        if op.is_empty() {
            continue; // empty state never blocks a restore
        }
        if !allow_non_restored_state {
            return Err(AssignmentError::UnmappedState {
                snapshot: snapshot.to_string(),
                id: op.operator_id,
                uid: uid_text(&op.uid),
                name: op.name.clone(),
            });
        }
        result.skipped.push((op.operator_id, op.uid.clone(), op.name.clone()));
    }

    for info in operators {
        let Some(state) = by_id.get(&info.operator_id) else {
            result.operators.insert(info.operator_id, empty_subtasks(info, info.max_parallelism));
            continue;
        };
        let mut max_p = info.max_parallelism;
        if state.max_parallelism != info.max_parallelism {
            if info.max_parallelism_configured {
                return Err(AssignmentError::MaxParallelismMismatch {
                    snapshot: snapshot.to_string(),
                    id: info.operator_id,
                    uid: uid_text(&info.uid),
                    name: info.name.clone(),
                    snapshot_max: state.max_parallelism,
                    job_max: info.max_parallelism,
                });
            }
            max_p = state.max_parallelism;
            result.adopted_max_parallelism.insert(info.operator_id, max_p);
        }
        if info.parallelism > max_p {
            return Err(AssignmentError::ParallelismAboveMax {
                snapshot: snapshot.to_string(),
                id: info.operator_id,
                uid: uid_text(&info.uid),
                name: info.name.clone(),
                parallelism: info.parallelism,
                snapshot_max: max_p,
            });
        }
        let mut subtasks = empty_subtasks(info, max_p);
        for sub in subtasks.iter_mut() {
            sub.keyed = state
                .subtasks
                .iter()
                .filter_map(|s| s.keyed.as_ref())
                .filter_map(|h| h.intersection(&sub.key_groups))
                .collect();
            sub.native = state
                .subtasks
                .iter()
                .filter_map(|s| s.native.as_ref())
                .filter(|h| !h.key_groups.intersection(&sub.key_groups).is_empty())
                .cloned()
                .collect();
        }
        let old: Vec<&[OperatorListState]> = {
            let mut by_index: BTreeMap<u32, &[OperatorListState]> = BTreeMap::new();
            for s in &state.subtasks {
                by_index.insert(s.subtask, &s.operator_lists);
            }
            (0..state.parallelism).map(|i| by_index.get(&i).copied().unwrap_or(&[])).collect()
        };
        for (i, lists) in redistribute_lists(&old, info.parallelism).into_iter().enumerate() {
            subtasks[i].operator_lists = lists;
        }
        for (i, sub) in subtasks.iter_mut().enumerate() {
            sub.watermark = restored_watermark(state, max_p, info.parallelism, i as u32, &sub.key_groups);
        }
        result.operators.insert(info.operator_id, subtasks);
    }
    Ok(result)
}

/// The watermark a new subtask starts from: the minimum over the old subtasks it takes state
/// from. A keyed subtask takes over the old subtasks whose key groups overlap its own; at an
/// unchanged parallelism every subtask takes over its own; otherwise (operator state is dealt
/// out anew) it could take over any, so the minimum over all.
fn restored_watermark(
    state: &OperatorSnapshot,
    max_p: u32,
    new_p: u32,
    index: u32,
    key_groups: &KeyGroupRange,
) -> Option<i64> {
    let keyed = state.subtasks.iter().any(|s| s.keyed.is_some() || s.native.is_some());
    let mut watermarks = (0..state.parallelism).filter_map(|old| {
        let takes_over = if keyed {
            let range = key_group_range_for_subtask(max_p.max(state.parallelism), state.parallelism, old);
            !range.intersection(key_groups).is_empty()
        } else {
            state.parallelism != new_p || old == index
        };
        takes_over.then(|| state.subtasks.iter().find(|s| s.subtask == old).and_then(|s| s.watermark))
    });
    let first = watermarks.next()?;
    watermarks.try_fold(first?, |min, w| w.map(|w| min.min(w)))
}

fn empty_subtasks(info: &OperatorInfo, max_p: u32) -> Vec<SubtaskAssignment> {
    (0..info.parallelism)
        .map(|i| SubtaskAssignment {
            key_groups: key_group_range_for_subtask(max_p.max(info.parallelism), info.parallelism, i),
            ..Default::default()
        })
        .collect()
}

/// Redistributes operator list states from `old` subtasks (in index order) to `new_p` subtasks.
///
/// Split lists keep each subtask's elements when parallelism is unchanged; otherwise elements are
/// dealt out contiguously in old-subtask order, the first `total % new_p` targets taking one more,
/// rotating the start across state names (names in sorted order, where Flink uses hash order).
/// Union lists give every subtask all elements; broadcast gives subtask `i` old copy `i % old_p`.
pub fn redistribute_lists(old: &[&[OperatorListState]], new_p: u32) -> Vec<Vec<OperatorListState>> {
    let new_p = new_p as usize;
    let old_p = old.len();
    let mut out: Vec<Vec<OperatorListState>> = vec![Vec::new(); new_p];
    // name -> (mode, per-old-subtask elements)
    let mut by_name: BTreeMap<&str, (Redistribution, Vec<Vec<serde_bytes::ByteBuf>>)> = BTreeMap::new();
    for (i, lists) in old.iter().enumerate() {
        for l in lists.iter() {
            let entry = by_name.entry(l.name.as_str()).or_insert_with(|| (l.mode, vec![Vec::new(); old_p]));
            entry.1[i].extend(l.elements.iter().cloned());
        }
    }
    let mut start = 0usize;
    for (name, (mode, per_old)) in by_name {
        let mut push = |target: usize, elements: Vec<serde_bytes::ByteBuf>| {
            out[target].push(OperatorListState { name: name.to_string(), mode, elements });
        };
        match mode {
            Redistribution::Split if old_p == new_p => {
                for (i, elements) in per_old.into_iter().enumerate() {
                    push(i, elements);
                }
            }
            Redistribution::Split => {
                let all: Vec<_> = per_old.into_iter().flatten().collect();
                let (base, remainder) = (all.len() / new_p, all.len() % new_p);
                let mut iter = all.into_iter();
                let mut targets = vec![Vec::new(); new_p];
                for i in 0..new_p {
                    let n = if i < remainder { base + 1 } else { base };
                    targets[(i + start) % new_p] = iter.by_ref().take(n).collect();
                }
                for (t, elements) in targets.into_iter().enumerate() {
                    push(t, elements);
                }
                start = (start + remainder) % new_p;
            }
            Redistribution::Union => {
                let all: Vec<_> = per_old.into_iter().flatten().collect();
                for t in 0..new_p {
                    push(t, all.clone());
                }
            }
            Redistribution::Broadcast => {
                for t in 0..new_p {
                    push(t, per_old[t % old_p.max(1)].clone());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{StateFileRef, SubtaskSnapshot};
    use serde_bytes::ByteBuf;

    fn list(name: &str, mode: Redistribution, items: &[&str]) -> OperatorListState {
        OperatorListState {
            name: name.into(),
            mode,
            elements: items.iter().map(|s| ByteBuf::from(s.as_bytes().to_vec())).collect(),
        }
    }

    fn texts(l: &OperatorListState) -> Vec<String> {
        l.elements.iter().map(|b| String::from_utf8(b.to_vec()).unwrap()).collect()
    }

    #[test]
    fn split_example_from_the_digest() {
        let old0 = [list("s", Redistribution::Split, &["a", "b", "c"])];
        let old1 = [list("s", Redistribution::Split, &["d", "e"])];
        let out = redistribute_lists(&[&old0, &old1], 3);
        let got: Vec<_> = out.iter().map(|v| texts(&v[0])).collect();
        assert_eq!(got, vec![vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
    }

    #[test]
    fn union_and_broadcast_examples_from_the_digest() {
        let old0 = [list("u", Redistribution::Union, &["a", "b", "c"]), list("b", Redistribution::Broadcast, &["x0"])];
        let old1 = [list("u", Redistribution::Union, &["d", "e"]), list("b", Redistribution::Broadcast, &["x1"])];
        let out = redistribute_lists(&[&old0, &old1], 3);
        for sub in &out {
            let u = sub.iter().find(|l| l.name == "u").unwrap();
            assert_eq!(texts(u), vec!["a", "b", "c", "d", "e"]);
        }
        let b: Vec<_> = out.iter().map(|s| texts(s.iter().find(|l| l.name == "b").unwrap())).collect();
        assert_eq!(b, vec![vec!["x0"], vec!["x1"], vec!["x0"]]);
    }

    #[test]
    fn split_keeps_every_element_exactly_once() {
        for old_p in 1..5usize {
            for new_p in 1..7u32 {
                let olds: Vec<Vec<OperatorListState>> = (0..old_p)
                    .map(|i| {
                        let items: Vec<String> = (0..(i * 3 + 1)).map(|j| format!("{i}-{j}")).collect();
                        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
                        vec![list("s", Redistribution::Split, &refs)]
                    })
                    .collect();
                let refs: Vec<&[OperatorListState]> = olds.iter().map(|v| v.as_slice()).collect();
                let out = redistribute_lists(&refs, new_p);
                let mut got: Vec<String> = out.iter().flat_map(|v| v.iter().flat_map(texts)).collect();
                let mut want: Vec<String> = olds.iter().flat_map(|v| texts(&v[0])).collect();
                got.sort();
                want.sort();
                assert_eq!(got, want, "{old_p} -> {new_p}");
            }
        }
    }

    fn info(uid: &str, p: u32, max_p: u32, configured: bool) -> OperatorInfo {
        OperatorInfo {
            operator_id: OperatorId::from_uid(uid),
            uid: Some(uid.into()),
            name: uid.to_uppercase(),
            parallelism: p,
            max_parallelism: max_p,
            max_parallelism_configured: configured,
        }
    }

    fn keyed_snapshot(uid: &str, p: u32, max_p: u32) -> OperatorSnapshot {
        OperatorSnapshot {
            operator_id: OperatorId::from_uid(uid),
            uid: Some(uid.into()),
            name: uid.to_uppercase(),
            parallelism: p,
            max_parallelism: max_p,
            subtasks: (0..p)
                .map(|i| {
                    let r = key_group_range_for_subtask(max_p, p, i);
                    SubtaskSnapshot {
                        subtask: i,
                        keyed: Some(KeyedStateHandle {
                            file: StateFileRef { path: format!("f{i}"), size: 1, crc32c: None },
                            key_groups: r,
                            offsets: r.iter().map(u64::from).collect(),
                        }),
                        operator_lists: vec![],
                        native: None,
                        watermark: None,
                    }
                })
                .collect(),
        }
    }

    /// Subtask watermarks as restored at parallelism `p` from `snapshot` (max parallelism 12).
    fn restored_watermarks(watermarks: &[Option<i64>], p: u32) -> Vec<Option<i64>> {
        let mut snapshot = keyed_snapshot("window", watermarks.len() as u32, 12);
        for (s, w) in snapshot.subtasks.iter_mut().zip(watermarks) {
            s.watermark = *w;
        }
        let a = assign("sp", &[snapshot], &[info("window", p, 12, true)], false).unwrap();
        a.operators[&OperatorId::from_uid("window")].iter().map(|s| s.watermark).collect()
    }

    #[test]
    fn a_rescaled_subtask_starts_from_the_minimum_watermark_of_the_subtasks_it_takes_over() {
        // 3 → 2 over 12 key groups: new 0 takes old 0 and half of old 1, new 1 the rest.
        let old = [Some(300), Some(100), Some(200)];
        assert_eq!(restored_watermarks(&old, 2), vec![Some(100), Some(100)]);
        assert_eq!(restored_watermarks(&old, 3), old.to_vec());
        // 3 → 6: each new subtask within one old subtask keeps that one's watermark.
        assert_eq!(
            restored_watermarks(&old, 6),
            vec![Some(300), Some(300), Some(100), Some(100), Some(200), Some(200)]
        );
        // An old subtask without a watermark makes the ones taking it over start from none.
        assert_eq!(restored_watermarks(&[Some(300), None, Some(200)], 2), vec![None, None]);
    }

    #[test]
    fn keyed_rescale_covers_every_key_group_once() {
        let snap = [keyed_snapshot("sum", 3, 13)];
        let a = assign("sp", &snap, &[info("sum", 2, 13, true)], false).unwrap();
        let subs = &a.operators[&OperatorId::from_uid("sum")];
        let mut seen = vec![0; 13];
        for (i, s) in subs.iter().enumerate() {
            for h in &s.keyed {
                for kg in h.key_groups.iter() {
                    assert!(s.key_groups.contains(kg));
                    assert_eq!(h.offsets[(kg - h.key_groups.start) as usize], kg as u64);
                    seen[kg as usize] += 1;
                }
            }
            assert_eq!(s.key_groups, key_group_range_for_subtask(13, 2, i as u32));
        }
        assert_eq!(seen, vec![1; 13]);
    }

    #[test]
    fn unmapped_state_is_refused_unless_allowed_and_empty_state_never_blocks() {
        let snap = [keyed_snapshot("gone", 1, 128)];
        let err = assign("/sp/savepoint-1", &snap, &[info("sum", 1, 128, false)], false).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("'gone'") && msg.contains("GONE") && msg.contains("--allow-non-restored-state"), "{msg}");
        assert!(msg.contains(&OperatorId::from_uid("gone").to_hex()));
        let a = assign("sp", &snap, &[info("sum", 1, 128, false)], true).unwrap();
        assert_eq!(a.skipped.len(), 1);
        let mut empty = keyed_snapshot("gone", 1, 128);
        empty.subtasks[0].keyed = None;
        assert!(assign("sp", &[empty], &[info("sum", 1, 128, false)], false).is_ok());
    }

    #[test]
    fn max_parallelism_rules() {
        let snap = [keyed_snapshot("sum", 2, 128)];
        let err = assign("sp", &snap, &[info("sum", 2, 256, true)], false).unwrap_err();
        assert!(matches!(err, AssignmentError::MaxParallelismMismatch { snapshot_max: 128, job_max: 256, .. }));
        let a = assign("sp", &snap, &[info("sum", 100, 256, false)], false).unwrap();
        assert_eq!(a.adopted_max_parallelism[&OperatorId::from_uid("sum")], 128);
        let snap = [keyed_snapshot("sum", 2, 4)];
        let err = assign("sp", &snap, &[info("sum", 5, 8, false)], false).unwrap_err();
        assert!(matches!(err, AssignmentError::ParallelismAboveMax { parallelism: 5, snapshot_max: 4, .. }), "{err}");
    }

    #[test]
    fn new_operators_start_empty() {
        let a = assign("sp", &[], &[info("new", 2, 128, false)], false).unwrap();
        let subs = &a.operators[&OperatorId::from_uid("new")];
        assert_eq!(subs.len(), 2);
        assert!(subs.iter().all(|s| s.keyed.is_empty() && s.operator_lists.is_empty()));
    }
}
