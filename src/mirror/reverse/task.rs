//! The reverse applier's loop: connect to the secondary (and count the queue, so the figures
//! stay true while the primary is away), connect to the primary and read the position, then
//! batch after batch, page after page; any failure drops what broke and starts over from the
//! primary's position after a backoff.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::{debug, info, warn, Instrument};

use super::convert::{convertible, page_sql};
use super::write::{self, Statements, POSITION_SCHEMA_SQL, READ_POSITION_SQL};
use super::{queue, Position, ReverseApplier, ReverseError};
use crate::config::PgUrl;
use crate::rules::Rule;

/// How often the queue is counted while pages are being applied (every idle poll counts it).
const BUSY_REFRESH: Duration = Duration::from_millis(250);

/// One database's connection, kept across failures of the other.
#[derive(Default)]
struct Side {
    client: Option<Client>,
    statements: Statements,
}

impl Side {
    async fn ensure(
        &mut self,
        url: &PgUrl,
        name: &'static str,
    ) -> Result<&mut Client, tokio_postgres::Error> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let (client, conn) = url.connect().await?;
            let conn = async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, side = name, "reverse mirror connection ended");
                }
            };
            tokio::spawn(conn.in_current_span());
            self.statements = Statements::default();
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

/// The loop's state.
struct Run {
    secondary: Side,
    primary: Side,
    pos: Position,
    /// The position the primary holds, as last read or written.
    recorded: Position,
    counted_at: Option<Instant>,
    last_unrouted: u64,
    logged: HashSet<String>,
}

