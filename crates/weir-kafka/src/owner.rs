//! Which subtask reads a partition: Flink's formula (`KafkaSourceEnumerator.getSplitOwner`, and
//! `KafkaTopicPartitionAssigner` before it), so partitions land where they would in Flink.

use weir_core::KeyHash;

/// `(((topic.hashCode() * 31) & 0x7FFFFFFF) % n + partition) % n`: a topic's partitions go round
/// robin, starting at a subtask derived from the topic's name (so several topics spread out).
pub fn partition_owner(topic: &str, partition: i32, parallelism: u32) -> u32 {
    let n = i64::from(parallelism.max(1));
    let start = i64::from(topic.key_hash().wrapping_mul(31) & 0x7FFF_FFFF) % n;
    ((start + i64::from(partition)).rem_euclid(n)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_match_flinks_formula() {
        // Computed with the formula in Java 17 (jshell): "word".hashCode() = 3655434.
        assert_eq!("word".key_hash(), 3_655_434);
        let owners = |topic: &str, partitions: i32, n: u32| -> Vec<u32> {
            (0..partitions).map(|p| partition_owner(topic, p, n)).collect()
        };
        assert_eq!(owners("word", 4, 3), vec![0, 1, 2, 0]);
        assert_eq!(owners("word", 4, 2), vec![0, 1, 0, 1]);
        assert_eq!(owners("events", 5, 4), vec![3, 0, 1, 2, 3]);
        assert_eq!(owners("word", 4, 1), vec![0, 0, 0, 0]);
    }
}
