//! The write directions on disk: `writes.json` beside the journal, replaced whole (written to a
//! temporary file, synced, renamed over the old one, the directory synced) before a switch
//! takes effect, so that a crash leaves either the old directions or the new ones.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::Direction;
use crate::rules::TableName;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot read the write directions {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the write directions {path} are not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write the write directions {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct File {
    /// Source table (`schema.name`) and direction; tables absent are `primary`.
    tables: BTreeMap<String, Direction>,
    /// The target is on another server than the primary's database (src/writes/remote.rs).
    #[serde(default)]
    remote: bool,
}

/// What `writes.json` keeps.
pub type Kept = (BTreeMap<TableName, Direction>, bool);

/// The directions kept at `path`, and whether the target is remote; none when the file does not
/// exist.
pub fn load(path: &Path) -> Result<Kept, PersistError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((BTreeMap::new(), false)),
        Err(source) => {
            return Err(PersistError::Read {
                path: path.into(),
                source,
            })
        }
    };
    let invalid = |message: String| PersistError::Invalid {
        path: path.into(),
        message,
    };
    let file: File = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let tables = file
        .tables
        .into_iter()
        .map(|(t, d)| {
            let name =
                TableName::parse(&t).ok_or_else(|| invalid(format!("not a table name: {t:?}")))?;
            Ok((name, d))
        })
        .collect::<Result<_, PersistError>>()?;
    Ok((tables, file.remote))
}

/// Replaces the directions at `path` with `tables`, durably.
pub fn save(
    path: &Path,
    tables: &BTreeMap<TableName, Direction>,
    remote: bool,
) -> Result<(), PersistError> {
    let file = File {
        tables: tables.iter().map(|(t, d)| (t.to_string(), *d)).collect(),
        remote,
    };
    let text = serde_json::to_string_pretty(&file).expect("directions serialize");
    write_durably(path, text.as_bytes()).map_err(|source| PersistError::Write {
        path: path.into(),
        source,
    })
}

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writes.json");
        std::fs::write(&path, "{\"tables\": {\"public.bars\": \"sideways\"}}").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains("writes.json") && err.contains("sideways"),
            "{err}"
        );
    }
}
