use weir_runtime::job::JobError;
use weir_runtime::JobStatus;

#[derive(Debug, thiserror::Error)]
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
