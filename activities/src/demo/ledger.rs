//! Ledger tools: charge and refund an account, kept in the world's `ledger`
//! namespace as `{"balance_cents": N}`.
//!
//! A balance never goes below zero: a refund larger than the balance is
//! refused, not clamped. An account whose balance returns to zero is
//! deleted, so a charge followed by its refund leaves the world exactly as
//! it was.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::input::Input;
use super::names::{LEDGER_CHARGE, LEDGER_REFUND};
use super::namespaces::LEDGER;
use super::world_failure;
use crate::world::World;
use mandate_engine::tool::{Tool, ToolContext, ToolError, ToolKind, ToolResult};

/// The balance recorded for an account, 0 if it has none.
fn balance_of(tool: &str, account: &str, resource: Option<&Value>) -> Result<i64, ToolError> {
    match resource {
        None => Ok(0),
        Some(value) => value
            .get("balance_cents")
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                ToolError::non_retryable(format!(
                    "{tool}: resource ledger/{account} holds {value}, which has no integer `balance_cents`; fix or delete it"
                ))
            }),
    }
}

/// The resource for a balance: none at zero (see the module docs).
fn balance_resource(balance_cents: i64) -> Option<Value> {
    (balance_cents != 0).then(|| json!({ "balance_cents": balance_cents }))
}

/// `ledger.charge` (reversible write): input `{account, amount_cents}` with
/// `amount_cents > 0` → `{account, amount_cents, balance_cents}`; the
/// balance increases. Undo it with `ledger.refund` of the same amount.
#[derive(Debug, Clone)]
pub struct LedgerCharge {
    world: World,
}

impl LedgerCharge {
    /// A charge tool writing to `world`.
    pub fn new(world: World) -> Self {
        LedgerCharge { world }
    }
}

impl Tool for LedgerCharge {
    fn name(&self) -> &str {
        LEDGER_CHARGE
    }

    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }

    fn recovery_path(&self) -> Option<&str> {
        Some("payment → refund via the ledger, 90-day window, fees not refunded")
    }

    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let input = Input::new(LEDGER_CHARGE, &input)?;
            let account = input.string("account")?.to_owned();
            let amount_cents = input.positive_i64("amount_cents")?;
            self.world
                .apply_call(&ctx, LEDGER_CHARGE, LEDGER, &account, |current| {
                    let balance = balance_of(LEDGER_CHARGE, &account, current.as_ref())?;
                    let balance = balance.checked_add(amount_cents).ok_or_else(|| {
                        ToolError::non_retryable(format!(
                            "{LEDGER_CHARGE}: charging {amount_cents} cents would overflow the balance of account {account}"
                        ))
                    })?;
                    let output = json!({
                        "account": account,
                        "amount_cents": amount_cents,
                        "balance_cents": balance,
                    });
                    Ok((balance_resource(balance), output))
                })
                .await
                .map_err(|error| world_failure(LEDGER_CHARGE, error))
        }
        .boxed()
    }
}

/// `ledger.refund` (reversible write): input `{account, amount_cents}` with
/// `amount_cents > 0` → `{account, amount_cents, balance_cents}`; the
/// balance decreases. Refunding more than the balance is refused
/// (non-retryable). The compensation for [`LedgerCharge`].
#[derive(Debug, Clone)]
pub struct LedgerRefund {
    world: World,
}

impl LedgerRefund {
    /// A refund tool writing to `world`.
    pub fn new(world: World) -> Self {
        LedgerRefund { world }
    }
}

impl Tool for LedgerRefund {
    fn name(&self) -> &str {
        LEDGER_REFUND
    }

    fn kind(&self) -> ToolKind {
        ToolKind::WriteReversible
    }

    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let input = Input::new(LEDGER_REFUND, &input)?;
            let account = input.string("account")?.to_owned();
            let amount_cents = input.positive_i64("amount_cents")?;
            self.world
                .apply_call(&ctx, LEDGER_REFUND, LEDGER, &account, |current| {
                    let balance = balance_of(LEDGER_REFUND, &account, current.as_ref())?;
                    if amount_cents > balance {
                        return Err(ToolError::non_retryable(format!(
                            "{LEDGER_REFUND}: cannot refund {amount_cents} cents to account {account}: its balance is only {balance} cents"
                        )));
                    }
                    let balance = balance - amount_cents;
                    let output = json!({
                        "account": account,
                        "amount_cents": amount_cents,
                        "balance_cents": balance,
                    });
                    Ok((balance_resource(balance), output))
                })
                .await
                .map_err(|error| world_failure(LEDGER_REFUND, error))
        }
        .boxed()
    }
}
