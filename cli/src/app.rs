//! What every command shares: which database to use, opening the engine on
//! it, and mapping errors to exit codes and messages.
//!
//! Exit codes: [`EXIT_OK`], [`EXIT_REFUSED`] for bad input and refused
//! operations (unknown task, final task, bad URL, invalid JSON, a corrupt
//! history), [`EXIT_FAILURE`] for everything else. A refusal never writes
//! anything; commands check what they can before opening the database.
//! `mandate replay` and `mandate verify` give their findings codes of their
//! own, in the same numbering: [`EXIT_NON_DETERMINISM`] (1),
//! [`EXIT_TAMPERED`] (2), [`EXIT_PROJECTION_MISMATCH`] (3).

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use mandate_activities::{Governance, ToolRegistry, World};
use mandate_engine::{Engine, audit, runtime, store};

/// Used when neither `--db` nor `MANDATE_DATABASE_URL` names a database.
pub const DEFAULT_DB_URL: &str = "sqlite://mandate.db";

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_REFUSED: u8 = 2;
/// `replay`: this binary's workflow code does not replay the history.
pub const EXIT_NON_DETERMINISM: u8 = 1;
/// `replay` / `verify`: a hash chain is broken (the history was tampered with).
pub const EXIT_TAMPERED: u8 = 2;
/// `replay` / `verify`: stored derived rows differ from the history.
pub const EXIT_PROJECTION_MISMATCH: u8 = 3;

/// The database a command works on, and whether the user named it.
#[derive(Debug, Clone)]
pub struct Database {
    pub url: String,
    /// False when [`DEFAULT_DB_URL`] was used.
    pub explicit: bool,
}

impl Database {
    pub fn from_arg(db: Option<String>) -> Self {
        match db {
            Some(url) => Self {
                url,
                explicit: true,
            },
            None => Self {
                url: DEFAULT_DB_URL.to_string(),
                explicit: false,
            },
        }
    }

    /// The URL with any password masked, safe to print.
    pub fn shown(&self) -> String {
        redact_password(&self.url)
    }

    /// For commands that only act on existing tasks: refuses a SQLite URL whose
    /// file does not exist, instead of creating an empty database in its place.
    pub fn require_existing(&self) -> anyhow::Result<()> {
        if let Some(path) = sqlite_path(&self.url)
            && !path.exists()
        {
            let origin = if self.explicit {
                "from --db / MANDATE_DATABASE_URL"
            } else {
                "the default; pass --db URL or set MANDATE_DATABASE_URL"
            };
            return Err(refused(format!(
                "no Mandate database at {} ({}, {origin}). Nothing was created; \
                 `mandate submit` or `mandate serve` creates it",
                path.display(),
                self.shown()
            )));
        }
        Ok(())
    }
}

/// The policy directory named by `--policies` / `MANDATE_POLICY_DIR`, set
/// once by `commands::run` before any command opens the engine.
static POLICY_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Records the policy directory for [`governance`] (first call wins).
pub fn set_policy_dir(dir: Option<PathBuf>) {
    let _ = POLICY_DIR.set(dir);
}

/// The catalog and policies in force: the `--policies` directory (watched
/// for changes), or the shipped default. A directory that does not load is
/// refused with its error.
pub fn governance() -> anyhow::Result<Arc<Governance>> {
    match POLICY_DIR.get().cloned().flatten() {
        Some(dir) => Governance::load_dir(&dir)
            .map(Arc::new)
            .map_err(|e| refused(format!("policies in {}: {e}", dir.display()))),
        None => Ok(Arc::new(Governance::shipped())),
    }
}

/// The ownership map and routes in force: `owners.yaml` in the
/// `--policies` directory, else the shipped one
/// (`activities/catalog/owners.yaml`). A file that does not load is refused
/// with its error (file, entry, field).
pub fn routing_config() -> anyhow::Result<Arc<mandate_routing::ConfigCell>> {
    static CELL: OnceLock<Arc<mandate_routing::ConfigCell>> = OnceLock::new();
    if let Some(c) = CELL.get() {
        return Ok(c.clone());
    }
    let cell = match POLICY_DIR.get().cloned().flatten() {
        Some(dir) if dir.join(mandate_routing::config::FILE_NAME).exists() => {
            mandate_routing::ConfigCell::open(&dir)
                .map(Arc::new)
                .map_err(|e| refused(e.to_string()))
        }
        _ => Ok(Arc::new(mandate_routing::ConfigCell::shipped())),
    }?;
    Ok(CELL.get_or_init(|| cell).clone())
}

/// The engine with the built-in workflows, the demo and governance tools,
/// and the world those tools act on (the same database).
pub async fn open_engine(db: &Database) -> anyhow::Result<(Engine, World)> {
    open_engine_with(db, governance()?, routing_config()?).await
}

