//! `KafkaSink`: writes records to Kafka with delivery guarantee none or at-least-once.
//!
//! At-least-once flushes the producer at every checkpoint barrier and fails the checkpoint (and
//! the job, which restarts from its last checkpoint) if any record was not acknowledged, so every
//! record a completed checkpoint covers is in Kafka. The producer is idempotent, so retries
//! inside one run add no duplicates; a restart replays the records after the checkpoint, which
//! may duplicate them. Exactly-once (Kafka transactions) is not offered: docs/kafka.md says why.

use crate::client::Brokers;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir::{BoxError, CheckpointId, Exclusive, OperatorStateSnapshot, SinkContext, SinkFunction};

/// What the sink promises about records that reach it (Flink's `DeliveryGuarantee`, without
/// `EXACTLY_ONCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryGuarantee {
    /// Records are sent and not waited for: a failure may lose those in flight.
    None,
    /// Every record covered by a completed checkpoint is in Kafka; a restart may write some twice.
    AtLeastOnce,
}

/// A record's key and value as bytes.
pub struct KafkaMessage {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

type Serializer<T> = Arc<dyn Fn(&T) -> Result<KafkaMessage, BoxError> + Send + Sync>;
type TopicSelector<T> = Arc<dyn Fn(&T) -> String + Send + Sync>;

/// Keeps the first delivery failure, reported at the next record or barrier.
#[derive(Default)]
struct Deliveries {
    failure: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            if failure.is_none() {
                *failure = Some(format!("a record for topic '{}' was not delivered: {error}", message.topic()));
            }
        }
    }
}

pub struct KafkaSink<T> {
    brokers: Brokers,
    topic: TopicSelector<T>,
    serializer: Serializer<T>,
    guarantee: DeliveryGuarantee,
    properties: Vec<(String, String)>,
    flush_timeout: Duration,
    producer: Exclusive<Option<ThreadedProducer<Deliveries>>>,
}

impl<T> Clone for KafkaSink<T> {
    fn clone(&self) -> Self {
        KafkaSink {
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
            serializer: self.serializer.clone(),
            guarantee: self.guarantee,
            properties: self.properties.clone(),
            flush_timeout: self.flush_timeout,
            producer: Exclusive::new(None),
        }
    }
}

impl KafkaSink<String> {
    /// Writes each string as a record value (no key) to `topic`.
    pub fn utf8(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self::with_serializer(brokers, topic, |s: &String| {
            Ok(KafkaMessage { key: None, value: s.clone().into_bytes() })
        })
    }
}

impl<T: serde::Serialize + 'static> KafkaSink<T> {
    /// Writes each value as a JSON document (no key) to `topic`.
    pub fn json(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self::with_serializer(brokers, topic, |v: &T| Ok(KafkaMessage { key: None, value: serde_json::to_vec(v)? }))
    }
}

impl<T> KafkaSink<T> {
    /// Writes records made by `serialize` (key and value) to `topic`.
    pub fn with_serializer(
        brokers: impl Into<String>,
        topic: impl Into<String>,
        serialize: impl Fn(&T) -> Result<KafkaMessage, BoxError> + Send + Sync + 'static,
    ) -> Self {
        let topic = topic.into();
        KafkaSink {
            brokers: Brokers(brokers.into()),
            topic: Arc::new(move |_| topic.clone()),
            serializer: Arc::new(serialize),
            guarantee: DeliveryGuarantee::AtLeastOnce,
            properties: Vec::new(),
            flush_timeout: Duration::from_secs(60),
            producer: Exclusive::new(None),
        }
    }

    /// Chooses each record's topic (instead of the one given at construction).
    pub fn topic_selector(mut self, select: impl Fn(&T) -> String + Send + Sync + 'static) -> Self {
        self.topic = Arc::new(select);
        self
    }

    /// The delivery guarantee (default at-least-once).
    pub fn delivery_guarantee(mut self, guarantee: DeliveryGuarantee) -> Self {
        self.guarantee = guarantee;
        self
    }

    /// Any librdkafka producer property (`compression.type`, `linger.ms`, ...).
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }

    fn producer(&mut self) -> Result<&ThreadedProducer<Deliveries>, BoxError> {
        let slot = self.producer.get_mut();
        if slot.is_none() {
            let mut config = ClientConfig::new();
            config.set("linger.ms", "5");
            for (k, v) in &self.properties {
                config.set(k, v);
            }
            config.set("bootstrap.servers", &self.brokers.0);
            if self.guarantee == DeliveryGuarantee::AtLeastOnce {
                config.set("enable.idempotence", "true").set("acks", "all");
            }
            let producer = config
                .create_with_context(Deliveries::default())
                .map_err(|e| format!("cannot create a Kafka producer for brokers {}: {e}", self.brokers))?;
            *slot = Some(producer);
        }
        Ok(slot.as_ref().expect("created above"))
    }

    fn check_deliveries(&mut self) -> Result<(), BoxError> {
        let producer = self.producer()?;
        let failure = producer.context().failure.lock().unwrap_or_else(|e| e.into_inner()).take();
        match failure {
            Some(f) => Err(format!("Kafka sink (brokers {}): {f}", self.brokers).into()),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<(), BoxError> {
        let timeout = self.flush_timeout;
        let brokers = self.brokers.clone();
        self.producer()?.flush(timeout).map_err(|e| {
            format!("Kafka sink: records were not acknowledged by brokers {brokers} within {timeout:?}: {e}")
        })?;
        self.check_deliveries()
    }
}

impl<T: Send + 'static> SinkFunction<T> for KafkaSink<T> {
    fn open(&mut self, _: &SinkContext<'_>) -> Result<(), BoxError> {
        self.producer().map(|_| ())
    }

    fn invoke(&mut self, value: T) -> Result<(), BoxError> {
        let topic = (self.topic)(&value);
        let message = (self.serializer)(&value)
            .map_err(|e| format!("Kafka sink: cannot serialize a record for topic '{topic}': {e}"))?;
        let producer = self.producer()?;
        let mut record = BaseRecord::to(&topic).payload(&message.value);
        if let Some(key) = &message.key {
            record = record.key(key);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                // The local queue is full: let deliveries drain it, then try again.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(format!("Kafka sink: cannot send a record to topic '{topic}': {e}").into()),
            }
        }
        if self.guarantee == DeliveryGuarantee::AtLeastOnce {
            self.check_deliveries()?;
        }
        Ok(())
    }

    /// At-least-once: every record before the barrier is acknowledged before the checkpoint's
    /// snapshot is taken.
    fn snapshot_state(&mut self, _: CheckpointId, _: &mut OperatorStateSnapshot) -> Result<(), BoxError> {
        match self.guarantee {
            DeliveryGuarantee::AtLeastOnce => self.flush(),
            DeliveryGuarantee::None => Ok(()),
        }
    }

    fn end_of_input(&mut self) -> Result<(), BoxError> {
        self.flush()
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        self.flush()
    }
}
