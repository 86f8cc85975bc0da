//! Transaction isolation levels named by statements: a transaction that keeps one snapshot
//! (REPEATABLE READ, SERIALIZABLE) must read on one side, so the session follows which level
//! each of its transactions has (`BEGIN ISOLATION LEVEL ...`, `SET TRANSACTION ...`) and which
//! one its transactions get by default (`SET default_transaction_isolation`, `SET SESSION
//! CHARACTERISTICS AS TRANSACTION ...`, the startup packet's settings).

use super::keywords::words;

/// A transaction isolation level, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isolation {
    ReadUncommitted,
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

impl Isolation {
    /// Each statement takes a snapshot of its own (PostgreSQL runs READ UNCOMMITTED as READ
    /// COMMITTED): a read may be answered by another server than the transaction's.
    pub fn snapshot_per_statement(self) -> bool {
        self <= Isolation::ReadCommitted
    }

    /// A level as a setting's value spells it (`'repeatable read'`, `serializable`).
    pub fn from_value(value: &str) -> Option<Isolation> {
        let words: Vec<String> = value
            .split(|c: char| c.is_whitespace() || c == '_' || c == '-')
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        level(&w)
    }
}

/// The level that `words` (from the first word after `LEVEL`, or a setting's value) names.
fn level(w: &[&str]) -> Option<Isolation> {
    match w {
        ["read", "uncommitted", ..] => Some(Isolation::ReadUncommitted),
        ["read", "committed", ..] => Some(Isolation::ReadCommitted),
        ["repeatable", "read", ..] => Some(Isolation::RepeatableRead),
        ["serializable", ..] => Some(Isolation::Serializable),
        _ => None,
    }
}

/// The level `ISOLATION LEVEL x` names in a statement's words (`BEGIN`, `START TRANSACTION`,
/// `SET TRANSACTION`, `SET SESSION CHARACTERISTICS AS TRANSACTION`).
pub fn named_level(sql: &str) -> Option<Isolation> {
    let w = words(sql, 16);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let at = w.windows(2).position(|p| p == ["isolation", "level"])?;
    level(&w[at + 2..])
}

/// The value a `SET name {=|TO} value` gives its setting (`None` for `DEFAULT`, or when the
/// statement is not such a `SET`).
pub fn set_value(sql: &str) -> Option<Isolation> {
    let w = words(sql, 8);
    let at = w.iter().position(|x| x == "=" || x == "to")?;
    let value = w[at + 1..].join(" ");
    Isolation::from_value(&value)
}

/// The default level a startup packet's settings give the session: its
/// `default_transaction_isolation`, or one in its `options` (`-c name=value`,
/// `--name=value`; a value with spaces escaped by backslashes).
pub fn startup_default<'a>(
    params: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Option<Isolation> {
    let mut found = None;
    for (k, v) in params {
        match k.as_str() {
            "default_transaction_isolation" => found = Isolation::from_value(v).or(found),
            "options" => {
                let v = v.replace("\\ ", "\u{1}");
                let mut tokens = v.split_whitespace();
                while let Some(t) = tokens.next() {
                    let arg = match t {
                        "-c" => tokens.next().unwrap_or_default(),
                        t => t
                            .strip_prefix("--")
                            .or(t.strip_prefix("-c"))
                            .unwrap_or_default(),
                    };
                    if let Some(value) = arg.strip_prefix("default_transaction_isolation=") {
                        found = Isolation::from_value(&value.replace('\u{1}', " ")).or(found);
                    }
                }
            }
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use Isolation::*;

    #[test]
    fn levels_named_by_transaction_statements() {
        assert_eq!(
            named_level("BEGIN ISOLATION LEVEL REPEATABLE READ"),
            Some(RepeatableRead)
        );
        assert_eq!(
            named_level("start transaction read only, isolation level serializable deferrable"),
            Some(Serializable)
        );
        assert_eq!(
            named_level("BEGIN /* level */ TRANSACTION ISOLATION\n LEVEL read committed"),
            Some(ReadCommitted)
        );
        assert_eq!(
            named_level("SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED"),
            Some(ReadUncommitted)
        );
        assert_eq!(
            named_level("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            Some(Serializable)
        );
        assert_eq!(named_level("BEGIN"), None);
        assert_eq!(named_level("BEGIN READ ONLY"), None);
        assert!(ReadUncommitted.snapshot_per_statement());
        assert!(ReadCommitted.snapshot_per_statement());
        assert!(!RepeatableRead.snapshot_per_statement());
        assert!(!Serializable.snapshot_per_statement());
    }

    #[test]
    fn levels_given_as_values() {
        assert_eq!(
            set_value("SET default_transaction_isolation = 'repeatable read'"),
            Some(RepeatableRead)
        );
        assert_eq!(
            set_value("set session default_transaction_isolation to SERIALIZABLE"),
            Some(Serializable)
        );
        assert_eq!(
            set_value("SET transaction_isolation TO 'read committed'"),
            Some(ReadCommitted)
        );
        assert_eq!(
            set_value("SET default_transaction_isolation TO DEFAULT"),
            None
        );
        assert_eq!(
            Isolation::from_value("Repeatable Read"),
            Some(RepeatableRead)
        );
        assert_eq!(Isolation::from_value("snapshot"), None);
    }

    #[test]
    fn startup_settings_name_the_default() {
        let p = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let of = |v: Vec<(String, String)>| startup_default(v.iter().map(|(k, v)| (k, v)));
        assert_eq!(of(p(&[("application_name", "x")])), None);
        assert_eq!(
            of(p(&[("default_transaction_isolation", "serializable")])),
            Some(Serializable)
        );
        assert_eq!(
            of(p(&[(
                "options",
                "-c statement_timeout=5s -c default_transaction_isolation=repeatable\\ read"
            )])),
            Some(RepeatableRead)
        );
        assert_eq!(
            of(p(&[(
                "options",
                "--default_transaction_isolation=serializable"
            )])),
            Some(Serializable)
        );
        assert_eq!(
            of(p(&[(
                "options",
                "-c default_transaction_isolation=read\\ committed"
            )])),
            Some(ReadCommitted)
        );
    }
}
