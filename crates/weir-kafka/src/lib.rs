//! Kafka for Weir, through `rdkafka` (librdkafka, bundled).
//!
//! [`KafkaSource`] is a split source: partitions are splits, their offsets are operator state,
//! so a savepoint says exactly where a restored job resumes, at any parallelism. [`KafkaSink`]
//! writes with delivery guarantee none or at-least-once. A transactional exactly-once Kafka sink is
//! not offered: docs/kafka.md says why, and the design it will take.

mod client;
mod deserialize;
mod owner;
mod sink;
mod source;

pub use deserialize::{KafkaRecord, UndeserializableRecord};
pub use owner::partition_owner;
pub use sink::{DeliveryGuarantee, KafkaMessage, KafkaSink};
pub use source::{KafkaSource, KafkaSplit, Reset, StartingOffsets};
