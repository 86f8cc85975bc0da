//! Whether a client may read what the secondary would serve it.
//!
//! The secondary serves reads with pgbridge's own credentials, so the primary's access rules are
//! checked first: the session's user must hold SELECT on every table the read touches, and none
//! of them may have row-level security on (its policies live on the primary). The answer comes
//! from the primary over pgbridge's own connection (`[primary] url`), and is kept for a while
//! per user and table, so a busy session asks once. When the primary cannot be asked, the
//! answer is no: the read is served by the primary, which checks for itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::warn;

use crate::config::PgUrl;
use crate::rules::TableName;

/// How long an answer is kept.
const KEPT: Duration = Duration::from_secs(10);

const CHECK: &str = "SELECT has_table_privilege($1::text::name, c.oid, 'SELECT') \
                            AND NOT c.relrowsecurity \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $2 AND c.relname = $3";

pub struct Access {
    primary: PgUrl,
    client: tokio::sync::Mutex<Option<Client>>,
    answers: Mutex<HashMap<(String, TableName), (bool, Instant)>>,
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
        }
    }

    /// Whether `user` may read every table of `tables` on the primary, without row security.
    pub async fn may_read(&self, user: &str, tables: &[&TableName]) -> bool {
        for table in tables {
            let key = (user.to_string(), (*table).clone());
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
                    let ok = self.ask(user, table).await;
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

    async fn ask(&self, user: &str, table: &TableName) -> bool {
        let mut client = self.client.lock().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match self.primary.connect().await {
                Ok((c, connection)) => {
                    tokio::spawn(connection);
                    *client = Some(c);
                }
                Err(e) => {
                    let error = crate::net::error_text(&e);
                    warn!(%error, "cannot ask the primary for privileges: reads stay on the primary");
                    return false;
                }
            }
        }
        let c = client.as_ref().expect("connected above");
        match c
            .query_opt(CHECK, &[&user, &table.schema, &table.name])
            .await
        {
            Ok(Some(row)) => row.get::<_, Option<bool>>(0).unwrap_or(false),
            Ok(None) => false,
            Err(e) => {
                warn!(error = %e, %table, "cannot ask the primary for privileges: reads stay on the primary");
                false
            }
        }
    }
}
