//! Retry policies: bounded attempts with exponential backoff.

use serde::{Deserialize, Serialize};

/// Upper bound on attempts a policy may ask for (SPEC §4.7: retries are bounded).
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Upper bound on one backoff (one day).
pub const MAX_BACKOFF_LIMIT_MS: u64 = 86_400_000;

/// How often and how patiently a step is retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Growth of the backoff per attempt, in percent (200 = doubling). An integer
    /// so that hashed histories never depend on float formatting.
    #[serde(default = "default_multiplier_percent")]
    pub backoff_multiplier_percent: u32,
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_initial_backoff_ms() -> u64 {
    200
}
fn default_multiplier_percent() -> u32 {
    200
}
fn default_max_backoff_ms() -> u64 {
    30_000
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            backoff_multiplier_percent: default_multiplier_percent(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

impl RetryPolicy {
    /// Compensations are retried more patiently than steps: giving up means a person.
    pub fn compensation_default() -> Self {
        Self {
            max_attempts: 5,
            ..Self::default()
        }
    }

    /// Exactly one attempt.
    pub fn no_retry() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let mut backoff = self.initial_backoff_ms as u128;
        for _ in 1..attempt {
            backoff = backoff * self.backoff_multiplier_percent as u128 / 100;
            if backoff >= self.max_backoff_ms as u128 {
                break;
            }
        }
        backoff.min(self.max_backoff_ms as u128) as u64
    }

    /// Checks the bounds; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS_LIMIT {
            return Err(format!(
                "retry.max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {}",
                self.max_attempts
            ));
        }
        if self.max_backoff_ms > MAX_BACKOFF_LIMIT_MS
            || self.initial_backoff_ms > MAX_BACKOFF_LIMIT_MS
        {
            return Err(format!(
                "retry backoff must be at most {MAX_BACKOFF_LIMIT_MS} ms"
            ));
        }
        if self.backoff_multiplier_percent < 100 || self.backoff_multiplier_percent > 1000 {
            return Err(format!(
                "retry.backoff_multiplier_percent must be between 100 and 1000, got {}",
                self.backoff_multiplier_percent
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff_ms: 100,
            backoff_multiplier_percent: 200,
            max_backoff_ms: 1000,
        };
        assert_eq!(p.backoff_ms(1), 100);
        assert_eq!(p.backoff_ms(2), 200);
        assert_eq!(p.backoff_ms(3), 400);
        assert_eq!(p.backoff_ms(5), 1000);
        assert_eq!(p.backoff_ms(60), 1000);
    }

    #[test]
    fn validate_names_the_field() {
        let p = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(p.validate().unwrap_err().contains("max_attempts"));
    }
}
