//! Loading and validating the TOML config.
//!
//! `load` reads a file, parses it strictly (unknown keys are errors) and validates it
//! (names resolve, ranges hold, addresses parse). Every failure is one `ConfigError`
//! that names the file, the line and column where the text is known, and the key, so
//! `weir --check` and a refused reload print something a person can act on.

mod shape;
mod shaping;
pub mod template;
mod types;
mod units;
mod upstream;
mod validate;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use shaping::*;
pub use types::*;
pub use units::*;
pub use upstream::*;

/// A config that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column of the offending text, where known.
    pub position: Option<(usize, usize)>,
    /// Dotted key path, e.g. `upstreams.api.servers[1].weight`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": `{}`: {}", self.key, self.message)
        }
    }
}

/// Reads, parses and validates the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        position: None,
        key: String::new(),
        message: format!("cannot read config file: {e}"),
    })?;
    parse(&text, path)
}

/// Parses and validates config `text`; `path` is used only in error messages.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let source = Source { text, path };
    let deserializer = toml::Deserializer::new(text);
    let mut config: Config =
        serde_path_to_error::deserialize(deserializer).map_err(|e| shape::serde_error(&source, e))?;
    validate::validate(&config, &source)?;
    config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    if let Some(admin) = &mut config.admin {
        admin.token = validate::admin_token(admin, &source, &config.base_dir)?;
    }
    config.origin = Origin { path: path.to_path_buf(), text: text.into() };
    Ok(config)
}

/// The file and text a `Config` was read from, kept so that what goes wrong after
/// parsing (a server name that does not resolve, a certificate file that cannot be
/// read, a port already taken) is still reported at its line, like a parse error.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    path: PathBuf,
    text: std::sync::Arc<str>,
}

impl Origin {
    /// An error at `span` (a `Spanned` value's) of this config, naming `key`.
    pub fn error(&self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) -> ConfigError {
        Source { text: &self.text, path: &self.path }.error(span, key, message)
    }
}

