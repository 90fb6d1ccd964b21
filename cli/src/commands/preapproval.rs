//! `mandate preapproval grant | list | revoke`: batch pre-approvals ("tool X
//! for agent Y, scope S, for 4 hours"), granted and revoked only by an owner
//! of the tool (per the catalog), never by a task. Locally the identity is
//! `--as` (vouched for by whoever can write the database); with `--server`
//! it is the token's.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use mandate_engine::core::gateway::Preapproval;
use mandate_engine::runtime::PreapprovalGrant;
use serde_json::{Value, json};

use crate::app::{self, Database, refused};
use crate::remote::Remote;

#[derive(Debug, Args)]
pub struct PreapprovalArgs {
    #[command(subcommand)]
    pub command: PreapprovalCommand,
}

#[derive(Debug, Subcommand)]
pub enum PreapprovalCommand {
    /// Pre-approve a tool for an agent for a while (as an owner of the tool); prints its id
    Grant {
        /// The catalog tool
        #[arg(long, value_name = "TOOL")]
        tool: String,
        /// The catalog agent
        #[arg(long, value_name = "AGENT")]
        agent: String,
        /// Only this resource scope (default: any)
        #[arg(long, value_name = "S")]
        scope: Option<String>,
        /// How long, e.g. 30m, 4h, 7d (at most 30d)
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why, recorded with the grant
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// The granting owner's identity (required without --server)
        #[arg(long = "as", value_name = "ID")]
        identity: Option<String>,
    },
    /// List pre-approvals in force (--all: also expired and revoked)
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a pre-approval (as an owner of its tool)
    Revoke {
        id: String,
        #[arg(long = "as", value_name = "ID")]
        identity: Option<String>,
    },
}

fn need_identity(identity: &Option<String>, remote: bool) -> anyhow::Result<String> {
    match (identity, remote) {
        (_, true) => Ok(String::new()),
        (Some(i), false) => Ok(i.clone()),
        (None, false) => Err(refused(
            "--as ID is required: the owner of the tool who grants or revokes (with --server the token's name is the identity)",
        )),
    }
}

pub async fn run(
    db: &Database,
    remote: Option<Remote>,
    args: PreapprovalArgs,
) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match args.command {
        PreapprovalCommand::Grant {
            tool,
            agent,
            scope,
            duration,
            reason,
            identity,
        } => {
            let ms = crate::commands::verify::parse_duration(&duration)
                .map_err(|e| refused(format!("--for: {e}")))?
                .as_millis() as i64;
            let who = need_identity(&identity, remote.is_some())?;
            let p: Value = match &remote {
                Some(r) => {
                    r.post_json(
                        &["v1", "preapprovals"],
                        &json!({"tool": tool, "agent": agent, "scope": scope, "duration_ms": ms, "reason": reason}),
                    )
                    .await?
                }
                None => {
                    db.require_existing()?;
                    let (engine, _world) = app::open_engine(db).await?;
                    let p = engine
                        .grant_preapproval(
                            PreapprovalGrant {
                                tool,
                                agent,
                                scope,
                                duration_ms: ms,
                                reason,
                            },
                            &who,
                        )
                        .await?;
                    serde_json::to_value(p)?
                }
            };
            writeln!(out, "{}", p["id"].as_str().unwrap_or_default())?;
        }
        PreapprovalCommand::List { all, json } => {
            let list: Vec<Preapproval> = match &remote {
                Some(r) => {
                    let v: Value = r
                        .get_json(
                            &["v1", "preapprovals"],
                            &[("all", if all { "true" } else { "false" })],
                        )
                        .await?;
                    serde_json::from_value(v["preapprovals"].clone())?
                }
                None => {
                    db.require_existing()?;
                    let (engine, _world) = app::open_engine(db).await?;
                    engine.preapprovals(!all).await?
                }
            };
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                if list.is_empty() {
                    eprintln!("no pre-approvals{}", if all { "" } else { " in force" });
                }
                for p in &list {
                    writeln!(
                        out,
                        "{}  {} for {}  scope {}  by {}  until {}{}",
                        p.id,
                        crate::summary::text(&p.tool, 80),
                        crate::summary::text(&p.agent, 80),
                        crate::summary::text(p.scope.as_deref().unwrap_or("*"), 80),
                        crate::summary::text(&p.granted_by, 80),
                        p.expires_at_ms,
                        p.revoked_by
                            .as_deref()
                            .map(|b| format!("  (revoked by {})", crate::summary::text(b, 80)))
                            .unwrap_or_default()
                    )?;
                }
            }
        }
        PreapprovalCommand::Revoke { id, identity } => {
            let who = need_identity(&identity, remote.is_some())?;
            match &remote {
                Some(r) => {
                    let _: Value = r.delete_json(&["v1", "preapprovals", &id]).await?;
                }
                None => {
                    db.require_existing()?;
                    let (engine, _world) = app::open_engine(db).await?;
                    engine.revoke_preapproval(&id, &who).await?;
                }
            }
            writeln!(out, "{id}")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