/// [`open_engine`] with the given policies and routing configuration (the
/// demo brings its own).
pub async fn open_engine_with(
    db: &Database,
    governance: Arc<Governance>,
    routing: Arc<mandate_routing::ConfigCell>,
) -> anyhow::Result<(Engine, World)> {
    let url = db.url.as_str();
    if let Some(path) = sqlite_path(url)
        && let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        return Err(refused(format!(
            "the directory {} of database URL {} does not exist; create it (mkdir -p {}) or pass another --db",
            dir.display(),
            db.shown(),
            dir.display()
        )));
    }
    // The store first: it refuses unknown schemes before anything is created.
    let store = store::open(url).await?;
    let world = World::connect(url).await?;
    let mut tools = ToolRegistry::new();
    mandate_activities::register_demo_tools(&mut tools, world.clone());
    mandate_activities::register_governance_tools(&mut tools, governance.clone(), world.clone());
    // The tools the catalog imports from upstream MCP servers (connected on
    // their first call).
    mandate_mcp::upstream::register(&mut tools, &governance);
    // Every step the gateway decides is also routed to its owners (recorded
    // in the history; deliveries follow from it, see `commands::serve`).
    let gateway: std::sync::Arc<dyn mandate_engine::core::gateway::Gateway> =
        Arc::new(mandate_engine::core::routing::Routed {
            gateway: governance.clone(),
            router: Arc::new(mandate_routing::wire::EngineRouter {
                config: routing,
                scope_field: Some(mandate_api::notifications::scope_field(&governance)),
            }),
        });
    let engine = Engine::new(
        store,
        mandate_workflows::registry_with(governance),
        tools,
        gateway,
    );
    Ok((engine, world))
}

/// A refusal decided by the CLI itself (bad argument, bad input file).
#[derive(Debug)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// A [`Refused`] error (exit code 2).
pub fn refused(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Refused(message.into()))
}

/// The exit code an error deserves: 2 when the user can fix the request, 1
/// otherwise. A closed stdout (`mandate list | head`) is not an error.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<Refused>() {
            return EXIT_REFUSED;
        }
        if let Some(e) = cause.downcast_ref::<runtime::Error>() {
            return runtime_code(e);
        }
        if let Some(e) = cause.downcast_ref::<store::Error>() {
            return store_code(e);
        }
        if let Some(e) = cause.downcast_ref::<audit::Error>() {
            return match e {
                audit::Error::TaskNotFound { .. } => EXIT_REFUSED,
                audit::Error::Store(s) => store_code(s),
            };
        }
        if let Some(e) = cause.downcast_ref::<mandate_activities::world::Error>() {
            return match e {
                mandate_activities::world::Error::UnsupportedUrl { .. }
                | mandate_activities::world::Error::Connect { .. } => EXIT_REFUSED,
                _ => EXIT_FAILURE,
            };
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>()
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            return EXIT_OK;
        }
    }
    EXIT_FAILURE
}

fn runtime_code(e: &runtime::Error) -> u8 {
    use runtime::Error as E;
    match e {
        E::UnknownWorkflow { .. }
        | E::InvalidInput { .. }
        | E::TaskNotFound { .. }
        | E::TaskFinal { .. }
        | E::Rejected { .. }
        | E::Corrupt { .. }
        | E::Unparseable { .. }
        | E::ApprovalRefused(_)
        | E::Forbidden { .. }
        | E::NotFound { .. } => EXIT_REFUSED,
        E::Contention { .. } | E::Timeout { .. } => EXIT_FAILURE,
        E::Store(s) => store_code(s),
    }
}

fn store_code(e: &store::Error) -> u8 {
    match e {
        // The URL names nothing usable: the user must fix it.
        store::Error::BadUrl { .. } | store::Error::Connect { .. } => EXIT_REFUSED,
        _ => EXIT_FAILURE,
    }
}

/// Prints an error to stderr: the message, then each cause not already part
/// of the message before it (engine errors often repeat their source).
pub fn report(error: &anyhow::Error) {
    let mut text = format!(
        "{} {error}",
        crate::style::red("error:", crate::style::stderr_colored())
    );
    let mut previous = error.to_string();
    for cause in error.chain().skip(1) {
        let c = cause.to_string();
        if !previous.contains(&c) {
            text.push_str(&format!("\n  caused by: {c}"));
        }
        previous = c;
    }
    eprintln!("{text}");
}

/// The file a SQLite URL names, or `None` for other URLs and in-memory databases.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].split_once(':') {
            Some((user, _password)) => {
                format!("{scheme}://{user}:***@{}", &rest[at + 1..])
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite://mandate.db"),
            Some(PathBuf::from("mandate.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:///tmp/m.db?mode=rwc"),
            Some(PathBuf::from("/tmp/m.db"))
        );
        assert_eq!(sqlite_path("sqlite:m.db"), Some(PathBuf::from("m.db")));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://u@h/db"), None);
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact_password("postgres://me:hunter2@db:5432/mandate"),
            "postgres://me:***@db:5432/mandate"
        );
        assert_eq!(
            redact_password("postgres://me@db/mandate"),
            "postgres://me@db/mandate"
        );
        assert_eq!(
            redact_password("sqlite://mandate.db"),
            "sqlite://mandate.db"
        );
    }

    #[test]
    fn refusals_and_failures_get_their_codes() {
        assert_eq!(exit_code(&refused("bad")), EXIT_REFUSED);
        let not_found = anyhow::Error::new(runtime::Error::TaskNotFound {
            task_id: "t".into(),
        });
        assert_eq!(exit_code(&not_found.context("reading t")), EXIT_REFUSED);
        let no_task = anyhow::Error::new(audit::Error::TaskNotFound {
            task_id: "t".into(),
        });
        assert_eq!(exit_code(&no_task), EXIT_REFUSED);
        let bad_url = anyhow::Error::new(store::Error::BadUrl {
            url: "x".into(),
            reason: "unknown scheme".into(),
        });
        assert_eq!(exit_code(&bad_url), EXIT_REFUSED);
        assert_eq!(exit_code(&anyhow::anyhow!("disk on fire")), EXIT_FAILURE);
        let pipe = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(exit_code(&pipe), EXIT_OK);
    }
}
