//! Making librdkafka clients, and saying clearly when brokers cannot be reached.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use std::time::Duration;
use weir::BoxError;

/// How long a metadata or offset request may take before the brokers count as unreachable.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// The `bootstrap.servers` list, as the user gave it.
#[derive(Debug, Clone)]
pub(crate) struct Brokers(pub String);

impl std::fmt::Display for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Brokers {
    /// The error for a request that failed: names the brokers and what was being done.
    pub(crate) fn unreachable(&self, doing: &str, error: KafkaError) -> BoxError {
        format!(
            "Kafka brokers {self} did not answer while {doing} ({error}); check that they run and that the address is right. The job restarts by its restart strategy and resumes from its last checkpoint"
        )
        .into()
    }
}

/// A consumer that only reads what it is assigned and never stores positions in the group.
pub(crate) fn consumer(
    brokers: &Brokers,
    group: Option<&str>,
    properties: &[(String, String)],
    purpose: &str,
) -> Result<BaseConsumer, BoxError> {
    let mut config = ClientConfig::new();
    for (k, v) in properties {
        config.set(k, v);
    }
    config
        .set("bootstrap.servers", &brokers.0)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // Out of range (retention deleted the position): the earliest record left.
        .set("auto.offset.reset", "earliest");
    // librdkafka's consumer needs a group id even for assign(); without the user's, a placeholder
    // that is never joined (assign does not join) nor committed to.
    config.set("group.id", group.unwrap_or("weir-unassigned"));
    if !properties.iter().any(|(k, _)| k == "client.id") {
        config.set("client.id", format!("weir-{purpose}"));
    }
    config.create().map_err(|e| format!("cannot create a Kafka consumer for brokers {brokers}: {e}").into())
}
