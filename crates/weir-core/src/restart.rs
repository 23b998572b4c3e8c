//! Restart strategies: whether a failed job restarts, and after how long (Flink's
//! `restart-strategy.*`). Pure: the caller passes the time and, for jitter, a random number.
//!
//! With checkpointing on and no strategy configured, Flink 2.x (and Weir) use `exponential-delay`,
//! so a failure that keeps coming back backs off towards a minute between attempts instead of
//! restarting every second forever; a quiet period (no failure for `reset-backoff-threshold`)
//! brings the delay back to the initial one. Failures a restart cannot fix never reach a strategy:
//! they fail the job at once.

use std::time::Duration;

/// A configured strategy.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartStrategy {
    /// Never restart.
    None,
    /// Restart up to `attempts` times, `delay` apart.
    FixedDelay {
        attempts: u32,
        delay: Duration,
    },
    ExponentialDelay(ExponentialDelay),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExponentialDelay {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// A failure this long after the previous one starts over from `initial_backoff`.
    pub reset_backoff_threshold: Duration,
    /// Each delay is moved by up to this fraction of itself, either way, so that jobs that failed
    /// together do not restart together.
    pub jitter_factor: f64,
    /// Restarts allowed between two resets.
    pub attempts_before_reset: u32,
}

impl Default for ExponentialDelay {
    /// Flink 2.x's defaults.
    fn default() -> Self {
        ExponentialDelay {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            multiplier: 1.5,
            reset_backoff_threshold: Duration::from_secs(3600),
            jitter_factor: 0.1,
            attempts_before_reset: u32::MAX,
        }
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartDecision {
    RestartAfter(Duration),
    /// No more restarts; why, for the job's failure message.
    GiveUp(String),
}

/// A strategy with its memory of earlier failures.
#[derive(Debug, Clone)]
pub struct RestartBackoff {
    strategy: RestartStrategy,
    /// Restarts since the start (fixed delay) or the last reset (exponential delay).
    attempts: u32,
    backoff: Duration,
    last_failure_ms: Option<u64>,
}

impl RestartBackoff {
    pub fn new(strategy: RestartStrategy) -> Self {
        RestartBackoff { strategy, attempts: 0, backoff: Duration::ZERO, last_failure_ms: None }
    }

    pub fn strategy(&self) -> &RestartStrategy {
        &self.strategy
    }

    /// Records a failure at `now_ms`; `random` in `[0, 1)` draws the jitter.
    pub fn on_failure(&mut self, now_ms: u64, random: f64) -> RestartDecision {
        match &self.strategy {
            RestartStrategy::None => RestartDecision::GiveUp(
                "no restart strategy is configured (set restart-strategy.type, or enable checkpointing)".into(),
            ),
            RestartStrategy::FixedDelay { attempts, delay } => {
                if self.attempts >= *attempts {
                    return RestartDecision::GiveUp(format!("restart attempts exhausted ({attempts})"));
                }
                self.attempts += 1;
                RestartDecision::RestartAfter(*delay)
            }
            RestartStrategy::ExponentialDelay(e) => {
                let quiet = self
                    .last_failure_ms
                    .is_none_or(|last| now_ms.saturating_sub(last) >= e.reset_backoff_threshold.as_millis() as u64);
                self.last_failure_ms = Some(now_ms);
                if quiet {
                    self.attempts = 0;
                    self.backoff = e.initial_backoff;
                } else {
                    self.backoff = self.backoff.mul_f64(e.multiplier).min(e.max_backoff);
                }
                if self.attempts >= e.attempts_before_reset {
                    return RestartDecision::GiveUp(format!(
                        "{} restarts within restart-strategy.exponential-delay.reset-backoff-threshold",
                        e.attempts_before_reset
                    ));
                }
                self.attempts += 1;
                let jitter = e.jitter_factor * (2.0 * random.clamp(0.0, 1.0) - 1.0);
                RestartDecision::RestartAfter(self.backoff.mul_f64((1.0 + jitter).max(0.0)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delays(b: &mut RestartBackoff, times: &[u64]) -> Vec<RestartDecision> {
        times.iter().map(|t| b.on_failure(*t, 0.5)).collect()
    }

    #[test]
    fn exponential_delay_grows_to_the_maximum_and_resets_after_a_quiet_period() {
        let mut b = RestartBackoff::new(RestartStrategy::ExponentialDelay(ExponentialDelay::default()));
        let s = |ms: u64| RestartDecision::RestartAfter(Duration::from_millis(ms));
        // Failures every few seconds: 1 s, 1.5 s, 2.25 s, ... capped at 60 s.
        let times: Vec<u64> = (0..14).map(|i| i * 5_000).collect();
        let got = delays(&mut b, &times);
        assert_eq!(&got[..4], &[s(1000), s(1500), s(2250), s(3375)]);
        assert_eq!(got[12], s(60_000));
        assert_eq!(got[13], s(60_000));
        // An hour without failure: back to the initial backoff.
        assert_eq!(b.on_failure(65_000 + 3_600_000, 0.5), s(1000));
    }

    #[test]
    fn jitter_moves_the_delay_by_at_most_its_factor() {
        let e = ExponentialDelay::default();
        for (random, ms) in [(0.0, 900), (0.999_999_999, 1100), (0.25, 950)] {
            let mut b = RestartBackoff::new(RestartStrategy::ExponentialDelay(e.clone()));
            let RestartDecision::RestartAfter(d) = b.on_failure(0, random) else { panic!() };
            assert_eq!(d.as_millis(), ms, "random {random}");
        }
    }

    #[test]
    fn attempts_limits_give_up() {
        let e = ExponentialDelay { attempts_before_reset: 2, ..ExponentialDelay::default() };
        let mut b = RestartBackoff::new(RestartStrategy::ExponentialDelay(e));
        let got = delays(&mut b, &[0, 10, 20]);
        assert!(matches!(got[1], RestartDecision::RestartAfter(_)));
        assert!(matches!(got[2], RestartDecision::GiveUp(_)));
        let mut b = RestartBackoff::new(RestartStrategy::FixedDelay { attempts: 1, delay: Duration::from_millis(7) });
        assert_eq!(
            delays(&mut b, &[0, 1]),
            [
                RestartDecision::RestartAfter(Duration::from_millis(7)),
                RestartDecision::GiveUp("restart attempts exhausted (1)".into())
            ]
        );
        assert!(matches!(RestartBackoff::new(RestartStrategy::None).on_failure(0, 0.0), RestartDecision::GiveUp(_)));
    }
}
