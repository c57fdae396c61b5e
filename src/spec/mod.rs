//! The definitions users write: `layers/NAME/layer.toml`, `images/NAME.toml` and
//! `qemu-tests/NAME.toml`. Parse first (serde, unknown keys rejected), then validate meaning and
//! report every problem at once, each naming its file and key.

mod image;
mod layer;
mod scenario;
mod site;

use std::fmt;
use std::path::{Path, PathBuf};

pub mod compose;
pub mod container;

pub use image::{DataPolicy, Image, InstallRules, NoTpm, OutputFormat, PowerPolicy, Size};
pub use layer::{Keyring, Layer, list_tree};
pub use scenario::{Boot, DiskCheck, Firmware, Http, Install, PowerCuts, Scenario, Ssh, TpmState};
pub use site::{Cidr, RecoveryKey, Site, Unlock};

/// The only definition format version this outpost reads.
pub const FORMAT_VERSION: u32 = 1;

/// One problem in one definition file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: key `{}`: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// All problems found in a set of definitions; shown as one paragraph per problem.
#[derive(Debug, thiserror::Error)]
pub struct SpecError(pub Vec<Problem>);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} problem{} in the definitions:", if n == 1 { "" } else { "s" })?;
        for p in &self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// Collects problems while validating, so that all of them are reported together.
#[derive(Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn push(&mut self, file: &Path, key: &str, message: impl Into<String>) {
        self.0.push(Problem { file: file.to_path_buf(), key: key.to_string(), message: message.into() });
    }

    pub fn into_result(self) -> Result<(), SpecError> {
        if self.0.is_empty() { Ok(()) } else { Err(SpecError(self.0)) }
    }
}

/// Reads and parses one TOML definition; a syntax or type error becomes a [`Problem`] with the
/// line and column toml reports.
pub fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<(T, String), SpecError> {
    let text = fs_err::read_to_string(path).map_err(|e| {
        SpecError(vec![Problem { file: path.into(), key: String::new(), message: format!("cannot read the file: {e}") }])
    })?;
    let value = parse_toml_str(path, &text)?;
    Ok((value, text))
}

/// Parses TOML text read from `path`.
pub fn parse_toml_str<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, SpecError> {
    toml::from_str(text).map_err(|e| {
        let (line, col) = e
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                (before.matches('\n').count() + 1, before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1)
            })
            .unwrap_or((0, 0));
        let msg = e.message().trim().to_string();
        let message = if line > 0 { format!("line {line}, column {col}: {msg}") } else { msg };
        SpecError(vec![Problem { file: path.into(), key: String::new(), message }])
    })
}

fn check_version(p: &mut Problems, file: &Path, version: u32) {
    if version != FORMAT_VERSION {
        p.push(file, "version", format!("version {version} is not supported; this outpost reads version {FORMAT_VERSION}"));
    }
}

/// A template variable name: what tera can use as an identifier.
fn valid_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A single DNS label: letters, digits and `-`, at most 63, not starting or ending with `-`.
fn valid_hostname(h: &str) -> bool {
    !h.is_empty() && h.len() <= 63 && !h.starts_with('-') && !h.ends_with('-') && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The project root a definition belongs to: the parent of its `images/` or `qemu-tests/`.
pub fn project_root(definition: &Path) -> PathBuf {
    let abs = std::path::absolute(definition).unwrap_or_else(|_| definition.to_path_buf());
    abs.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod container_tests;
