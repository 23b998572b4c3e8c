//! Turning Kafka records into the job's values.

use std::sync::Arc;
use weir::BoxError;

/// A record as the broker holds it, with where it is.
#[derive(Debug, Clone, Copy)]
pub struct KafkaRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (create or log-append time), in milliseconds since the epoch; it
    /// becomes the event timestamp of the value.
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

pub(crate) type Deserializer<T> = Arc<dyn Fn(&KafkaRecord<'_>) -> Result<T, BoxError> + Send + Sync>;

pub(crate) fn utf8_value(record: &KafkaRecord<'_>) -> Result<String, BoxError> {
    let value = record.value.ok_or("the value is null")?;
    match std::str::from_utf8(value) {
        Ok(text) => Ok(text.to_string()),
        Err(e) => {
            Err(format!("the value is not UTF-8 ({e}); it starts {}", weir::connectors::log_prefix(value)).into())
        }
    }
}

pub(crate) fn json_value<T: serde::de::DeserializeOwned>(record: &KafkaRecord<'_>) -> Result<T, BoxError> {
    let value = record.value.ok_or("the value is null")?;
    serde_json::from_slice(value).map_err(|e| {
        format!(
            "the value is not a JSON document of the expected type ({e}); it starts {}",
            weir::connectors::log_prefix(value)
        )
        .into()
    })
}

/// A record the deserializer refused, as it reaches the side output named with
/// [`crate::KafkaSource::undeserializable_to`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UndeserializableRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Why it was refused.
    pub error: String,
}