impl ReverseApplier {
    pub(super) async fn run(self) {
        let mut run = Run {
            secondary: Side::default(),
            primary: Side::default(),
            pos: Position::default(),
            recorded: Position::default(),
            counted_at: None,
            last_unrouted: 0,
            logged: HashSet::new(),
        };
        let mut backoff = self.cfg.min_backoff;
        loop {
            let Err(e) = self.session(&mut run, &mut backoff).await;
            let side = match &e {
                ReverseError::Secondary(_) => {
                    Some((&self.stats.secondary_connected, &run.secondary))
                }
                ReverseError::Primary(_) => Some((&self.stats.primary_connected, &run.primary)),
                ReverseError::Moved => None,
            };
            if let Some((flag, side)) = side {
                if side.client.as_ref().is_none_or(|c| c.is_closed()) {
                    flag.store(false, Ordering::Relaxed);
                }
            }
            let message = e.to_string();
            warn!(error = %message, retry_in = ?backoff, "reverse mirror retrying");
            self.stats.set_error(Some(message));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.cfg.max_backoff);
        }
    }

    /// Connects what is missing, resumes at the primary's position, and applies until a failure.
    async fn session(
        &self,
        run: &mut Run,
        backoff: &mut std::time::Duration,
    ) -> Result<std::convert::Infallible, ReverseError> {
        use ReverseError::{Primary, Secondary};
        let sec = run
            .secondary
            .ensure(&self.cfg.secondary, "secondary")
            .await
            .map_err(Secondary)?;
        self.stats
            .secondary_connected
            .store(true, Ordering::Relaxed);
        let sources = self.sources();
        self.count(sec, &sources, &mut run.last_unrouted, &mut run.logged)
            .await
            .map_err(Secondary)?;
        let pri = run
            .primary
            .ensure(&self.cfg.primary, "primary")
            .await
            .map_err(Primary)?;
        self.stats.primary_connected.store(true, Ordering::Relaxed);
        run.pos = read_position(pri).await.map_err(Primary)?;
        run.recorded = run.pos.clone();
        let sec = run.secondary.client.as_ref().expect("connected above");
        let forgotten = queue::cleanup(sec, &sources, &run.pos)
            .await
            .map_err(Secondary)?;
        info!(position = ?run.pos, forgotten, "reverse mirror connected");
        *backoff = self.cfg.min_backoff;
        self.stats.set_error(None);
        loop {
            self.step(run).await?;
        }
    }

    /// The sources of the rules a page can carry now.
    fn sources(&self) -> Vec<String> {
        let rules = self.rules.load();
        convertible(rules.rules())
            .iter()
            .map(|r| r.source.to_string())
            .collect()
    }

    /// One page (or an idle poll when the batch is empty).
    async fn step(&self, run: &mut Run) -> Result<(), ReverseError> {
        use ReverseError::{Primary, Secondary};
        let ruled = convertible(self.rules.load().rules());
        let sources: Vec<String> = ruled.iter().map(|r| r.source.to_string()).collect();
        let sec = run.secondary.client.as_ref().expect("connected in session");
        let Some(sql) = page_sql(&ruled, self.cfg.page_size) else {
            return self.idle(run, &sources).await;
        };
        if run.pos.cur.is_none() {
            run.pos.cur = Some(queue::snapshot(sec).await.map_err(Secondary)?);
            run.pos.last_seq = 0;
        }
        let page = queue::read_page(sec, &mut run.secondary.statements, &sql, &run.pos)
            .await
            .map_err(Secondary)?;
        if let Some(last) = page.last() {
            let next = Position {
                last_seq: last.seq,
                ..run.pos.clone()
            };
            let rules: HashMap<String, &Rule> = ruled
                .iter()
                .map(|r| (r.source.to_string(), r.as_ref()))
                .collect();
            let pri = run.primary.client.as_mut().expect("connected in session");
            let statements = &mut run.primary.statements;
            let applied = write::apply_page(pri, statements, &rules, &page, &run.recorded, &next)
                .await
                .map_err(Primary)?;
            if !applied {
                return Err(ReverseError::Moved);
            }
            run.recorded = next.clone();
            run.pos = next;
            self.stats.applied_page(page.len(), run.pos.last_seq);
            debug!(
                changes = page.len(),
                last_seq = run.pos.last_seq,
                "reverse mirror applied a page"
            );
            let seqs: Vec<i64> = page.iter().map(|c| c.seq).collect();
            queue::delete(sec, &seqs).await.map_err(Secondary)?;
        }
        if (page.len() as i64) < self.cfg.page_size {
            run.pos.prev = run.pos.cur.take();
            run.pos.last_seq = 0;
        }
        if page.is_empty() {
            return self.idle(run, &sources).await;
        }
        if run.counted_at.is_none_or(|t| t.elapsed() >= BUSY_REFRESH) {
            self.count(sec, &sources, &mut run.last_unrouted, &mut run.logged)
                .await
                .map_err(Secondary)?;
            run.counted_at = Some(Instant::now());
        }
        Ok(())
    }

    /// Nothing to apply: count the queue and wait a poll.
    async fn idle(&self, run: &mut Run, sources: &[String]) -> Result<(), ReverseError> {
        let sec = run.secondary.client.as_ref().expect("connected in session");
        self.count(sec, sources, &mut run.last_unrouted, &mut run.logged)
            .await
            .map_err(ReverseError::Secondary)?;
        run.counted_at = Some(Instant::now());
        tokio::time::sleep(self.cfg.poll).await;
        Ok(())
    }

    /// Refreshes the queue's figures, logging once each source queued changes name that no
    /// rule has (they stay queued).
    async fn count(
        &self,
        sec: &Client,
        sources: &[String],
        last_unrouted: &mut u64,
        logged: &mut HashSet<String>,
    ) -> Result<(), tokio_postgres::Error> {
        let (queued, unrouted, lag) = queue::count(sec, sources).await?;
        self.stats.refreshed(queued, unrouted, lag);
        if unrouted > 0 && unrouted != *last_unrouted {
            for source in queue::unrouted(sec, sources).await? {
                if logged.insert(source.clone()) {
                    warn!(source = %source, "reverse mirror: queued changes of a source without a rule stay queued");
                }
            }
        }
        *last_unrouted = unrouted;
        Ok(())
    }
}

/// The position the primary committed last (creating its table when missing).
async fn read_position(primary: &Client) -> Result<Position, tokio_postgres::Error> {
    primary.batch_execute(POSITION_SCHEMA_SQL).await?;
    let row = primary.query_one(READ_POSITION_SQL, &[]).await?;
    Ok(write::position(&row))
}
