//! A small JSON-schema validator for tool inputs.
//!
//! Why not a full JSON Schema crate: the well-kept ones pull in an HTTP
//! client and a regex engine for remote `$ref`s and `pattern`, which this
//! 2-core build cannot afford next to cedar-policy, and tool inputs need only
//! this subset: `type` (one or a list), `required`, `properties`,
//! `additionalProperties` (boolean), `enum`, `minimum`, `maximum`,
//! `minLength`, `maxLength`, `items`. A schema using any other keyword is
//! refused when the catalog loads, so nothing is silently unchecked.

use serde_json::Value;

const KEYWORDS: [&str; 12] = [
    "type",
    "required",
    "properties",
    "additionalProperties",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "items",
    "description",
    "title",
];

/// Deepest schema nesting accepted.
const MAX_DEPTH: usize = 32;

/// Checks that a schema uses only the supported subset.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    check_at(schema, "", 0)
}

fn check_at(schema: &Value, path: &str, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("schema nested deeper than {MAX_DEPTH} levels"));
    }
    let Some(obj) = schema.as_object() else {
        return Err(format!("schema{path} must be an object"));
    };
    for k in obj.keys() {
        if !KEYWORDS.contains(&k.as_str()) {
            return Err(format!(
                "schema{path}: keyword {k:?} is not supported (supported: {})",
                KEYWORDS.join(", ")
            ));
        }
    }
    if let Some(props) = obj.get("properties") {
        let Some(props) = props.as_object() else {
            return Err(format!("schema{path}.properties must be an object"));
        };
        for (k, v) in props {
            check_at(v, &format!("{path}.properties.{k}"), depth + 1)?;
        }
    }
    if let Some(items) = obj.get("items") {
        check_at(items, &format!("{path}.items"), depth + 1)?;
    }
    Ok(())
}

/// Validates `value` against `schema`; the error names the path (`input.x`).
/// Strings for which `is_pending` is true (unresolved references) satisfy
/// any type.
pub fn validate(
    schema: &Value,
    value: &Value,
    path: &str,
    is_pending: &dyn Fn(&Value) -> bool,
) -> Result<(), String> {
    validate_at(schema, value, path, is_pending, 0)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn matches_type(t: &str, v: &Value) -> bool {
    let actual = type_name(v);
    t == actual || (t == "number" && actual == "integer")
}

fn validate_at(
    schema: &Value,
    value: &Value,
    path: &str,
    is_pending: &dyn Fn(&Value) -> bool,
    depth: usize,
) -> Result<(), String> {
    if is_pending(value) || depth > MAX_DEPTH {
        return Ok(());
    }
    let Some(s) = schema.as_object() else {
        return Ok(());
    };
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !types.is_empty() && !types.iter().any(|t| matches_type(t, value)) {
            return Err(format!(
                "{path}: expected {}, got {}",
                types.join(" or "),
                type_name(value)
            ));
        }
    }
    if let Some(Value::Array(options)) = s.get("enum")
        && !options.contains(value)
    {
        return Err(format!(
            "{path}: {value} is not one of {}",
            Value::Array(options.clone())
        ));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            return Err(format!("{path}: {n} is below the minimum {min}"));
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            return Err(format!("{path}: {n} is above the maximum {max}"));
        }
    }
    if let Some(text) = value.as_str() {
        let len = text.chars().count() as u64;
        if let Some(min) = s.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            return Err(format!("{path}: shorter than {min} characters"));
        }
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            return Err(format!("{path}: longer than {max} characters"));
        }
    }
    if let Some(obj) = value.as_object() {
        if let Some(Value::Array(required)) = s.get("required") {
            for r in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    return Err(format!(
                        "{path}.{r}: required by the tool's schema, missing"
                    ));
                }
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(sub) => validate_at(sub, v, &format!("{path}.{k}"), is_pending, depth + 1)?,
                None => {
                    if s.get("additionalProperties") == Some(&Value::Bool(false)) {
                        return Err(format!(
                            "{path}.{k}: not a field of the tool's input (known: {})",
                            props
                                .map(|p| p.keys().cloned().collect::<Vec<_>>().join(", "))
                                .unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            validate_at(items, v, &format!("{path}[{i}]"), is_pending, depth + 1)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn never(_: &Value) -> bool {
        false
    }

    #[test]
    fn validates_the_subset_and_names_the_path() {
        let s = json!({"type": "object", "required": ["account", "amount_cents"],
            "additionalProperties": false,
            "properties": {"account": {"type": "string"}, "amount_cents": {"type": "integer", "minimum": 1}}});
        assert!(
            validate(
                &s,
                &json!({"account": "a", "amount_cents": 5}),
                "input",
                &never
            )
            .is_ok()
        );
        let e = validate(&s, &json!({"account": "a"}), "input", &never).unwrap_err();
        assert_eq!(
            e,
            "input.amount_cents: required by the tool's schema, missing"
        );
        let e = validate(
            &s,
            &json!({"account": 1, "amount_cents": 5}),
            "input",
            &never,
        )
        .unwrap_err();
        assert!(e.starts_with("input.account: expected string"), "{e}");
        let e = validate(
            &s,
            &json!({"account": "a", "amount_cents": 0}),
            "input",
            &never,
        )
        .unwrap_err();
        assert!(e.contains("minimum"), "{e}");
        let e = validate(
            &s,
            &json!({"account": "a", "amount_cents": 1, "x": 1}),
            "input",
            &never,
        )
        .unwrap_err();
        assert!(e.starts_with("input.x: not a field"), "{e}");
        assert!(check_schema(&json!({"pattern": "x"})).is_err());
    }
}
