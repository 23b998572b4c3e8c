//! The REST API a running job serves, with Flink's paths and JSON shapes (digest §5.2), and the
//! registry through which the `weir` CLI finds running jobs by id.

mod checkpoint_stats;
mod metrics;
mod operations;
pub mod registry;
mod server;
mod ui;
mod views;

pub use registry::{Ended, Registry, RegistryEntry};
pub use server::{serve, RestServer};
