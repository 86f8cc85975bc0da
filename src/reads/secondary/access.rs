//! Whether a client may read what the secondary would serve it.
//!
//! The secondary serves reads with pgbridge's own credentials, so the primary's access rules are
//! checked first: the session's user must hold SELECT on every table the read touches, and none
//! of them may have row-level security on (its policies live on the primary). The answer comes
//! from the primary over pgbridge's own connection (`[primary] url`), and is kept for a while
//! per user and table, so a busy session asks once. When the primary cannot be asked, the
//! answer is no: the read is served by the primary, which checks for itself.
//!
//! The same connection tells the isolation level a user's transactions in a database get by
//! default (`ALTER ROLE ... SET`, `ALTER DATABASE ... SET`, the server's configuration): a
//! transaction block that keeps one snapshot reads on the primary only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::warn;

use crate::config::PgUrl;
use crate::rules::TableName;
use crate::sql::isolation::Isolation;

/// How long an answer is kept.
const KEPT: Duration = Duration::from_secs(10);

const CHECK: &str = "SELECT has_table_privilege($1::text::name, c.oid, $4) \
                            AND NOT c.relrowsecurity \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $2 AND c.relname = $3";

/// The default level of `$1`'s transactions in database `$2`: the most specific of
/// `pg_db_role_setting` (role and database, role, database, every role), else the server's own
/// setting when no role or database of pgbridge's own session changed it (NULL: not known).
const DEFAULT_ISOLATION: &str = "SELECT coalesce(\
       (SELECT substr(c, 31) FROM pg_db_role_setting s, unnest(s.setconfig) c \
        WHERE c LIKE 'default\\_transaction\\_isolation=%' \
          AND s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = $1)) \
          AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = $2)) \
        ORDER BY s.setrole = 0, s.setdatabase = 0 LIMIT 1), \
       (SELECT setting FROM pg_settings WHERE name = 'default_transaction_isolation' \
          AND source IN ('default', 'configuration file', 'command line', 'environment variable')))";

/// A user, a table and a privilege asked about.
type Asked = (String, TableName, &'static str);

/// A user's (and database's) default level, and when the primary said it.
type DefaultLevel = (Option<Isolation>, Instant);

pub struct Access {
    primary: PgUrl,
    client: tokio::sync::Mutex<Option<Client>>,
    answers: Mutex<HashMap<Asked, (bool, Instant)>>,
    levels: Mutex<HashMap<(String, String), DefaultLevel>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").finish_non_exhaustive()
    }
}

impl Access {
    pub fn new(primary: PgUrl) -> Access {
        Access {
            primary,
            client: tokio::sync::Mutex::new(None),
            answers: Mutex::new(HashMap::new()),
            levels: Mutex::new(HashMap::new()),
        }
    }

    /// The level `user`'s transactions in `database` get by default, when the primary said it
    /// lately (`Some(None)`: it could not tell).
    pub fn known_default_level(&self, user: &str, database: &str) -> Option<Option<Isolation>> {
        let levels = self.levels.lock().unwrap_or_else(|e| e.into_inner());
        let key = (user.to_string(), database.to_string());
        levels
            .get(&key)
            .filter(|(_, at)| at.elapsed() < KEPT)
            .map(|(level, _)| *level)
    }

    /// The level `user`'s transactions in `database` get by default (`None`: not known).
    pub async fn default_level(&self, user: &str, database: &str) -> Option<Isolation> {
        if let Some(known) = self.known_default_level(user, database) {
            return known;
        }
        let level = self
            .query_opt(DEFAULT_ISOLATION, &[&user, &database], "isolation levels")
            .await
            .and_then(|row| row.get::<_, Option<String>>(0))
            .and_then(|v| Isolation::from_value(&v));
        let key = (user.to_string(), database.to_string());
        self.levels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (level, Instant::now()));
        level
    }

    /// Whether `user` may read every table of `tables` on the primary, without row security.
    pub async fn may_read(&self, user: &str, tables: &[&TableName]) -> bool {
        self.may(user, tables, "SELECT").await
    }

    /// Whether `user` holds `privilege` (`SELECT`, `INSERT`, `UPDATE`, `DELETE`) on every table
    /// of `tables` on the primary, none of them with row security.
    pub async fn may(&self, user: &str, tables: &[&TableName], privilege: &'static str) -> bool {
        for table in tables {
            let key = (user.to_string(), (*table).clone(), privilege);
            let known = self
                .answers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .filter(|(_, at)| at.elapsed() < KEPT)
                .map(|(ok, _)| *ok);
            let ok = match known {
                Some(ok) => ok,
                None => {
                    let ok = self.ask(user, table, privilege).await;
                    self.answers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key, (ok, Instant::now()));
                    ok
                }
            };
            if !ok {
                return false;
            }
        }
        true
    }

    /// What the primary says of transaction `xid` (`pg_xact_status`: committed, aborted, in
    /// progress); `None` when it cannot be asked or no longer knows.
    pub async fn xact_status(&self, xid: i64) -> Option<String> {
        let xid = xid.to_string();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&xid];
        self.query_opt(
            "SELECT pg_xact_status($1::text::xid8)",
            &params,
            "a transaction's outcome",
        )
        .await
        .and_then(|row| row.get::<_, Option<String>>(0))
    }

    async fn ask(&self, user: &str, table: &TableName, privilege: &str) -> bool {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&user, &table.schema, &table.name, &privilege];
        self.query_opt(CHECK, &params, "privileges")
            .await
            .and_then(|row| row.get::<_, Option<bool>>(0))
            .unwrap_or(false)
    }

    /// One row of `sql` on pgbridge's own connection to the primary (made when there is
    /// none); `None` when there is no row or the primary cannot be asked (`what` says what
    /// was asked, for the log).
    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        what: &str,
    ) -> Option<tokio_postgres::Row> {
        let mut client = self.client.lock().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match self.primary.connect().await {
                Ok((c, connection)) => {
                    tokio::spawn(connection);
                    *client = Some(c);
                }
                Err(e) => {
                    let error = crate::net::error_text(&e);
                    warn!(%error, what, "cannot ask the primary: reads stay on the primary");
                    return None;
                }
            }
        }
        let c = client.as_ref().expect("connected above");
        match c.query_opt(sql, params).await {
            Ok(row) => row,
            Err(e) => {
                let error = crate::net::error_text(&e);
                warn!(%error, what, "cannot ask the primary: reads stay on the primary");
                None
            }
        }
    }
}
