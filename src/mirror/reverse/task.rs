//! The reverse applier's loop: connect to the secondary (and count the queue, so the figures
//! stay true while the primary is away), connect to the primary and read the position, then
//! batch after batch, page after page; any failure drops what broke and starts over from the
//! primary's position after a backoff.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::{debug, info, warn, Instrument};

use super::convert::{convertible, page_sql, SourceChange};
use super::write::{self, Statements, POSITION_SCHEMA_SQL, READ_POSITION_SQL};
use super::{queue, Position, ReverseApplier, ReverseError, ReverseStats};
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
    counts: Counts,
}

/// When the queue was last counted, and which sources without a rule were logged.
#[derive(Default)]
struct Counts {
    at: Option<Instant>,
    unrouted: u64,
    logged: HashSet<String>,
}

impl Counts {
    /// Refreshes the queue's figures, logging once each source that queued changes name and no
    /// rule has (they stay queued).
    async fn refresh(
        &mut self,
        stats: &ReverseStats,
        sec: &Client,
        sources: &[String],
    ) -> Result<(), tokio_postgres::Error> {
        let (queued, unrouted, lag) = queue::count(sec, sources).await?;
        stats.refreshed(queued, unrouted, lag);
        if unrouted > 0 && unrouted != self.unrouted {
            for source in queue::unrouted(sec, sources).await? {
                if self.logged.insert(source.clone()) {
                    warn!(source = %source, "reverse mirror: changes of a source without a rule stay queued");
                }
            }
        }
        self.unrouted = unrouted;
        self.at = Some(Instant::now());
        Ok(())
    }

    fn due(&self) -> bool {
        self.at.is_none_or(|t| t.elapsed() >= BUSY_REFRESH)
    }
}

impl ReverseApplier {
    pub(super) async fn run(self) {
        let mut run = Run {
            secondary: Side::default(),
            primary: Side::default(),
            pos: Position::default(),
            recorded: Position::default(),
            counts: Counts::default(),
        };
        let mut backoff = self.cfg.min_backoff;
        loop {
            let Err(e) = self.session(&mut run, &mut backoff).await;
            let lost = |side: &Side| side.client.as_ref().is_none_or(|c| c.is_closed());
            if lost(&run.secondary) {
                self.stats
                    .secondary_connected
                    .store(false, Ordering::Relaxed);
            }
            if lost(&run.primary) {
                self.stats.primary_connected.store(false, Ordering::Relaxed);
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
        backoff: &mut Duration,
    ) -> Result<Infallible, ReverseError> {
        use ReverseError::{Primary, Secondary};
        let sec = run
            .secondary
            .ensure(&self.cfg.secondary, "secondary")
            .await
            .map_err(Secondary)?;
        self.stats
            .secondary_connected
            .store(true, Ordering::Relaxed);
        super::capture::ensure_queue(sec).await.map_err(Secondary)?;
        let sources = sources(&convertible(self.rules.load().rules()));
        run.counts
            .refresh(&self.stats, sec, &sources)
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

    /// One page of the batch (opening one when none is), or an idle poll when there is none.
    async fn step(&self, run: &mut Run) -> Result<(), ReverseError> {
        use ReverseError::Secondary;
        let ruled = convertible(self.rules.load().rules());
        let sources = sources(&ruled);
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
        if !page.is_empty() {
            self.apply(run, &ruled, &page).await?;
        }
        if (page.len() as i64) < self.cfg.page_size {
            run.pos.prev = run.pos.cur.take();
            run.pos.last_seq = 0;
        }
        if page.is_empty() {
            return self.idle(run, &sources).await;
        }
        if run.counts.due() {
            let sec = run.secondary.client.as_ref().expect("connected in session");
            run.counts
                .refresh(&self.stats, sec, &sources)
                .await
                .map_err(Secondary)?;
        }
        Ok(())
    }

    /// Applies a page on the primary, then forgets it on the secondary.
    async fn apply(
        &self,
        run: &mut Run,
        ruled: &[Arc<Rule>],
        page: &[SourceChange],
    ) -> Result<(), ReverseError> {
        use ReverseError::{Primary, Secondary};
        let last_seq = page.last().map_or(run.pos.last_seq, |c| c.seq);
        let next = Position {
            last_seq,
            ..run.pos.clone()
        };
        let rules: HashMap<String, &Rule> = ruled
            .iter()
            .map(|r| (r.source.to_string(), r.as_ref()))
            .collect();
        let pri = run.primary.client.as_mut().expect("connected in session");
        let statements = &mut run.primary.statements;
        let applied = write::apply_page(pri, statements, &rules, page, &run.recorded, &next)
            .await
            .map_err(Primary)?;
        if !applied {
            return Err(ReverseError::Moved);
        }
        run.recorded = next.clone();
        run.pos = next;
        self.stats.applied_page(page.len(), last_seq);
        debug!(
            changes = page.len(),
            last_seq, "reverse mirror applied a page"
        );
        let seqs: Vec<i64> = page.iter().map(|c| c.seq).collect();
        let sec = run.secondary.client.as_ref().expect("connected in session");
        queue::delete(sec, &seqs).await.map_err(Secondary)?;
        Ok(())
    }

    /// Nothing to apply: count the queue and wait a poll.
    async fn idle(&self, run: &mut Run, sources: &[String]) -> Result<(), ReverseError> {
        let sec = run.secondary.client.as_ref().expect("connected in session");
        run.counts
            .refresh(&self.stats, sec, sources)
            .await
            .map_err(ReverseError::Secondary)?;
        tokio::time::sleep(self.cfg.poll).await;
        Ok(())
    }
}

/// The sources of the rules a page can carry, as the trigger names them.
fn sources(ruled: &[Arc<Rule>]) -> Vec<String> {
    ruled.iter().map(|r| r.source.to_string()).collect()
}

/// The position the primary committed last (creating its table when missing).
async fn read_position(primary: &Client) -> Result<Position, tokio_postgres::Error> {
    primary
        .batch_execute(&crate::mirror::under_schema_lock(POSITION_SCHEMA_SQL))
        .await?;
    let row = primary.query_one(READ_POSITION_SQL, &[]).await?;
    Ok(write::position(&row))
}
