//! Limits on everything that grows (SPEC §4.9). Input past a limit is refused
//! with a clear error, never truncated.

use serde_json::Value;

/// Largest integer RFC 8785 (I-JSON) represents exactly: 2^53 − 1.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Refuses numbers the hash chain cannot tell apart: integers beyond ±(2^53 − 1)
/// are rounded by RFC 8785 canonicalization, so an edit to them would go unseen.
fn check_numbers(v: &Value) -> Result<(), String> {
    match v {
        Value::Number(n) => {
            let too_big = match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => u > MAX_SAFE_INTEGER,
                (None, Some(i)) => i.unsigned_abs() > MAX_SAFE_INTEGER,
                _ => false,
            };
            if too_big {
                return Err(format!(
                    "the number {n} is outside ±(2^53 − 1), which JSON hashing (RFC 8785) cannot represent exactly; send it as a string"
                ));
            }
            Ok(())
        }
        Value::Array(a) => a.iter().try_for_each(check_numbers),
        Value::Object(o) => o.values().try_for_each(check_numbers),
        _ => Ok(()),
    }
}

/// The bounds the engine enforces. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest task input, step input or output, signal payload (bytes of JSON).
    pub max_payload_bytes: usize,
    /// Longest history a task may have.
    pub max_history_events: usize,
    /// Most bytes of event payload JSON one task's history may hold.
    pub max_history_bytes: usize,
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
            max_history_events: 50_000,
            max_history_bytes: 4 * 1024 * 1024,
            max_commands_per_task: 10_000,
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
        check_numbers(v)?;
        crate::jcs::to_vec(v)
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
