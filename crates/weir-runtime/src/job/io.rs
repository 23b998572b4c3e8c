//! The master's storage work, on a thread of its own: making snapshot directories, writing and
//! reading back `_metadata`, deleting what retention lets go. A store that is slow or hangs (an
//! S3 endpoint that stops answering) then delays only that work, never the master's handling of
//! acknowledgements, failures and cancellation; Flink's checkpoint coordinator has an I/O
//! executor for the same reason.
//!
//! One thread, first in first out: a deletion queued before a later snapshot is triggered is done
//! before that snapshot's directory exists (its barriers go out only once it does), so it can
//! never touch the later snapshot's files.

use crossbeam_channel::{Sender, TrySendError};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

pub(super) struct IoThread {
    jobs: Sender<Job>,
}

impl IoThread {
    pub(super) fn start(name: String) -> std::io::Result<IoThread> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        std::thread::Builder::new().name(name).spawn(move || {
            for job in queue {
                job();
            }
        })?;
        Ok(IoThread { jobs })
    }

    /// Runs `job` after everything submitted before it.
    pub(super) fn submit(&self, job: impl FnOnce() + Send + 'static) {
        if let Err(TrySendError::Disconnected(_)) = self.jobs.try_send(Box::new(job)) {
            // The thread is gone only if a job panicked; the work is lost, not the job.
            tracing::error!("the job master's storage thread has stopped; storage work is skipped");
        }
    }

    /// Waits until everything submitted so far is done, at most `timeout`; false if it was not
    /// (the store hangs: the work goes on in the background).
    pub(super) fn drain(&self, timeout: Duration) -> bool {
        let (done, finished) = crossbeam_channel::bounded(1);
        self.submit(move || {
            let _ = done.send(());
        });
        finished.recv_timeout(timeout).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn runs_jobs_in_the_order_submitted_and_drains() {
        let io = IoThread::start("io-test".into()).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for i in 0..50 {
            let seen = seen.clone();
            io.submit(move || seen.lock().unwrap().push(i));
        }
        assert!(io.drain(Duration::from_secs(10)));
        assert_eq!(*seen.lock().unwrap(), (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn a_drain_behind_a_hanging_job_gives_up_after_its_timeout() {
        let io = IoThread::start("io-test".into()).unwrap();
        let (release, hang) = crossbeam_channel::bounded::<()>(1);
        io.submit(move || {
            let _ = hang.recv();
        });
        assert!(!io.drain(Duration::from_millis(50)), "the hanging job is still running");
        release.send(()).unwrap();
        assert!(io.drain(Duration::from_secs(10)));
    }
}
