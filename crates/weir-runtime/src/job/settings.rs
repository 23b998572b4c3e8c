//! The job's settings, read from configuration once: checkpointing, retention, restarts, and
//! the network's batch size and channel capacity.

use super::JobError;
use std::time::Duration;
use weir_core::config::{keys, Configuration};
use weir_core::coordinator::CoordinatorSettings;
use weir_core::restart::{ExponentialDelay, RestartStrategy};
use weir_core::store::RetentionPolicy;

/// The job's settings, read from configuration once.
pub(super) struct Settings {
    pub coordinator: CoordinatorSettings,
    pub num_retained: usize,
    pub retention: RetentionPolicy,
    pub restart: RestartStrategy,
    pub batch_size: usize,
    pub channel_capacity: usize,
    /// `pipeline.auto-watermark-interval`; `None` when 0 (no periodic watermarks).
    pub auto_watermark_interval: Option<Duration>,
    /// `weir.watermarks.restore`: operators start from their snapshot's watermarks.
    pub restore_watermarks: bool,
}

impl Settings {
    pub(super) fn from_config(c: &Configuration) -> Result<Settings, JobError> {
        let interval = c.get_duration(keys::CHECKPOINT_INTERVAL);
        if let Some(i) = interval {
            if i < Duration::from_millis(10) {
                return Err(JobError::Config {
                    key: keys::CHECKPOINT_INTERVAL,
                    reason: "Checkpoint interval must be larger than or equal to 10 ms".into(),
                });
            }
        }
        let timeout = c.get_duration(keys::CHECKPOINT_TIMEOUT).unwrap_or(Duration::from_secs(600));
        if timeout < Duration::from_millis(10) {
            return Err(JobError::Config {
                key: keys::CHECKPOINT_TIMEOUT,
                reason: "Checkpoint timeout must be larger than or equal to 10 ms".into(),
            });
        }
        let tolerable = c.get_int(keys::CHECKPOINT_TOLERABLE_FAILURES).unwrap_or(0);
        if tolerable < 0 {
            return Err(JobError::Config {
                key: keys::CHECKPOINT_TOLERABLE_FAILURES,
                reason: "The tolerable checkpoint failure number is illegal, it must be greater than or equal to 0."
                    .into(),
            });
        }
        let max_concurrent = c.get_int(keys::CHECKPOINT_MAX_CONCURRENT).unwrap_or(1);
        if max_concurrent != 1 {
            return Err(JobError::Config {
                key: keys::CHECKPOINT_MAX_CONCURRENT,
                reason: "Weir runs one checkpoint at a time; set it to 1".into(),
            });
        }
        let retained = c.get_int(keys::CHECKPOINT_NUM_RETAINED).unwrap_or(1);
        if retained <= 0 {
            tracing::warn!(
                "The setting for '{} : {}' is invalid. Using default value of 1",
                keys::CHECKPOINT_NUM_RETAINED,
                retained
            );
        }
        let retention = c
            .get_enum(keys::CHECKPOINT_RETENTION)
            .and_then(RetentionPolicy::from_config_value)
            .unwrap_or(RetentionPolicy::NeverRetainAfterTermination);
        let restart = match c.get_enum(keys::RESTART_STRATEGY) {
            Some("none" | "disable" | "off") => RestartStrategy::None,
            Some("fixed-delay" | "fixeddelay") => RestartStrategy::FixedDelay {
                attempts: c.get_int(keys::RESTART_ATTEMPTS).unwrap_or(1).clamp(0, u32::MAX as i64) as u32,
                delay: c.get_duration(keys::RESTART_DELAY).unwrap_or(Duration::from_secs(1)),
            },
            Some(_) => RestartStrategy::ExponentialDelay(exponential_delay(c)),
            None if interval.is_some() => RestartStrategy::ExponentialDelay(exponential_delay(c)),
            None => RestartStrategy::None,
        };
        Ok(Settings {
            coordinator: CoordinatorSettings {
                interval_ms: interval.map(|d| d.as_millis() as u64),
                min_pause_ms: c.get_duration(keys::CHECKPOINT_MIN_PAUSE).unwrap_or_default().as_millis() as u64,
                timeout_ms: timeout.as_millis() as u64,
                tolerable_failures: tolerable as u32,
            },
            num_retained: retained.max(1) as usize,
            retention,
            restart,
            batch_size: c.get_int(keys::BATCH_SIZE).unwrap_or(1024).clamp(1, 1 << 20) as usize,
            channel_capacity: c.get_int(keys::CHANNEL_CAPACITY).unwrap_or(16).clamp(1, 1 << 16) as usize,
            auto_watermark_interval: Some(
                c.get_duration(keys::AUTO_WATERMARK_INTERVAL).unwrap_or(Duration::from_millis(200)),
            )
            .filter(|d| !d.is_zero()),
            restore_watermarks: c.get_bool(keys::RESTORE_WATERMARKS).unwrap_or(true),
        })
    }
}

fn exponential_delay(c: &Configuration) -> ExponentialDelay {
    let d = ExponentialDelay::default();
    ExponentialDelay {
        initial_backoff: c.get_duration(keys::RESTART_INITIAL_BACKOFF).unwrap_or(d.initial_backoff),
        max_backoff: c.get_duration(keys::RESTART_MAX_BACKOFF).unwrap_or(d.max_backoff),
        multiplier: c.get_multiplier(keys::RESTART_BACKOFF_MULTIPLIER).unwrap_or(d.multiplier),
        reset_backoff_threshold: c.get_duration(keys::RESTART_RESET_THRESHOLD).unwrap_or(d.reset_backoff_threshold),
        jitter_factor: c.get_fraction(keys::RESTART_JITTER).unwrap_or(d.jitter_factor),
        attempts_before_reset: c
            .get_int(keys::RESTART_ATTEMPTS_BEFORE_RESET)
            .map(|a| a.clamp(0, u32::MAX as i64) as u32)
            .unwrap_or(d.attempts_before_reset),
    }
}
