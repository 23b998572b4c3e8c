//! An exactly-once PostgreSQL sink for Weir (two-phase commit: `PREPARE TRANSACTION` at the
//! checkpoint barrier, `COMMIT PREPARED` when the checkpoint completes). See [`PostgresSink`].

mod sink;
mod sql;
mod value;

pub use sink::{PostgresSink, DEFAULT_MAX_ROWS_KEPT};
pub use sql::WriteMode;
pub use value::SqlValue;
