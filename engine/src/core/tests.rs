//! Core tests: given events / when input / then events.
