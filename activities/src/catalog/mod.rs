//! The tool catalog: what governance knows about each tool, agent and user,
//! read from YAML (`catalog.yaml` in a policy directory).
//!
//! Per tool: its kind, its CRUDLEX operation, its input schema, the input
//! field that names the resource it touches (its scope), the data classes it
//! handles, its owners, its compensation (a tool and an input mapping) and
//! its recovery path, and for remote tools the HTTP endpoint. Upstream MCP
//! servers (`mcp_servers`, a stdio command or an HTTP URL) have the tools
//! they name imported under a prefix, each with the same fields; they become
//! ordinary catalog tools (`prefix` + name) that know their upstream. Per agent: its
//! team, autonomy level (L0–L4), CRUDLEX preset and the users it may act for.
//! Per user: a CRUDLEX preset. The recovery catalog of the seeds ships as
//! named recovery paths that tools refer to.
//!
//! This module only parses and checks configuration. It never evaluates a
//! policy and never calls a tool.

mod crudlex;
mod schema;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use mandate_engine::tool::ToolKind;

pub use crudlex::{Crudlex, Operation};
pub use schema::validate as validate_schema;

/// Most tools, agents or users one catalog may declare.
pub const MAX_CATALOG_ENTRIES: usize = 10_000;

/// A catalog that could not be loaded: the message names the entry and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

/// The whole catalog.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(default)]
    pub version: Option<u32>,
    /// Named recovery paths (`payment`, `deploy`, …) tools refer to by `recovery`.
    #[serde(default)]
    pub recovery_catalog: BTreeMap<String, String>,
    #[serde(default)]
    pub defaults: Defaults,
    /// CRUDLEX preset per environment (the context dimension).
    #[serde(default)]
    pub environments: BTreeMap<String, String>,
    #[serde(default)]
    pub agents: Vec<AgentEntry>,
    #[serde(default)]
    pub users: Vec<UserEntry>,
    #[serde(default)]
    pub tools: Vec<ToolEntry>,
    /// Upstream MCP servers whose tools are imported (into `tools`, at load).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_servers: Vec<McpServerEntry>,
}

/// An upstream MCP server: how to reach it, and the tools of it the
/// catalog imports (only those; anything else it offers stays hidden).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerEntry {
    pub name: String,
    /// Prepended to each tool's name (`files.` makes `write` `files.write`).
    pub prefix: String,
    /// A stdio server: the program and its arguments.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// A streamable HTTP server: its endpoint (`http://host:port/mcp`).
    #[serde(default)]
    pub url: Option<String>,
    /// How long one call may take (ms).
    #[serde(default = "ten_seconds")]
    pub timeout_ms: u64,
    /// The tools imported, each named as on the server, with the fields of
    /// any catalog tool (no `endpoint`); a compensation names a catalog
    /// tool, e.g. another imported one by its prefixed name.
    pub tools: Vec<ToolEntry>,
}

/// Where an imported tool's calls go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upstream {
    /// The server's `name` in `mcp_servers`.
    pub server: String,
    /// The tool's name on that server (without the prefix).
    pub tool: String,
}

/// What applies when the catalog says nothing more specific.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// The CRUDLEX preset of a user the catalog does not list.
    #[serde(default = "full")]
    pub user_crudlex: String,
    /// The environment of a plan that names none.
    #[serde(default = "prod")]
    pub environment: String,
    /// Approval timeout when no rule names one (ms).
    #[serde(default = "hour")]
    pub approval_timeout_ms: u64,
    /// Who decides a workflow's own approval wait (`wait_approval`), e.g.
    /// `gated_deploy`'s; nobody when empty (the wait then times out).
    #[serde(default)]
    pub approvers: Vec<String>,
}

fn full() -> String {
    "FULL".into()
}
fn prod() -> String {
    "prod".into()
}
fn hour() -> u64 {
    3_600_000
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            user_crudlex: full(),
            environment: prod(),
            approval_timeout_ms: hour(),
            approvers: Vec::new(),
        }
    }
}

/// An agent that may submit plans.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    pub id: String,
    #[serde(default)]
    pub team: Option<String>,
    /// `L0` observe-only … `L4` fully autonomous.
    #[serde(default = "l1")]
    pub autonomy: String,
    #[serde(default = "full")]
    pub crudlex: String,
    /// The users (of `users`) this agent may act for; empty means any user
    /// the catalog lists. A submission naming another is refused.
    #[serde(default)]
    pub on_behalf_of: Vec<String>,
}

fn l1() -> String {
    "L1".into()
}

