//! References between steps: `${…}` inside input strings are strict
//! minijinja expressions over `steps` (`steps.X.output…`, the recorded
//! outputs of earlier steps) and, in compensation inputs, `input` (the
//! step's own resolved input). A string that is exactly one `${…}` takes the
//! expression's JSON value; otherwise the results are spliced into the text.
//!
//! Pure and deterministic: the same values give the same result on replay.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Work one expression may do (minijinja fuel).
const FUEL: u64 = 10_000;
/// Longest expression accepted, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 1_024;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env
}

enum Piece<'a> {
    Text(&'a str),
    Expr(&'a str),
}

fn pieces(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated reference in {s:?}: missing }}"))?;
        let expr = after[..end].trim();
        if expr.is_empty() {
            return Err(format!("empty reference ${{}} in {s:?}"));
        }
        if expr.len() > MAX_EXPRESSION_BYTES {
            return Err(format!(
                "a reference is longer than {MAX_EXPRESSION_BYTES} bytes"
            ));
        }
        out.push(Piece::Expr(expr));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// Whether a JSON string holds a reference (so its type is not known yet).
pub fn is_pending(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.contains("${"))
}

/// Whether any string in `v` holds a reference (`resolve` of a value
/// without one is the value itself, whatever the context).
pub fn has_refs(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains("${"),
        Value::Array(a) => a.iter().any(has_refs),
        Value::Object(o) => o.values().any(has_refs),
        _ => false,
    }
}

/// Every `(field path, expression)` in `v`; `path` is the prefix (`input`).
pub fn collect(v: &Value, path: &str, out: &mut Vec<(String, String)>) -> Result<(), String> {
    match v {
        Value::String(s) if s.contains("${") => {
            for p in pieces(s).map_err(|e| format!("field {path}: {e}"))? {
                if let Piece::Expr(e) = p {
                    out.push((path.to_string(), e.to_string()));
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                collect(x, &format!("{path}[{i}]"), out)?;
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                collect(x, &format!("{path}.{k}"), out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The variables an expression reads, as dotted paths (`steps.a.output.x`).
pub fn variables(expr: &str) -> Result<Vec<String>, String> {
    let env = environment();
    let compiled = env
        .compile_expression(expr)
        .map_err(|e| format!("invalid reference ${{{expr}}}: {e}"))?;
    let mut v: Vec<String> = compiled.undeclared_variables(true).into_iter().collect();
    v.sort();
    Ok(v)
}

/// Resolves every reference in `v` against `context` (`{steps, input?}`).
pub fn resolve(v: &Value, context: &Value, path: &str) -> Result<Value, String> {
    let env = environment();
    let ctx = minijinja::Value::from(minijinja::value::Serde(context));
    resolve_in(&env, &ctx, v, path)
}

/// Resolves what `context` allows and says plainly what it does not: a
/// string whose references read outputs not recorded yet becomes `<from
/// output of step X>`. For showing a compensation before its step ran (a dry
/// run); never for running anything.
pub fn render_known(v: &Value, context: &Value) -> Value {
    match v {
        Value::String(s) if s.contains("${") => match resolve(v, context, "") {
            Ok(r) if !is_pending(&r) => r,
            Ok(r) => placeholder(r.as_str().unwrap_or(s)),
            Err(_) => placeholder(s),
        },
        Value::Array(a) => Value::Array(a.iter().map(|x| render_known(x, context)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), render_known(x, context)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `<from output of step X, Y>` for the steps `s`'s references read.
fn placeholder(s: &str) -> Value {
    let mut found = Vec::new();
    let _ = collect(&Value::String(s.to_string()), "", &mut found);
    let mut steps: Vec<String> = found
        .iter()
        .flat_map(|(_, expr)| variables(expr).unwrap_or_default())
        .filter_map(|var| {
            var.strip_prefix("steps.")
                .and_then(|rest| rest.split('.').next())
                .map(str::to_string)
        })
        .collect();
    steps.sort();
    steps.dedup();
    Value::String(if steps.is_empty() {
        format!("<unresolved: {s}>")
    } else {
        format!("<from output of step {}>", steps.join(", "))
    })
}

fn eval(
    env: &Environment<'static>,
    ctx: &minijinja::Value,
    expr: &str,
    path: &str,
) -> Result<Value, String> {
    let compiled = env
        .compile_expression(expr)
        .map_err(|e| format!("field {path}: invalid reference ${{{expr}}}: {e}"))?;
    let value = compiled
        .eval(ctx.clone())
        .map_err(|e| format!("field {path}: reference ${{{expr}}} does not resolve: {e}"))?;
    if value.is_undefined() {
        return Err(format!(
            "field {path}: reference ${{{expr}}} does not resolve: no such value in the recorded outputs"
        ));
    }
    serde_json::to_value(&value).map_err(|e| {
        format!("field {path}: reference ${{{expr}}} gave a value that is not JSON: {e}")
    })
}

fn resolve_in(
    env: &Environment<'static>,
    ctx: &minijinja::Value,
    v: &Value,
    path: &str,
) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) if s.contains("${") => {
            let ps = pieces(s).map_err(|e| format!("field {path}: {e}"))?;
            if let [Piece::Expr(e)] = ps.as_slice() {
                return eval(env, ctx, e, path);
            }
            let mut out = String::new();
            for p in ps {
                match p {
                    Piece::Text(t) => out.push_str(t),
                    Piece::Expr(e) => match eval(env, ctx, e, path)? {
                        Value::String(s) => out.push_str(&s),
                        other => out.push_str(&other.to_string()),
                    },
                }
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| resolve_in(env, ctx, x, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), resolve_in(env, ctx, x, &format!("{path}.{k}"))?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_resolve_typed_or_spliced() {
        let ctx = json!({"steps": {"snap": {"output": {"v": 42, "name": "x"}}}});
        let v = json!({"a": "${steps.snap.output.v}", "b": "v=${steps.snap.output.name}!", "c": 1});
        let r = resolve(&v, &ctx, "input").unwrap();
        assert_eq!(r, json!({"a": 42, "b": "v=x!", "c": 1}));
        let e = resolve(&json!("${steps.snap.output.nope}"), &ctx, "input.x").unwrap_err();
        assert!(e.starts_with("field input.x: reference"), "{e}");
    }

    #[test]
    fn render_known_names_the_steps_whose_output_is_missing() {
        let input =
            json!({"policy": "ci", "expected_version": "${steps.propose.output.base_version}"});
        let template = json!({"policy": "${input.policy}", "version": "${input.expected_version}",
            "note": "was ${steps.enumerate.output.count}", "n": 1});
        assert_eq!(
            render_known(&template, &json!({"steps": {}, "input": input})),
            json!({"policy": "ci", "version": "<from output of step propose>",
                "note": "<from output of step enumerate>", "n": 1})
        );
    }

    #[test]
    fn variables_are_listed() {
        let v = variables("steps.snap.output.v + 1").unwrap();
        assert!(v.iter().any(|x| x.starts_with("steps.snap")), "{v:?}");
        assert!(variables("steps.(").is_err());
    }
}
