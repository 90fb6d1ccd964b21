//! Reading a demo tool's JSON input: each accessor names the tool and the
//! field when the field is missing or has the wrong type.
//!
//! Bad input is never retryable: the same input will be just as bad next
//! time. This module must never fill in a default for a required field.

use serde_json::{Map, Value};

use mandate_engine::tool::ToolError;

/// A tool's input, checked to be a JSON object.
pub(super) struct Input<'a> {
    tool: &'static str,
    fields: &'a Map<String, Value>,
}

impl<'a> Input<'a> {
    pub(super) fn new(tool: &'static str, input: &'a Value) -> Result<Self, ToolError> {
        match input {
            Value::Object(fields) => Ok(Input { tool, fields }),
            other => Err(ToolError::non_retryable(format!(
                "{tool}: input must be a JSON object, got {}",
                type_name(other)
            ))),
        }
    }

    fn missing(&self, field: &str) -> ToolError {
        ToolError::non_retryable(format!("{}: input field `{field}` is missing", self.tool))
    }

    fn wrong_type(&self, field: &str, expected: &str, got: &Value) -> ToolError {
        ToolError::non_retryable(format!(
            "{}: input field `{field}` must be {expected}, got {}",
            self.tool,
            type_name(got)
        ))
    }

    /// A required, non-empty string.
    pub(super) fn string(&self, field: &str) -> Result<&'a str, ToolError> {
        match self.fields.get(field) {
            None => Err(self.missing(field)),
            Some(Value::String(text)) if text.is_empty() => Err(ToolError::non_retryable(format!(
                "{}: input field `{field}` must not be empty",
                self.tool
            ))),
            Some(Value::String(text)) => Ok(text),
            Some(other) => Err(self.wrong_type(field, "a string", other)),
        }
    }

    /// An optional string; present but not a string is an error.
    pub(super) fn optional_string(&self, field: &str) -> Result<Option<&'a str>, ToolError> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.string(field).map(Some),
        }
    }

    /// A required value of any JSON type, `null` included.
    pub(super) fn value(&self, field: &str) -> Result<&'a Value, ToolError> {
        self.fields.get(field).ok_or_else(|| self.missing(field))
    }

    /// An optional value of any JSON type; `null` counts as absent.
    pub(super) fn optional_value(&self, field: &str) -> Option<&'a Value> {
        self.fields.get(field).filter(|value| !value.is_null())
    }

    /// An optional boolean.
    pub(super) fn optional_bool(&self, field: &str) -> Result<Option<bool>, ToolError> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(other) => Err(self.wrong_type(field, "a boolean", other)),
        }
    }

    /// A required integer greater than zero.
    pub(super) fn positive_i64(&self, field: &str) -> Result<i64, ToolError> {
        match self.fields.get(field) {
            None => Err(self.missing(field)),
            Some(value) => match value.as_i64() {
                Some(number) if number > 0 => Ok(number),
                _ => Err(self.wrong_type(field, "an integer greater than 0", value)),
            },
        }
    }

    /// An optional integer greater than zero; `null` counts as absent.
    pub(super) fn optional_positive_i64(&self, field: &str) -> Result<Option<i64>, ToolError> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.positive_i64(field).map(Some),
        }
    }

    /// A required unsigned integer no larger than `max`.
    pub(super) fn u64_at_most(&self, field: &str, max: u64) -> Result<u64, ToolError> {
        match self.fields.get(field) {
            None => Err(self.missing(field)),
            Some(value) => match value.as_u64() {
                Some(number) if number <= max => Ok(number),
                _ => Err(self.wrong_type(field, &format!("an integer from 0 to {max}"), value)),
            },
        }
    }
}

/// A short description of a JSON value's type (and, for numbers, the value,
/// so "-5" and "1.5" explain themselves).
fn type_name(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(_) => "a boolean".to_owned(),
        Value::Number(number) => format!("the number {number}"),
        Value::String(_) => "a string".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}