/// A user agents act for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub id: String,
    #[serde(default = "full")]
    pub crudlex: String,
}

/// A compensation mapping: the tool and its input, whose strings may hold
/// `${input.X}` (the step's resolved input) and `${steps.S.output.X}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompensationEntry {
    pub tool: String,
    #[serde(default)]
    pub input: Value,
}

/// A remote tool: an HTTP endpoint called with POST JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `http://host:port/path`.
    pub url: String,
    #[serde(default = "ten_seconds")]
    pub timeout_ms: u64,
    #[serde(default = "one_mib")]
    pub max_response_bytes: usize,
}

fn ten_seconds() -> u64 {
    10_000
}
fn one_mib() -> usize {
    1024 * 1024
}

/// One tool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolEntry {
    pub name: String,
    pub kind: ToolKind,
    /// CRUDLEX operation: create, read, update, delete, list, execute.
    pub operation: Operation,
    #[serde(default)]
    pub description: Option<String>,
    /// JSON schema (a subset: type, required, properties,
    /// additionalProperties, enum, minimum, maximum, minLength, maxLength, items).
    #[serde(default)]
    pub input_schema: Option<Value>,
    /// The input field whose value names the resource (`Scope::"<value>"`).
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub data_classes: Vec<String>,
    #[serde(default)]
    pub owners: Vec<String>,
    #[serde(default)]
    pub compensation: Option<CompensationEntry>,
    /// A key of the recovery catalog.
    #[serde(default)]
    pub recovery: Option<String>,
    /// Free text; wins over `recovery`.
    #[serde(default)]
    pub recovery_path: Option<String>,
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    /// Set for a tool imported from `mcp_servers` (never written by hand).
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
}

