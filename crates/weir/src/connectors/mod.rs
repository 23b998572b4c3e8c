//! Sources and sinks that ship with Weir.

mod file_sink;
mod file_source;
mod generator;
mod print;

pub use file_sink::FileSink;
pub use file_source::{log_prefix, FileSource, LOGGED_PREFIX};
pub use generator::GeneratorSource;
pub use print::PrintSink;
