//! Limits on everything that grows (SPEC §4.9). Input past a limit is refused
//! with a clear error, never truncated.

use serde_json::Value;

/// The bounds the engine enforces. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest task input, step input or output, signal payload (bytes of JSON).
    pub max_payload_bytes: usize,
    /// Longest history a task may have.
    pub max_history_events: usize,
    /// Most commands (steps, sleeps, waits, markers) one task may issue.
    pub max_commands_per_task: usize,
    /// Longest durable sleep or signal timeout.
    pub max_timer_ms: u64,
    /// Longest workflow or signal name.
    pub max_name_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 256 * 1024,
            max_history_events: 10_000,
            max_commands_per_task: 1_000,
            max_timer_ms: 366 * 86_400_000,
            max_name_bytes: 128,
        }
    }
}

impl Limits {
    /// Refuses a payload over the byte limit or one that cannot be hashed canonically.
    pub fn check_payload(&self, v: &Value) -> Result<(), String> {
        let len = serde_json::to_vec(v).map_err(|e| e.to_string())?.len();
        if len > self.max_payload_bytes {
            return Err(format!(
                "payload of {len} bytes exceeds the limit of {} bytes",
                self.max_payload_bytes
            ));
        }
        serde_json_canonicalizer::to_vec(v)
            .map_err(|e| format!("payload cannot be canonicalized for hashing: {e}"))?;
        Ok(())
    }

    /// Refuses an empty, overlong or oddly spelled name.
    pub fn check_name(&self, what: &str, name: &str) -> Result<(), String> {
        if name.is_empty() || name.len() > self.max_name_bytes {
            return Err(format!(
                "{what} must be 1 to {} bytes long, got {}",
                self.max_name_bytes,
                name.len()
            ));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/'))
        {
            return Err(format!(
                "{what} {name:?} may use only letters, digits and _ - . : /"
            ));
        }
        Ok(())
    }
}
