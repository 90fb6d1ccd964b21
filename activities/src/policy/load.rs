//! Loading a policy directory into a [`PolicySet`]: the catalog, the Cedar
//! rules with their annotations, the hierarchy check, and the set's hash.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{Effect, Policy, PolicyId};
use sha2::{Digest, Sha256};

use super::{Error, InterventionPath};
use crate::catalog::Catalog;

/// Most Cedar files one directory may hold.
const MAX_FILES: usize = 1_000;
/// Largest policy or catalog file read, in bytes.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Where in the hierarchy a rule was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Level {
    Org,
    Team(String),
    Agent(String),
}

impl Level {
    pub fn describe(&self) -> String {
        match self {
            Level::Org => "org".into(),
            Level::Team(t) => format!("team {t}"),
            Level::Agent(a) => format!("agent {a}"),
        }
    }
}

/// One Cedar rule and what its annotations say.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub file: String,
    pub level: Level,
    pub effect: Effect,
    pub message: String,
    /// For permits: the path it implies (grants default to monitored).
    pub path: InterventionPath,
    /// A gate only sets a path; it never grants access.
    pub gate: bool,
    pub approvers: Vec<String>,
    pub quorum: Option<u32>,
    pub timeout_ms: Option<u64>,
    pub escalation: Option<String>,
    pub policy: Policy,
}

/// A loaded, checked policy set: the catalog, the rules, and their hash.
pub struct PolicySet {
    pub catalog: Catalog,
    /// SHA-256 of every file (path and content), hex.
    pub hash: String,
    pub rules: HashMap<String, Rule>,
    /// The Cedar set an agent is judged by: org + its team + its own.
    pub(crate) per_agent: HashMap<String, cedar_policy::PolicySet>,
    /// The org rules alone (for agents the catalog does not list).
    pub(crate) org_only: cedar_policy::PolicySet,
    /// The files, relative to the directory.
    pub files: Vec<String>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("hash", &self.hash)
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// `(path, size, mtime ns)` of every file under `dir`, sorted.
pub fn fingerprint(dir: &Path) -> Result<Vec<(PathBuf, u64, i128)>, Error> {
    let mut out = Vec::new();
    for path in list_files(dir)? {
        let meta =
            std::fs::metadata(&path).map_err(|e| Error(format!("{}: {e}", path.display())))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        out.push((path, meta.len(), mtime));
    }
    Ok(out)
}

fn list_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| Error(format!("cannot read policy directory {}: {e}", d.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error(format!("{}: {e}", d.display())))?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("cedar" | "yaml" | "yml")
            ) {
                out.push(path);
            }
            if out.len() > MAX_FILES {
                return Err(Error(format!(
                    "{}: more than {MAX_FILES} policy files",
                    dir.display()
                )));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn read_bounded(path: &Path) -> Result<String, Error> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error(format!("{}: {e}", path.display())))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(Error(format!(
            "{}: {len} bytes, more than the {MAX_FILE_BYTES} accepted",
            path.display()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| Error(format!("{}: {e}", path.display())))
}

fn level_of(rel: &str) -> Result<Level, Error> {
    let parts: Vec<&str> = rel.split('/').collect();
    match parts.as_slice() {
        [_file] | ["org", _file] => Ok(Level::Org),
        ["team", team, _file] => Ok(Level::Team(team.to_string())),
        ["agent", agent, _file] => Ok(Level::Agent(agent.to_string())),
        _ => Err(Error(format!(
            "{rel}: policy files go in org/, team/<team>/ or agent/<agent>/"
        ))),
    }
}

fn annotation_u64(policy: &Policy, key: &str, file: &str, id: &str) -> Result<Option<u64>, Error> {
    policy
        .annotation(key)
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                Error(format!(
                    "{file}: rule {id:?}: annotation @{key}({v:?}) must be a whole number"
                ))
            })
        })
        .transpose()
}

impl PolicySet {
    /// Loads `dir` (see the module docs for the layout).
    pub fn load_dir(dir: &Path) -> Result<PolicySet, Error> {
        let files = list_files(dir)?;
        let mut catalog: Option<(String, String)> = None;
        let mut cedar = Vec::new();
        for path in files {
            let rel = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            let text = read_bounded(&path)?;
            if rel.ends_with(".cedar") {
                cedar.push((rel, text));
            } else if rel == "catalog.yaml" || rel == "catalog.yml" {
                catalog = Some((rel, text));
            }
        }
        let (cat_name, cat_text) = catalog.ok_or_else(|| {
            Error(format!(
                "{}: no catalog.yaml (the tool catalog) in the policy directory",
                dir.display()
            ))
        })?;
        Self::from_sources((&cat_name, &cat_text), &cedar)
    }

