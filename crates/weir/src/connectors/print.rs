//! Prints records to stdout, one per line, prefixed with the subtask (`2> `) when parallel, as
//! Flink's print sink does.

use crate::functions::{BoxError, SinkContext, SinkFunction};
use std::fmt::Display;
use std::io::Write;

#[derive(Clone, Default)]
pub struct PrintSink {
    prefix: String,
}

impl PrintSink {
    pub fn new() -> Self {
        Self::default()
    }
}

impl<T: Display + Send + 'static> SinkFunction<T> for PrintSink {
    fn open(&mut self, ctx: &SinkContext<'_>) -> Result<(), BoxError> {
        if ctx.parallelism > 1 {
            self.prefix = format!("{}> ", ctx.subtask + 1);
        }
        Ok(())
    }

    fn invoke(&mut self, value: T) -> Result<(), BoxError> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}{value}", self.prefix)?;
        Ok(())
    }
}
