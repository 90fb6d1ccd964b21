//! Feature-flag tools: set a flag and restore it, kept in the world's `flag`
//! namespace with the flag's JSON value as the resource value.
//!
//! A `null` value means "unset" everywhere: setting or restoring `null`
//! deletes the flag, so `previous: null` from `flag.set` handed to
//! `flag.restore` undoes it exactly. These tools must never store a JSON
//! `null` as a flag's value.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::input::Input;
use super::names::{FLAG_RESTORE, FLAG_SET};
use super::namespaces::FLAG;
use super::world_failure;
use crate::world::World;
use mandate_engine::tool::{Tool, ToolContext, ToolKind, ToolResult};

/// `null` deletes; anything else is stored.
fn stored(value: Value) -> Option<Value> {
    if value.is_null() { None } else { Some(value) }
}

/// `flag.set` (reversible write): input `{flag, value}` →
/// `{flag, previous, value}`, where `previous` is null if the flag was unset.
/// Undo it with `flag.restore {flag, value: previous}`.
#[derive(Debug, Clone)]
pub struct FlagSet {
    world: World,
}

impl FlagSet {
    /// A flag setter writing to `world`.
    pub fn new(world: World) -> Self {
        FlagSet { world }
    }
}

impl Tool for FlagSet {
    fn name(&self) -> &str {
        FLAG_SET
    }

    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }

    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let input = Input::new(FLAG_SET, &input)?;
            let flag = input.string("flag")?.to_owned();
            let value = input.value("value")?.clone();
            self.world
                .apply_call(&ctx, FLAG_SET, FLAG, &flag, |current| {
                    let previous = current.unwrap_or(Value::Null);
                    let output = json!({ "flag": flag, "previous": previous, "value": value });
                    Ok((stored(value), output))
                })
                .await
                .map_err(|error| world_failure(FLAG_SET, error))
        }
        .boxed()
    }
}

/// `flag.restore` (reversible write): input `{flag, value}` → `{flag, value}`;
/// a null value deletes the flag. The compensation for [`FlagSet`].
#[derive(Debug, Clone)]
pub struct FlagRestore {
    world: World,
}

impl FlagRestore {
    /// A flag restorer writing to `world`.
    pub fn new(world: World) -> Self {
        FlagRestore { world }
    }
}

impl Tool for FlagRestore {
    fn name(&self) -> &str {
        FLAG_RESTORE
    }

    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }

    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let input = Input::new(FLAG_RESTORE, &input)?;
            let flag = input.string("flag")?.to_owned();
            let value = input.value("value")?.clone();
            self.world
                .apply_call(&ctx, FLAG_RESTORE, FLAG, &flag, |_current| {
                    let output = json!({ "flag": flag, "value": value });
                    Ok((stored(value), output))
                })
                .await
                .map_err(|error| world_failure(FLAG_RESTORE, error))
        }
        .boxed()
    }
}