    /// Builds a set from a catalog text and `(relative path, text)` Cedar files.
    pub fn from_sources(
        catalog: (&str, &str),
        cedar_files: &[(String, String)],
    ) -> Result<PolicySet, Error> {
        let parsed_catalog = Catalog::from_yaml(catalog.0, catalog.1).map_err(|e| Error(e.0))?;
        let mut hasher = Sha256::new();
        let mut all: BTreeMap<&str, &str> = BTreeMap::new();
        all.insert(catalog.0, catalog.1);
        for (p, t) in cedar_files {
            all.insert(p, t);
        }
        for (p, t) in &all {
            hasher.update((p.len() as u64).to_be_bytes());
            hasher.update(p.as_bytes());
            hasher.update((t.len() as u64).to_be_bytes());
            hasher.update(t.as_bytes());
        }
        let hash = hex::encode(hasher.finalize());

        let mut rules: HashMap<String, Rule> = HashMap::new();
        for (file, text) in cedar_files {
            let level = level_of(file)?;
            let set = cedar_policy::PolicySet::from_str(text)
                .map_err(|e| Error(format!("{file}: does not parse as Cedar: {e}")))?;
            if set.templates().next().is_some() {
                return Err(Error(format!(
                    "{file}: Cedar templates are not supported; write plain rules"
                )));
            }
            let mut policies: Vec<&Policy> = set.policies().collect();
            // PolicySet keeps no order; sort by the parser's id (policy0, policy1, …)
            // by number so default ids follow the file.
            policies.sort_by_key(|p| {
                p.id()
                    .to_string()
                    .trim_start_matches("policy")
                    .parse::<u64>()
                    .unwrap_or(u64::MAX)
            });
            for (index, policy) in policies.into_iter().enumerate() {
                let stem = file.trim_end_matches(".cedar").replace('/', ".");
                let id = policy
                    .annotation("id")
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{stem}#{index}"));
                if let Some(other) = rules.get(&id) {
                    return Err(Error(format!(
                        "{file}: rule id {id:?} is also used in {}; rule ids must be unique",
                        other.file
                    )));
                }
                let effect = policy.effect();
                let path = match policy.annotation("path") {
                    None => InterventionPath::MonitoredExecute,
                    Some(p) => match InterventionPath::parse(p.trim()) {
                        Some(InterventionPath::Deny) | None => {
                            return Err(Error(format!(
                                "{file}: rule {id:?}: @path({p:?}) must be auto_execute, monitored_execute, flagged_execute or gated_execute (deny is a forbid rule)"
                            )));
                        }
                        Some(p) => p,
                    },
                };
                let gate = match policy.annotation("role") {
                    None => false,
                    Some("gate") => true,
                    Some(other) => {
                        return Err(Error(format!(
                            "{file}: rule {id:?}: @role({other:?}) must be \"gate\""
                        )));
                    }
                };
                if effect == Effect::Permit && level != Level::Org {
                    if !gate {
                        return Err(Error(format!(
                            "{file}: rule {id:?}: a permit at {} level would widen what the levels above allow; below org a rule may only restrict: write a forbid, or a gate (@role(\"gate\") with a stricter @path)",
                            level.describe()
                        )));
                    }
                    if path == InterventionPath::AutoExecute {
                        return Err(Error(format!(
                            "{file}: rule {id:?}: a gate at {} level cannot loosen the path to auto_execute",
                            level.describe()
                        )));
                    }
                }
                let approvers = policy
                    .annotation("approvers")
                    .map(|a| {
                        a.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default();
                let quorum =
                    annotation_u64(policy, "quorum", file, &id)?.map(|q| q.clamp(1, 100) as u32);
                let timeout_ms = annotation_u64(policy, "timeout_ms", file, &id)?;
                let message = policy
                    .annotation("message")
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{id} ({})", level.describe()));
                let policy = policy.new_id(PolicyId::new(id.clone()));
                rules.insert(
                    id.clone(),
                    Rule {
                        id,
                        file: file.clone(),
                        level: level.clone(),
                        effect,
                        message,
                        path,
                        gate,
                        approvers,
                        quorum,
                        timeout_ms,
                        escalation: policy.annotation("escalation").map(str::to_string),
                        policy,
                    },
                );
            }
        }
        for r in rules.values() {
            if let Level::Agent(a) = &r.level
                && parsed_catalog.agent(a).is_none()
            {
                return Err(Error(format!(
                    "{}: rule {:?}: agent {a:?} is not in the catalog",
                    r.file, r.id
                )));
            }
        }
        let build = |pred: &dyn Fn(&Level) -> bool| -> Result<cedar_policy::PolicySet, Error> {
            let mut set = cedar_policy::PolicySet::new();
            let mut ids: Vec<&String> = rules.keys().collect();
            ids.sort();
            for id in ids {
                let r = &rules[id];
                if pred(&r.level) {
                    set.add(r.policy.clone())
                        .map_err(|e| Error(format!("{}: rule {:?}: {e}", r.file, r.id)))?;
                }
            }
            Ok(set)
        };
        let org_only = build(&|l| *l == Level::Org)?;
        let mut per_agent = HashMap::new();
        for agent in &parsed_catalog.agents {
            let team = agent.team.clone();
            let set = build(&|l| match l {
                Level::Org => true,
                Level::Team(t) => Some(t) == team.as_ref(),
                Level::Agent(a) => *a == agent.id,
            })?;
            per_agent.insert(agent.id.clone(), set);
        }
        Ok(PolicySet {
            catalog: parsed_catalog,
            hash,
            rules,
            per_agent,
            org_only,
            files: all.keys().map(|s| s.to_string()).collect(),
        })
    }
}
