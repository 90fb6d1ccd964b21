//! What is left of release 0.1's approvals of plan steps (signals named
//! `approval:<step>`): the names the version-1 code waits on, kept so its
//! histories replay. Approvals are now engine objects
//! (`mandate_engine::core::approvals`); a signal can never decide one.

/// The signal name a version-1 plan waited on for step `step`.
pub fn signal_name(step: &str) -> String {
    format!("approval:{step}")
}

/// The identity in a sender: `approver:alice` → `alice`.
pub fn identity(sender: &str) -> &str {
    for p in ["approver:", "user:", "agent:"] {
        if let Some(rest) = sender.strip_prefix(p) {
            return rest;
        }
    }
    sender
}
