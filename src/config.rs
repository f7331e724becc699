//! Configuration layering shared by the trainer and the server: defaults ← TOML file ←
//! environment ← command-line flags, deserialised into a typed settings struct.
//!
//! Each binary resolves and validates its settings once, at start-up, so a bad value
//! fails fast with an error that names its key (`optim.batch`, `batching.max_batch`...).

use serde::Serialize;
use std::path::{Path, PathBuf};

/// Errors while reading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Checks a configuration's rules `(key, the value is fine, what it must be)` in order: the
/// first that fails is the error, naming its key. Both the trainer's and the server's
/// `validate` are such a table.
pub fn check_rules<'a>(
    rules: impl IntoIterator<Item = (&'static str, bool, &'a str)>,
) -> Result<(), ConfigError> {
    match rules.into_iter().find(|(_, ok, _)| !ok) {
        Some((key, _, message)) => Err(ConfigError::Invalid {
            key,
            message: message.to_string(),
        }),
        None => Ok(()),
    }
}

/// A value set from the command line, by its dotted key (`optim.epochs`).
pub type Override = (&'static str, config::Value);

/// `defaults` ← `file` (or `default_file` when present) ← `env` ← `overrides`
/// (command-line flags), deserialised; a named file that does not exist is an error.
pub fn layered<T: Serialize + serde::de::DeserializeOwned>(
    defaults: &T,
    file: Option<&Path>,
    default_file: &str,
    env: config::Environment,
    overrides: Vec<Override>,
) -> Result<T, ConfigError> {
    let mut b = config::Config::builder().add_source(config::Config::try_from(defaults)?);
    match file {
        Some(f) if !f.exists() => return Err(ConfigError::MissingFile(f.to_path_buf())),
        Some(f) => b = b.add_source(config::File::from(f)),
        None => b = b.add_source(config::File::with_name(default_file).required(false)),
    }
    b = b.add_source(env);
    for (key, value) in overrides {
        b = b.set_override(key, value)?;
    }
    Ok(b.build()?.try_deserialize()?)
}
