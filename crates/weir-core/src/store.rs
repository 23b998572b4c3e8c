//! The completed-checkpoint store: which completed snapshots are retained, and which are subsumed.
//!
//! Pure bookkeeping over Flink's rules (digest §1.7, `CheckpointSubsumeHelper`): keep
//! `num_retained` entries, never subsume the latest entry, never subsume the latest regular
//! checkpoint while a newer savepoint sits after it, and never delete the files of an entry that
//! does not own them (a snapshot restored in NO_CLAIM mode). A snapshot restored in CLAIM mode is
//! deleted only once a later checkpoint of the new job has completed: a job that fails or ends
//! before that leaves it untouched, whatever the retention policy. The caller deletes what `add`
//! and `shutdown` return.

use crate::CheckpointId;
use std::collections::VecDeque;

/// What happens to retained checkpoints when the job ends
/// (`execution.checkpointing.externalized-checkpoint-retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionPolicy {
    /// `NO_EXTERNALIZED_CHECKPOINTS`: deleted on every terminal state.
    NeverRetainAfterTermination,
    /// `DELETE_ON_CANCELLATION`: kept only when the job fails.
    RetainOnFailure,
    /// `RETAIN_ON_CANCELLATION`: kept when the job is cancelled or fails.
    RetainOnCancellation,
}

impl RetentionPolicy {
    pub fn from_config_value(v: &str) -> Option<Self> {
        match v.to_ascii_uppercase().as_str() {
            "NO_EXTERNALIZED_CHECKPOINTS" => Some(Self::NeverRetainAfterTermination),
            "DELETE_ON_CANCELLATION" => Some(Self::RetainOnFailure),
            "RETAIN_ON_CANCELLATION" => Some(Self::RetainOnCancellation),
            _ => None,
        }
    }
}

/// Terminal states of a job, for retention decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    Finished,
    Canceled,
    Failed,
}

/// Who owns a retained snapshot's files, and so when the store may hand them out for deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// A checkpoint this job wrote: deleted once subsumed, and per the retention policy at the end.
    Job,
    /// A snapshot restored in CLAIM mode: deleted once a later checkpoint of this job exists (it is
    /// subsumed, or the job ends with a newer checkpoint retained), never before.
    Claimed,
    /// The user's (a snapshot restored in NO_CLAIM mode): never deleted.
    User,
}

/// One retained snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Retained<C> {
    pub id: CheckpointId,
    /// True for a savepoint (including a snapshot restored in NO_CLAIM mode).
    pub is_savepoint: bool,
    pub ownership: Ownership,
    pub data: C,
}

#[derive(Debug, Clone)]
pub struct CompletedCheckpointStore<C> {
    num_retained: usize,
    entries: VecDeque<Retained<C>>,
}

impl<C> CompletedCheckpointStore<C> {
    /// `num_retained` below 1 is treated as 1, as Flink does.
    pub fn new(num_retained: usize) -> Self {
        CompletedCheckpointStore { num_retained: num_retained.max(1), entries: VecDeque::new() }
    }

