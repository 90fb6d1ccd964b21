//! The served OpenAPI document, made as strict as the server: what utoipa
//! derives from the handlers, then (1) every error status a route can really
//! answer is documented, (2) no string may hold a NUL and free-form JSON
//! (inputs, plans, payloads) is described recursively with the server's own
//! limits (no NUL, numbers within ±(2^53 − 1)). New routes get all of it at once.

use serde_json::{Map, Value, json};

use crate::hygiene::MAX_SAFE_INTEGER;

/// A string without NUL characters (what the server refuses; see `hygiene`).
const NO_NUL: &str = "^[^\\u0000]*$";

/// Makes `doc` (utoipa's document as JSON) tell the truth about the server.
pub fn strict(mut doc: Value) -> Value {
    add_components(&mut doc);
    let schemas = doc
        .pointer("/components/schemas")
        .cloned()
        .unwrap_or(Value::Null);
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, ops) in paths.iter_mut() {
            let Some(ops) = ops.as_object_mut() else {
                continue;
            };
            for op in ops.values_mut() {
                if path.starts_with("/v1/") {
                    document_errors(path, op);
                }
                if path == "/v1/tasks" {
                    list_statuses(op);
                }
                optional_body(op, &schemas);
            }
        }
    }
    tighten(&mut doc);
    doc
}

fn error_response(description: &str) -> Value {
    json!({"description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
}

/// Adds the error statuses every `/v1` operation can answer.
fn document_errors(path: &str, op: &mut Value) {
    let has_body = op.get("requestBody").is_some();
    let names_a_task = op
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|ps| ps.iter().any(|p| p["name"] == "task"));
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    let mut add = |code: &str, description: &str| {
        responses
            .entry(code.to_string())
            .or_insert_with(|| error_response(description));
    };
    add(
        "400",
        "a parameter or the body is invalid (details.field names it)",
    );
    add(
        "401",
        "unauthenticated: no token, an unknown token or a revoked one",
    );
    add("403", "forbidden: the token's role may not do this");
    add(
        "429",
        "rate_limited: the token is over its request rate (Retry-After)",
    );
    add(
        "500",
        "internal error, request id X (details are in the server's log)",
    );
    add(
        "503",
        "timeout (the request took too long), overloaded or too many connections (Retry-After)",
    );
    if path.contains('{') || names_a_task {
        add(
            "404",
            "not_found: no such task or approval (or not the caller's)",
        );
    }
    if has_body {
        add("413", "payload_too_large: the body is over 1 MiB");
        add(
            "415",
            "unsupported_media_type: send Content-Type: application/json",
        );
    }
}

/// The `status` filter takes exactly the task statuses.
fn list_statuses(op: &mut Value) {
    let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
        return;
    };
    for p in params.iter_mut().filter(|p| p["name"] == "status") {
        let names: Vec<&str> = mandate_engine::TaskStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        p["schema"] = json!({"type": "string", "enum": names});
    }
}

/// A JSON body is read as `{}` when empty, so a body whose object schema
/// requires nothing is optional.
fn optional_body(op: &mut Value, schemas: &Value) {
    let Some(body) = op.get_mut("requestBody") else {
        return;
    };
    let Some(schema) = body.pointer("/content/application~1json/schema") else {
        return;
    };
    let resolved = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix("#/components/schemas/")
            .and_then(|name| schemas.get(name))
            .unwrap_or(schema),
        None => schema,
    };
    let requires_nothing = resolved.get("type").and_then(Value::as_str) == Some("object")
        && resolved
            .get("required")
            .and_then(Value::as_array)
            .is_none_or(|r| r.is_empty());
    if requires_nothing {
        body["required"] = Value::Bool(false);
    }
}

/// The recursive schema of a JSON value the server accepts.
fn add_components(doc: &mut Value) {
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let max = MAX_SAFE_INTEGER as f64;
    schemas.insert(
        "JsonValue".into(),
        json!({"description": "Any JSON value without NUL characters and with numbers within ±(2^53 − 1)",
        "anyOf": [
            {"type": "string", "pattern": NO_NUL},
            {"type": "number", "minimum": -max, "maximum": max},
            {"type": "boolean"},
            {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
            {"$ref": "#/components/schemas/JsonObject"}
        ]}),
    );
    schemas.insert(
        "JsonObject".into(),
        json!({"type": "object", "description": "A JSON object without NUL characters and with numbers within ±(2^53 − 1)",
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}}),
    );
}

/// Strings refuse NUL; free-form objects become [`JsonObject`].
fn tighten(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if is_free_object(map) {
                let nullable = map
                    .get("type")
                    .and_then(Value::as_array)
                    .is_some_and(|t| t.iter().any(|t| t == "null"));
                let description = map.get("description").cloned();
                map.clear();
                let reference = json!({"$ref": "#/components/schemas/JsonObject"});
                if nullable {
                    map.insert("oneOf".into(), json!([reference, {"type": "null"}]));
                } else {
                    map.insert("allOf".into(), json!([reference]));
                }
                if let Some(d) = description {
                    map.insert("description".into(), d);
                }
                return;
            }
            let is_string = match map.get("type") {
                Some(Value::String(t)) => t == "string",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "string"),
                _ => false,
            };
            if is_string
                && !map.contains_key("pattern")
                && !map.contains_key("enum")
                && !map.contains_key("format")
            {
                map.insert("pattern".into(), NO_NUL.into());
            }
            for (k, child) in map.iter_mut() {
                // JsonValue and JsonObject are already exact.
                if k == "JsonValue" || k == "JsonObject" {
                    continue;
                }
                tighten(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tighten),
        _ => {}
    }
}

/// `{"type": "object"}` with nothing else said about it (utoipa's `Object`).
fn is_free_object(map: &Map<String, Value>) -> bool {
    let object_type = match map.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
        _ => false,
    };
    object_type
        && !map.contains_key("properties")
        && !map.contains_key("additionalProperties")
        && !map.contains_key("$ref")
        && !map.contains_key("propertyNames")
}
