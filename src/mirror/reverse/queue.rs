//! The secondary's side of the queue: a batch's snapshot, its pages in source terms, and the
//! removal of what the primary has committed.

use tokio_postgres::Client;

use super::convert::SourceChange;
use super::write::Statements;
use super::Position;

const SNAPSHOT_SQL: &str = "SELECT pg_current_snapshot()::text";

/// Applied rows: those of earlier batches (visible in `prev`), and the current batch's up to
/// `last_seq`. Only for the ruled sources `$1`: the others were never applied.
const CLEANUP_SQL: &str = "DELETE FROM pgbridge.reverse_changes WHERE source = ANY($1) AND \
    (($2::text IS NOT NULL AND pg_visible_in_snapshot(xid, $2::text::pg_snapshot)) OR \
    ($3::text IS NOT NULL AND pg_visible_in_snapshot(xid, $3::text::pg_snapshot) AND seq <= $4))";

const DELETE_SQL: &str = "DELETE FROM pgbridge.reverse_changes WHERE seq = ANY($1)";

/// The queue's size for the ruled sources `$1`, the others', and the oldest ruled change's age.
const COUNT_SQL: &str = "SELECT count(*) FILTER (WHERE source = ANY($1)), \
    count(*) FILTER (WHERE NOT source = ANY($1)), \
    COALESCE(extract(epoch FROM clock_timestamp() - min(at) FILTER (WHERE source = ANY($1))), 0)::float8 \
    FROM pgbridge.reverse_changes";

const UNROUTED_SQL: &str =
    "SELECT DISTINCT source FROM pgbridge.reverse_changes WHERE NOT source = ANY($1)";

/// The snapshot a new batch ends at.
pub async fn snapshot(client: &Client) -> Result<String, tokio_postgres::Error> {
    Ok(client.query_one(SNAPSHOT_SQL, &[]).await?.get(0))
}

/// The next page of the batch `pos` describes (`page_sql` from `convert.rs`).
pub async fn read_page(
    client: &Client,
    statements: &mut Statements,
    page_sql: &str,
    pos: &Position,
) -> Result<Vec<SourceChange>, tokio_postgres::Error> {
    let statement = statements.get(client, page_sql).await?;
    let rows = client
        .query(&statement, &[&pos.last_seq, &pos.cur, &pos.prev])
        .await?;
    Ok(rows
        .iter()
        .map(|r| SourceChange {
            seq: r.get(0),
            source: r.get(1),
            new_row: r.get(2),
            old_key: r.get(3),
            key_moved: r.get::<_, Option<bool>>(4).unwrap_or(false),
        })
        .collect())
}

/// Forgets changes the primary committed.
pub async fn delete(client: &Client, seqs: &[i64]) -> Result<u64, tokio_postgres::Error> {
    client.execute(DELETE_SQL, &[&seqs]).await
}

/// Forgets every change of `sources` the position says was applied (the deletes a crash
/// between the primary's commit and [`delete`] missed).
pub async fn cleanup(
    client: &Client,
    sources: &[String],
    pos: &Position,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(CLEANUP_SQL, &[&sources, &pos.prev, &pos.cur, &pos.last_seq])
        .await
}

/// `(queued, unrouted, lag_seconds)` for the ruled `sources`.
pub async fn count(
    client: &Client,
    sources: &[String],
) -> Result<(u64, u64, f64), tokio_postgres::Error> {
    let row = client.query_one(COUNT_SQL, &[&sources]).await?;
    Ok((
        row.get::<_, i64>(0) as u64,
        row.get::<_, i64>(1) as u64,
        row.get(2),
    ))
}

/// The sources queued changes name that no rule has.
pub async fn unrouted(
    client: &Client,
    sources: &[String],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client.query(UNROUTED_SQL, &[&sources]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
