//! Key-value tools: put and delete keys in the world's `kv` namespace.
//!
//! The stress suite uses them as a leak detector: after a task rolls back,
//! any key it put and did not delete is a side effect that escaped
//! compensation. So, as with flags, a `null` value means "absent": putting
//! `null` deletes the key, and these tools must never store a JSON `null`.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::input::Input;
use super::names::{KV_DELETE, KV_PUT};
use super::namespaces::KV;
use super::world_failure;
use crate::world::World;
use mandate_engine::tool::{Tool, ToolContext, ToolKind, ToolResult};

/// `kv.put` (reversible write): input `{key, value}` → `{key, previous, value}`
/// (`previous` is null if the key was absent; a null `value` deletes the
/// key). Undo it with `kv.put {key, value: previous}`, or `kv.delete` when
/// `previous` is null.
#[derive(Debug, Clone)]
pub struct KvPut {
    world: World,
}

impl KvPut {
    /// A put tool writing to `world`.
    pub fn new(world: World) -> Self {
        KvPut { world }
    }
}

impl Tool for KvPut {
    fn name(&self) -> &str {
        KV_PUT
    }

    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }

    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let input = Input::new(KV_PUT, &input)?;
            let key = input.string("key")?.to_owned();
            let value = input.value("value")?.clone();
            self.world
                .apply_call(&ctx, KV_PUT, KV, &key, |current| {
                    let previous = current.unwrap_or(Value::Null);
                    let output = json!({ "key": key, "previous": previous, "value": value });
                    let stored = (!value.is_null()).then_some(value);
                    Ok((stored, output))
                })
                .await
                .map_err(|error| world_failure(KV_PUT, error))
        }
        .boxed()
    }
}

/// `kv.delete` (reversible write): input `{key}` → `{key, previous}`.
/// Deleting an absent key succeeds with `previous: null`, so a compensation
/// that runs twice (or after the put never happened) is harmless.
#[derive(Debug, Clone)]
pub struct KvDelete {
    world: World,
}

impl KvDelete {
    /// A delete tool writing to `world`.
    pub fn new(world: World) -> Self {
        KvDelete { world }
    }
}

impl Tool for KvDelete {
    fn name(&self) -> &str {
        KV_DELETE
    }

    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }

    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let input = Input::new(KV_DELETE, &input)?;
            let key = input.string("key")?.to_owned();
            self.world
                .apply_call(&ctx, KV_DELETE, KV, &key, |current| {
                    let previous = current.unwrap_or(Value::Null);
                    Ok((None, json!({ "key": key, "previous": previous })))
                })
                .await
                .map_err(|error| world_failure(KV_DELETE, error))
        }
        .boxed()
    }
}
