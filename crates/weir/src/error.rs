use weir_runtime::job::JobError;
use weir_runtime::JobStatus;

/// What building or running a job can fail with. Its `Debug` reads like its `Display`, so a job
/// whose `main` returns `Result<(), Box<dyn Error>>` prints the message, not the enum's structure.
#[derive(thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] weir_core::config::ConfigError),
    #[error(transparent)]
    Graph(#[from] weir_runtime::graph::GraphError),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("{0}")]
    Args(String),
    #[error("job {job_id} ended {status}: {cause}")]
    JobFailed { job_id: String, status: JobStatus, cause: String },
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_reads_like_display() {
        let e = super::Error::Args("cannot read 'x'".into());
        assert_eq!(format!("{e:?}"), "cannot read 'x'");
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert_eq!(format!("{boxed:?}"), "cannot read 'x'");
    }
}
