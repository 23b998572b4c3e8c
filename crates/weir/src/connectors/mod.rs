//! Sources and sinks that ship with Weir.

mod file_sink;
mod file_source;
mod generator;
mod print;

pub use file_sink::FileSink;
pub use file_source::FileSource;
pub use generator::GeneratorSource;
pub use print::PrintSink;