/// The recovery catalog of the seeds, shipped so tools can refer to it.
pub fn seed_recovery_catalog() -> BTreeMap<String, String> {
    [
        ("code_change", "code change → git revert of the commit, then redeploy"),
        ("db_write", "database write → transaction rollback (or a compensating write from the audit log)"),
        ("payment", "payment → refund via the payment provider's refund API, 90-day window, fees not refunded"),
        ("email", "email sent → send a correction email to the same recipients; the original cannot be recalled"),
        ("object_delete", "object delete → restore the previous version from bucket versioning"),
        ("deploy", "deploy → traffic rollback to the previous version; migrations may be irreversible"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Catalog {
    /// Parses and checks a catalog. `origin` names the file in messages.
    pub fn from_yaml(origin: &str, text: &str) -> Result<Catalog, Error> {
        let mut catalog: Catalog = yaml_serde::from_str(text)
            .map_err(|e| Error(format!("{origin}: not a valid catalog: {e}")))?;
        for (k, v) in seed_recovery_catalog() {
            catalog.recovery_catalog.entry(k).or_insert(v);
        }
        catalog.import_mcp_tools(origin)?;
        catalog.check(origin)?;
        Ok(catalog)
    }

    /// Checks `mcp_servers` and adds their tools to `tools` under their prefix.
    fn import_mcp_tools(&mut self, origin: &str) -> Result<(), Error> {
        let mut seen = BTreeSet::new();
        for server in &self.mcp_servers {
            let at = |field: &str| format!("{origin}: mcp_servers {:?}: {field}", server.name);
            if server.name.is_empty() || !seen.insert(server.name.clone()) {
                return Err(Error(format!(
                    "{origin}: mcp_servers: the server name {:?} is empty or listed twice",
                    server.name
                )));
            }
            match (&server.command, &server.url) {
                (Some(c), None) if !c.is_empty() && !c[0].is_empty() => {}
                (None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {}
                (None, Some(u)) => {
                    return Err(Error(format!(
                        "{}: an http:// or https:// URL is needed, got {u:?}",
                        at("field url")
                    )));
                }
                _ => {
                    return Err(Error(format!(
                        "{}: give either command (a program and its arguments, for stdio) or url (streamable HTTP), not both or neither",
                        at("fields command/url")
                    )));
                }
            }
            if server.tools.is_empty() {
                return Err(Error(format!(
                    "{}: name at least one tool to import",
                    at("field tools")
                )));
            }
            for t in &server.tools {
                let recoverable =
                    t.compensation.is_some() || t.recovery.is_some() || t.recovery_path.is_some();
                if t.kind.is_write() && !recoverable {
                    return Err(Error(format!(
                        "{}: {} is {} and has neither a compensation nor a recovery path; add compensation: {{tool, input}}, recovery or recovery_path",
                        at(&format!("tool {:?}", t.name)),
                        t.name,
                        t.kind.as_str()
                    )));
                }
                if t.endpoint.is_some() {
                    return Err(Error(format!(
                        "{}: an imported tool is called through its MCP server; remove endpoint",
                        at(&format!("tool {:?}", t.name))
                    )));
                }
                let mut entry = t.clone();
                entry.name = format!("{}{}", server.prefix, t.name);
                entry.upstream = Some(Upstream {
                    server: server.name.clone(),
                    tool: t.name.clone(),
                });
                self.tools.push(entry);
            }
        }
        Ok(())
    }

    /// The upstream MCP server named `name`.
    pub fn mcp_server(&self, name: &str) -> Option<&McpServerEntry> {
        self.mcp_servers.iter().find(|s| s.name == name)
    }

    fn check(&self, origin: &str) -> Result<(), Error> {
        if self.tools.len() > MAX_CATALOG_ENTRIES
            || self.agents.len() > MAX_CATALOG_ENTRIES
            || self.users.len() > MAX_CATALOG_ENTRIES
        {
            return Err(Error(format!(
                "{origin}: more than {MAX_CATALOG_ENTRIES} tools, agents or users"
            )));
        }
        Crudlex::parse(&self.defaults.user_crudlex)
            .map_err(|e| Error(format!("{origin}: defaults.user_crudlex: {e}")))?;
        for (env, preset) in &self.environments {
            Crudlex::parse(preset)
                .map_err(|e| Error(format!("{origin}: environments.{env}: {e}")))?;
        }
        let mut seen = BTreeSet::new();
        for a in &self.agents {
            if !seen.insert(a.id.as_str()) {
                return Err(Error(format!("{origin}: agent {:?} is listed twice", a.id)));
            }
            autonomy_level(&a.autonomy)
                .map_err(|e| Error(format!("{origin}: agent {:?}: field autonomy: {e}", a.id)))?;
            Crudlex::parse(&a.crudlex)
                .map_err(|e| Error(format!("{origin}: agent {:?}: field crudlex: {e}", a.id)))?;
        }
        let mut seen = BTreeSet::new();
        for u in &self.users {
            if !seen.insert(u.id.as_str()) {
                return Err(Error(format!("{origin}: user {:?} is listed twice", u.id)));
            }
            Crudlex::parse(&u.crudlex)
                .map_err(|e| Error(format!("{origin}: user {:?}: field crudlex: {e}", u.id)))?;
        }
        let names: BTreeSet<&str> = self.tools.iter().map(|t| t.name.as_str()).collect();
        if names.len() != self.tools.len() {
            return Err(Error(format!("{origin}: a tool name is listed twice")));
        }
        for t in &self.tools {
            let at = |field: &str| format!("{origin}: tool {:?}: field {field}", t.name);
            if let Some(c) = &t.compensation
                && !names.contains(c.tool.as_str())
            {
                return Err(Error(format!(
                    "{}: compensation tool {:?} is not in the catalog",
                    at("compensation.tool"),
                    c.tool
                )));
            }
            if let Some(r) = &t.recovery
                && !self.recovery_catalog.contains_key(r)
            {
                return Err(Error(format!(
                    "{}: {r:?} is not in the recovery catalog (known: {})",
                    at("recovery"),
                    self.recovery_catalog
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if let Some(s) = &t.input_schema {
                schema::check_schema(s)
                    .map_err(|e| Error(format!("{}: {e}", at("input_schema"))))?;
            }
            if let Some(e) = &t.endpoint
                && !e.url.starts_with("http://")
            {
                return Err(Error(format!(
                    "{}: only http:// endpoints are supported, got {:?}",
                    at("endpoint.url"),
                    e.url
                )));
            }
        }
        Ok(())
    }

    pub fn tool(&self, name: &str) -> Option<&ToolEntry> {
        self.tools.iter().find(|t| t.name == name)
    }

    pub fn agent(&self, id: &str) -> Option<&AgentEntry> {
        self.agents.iter().find(|a| a.id == id)
    }

    pub fn user(&self, id: &str) -> Option<&UserEntry> {
        self.users.iter().find(|u| u.id == id)
    }

    /// Sorted tool names.
    pub fn tool_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tools.iter().map(|t| t.name.clone()).collect();
        v.sort();
        v
    }

    /// The recovery path text of a tool, if any.
    pub fn recovery_path(&self, tool: &ToolEntry) -> Option<String> {
        tool.recovery_path.clone().or_else(|| {
            tool.recovery
                .as_ref()
                .and_then(|r| self.recovery_catalog.get(r).cloned())
        })
    }
}

/// `L0` … `L4` → 0 … 4.
pub fn autonomy_level(text: &str) -> Result<u8, String> {
    match text.trim().to_ascii_uppercase().as_str() {
        "L0" => Ok(0),
        "L1" => Ok(1),
        "L2" => Ok(2),
        "L3" => Ok(3),
        "L4" => Ok(4),
        other => Err(format!(
            "autonomy level {other:?} is not one of L0, L1, L2, L3, L4"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPSTREAM: &str = r#"
tools:
  - {name: local.get, kind: read, operation: read}
mcp_servers:
  - name: notes
    prefix: notes.
    command: [python3, notes.py]
    tools:
      - {name: put, kind: write_reversible, operation: update, owners: [team-notes],
         compensation: {tool: notes.delete, input: {key: "${input.key}"}}}
      - {name: delete, kind: write_reversible, operation: delete, recovery_path: restore from backup}
      - {name: get, kind: read, operation: read}
"#;

    #[test]
    fn upstream_mcp_tools_are_imported_under_their_prefix() {
        let c = Catalog::from_yaml("c.yaml", UPSTREAM).unwrap();
        let put = c.tool("notes.put").unwrap();
        assert_eq!(put.kind, ToolKind::WriteReversible);
        assert_eq!(put.owners, ["team-notes"]);
        assert_eq!(put.compensation.as_ref().unwrap().tool, "notes.delete");
        assert_eq!(
            put.upstream,
            Some(Upstream {
                server: "notes".into(),
                tool: "put".into()
            })
        );
        assert_eq!(c.tool("local.get").unwrap().upstream, None);
        assert_eq!(
            c.mcp_server("notes").unwrap().command.as_ref().unwrap()[1],
            "notes.py"
        );
        assert!(c.tool("put").is_none(), "only the prefixed name exists");
    }

    #[test]
    fn an_upstream_write_without_compensation_or_recovery_is_refused() {
        let bad = UPSTREAM.replace(", recovery_path: restore from backup", "");
        let e = Catalog::from_yaml("c.yaml", &bad).unwrap_err().to_string();
        assert!(
            e.contains(r#"mcp_servers "notes": tool "delete""#)
                && e.contains("neither a compensation nor a recovery path"),
            "{e}"
        );
        // `upstream` is set by the import alone, never by hand.
        let forged =
            "tools:\n  - {name: x, kind: read, operation: read, upstream: {server: s, tool: t}}\n";
        assert!(Catalog::from_yaml("c.yaml", forged).is_err());
        for (text, want) in [
            (
                UPSTREAM.replace("    command: [python3, notes.py]\n", ""),
                "either command",
            ),
            (
                UPSTREAM.replace("command: [python3, notes.py]", "url: ftp://x"),
                "http:// or https://",
            ),
            (
                UPSTREAM.replace("notes.delete, input", "notes.gone, input"),
                "not in the catalog",
            ),
            (
                format!(
                    "{UPSTREAM}  - {{name: notes, prefix: n2., url: http://h/mcp, tools: [{{name: a, kind: read, operation: read}}]}}\n"
                ),
                "listed twice",
            ),
        ] {
            let e = Catalog::from_yaml("c.yaml", &text).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e}");
        }
    }

    #[test]
    fn a_catalog_parses_and_names_bad_fields() {
        let c = Catalog::from_yaml(
            "c.yaml",
            "tools:\n  - {name: a.b, kind: write_reversible, operation: update, recovery: deploy}\n",
        )
        .unwrap();
        assert!(
            c.recovery_path(c.tool("a.b").unwrap())
                .unwrap()
                .contains("traffic rollback")
        );
        let e = Catalog::from_yaml(
            "c.yaml",
            "tools:\n  - {name: a.b, kind: read, operation: read, compensation: {tool: nope}}\n",
        )
        .unwrap_err();
        assert!(e.0.contains("tool \"a.b\": field compensation.tool"), "{e}");
        let e = Catalog::from_yaml("c.yaml", "agents:\n  - {id: x, autonomy: L9}\n").unwrap_err();
        assert!(e.0.contains("field autonomy"), "{e}");
    }

    #[test]
    fn the_seed_recovery_catalog_is_complete() {
        let c = seed_recovery_catalog();
        for k in [
            "code_change",
            "db_write",
            "payment",
            "email",
            "object_delete",
            "deploy",
        ] {
            assert!(c.contains_key(k), "{k}");
        }
        assert!(c["payment"].contains("90-day"));
        assert!(c["payment"].contains("fees not refunded"));
        assert!(c["deploy"].contains("migrations may be irreversible"));
    }
}
