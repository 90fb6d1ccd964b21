//! Loading `owners.yaml` from a policy directory: the ownership map, the
//! route tree and the sinks, validated together. A bad file is refused with
//! a message naming the file, the entry and the field; [`ConfigCell::reload`]
//! keeps the previous configuration when the new one is refused.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;

use crate::limits;
use crate::owners::{EscalationChain, OwnershipEntry, OwnershipMap, Reachable, RotationSpec};
use crate::router::{RouteSpec, RouterConfig};
use crate::sinks::{SinkSet, SinkSpec};

/// The file name routing reads in a policy directory.
pub const FILE_NAME: &str = "owners.yaml";

/// The shipped ownership map (`activities/catalog/owners.yaml`): the shipped
/// catalog's owners, reached through the log sink.
pub const SHIPPED_OWNERS_YAML: &str = include_str!("../../activities/catalog/owners.yaml");

/// A configuration refused at load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read it: {message}")]
    Read { file: String, message: String },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {entry}: field `{field}`: {message}")]
    Invalid {
        file: String,
        entry: String,
        field: String,
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(file: &str, entry: String, field: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: file.to_string(),
            entry,
            field: field.to_string(),
            message,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: u32,
    #[serde(default)]
    people: Vec<Reachable>,
    #[serde(default)]
    channels: Vec<Reachable>,
    #[serde(default)]
    rotations: Vec<RotationSpec>,
    #[serde(default)]
    chains: Vec<EscalationChain>,
    #[serde(default)]
    ownership: Vec<OwnershipEntry>,
    #[serde(default)]
    routes: Option<RouteSpec>,
    #[serde(default)]
    sinks: Vec<SinkSpec>,
    #[serde(default)]
    playbooks: Vec<Playbook>,
}

/// A playbook: a registered workflow (or `plan`, with a plan as its input)
/// that a route starts as the automated first response.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    pub id: String,
    /// The workflow's registered name (`plan` for a plan).
    pub workflow: String,
    /// Its input (for `plan`, the plan; an `agent` there is the task's agent).
    #[serde(default)]
    pub input: serde_json::Value,
}

fn build_playbooks(
    file: &str,
    specs: Vec<Playbook>,
) -> Result<std::collections::BTreeMap<String, Playbook>, ConfigError> {
    if specs.len() > limits::MAX_PLAYBOOKS {
        return Err(ConfigError::invalid(
            file,
            "playbooks".into(),
            "playbooks",
            format!(
                "{} playbooks exceed the limit of {}",
                specs.len(),
                limits::MAX_PLAYBOOKS
            ),
        ));
    }
    let mut out = std::collections::BTreeMap::new();
    for (i, p) in specs.into_iter().enumerate() {
        let entry = format!("playbooks[{i}]");
        crate::owners::check_id(file, &entry, "id", &p.id)?;
        crate::owners::check_id(file, &entry, "workflow", &p.workflow)?;
        let bytes = serde_json::to_vec(&p.input).map(|v| v.len()).unwrap_or(0);
        if bytes > limits::MAX_PLAYBOOK_INPUT_BYTES {
            return Err(ConfigError::invalid(
                file,
                entry,
                "input",
                format!(
                    "{bytes} bytes exceed the limit of {}",
                    limits::MAX_PLAYBOOK_INPUT_BYTES
                ),
            ));
        }
        if out.contains_key(&p.id) {
            return Err(ConfigError::invalid(
                file,
                entry,
                "id",
                format!("the playbook id {:?} is used twice", p.id),
            ));
        }
        out.insert(p.id.clone(), p);
    }
    Ok(out)
}

/// Everything routing is configured with.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    pub map: OwnershipMap,
    pub router: RouterConfig,
    pub sinks: SinkSet,
    /// Playbooks by id.
    pub playbooks: std::collections::BTreeMap<String, Playbook>,
}

impl RoutingConfig {
    /// Parses and validates the text of a file; `file` names it in errors.
    pub fn from_yaml(file: &str, text: &str) -> Result<RoutingConfig, ConfigError> {
        if text.len() > limits::MAX_CONFIG_BYTES {
            return Err(ConfigError::Syntax {
                file: file.to_string(),
                message: format!(
                    "{} bytes exceed the limit of {}",
                    text.len(),
                    limits::MAX_CONFIG_BYTES
                ),
            });
        }
        let raw: RawFile = yaml_serde::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        if raw.version != 1 {
            return Err(ConfigError::invalid(
                file,
                "(top level)".into(),
                "version",
                format!(
                    "version {} is not known; this build reads version 1",
                    raw.version
                ),
            ));
        }
        let sinks = SinkSet::build(file, raw.sinks)?;
        let sink_ids = sinks.ids();
        let map = OwnershipMap::build(
            file,
            raw.people,
            raw.channels,
            raw.rotations,
            raw.chains,
            raw.ownership,
            &sink_ids,
        )?;
        let playbooks = build_playbooks(file, raw.playbooks)?;
        let ids: Vec<String> = playbooks.keys().cloned().collect();
        let router = RouterConfig::build(file, raw.routes.unwrap_or_default(), &map, &ids)?;
        Ok(RoutingConfig {
            map,
            router,
            sinks,
            playbooks,
        })
    }

    /// Reads `owners.yaml` from a policy directory.
    pub fn load_dir(dir: &Path) -> Result<RoutingConfig, ConfigError> {
        let path = dir.join(FILE_NAME);
        let file = path.display().to_string();
        let meta = std::fs::metadata(&path).map_err(|e| ConfigError::Read {
            file: file.clone(),
            message: e.to_string(),
        })?;
        if meta.len() > limits::MAX_CONFIG_BYTES as u64 {
            return Err(ConfigError::Syntax {
                file,
                message: format!(
                    "{} bytes exceed the limit of {}",
                    meta.len(),
                    limits::MAX_CONFIG_BYTES
                ),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Read {
            file: file.clone(),
            message: e.to_string(),
        })?;
        RoutingConfig::from_yaml(&file, &text)
    }
}

/// The configuration in force, replaced whole on a successful reload.
pub struct ConfigCell {
    dir: PathBuf,
    current: RwLock<Arc<RoutingConfig>>,
}

impl ConfigCell {
    /// Loads the directory's file; refuses to start without a valid one.
    pub fn open(dir: &Path) -> Result<ConfigCell, ConfigError> {
        let config = RoutingConfig::load_dir(dir)?;
        Ok(ConfigCell {
            dir: dir.to_path_buf(),
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// The shipped ownership map (never reloaded).
    pub fn shipped() -> ConfigCell {
        ConfigCell::fixed(
            RoutingConfig::from_yaml("activities/catalog/owners.yaml", SHIPPED_OWNERS_YAML)
                .expect("the shipped owners.yaml is valid"),
        )
    }

    /// A configuration that is never reloaded (the shipped default, tests).
    pub fn fixed(config: RoutingConfig) -> ConfigCell {
        ConfigCell {
            dir: PathBuf::new(),
            current: RwLock::new(Arc::new(config)),
        }
    }

    /// The configuration in force.
    pub fn get(&self) -> Arc<RoutingConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the file again. On an error the configuration in force stays.
    pub fn reload(&self) -> Result<(), ConfigError> {
        if self.dir.as_os_str().is_empty() {
            return Ok(());
        }
        let config = RoutingConfig::load_dir(&self.dir)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(())
    }
}
