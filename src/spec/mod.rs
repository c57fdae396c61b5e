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
pub use scenario::{Boot, DiskCheck, Firmware, Http, Install, PowerCuts, Scenario, Ssh, Thief, TpmState};
pub use site::{BackupServer, Cidr, RecoveryKey, Site, Unlock};

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
        self.0.push(Problem { file: file.to_path_buf(), key: excerpt(key, 80), message: excerpt(&message.into(), 400) });
    }

    pub fn into_result(self) -> Result<(), SpecError> {
        if self.0.is_empty() { Ok(()) } else { Err(SpecError(self.0)) }
    }
}

/// Reads and parses one TOML definition; a syntax or type error becomes a [`Problem`] with the
/// line and column toml reports.
pub fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<(T, String), SpecError> {
    let one = |message: String| SpecError(vec![Problem { file: path.into(), key: String::new(), message }]);
    let bytes = fs_err::read(path).map_err(|e| one(format!("cannot read the file: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        one(format!("line {line}: the file is not UTF-8 text (byte {at}); save it as UTF-8"))
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
        let key = e.span().map(|s| toml_key_at(text, s.start)).unwrap_or_default();
        SpecError(vec![Problem { file: path.into(), key: excerpt(&key, 80), message: excerpt(&message, 400) }])
    })
}

/// At most `max` characters of a text a user wrote, control characters shown escaped: what a
/// message may quote of a value (never a whole 1 MB value, never a raw newline or NUL).
pub fn excerpt(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push_str(&format!("… ({} characters in all)", s.chars().count()));
            break;
        }
        if c.is_control() && c != '\n' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A name that becomes part of a unit, volume, container or path name: lowercase letters,
/// digits and `-`, starting with a letter or digit, at most 40 characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether a value holds a control character (a newline or NUL where a single-line value
/// goes: a kernel command line, a reference, a name).
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A path a definition names, relative to `dir`, that must stay inside it: not absolute, no
/// `..`, and (once it exists) not a symlink leading out. Anything a layer reads must be in its
/// directory, because only that directory is part of its cache key.
pub fn inside(dir: &Path, rel: &Path) -> Result<PathBuf, String> {
    use std::path::Component;
    if rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!("`{}` leaves the layer's directory; name a file inside it", excerpt(&rel.display().to_string(), 80)));
    }
    let full = dir.join(rel);
    if let (Ok(real), Ok(base)) = (full.canonicalize(), dir.canonicalize())
        && !real.starts_with(&base)
    {
        return Err(format!("`{}` is a link to {}, outside the layer's directory; copy the file into the layer", rel.display(), real.display()));
    }
    Ok(full)
}

/// The dotted key of the TOML line holding byte `at`: the last `[table]` or `[[array]]`
/// header above it and the key left of `=` on the line, as far as they can be read.
fn toml_key_at(text: &str, at: usize) -> String {
    let at = at.min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_start_matches('[').split(']').next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    let trimmed = line.trim();
    if trimmed.starts_with('[') {
        return trimmed.trim_start_matches('[').split(']').next().unwrap_or("").trim().to_string();
    }
    let key = line.split_once('=').map(|(k, _)| k.trim().trim_matches('"').to_string()).unwrap_or_default();
    match (table.is_empty(), key.is_empty()) {
        (_, true) => table,
        (true, false) => key,
        (false, false) => format!("{table}.{key}"),
    }
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
pub(crate) fn valid_hostname(h: &str) -> bool {
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

#[cfg(test)]
#[path = "fuzz_tests.rs"]
mod fuzz_tests;
