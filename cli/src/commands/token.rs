//! `mandate token create --role R --name N | list | revoke N`: the HTTP API's
//! bearer tokens. A new token's secret is printed once, on stdout alone;
//! only its SHA-256 is stored.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use comfy_table::{ContentArrangement, Table, presets};
use mandate_api::auth::TokenError;
use mandate_engine::store;
use serde_json::json;

use crate::app::{Database, refused};
use crate::summary;

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints its secret once (store it now: it cannot be shown again)
    Create {
        /// agent, approver, operator or auditor
        #[arg(long, value_name = "ROLE")]
        role: String,
        /// The identity: an agent's name, an approver's id (recorded as approver:<NAME>)
        #[arg(long, value_name = "NAME")]
        name: String,
    },
    /// List tokens (never their secrets)
    List {
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by name; it stops working within 5 seconds
    Revoke { name: String },
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub async fn run(db: &Database, args: TokenArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TokenCommand::Create { role, name } => {
            // Refuse a bad role or name before touching the database.
            if mandate_api::Role::parse(&role).is_none() {
                return Err(refused(TokenError::UnknownRole(role).to_string()));
            }
            let store = store::open(&db.url).await?;
            let (row, secret) = mandate_api::create_token(store.as_ref(), &role, &name, now_ms())
                .await
                .map_err(|e| match e {
                    TokenError::Store(e) => anyhow::Error::new(e),
                    e => refused(e.to_string()),
                })?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{secret}")?;
            out.flush()?;
            eprintln!(
                "token {} ({}) created; this is the only time its secret is shown. Use it as `Authorization: Bearer <token>`",
                row.name, row.role
            );
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List { json } => {
            db.require_existing()?;
            let store = store::open(&db.url).await?;
            let tokens = store.list_tokens().await?;
            let mut out = std::io::stdout().lock();
            if json {
                let docs: Vec<_> = tokens
                    .iter()
                    .map(|t| {
                        json!({"name": t.name, "role": t.role, "id": t.id,
                               "created_at_ms": t.created_at_ms, "revoked_at_ms": t.revoked_at_ms})
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string(&docs)?)?;
            } else if tokens.is_empty() {
                eprintln!(
                    "no tokens; create one with `mandate token create --role agent --name NAME`"
                );
            } else {
                let mut table = Table::new();
                table
                    .load_preset(presets::UTF8_BORDERS_ONLY)
                    .set_content_arrangement(ContentArrangement::Dynamic)
                    .set_header(["NAME", "ROLE", "CREATED", "REVOKED"]);
                for t in &tokens {
                    table.add_row([
                        t.name.clone(),
                        t.role.clone(),
                        summary::rfc3339_ms(t.created_at_ms),
                        t.revoked_at_ms
                            .map(summary::rfc3339_ms)
                            .unwrap_or_else(|| "-".into()),
                    ]);
                }
                writeln!(out, "{table}")?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { name } => {
            db.require_existing()?;
            let store = store::open(&db.url).await?;
            if !store.revoke_token(&name, now_ms()).await? {
                return Err(refused(format!(
                    "no live token named {name:?}; `mandate token list` shows them"
                )));
            }
            eprintln!("token {name} revoked");
            Ok(ExitCode::SUCCESS)
        }
    }
}
