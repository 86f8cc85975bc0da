//! Reading the config file: parse, check, resolve. Every error names the file, the line and
//! column, and the key (`pgbridge.toml:3:10: listen: invalid socket address syntax`), whether
//! the TOML deserializer found it (with the value's span) or a check between keys did (at the
//! line that assigns the key).

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::Config;

/// A configuration that could not be loaded. Its Display is `FILE:LINE:COL: key: message`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{col}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
}

impl Config {
    /// Reads, validates and resolves the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses config text; `path` only names the file in errors. Paths stay as written.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |span: Option<Range<usize>>, message: String| {
            let (line, col) = line_col(text, span.map(|s| s.start).unwrap_or(0));
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                col,
                message,
            }
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| invalid(e.span(), e.message().trim().to_string()))?;
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().trim().to_string();
            if key.is_empty() || key == "." {
                invalid(inner.span(), message)
            } else {
                invalid(inner.span(), format!("{key}: {message}"))
            }
        })?;
        config.rules_given = find_key(text, "rules").is_some();
        config.validate().map_err(|(key, message)| {
            let span = find_key(text, key);
            invalid(span, format!("{key}: {message}"))
        })?;
        Ok(config)
    }

    /// Checks between keys that no single value's type can express.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some((name, _)) = self.admin.tokens.iter().find(|(_, t)| t.is_empty()) {
            return Err(("tokens", format!("the token named {name:?} is empty")));
        }
        let no_token = self.admin.token.is_none() && self.admin.tokens.is_empty();
        if no_token && !self.admin_listen.ip().is_loopback() {
            return Err((
                "admin_listen",
                "[admin] token is required when admin_listen is not a loopback address".into(),
            ));
        }
        self.validate_bounds()?;
        let tolerances = [
            ("float_tolerance_abs", self.shadow.float_tolerance_abs),
            ("float_tolerance_rel", self.shadow.float_tolerance_rel),
            ("gate_max_lag_seconds", self.admin.gate_max_lag_seconds),
            (
                "gate_max_shadow_mismatch_rate",
                self.admin.gate_max_shadow_mismatch_rate,
            ),
        ];
        for (key, v) in tolerances {
            if !(v >= 0.0 && v.is_finite()) {
                return Err((key, "must be a number of at least 0".to_string()));
            }
        }
        Ok(())
    }

    /// The counts and sizes with a lower or upper bound.
    fn validate_bounds(&self) -> Result<(), (&'static str, String)> {
        if self.limits.max_client_connections == 0 {
            return Err(("max_client_connections", "must be at least 1".to_string()));
        }
        if self.limits.max_message_bytes < 1024 {
            return Err(("max_message_bytes", "must be at least 1024".to_string()));
        }
        if self.reads.secondary_timeout_ms == 0 {
            return Err(("secondary_timeout_ms", "must be at least 1".to_string()));
        }
        if self.mirror.apply_linger_ms.is_some_and(|ms| ms > 1000) {
            return Err((
                "apply_linger_ms",
                "must be at most 1000 (it adds to the mirror's lag)".to_string(),
            ));
        }
        if self.shadow.max_concurrency == 0 {
            return Err(("max_concurrency", "must be at least 1".to_string()));
        }
        Ok(())
    }

    /// Relative paths in the file mean paths beside the file, whatever the process's current
    /// directory is.
    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.rules);
        resolve(&mut self.mirror.journal_dir);
        resolve(&mut self.divergence.log);
        resolve(&mut self.admin.audit_log);
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
        }
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

/// The span of the first line that assigns `key`, for errors found after deserializing.
fn find_key(text: &str, key: &str) -> Option<Range<usize>> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                let start = offset + (line.len() - trimmed.len());
                return Some(start..start + key.len());
            }
        }
        offset += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MirrorMode;
    use crate::net::addr::ServerAddr;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("pgbridge.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_contract_example_parses() {
        let c = parse(
            r#"
listen = "127.0.0.1:6432"
admin_listen = "127.0.0.1:9187"
rules = "rules"
[primary]
url = "postgres://pgbridge@127.0.0.1:5432/trading"
[secondary]
url = "postgres://pgbridge:secret@127.0.0.1:5433/trading"
shared_tables = ["instruments"]
[mirror]
journal_dir = "pgbridge-journal"
mode = "async"
[divergence]
log = "divergences.jsonl"
redact = true
[tls]
cert = "server.crt"
key = "server.key"
[admin]
token = "abc"
"#,
        )
        .unwrap();
        assert_eq!(
            c.primary.url.server_addr(),
            &ServerAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 5432
            }
        );
        assert_eq!(c.secondary.unwrap().shared_tables, vec!["instruments"]);
        assert_eq!(c.mirror.mode, MirrorMode::Async);
        assert!(format!("{:?}", c.primary.url).contains("127.0.0.1"));
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err = parse("lisen = \"x\"\n[primary]\nurl = \"postgres://a@h/db\"\n").unwrap_err();
        assert!(err.starts_with("pgbridge.toml:1:1: "), "{err}");
        assert!(err.contains("unknown field `lisen`"), "{err}");
    }

    #[test]
    fn a_bad_value_is_named_with_its_key_and_line() {
        let err =
            parse("listen = \"nowhere\"\n[primary]\nurl = \"postgres://a@h/db\"\n").unwrap_err();
        assert!(err.starts_with("pgbridge.toml:1:10: listen: "), "{err}");
        let err = parse("[primary]\nurl = \"postgres://a@h:notaport/db\"\n").unwrap_err();
        assert!(err.starts_with("pgbridge.toml:2:7: primary.url: "), "{err}");
        let err =
            parse("[primary]\nurl = \"postgres://h/db\"\n[limits]\nmax_client_connections = -1\n")
                .unwrap_err();
        assert!(
            err.starts_with("pgbridge.toml:4:26: limits.max_client_connections"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_section_is_reported() {
        let err = parse("listen = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.contains("missing field `primary`"), "{err}");
    }

    #[test]
    fn a_check_between_keys_points_at_the_line_of_its_key() {
        let text = "[primary]\nurl = \"postgres://h/db\"\n[limits]\n  max_message_bytes = 10\n";
        let err = parse(text).unwrap_err();
        assert_eq!(
            err,
            "pgbridge.toml:4:3: max_message_bytes: must be at least 1024"
        );
        assert_eq!(find_key("a = 1\nab = 2\n", "ab"), Some(6..8));
        assert_eq!(find_key("abc = 1\n", "ab"), None);
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let err = Config::load(Path::new("/nonexistent/pgbridge.toml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/pgbridge.toml: cannot read the config file: "),
            "{err}"
        );
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgbridge.toml");
        std::fs::write(&path, "[primary]\nurl = \"postgres://h/db\"\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.rules, dir.path().join("rules"));
        assert_eq!(c.limits.max_client_connections, 1000);
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