    pub fn latest(&self) -> Option<&Retained<C>> {
        self.entries.back()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Retained<C>> {
        self.entries.iter()
    }

    /// Adds a completed snapshot and returns the entries it subsumes whose files must be deleted.
    /// Subsumed entries that are not owned are dropped from the store but not returned.
    pub fn add(&mut self, entry: Retained<C>) -> Vec<Retained<C>> {
        self.entries.push_back(entry);
        let mut to_discard = Vec::new();
        let mut i = 0;
        while self.entries.len() > self.num_retained && i + 1 < self.entries.len() {
            let e = &self.entries[i];
            let newer_checkpoint_exists = self.entries.iter().skip(i + 1).any(|n| !n.is_savepoint);
            if e.is_savepoint || newer_checkpoint_exists {
                if let Some(removed) = self.entries.remove(i) {
                    if removed.ownership != Ownership::User {
                        to_discard.push(removed);
                    }
                }
            } else {
                i += 1;
            }
        }
        to_discard
    }

    /// Empties the store when the job ends; returns the entries whose files must be deleted.
    pub fn shutdown(&mut self, policy: RetentionPolicy, how: Termination) -> Vec<Retained<C>> {
        let discard = match (policy, how) {
            (_, Termination::Finished) => true,
            (RetentionPolicy::NeverRetainAfterTermination, _) => true,
            (RetentionPolicy::RetainOnFailure, Termination::Canceled) => true,
            (RetentionPolicy::RetainOnFailure, Termination::Failed) => false,
            (RetentionPolicy::RetainOnCancellation, _) => false,
        };
        // A claimed snapshot goes only when a checkpoint of this job was taken after it.
        let last_own_checkpoint = self.entries.iter().filter(|e| e.ownership == Ownership::Job).map(|e| e.id).max();
        let all: Vec<_> = self.entries.drain(..).collect();
        if !discard {
            return Vec::new();
        }
        all.into_iter()
            .filter(|e| match e.ownership {
                Ownership::Job => true,
                Ownership::Claimed => last_own_checkpoint.is_some_and(|newest| newest > e.id),
                Ownership::User => false,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(id: u64) -> Retained<()> {
        Retained { id, is_savepoint: false, ownership: Ownership::Job, data: () }
    }

    fn ids<C>(s: &CompletedCheckpointStore<C>) -> Vec<u64> {
        s.iter().map(|e| e.id).collect()
    }

    #[test]
    fn num_retained_two_keeps_the_last_two() {
        let mut s = CompletedCheckpointStore::new(2);
        let mut discarded = vec![];
        for id in 1..=5 {
            discarded.extend(s.add(cp(id)).into_iter().map(|e| e.id));
        }
        assert_eq!(ids(&s), vec![4, 5]);
        assert_eq!(discarded, vec![1, 2, 3]);
    }

    #[test]
    fn zero_retained_means_one() {
        let mut s = CompletedCheckpointStore::new(0);
        s.add(cp(1));
        assert_eq!(s.add(cp(2)).len(), 1);
        assert_eq!(ids(&s), vec![2]);
    }

    #[test]
    fn restored_unowned_snapshot_is_subsumed_but_never_discarded() {
        let mut s = CompletedCheckpointStore::new(1);
        s.add(Retained { id: 7, is_savepoint: true, ownership: Ownership::User, data: () });
        assert!(s.add(cp(8)).is_empty());
        assert_eq!(ids(&s), vec![8]);
    }

    #[test]
    fn claimed_snapshot_is_discarded_once_subsumed() {
        let mut s = CompletedCheckpointStore::new(1);
        s.add(claimed(7));
        let gone: Vec<_> = s.add(cp(8)).into_iter().map(|e| e.id).collect();
        assert_eq!(gone, vec![7]);
    }

    fn claimed(id: u64) -> Retained<()> {
        Retained { id, is_savepoint: false, ownership: Ownership::Claimed, data: () }
    }

    #[test]
    fn claimed_snapshot_survives_a_job_that_ends_before_its_first_checkpoint() {
        use RetentionPolicy::*;
        use Termination::*;
        for policy in [NeverRetainAfterTermination, RetainOnFailure, RetainOnCancellation] {
            for how in [Finished, Canceled, Failed] {
                let mut s = CompletedCheckpointStore::new(2);
                s.add(claimed(7));
                assert!(s.shutdown(policy, how).is_empty(), "{policy:?} {how:?}");
            }
        }
        // With a later checkpoint retained beside it, the claim has been exercised.
        let mut s = CompletedCheckpointStore::new(2);
        s.add(claimed(7));
        assert!(s.add(cp(8)).is_empty());
        let gone: Vec<_> = s.shutdown(NeverRetainAfterTermination, Failed).into_iter().map(|e| e.id).collect();
        assert_eq!(gone, vec![7, 8]);
    }

    #[test]
    fn latest_checkpoint_is_kept_behind_a_newer_savepoint() {
        let mut s = CompletedCheckpointStore::new(1);
        s.add(cp(1));
        let gone = s.add(Retained { id: 2, is_savepoint: true, ownership: Ownership::User, data: () });
        assert!(gone.is_empty());
        assert_eq!(ids(&s), vec![1, 2]);
        let gone: Vec<_> = s.add(cp(3)).into_iter().map(|e| e.id).collect();
        assert_eq!(gone, vec![1]);
        assert_eq!(ids(&s), vec![3]);
    }

    #[test]
    fn shutdown_follows_the_retention_policy() {
        use RetentionPolicy::*;
        use Termination::*;
        let cases = [
            (NeverRetainAfterTermination, Finished, true),
            (NeverRetainAfterTermination, Canceled, true),
            (NeverRetainAfterTermination, Failed, true),
            (RetainOnFailure, Finished, true),
            (RetainOnFailure, Canceled, true),
            (RetainOnFailure, Failed, false),
            (RetainOnCancellation, Finished, true),
            (RetainOnCancellation, Canceled, false),
            (RetainOnCancellation, Failed, false),
        ];
        for (policy, how, discarded) in cases {
            let mut s = CompletedCheckpointStore::new(1);
            s.add(cp(1));
            assert_eq!(!s.shutdown(policy, how).is_empty(), discarded, "{policy:?} {how:?}");
            assert!(s.is_empty());
        }
    }
}