/// The text being loaded, to turn byte spans into lines and columns.
pub(crate) struct Source<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Source<'_> {
    pub(crate) fn error(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.path.to_path_buf(),
            // Defaults carry an empty 0..0 span: no position rather than a wrong one.
            // A value that has no span of its own (a duration) is found by its key.
            position: span
                .filter(|s| s.end > 0)
                .or_else(|| shape::span_of_key(self.text, key))
                .map(|s| self.line_column(s.start)),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// `file:line:column` of `span`, to point at a second place in one message.
    pub(crate) fn place(&self, span: Range<usize>) -> String {
        let (line, column) = self.line_column(span.start);
        format!("{}:{line}:{column}", self.path.display())
    }

    fn line_column(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        parse(text, Path::new("weir.toml")).unwrap_err()
    }

    const GOOD: &str = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"

[[routes]]
upstream = "api"

[upstreams.api]
servers = [{ address = "127.0.0.1:9000" }]
"#;

    #[test]
    fn a_minimal_config_loads() {
        let config = parse(GOOD, Path::new("weir.toml")).unwrap();
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.upstreams.len(), 1);
    }

    #[test]
    fn unknown_key_names_file_line_column_and_key() {
        let e = err(&GOOD.replace("name = \"web\"", "name = \"web\"\nlisten_on = 1"));
        assert_eq!(e.position, Some((4, 1)), "{e}");
        assert_eq!(e.key, "listeners[0].listen_on");
        assert!(e.to_string().starts_with("weir.toml:4:1: `listeners[0].listen_on`"), "{e}");
        assert!(e.message.contains("unknown field `listen_on`"), "{e}");
    }

    #[test]
    fn server_histograms_is_off_by_default_and_must_be_a_boolean() {
        let config = parse(GOOD, Path::new("weir.toml")).unwrap();
        assert!(!config.upstreams["api"].server_histograms);
        let on = GOOD.replace("[upstreams.api]", "[upstreams.api]\nserver_histograms = true");
        assert!(parse(&on, Path::new("weir.toml")).unwrap().upstreams["api"].server_histograms);
        let e = err(&GOOD.replace("[upstreams.api]", "[upstreams.api]\nserver_histograms = \"yes\""));
        assert_eq!(e.key, "upstreams.api.server_histograms", "{e}");
        assert_eq!(e.position, Some((10, 21)), "{e}");
    }

    #[test]
    fn bad_duration_names_its_key() {
        let e = err(&GOOD.replace("[upstreams.api]", "[upstreams.api]\nconnect_timeout = \"2 weeks\""));
        assert_eq!(e.key, "upstreams.api.connect_timeout", "{e}");
        assert_eq!(e.position, Some((10, 19)), "{e}");
    }

    /// `config/example.toml` documents every key (the reference is
    /// docs/configuration.md); parsing and validating it here keeps it from going stale when a key is renamed or its rules change.
    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../config/example.toml");
        let config = parse(text, Path::new("config/example.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listeners.len(), 2);
        assert!(config.upstreams.contains_key("api_read"));
    }

    /// Every field of every config struct in `types.rs`, `upstream.rs` and `shaping.rs` is shown in
    /// `config/example.toml`, set or as a commented-out `# key = value`, so a new key
    /// cannot land undocumented. Read from the source text: a field is a `pub name:`
    /// line inside a `pub struct ... {` block, minus `#[serde(skip)]` ones.
    #[test]
    fn the_example_config_shows_every_key() {
        let example = include_str!("../../config/example.toml");
        let sources = [include_str!("types.rs"), include_str!("upstream.rs"), include_str!("shaping.rs")];
        let missing: Vec<String> = sources
            .into_iter()
            .flat_map(struct_fields)
            .filter(|(_, field)| !shows_key(example, field))
            .map(|(owner, field)| format!("{owner}.{field}"))
            .collect();
        assert!(missing.is_empty(), "config/example.toml does not show: {missing:?}");
    }

    /// `(struct, field)` for each serde field of each braced `pub struct` in `source`.
    fn struct_fields(source: &str) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        let mut owner: Option<&str> = None;
        let mut skip_next = false;
        for line in source.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("pub struct ") {
                owner = rest.strip_suffix(" {").map(str::trim);
                continue;
            }
            if line == "}" {
                owner = None;
            }
            let Some(owner) = owner else { continue };
            if line.starts_with("#[serde(") && line.contains("skip") {
                skip_next = true;
            }
            let field = line.strip_prefix("pub ").and_then(|rest| rest.split_once(':')).map(|(n, _)| n);
            if let Some(name) = field {
                if !std::mem::take(&mut skip_next) {
                    fields.push((owner.to_string(), name.trim().to_string()));
                }
            }
        }
        fields
    }

    /// Whether `toml` sets `key` (or shows it commented out): `key = ` at the start of
    /// a line or inside an inline table, or `key` as a part of a `[table]` header.
    fn shows_key(toml: &str, key: &str) -> bool {
        toml.lines().any(|line| {
            let line = line.trim_start().trim_start_matches('#').trim_start();
            let assigns =
                |text: &str| text.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='));
            if assigns(line)
                || line.match_indices(['{', ',']).any(|(i, _)| assigns(line[i + 1..].trim_start()))
            {
                return true;
            }
            line.starts_with('[')
                && line
                    .split(']')
                    .next()
                    .is_some_and(|h| h.trim_matches('[').split('.').any(|part| part == key))
        })
    }

    #[test]
    fn key_finder_sees_set_commented_inline_and_table_keys() {
        let toml = "a = 1\n# b = 2\nx = [{ c = 1, d = 2 }]\n[e.f]\n[[g]]\n# [h.tls]\nbb=3\n";
        for key in ["a", "b", "c", "d", "e", "f", "g", "tls", "bb"] {
            assert!(shows_key(toml, key), "{key}");
        }
        for key in ["x1", "e.f", "h.tls", "1"] {
            assert!(!shows_key(toml, key), "{key}");
        }
        let fields = struct_fields(
            "pub struct A {\n    #[serde(skip)]\n    pub hidden: u8,\n    /// doc: x\n    pub shown: u8,\n}\npub struct T(pub u8);\n",
        );
        assert_eq!(fields, vec![("A".to_string(), "shown".to_string())]);
    }

    #[test]
    fn syntax_error_has_a_position() {
        let e = err("[[listeners]\nname = ");
        assert!(e.position.is_some(), "{e}");
    }
}
