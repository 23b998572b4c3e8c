//! Choosing the keyed state backend from `state.backend.type`.

use crate::Error;
use weir_core::config::{keys, Configuration};
use weir_state::StateBackend;

pub(crate) fn from_config(config: &Configuration) -> Result<StateBackend, Error> {
    match config.get_enum(keys::STATE_BACKEND) {
        Some("rocksdb") => rocksdb(config),
        _ => Ok(StateBackend::HashMap),
    }
}

#[cfg(feature = "rocksdb")]
fn rocksdb(config: &Configuration) -> Result<StateBackend, Error> {
    let backend = weir_rocksdb::RocksDbStateBackend::from_config(config);
    Ok(StateBackend::Store(std::sync::Arc::new(backend)))
}

#[cfg(not(feature = "rocksdb"))]
fn rocksdb(_: &Configuration) -> Result<StateBackend, Error> {
    Err(Error::Args(
        "state.backend.type is rocksdb, but this job was built without Weir's rocksdb backend: enable the 'rocksdb' feature of the weir crate (weir = { ..., features = [\"rocksdb\"] } in the job's Cargo.toml; see docs/write-your-own-job.md)".into(),
    ))
}
