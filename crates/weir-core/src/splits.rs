//! Which source subtask reads which split (a Kafka partition, a file, a range of a generator).
//!
//! Every subtask decides for itself, with no coordinator: a split's owner is a pure function of
//! its id and the parallelism, and the positions of all splits come back to every subtask on
//! restore (union state). So the subtasks agree on the assignment at any parallelism, a split
//! discovered by several subtasks is read by exactly one, and the decision needs no messages,
//! which is what lets it work unchanged when subtasks run on several machines.

use crate::key_group::KeyHash;
use std::collections::BTreeSet;

/// The owner of a split by its id: Java's `String.hashCode` of the id, made non-negative, modulo
/// the parallelism. Stable across runs, versions and platforms.
pub fn split_owner(split_id: &str, parallelism: u32) -> u32 {
    ((split_id.key_hash() & 0x7FFF_FFFF) as u32) % parallelism.max(1)
}

/// The splits one subtask reads, and every split id the job has seen (so a split found again by
/// discovery is not started twice).
#[derive(Debug, Default)]
pub struct SplitAssignment {
    subtask: u32,
    parallelism: u32,
    known: BTreeSet<String>,
}

impl SplitAssignment {
    pub fn new(subtask: u32, parallelism: u32) -> Self {
        SplitAssignment { subtask, parallelism: parallelism.max(1), known: BTreeSet::new() }
    }

    /// Takes restored splits: `all` are every subtask's splits (union state), each with its id and
    /// owner at the current parallelism; returns the ones this subtask reads, in their order.
    pub fn restore<S>(&mut self, all: Vec<S>, id_and_owner: impl Fn(&S, u32) -> (String, u32)) -> Vec<S> {
        let mut mine = Vec::new();
        for split in all {
            let (id, owner) = id_and_owner(&split, self.parallelism);
            if self.known.insert(id) && owner == self.subtask {
                mine.push(split);
            }
        }
        mine
    }

    /// Takes splits restored from a layout where the runtime already dealt them among subtasks
    /// (split-redistributed state): all of them are this subtask's.
    pub fn restore_dealt<S>(&mut self, mine: Vec<S>, id: impl Fn(&S) -> String) -> Vec<S> {
        mine.into_iter().filter(|s| self.known.insert(id(s))).collect()
    }

    /// Takes discovered splits: returns those not seen before that this subtask owns. Every
    /// discovered id becomes known, so a later discovery of the same split is not new.
    pub fn discovered<S>(&mut self, found: Vec<S>, id_and_owner: impl Fn(&S, u32) -> (String, u32)) -> Vec<S> {
        self.restore(found, id_and_owner)
    }

    pub fn parallelism(&self) -> u32 {
        self.parallelism
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_id(s: &&str, p: u32) -> (String, u32) {
        (s.to_string(), split_owner(s, p))
    }

    #[test]
    fn owners_are_java_string_hashes_modulo_the_parallelism() {
        // "word-0".hashCode() is -782_093_779 in Java 17 (jshell); & 0x7fffffff = 1_365_389_869.
        assert_eq!("word-0".key_hash(), -782_093_779);
        assert_eq!(split_owner("word-0", 3), 1_365_389_869 % 3);
        assert_eq!(split_owner("anything", 1), 0);
        assert_eq!(split_owner("anything", 0), 0, "a zero parallelism is treated as one");
    }

    #[test]
    fn every_split_has_exactly_one_owner_at_every_parallelism() {
        let splits: Vec<String> = (0..50).map(|i| format!("topic-{i}")).collect();
        for p in 1..=7 {
            let mut seen = Vec::new();
            for subtask in 0..p {
                let mut a = SplitAssignment::new(subtask, p);
                let all: Vec<&str> = splits.iter().map(String::as_str).collect();
                seen.extend(a.restore(all, by_id));
            }
            seen.sort();
            let mut expected: Vec<&str> = splits.iter().map(String::as_str).collect();
            expected.sort();
            assert_eq!(seen, expected, "parallelism {p}");
        }
    }

    #[test]
    fn a_split_discovered_again_is_not_new() {
        let mut a = SplitAssignment::new(0, 1);
        assert_eq!(a.restore(vec!["p-0"], by_id), vec!["p-0"]);
        assert_eq!(a.discovered(vec!["p-0", "p-1"], by_id), vec!["p-1"]);
        assert!(a.discovered(vec!["p-0", "p-1"], by_id).is_empty());
    }

    #[test]
    fn splits_of_other_subtasks_become_known_but_not_read() {
        let p = 2;
        let owner_of_a = split_owner("a", p);
        let mut other = SplitAssignment::new(1 - owner_of_a, p);
        assert!(other.discovered(vec!["a"], by_id).is_empty());
        let mut owner = SplitAssignment::new(owner_of_a, p);
        assert_eq!(owner.discovered(vec!["a"], by_id), vec!["a"]);
    }

    #[test]
    fn dealt_splits_are_all_this_subtasks() {
        let mut a = SplitAssignment::new(1, 4);
        assert_eq!(a.restore_dealt(vec!["x", "y", "x"], |s| s.to_string()), vec!["x", "y"]);
        assert!(a.discovered(vec!["x"], by_id).is_empty());
    }
}
