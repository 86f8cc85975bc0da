//! In-doubt intents resolved by asking a real primary: pgbridge "died" after each intent was
//! written and COMMIT (or ROLLBACK, or PREPARE TRANSACTION) was sent, before any outcome.

mod mirror_support;
mod sql_support;

use std::time::Duration;

use mirror_support::{capture_binary, xid, Mirror};
use pgbridge::config::OnError;
use pgbridge::mirror::resolve::{resolve_at_startup, ResolveConfig};
use pgbridge::mirror::{Change, ChangeOp, TxnRecord};
use pgbridge::rules::TableName;
use sql_support::{connect, dxy_pair, rows, ruleset, url, DXY_RULES};
use tokio_postgres::Client;

async fn intent(primary: &Client, m: &Mirror, ts: &str, with_xid: bool) -> u64 {
    primary.batch_execute("BEGIN").await.unwrap();
    let x = xid(primary).await;
    let mut t = TxnRecord::new(1, with_xid.then_some(x));
    for row in capture_binary(
        primary,
        &format!(
            "INSERT INTO derived_data_bars VALUES ('DXY', '{ts}', 1, 2, 0.5, 1.5, 7) RETURNING *"
        ),
    )
    .await
    {
        t.changes.push(Change {
            table: TableName::new("public", "derived_data_bars"),
            op: ChangeOp::Upsert {
                row,
                in_filter: Some(true),
                effect: None,
            },
        });
    }
    m.journal.append_intent(&t).await.unwrap()
}

#[tokio::test]
async fn in_doubt_intents_are_resolved_by_the_primary() {
    let (p, s) = dxy_pair().await;
    let primary = connect(&p).await;
    primary
        .batch_execute("DELETE FROM derived_data_bars")
        .await
        .unwrap();
    let mut m = Mirror::new(ruleset(&p, &s, DXY_RULES).await);

    let committed = intent(&primary, &m, "2026-01-05 10:00+00", true).await;
    primary.batch_execute("COMMIT").await.unwrap();
    let aborted = intent(&primary, &m, "2026-01-05 10:01+00", true).await;
    primary.batch_execute("ROLLBACK").await.unwrap();
    let prepared = intent(&primary, &m, "2026-01-05 10:02+00", true).await;
    primary
        .batch_execute("PREPARE TRANSACTION 'pgbridge_test_gid'")
        .await
        .unwrap();
    let no_xid = intent(&primary, &m, "2026-01-05 10:03+00", false).await;
    primary.batch_execute("COMMIT").await.unwrap();
    // An xid the primary never had (from another cluster, say): cannot be known.
    primary.batch_execute("BEGIN").await.unwrap();
    let future = xid(&primary).await + 1_000_000;
    primary.batch_execute("ROLLBACK").await.unwrap();
    let mut t = TxnRecord::new(1, Some(future));
    t.changes.push(Change {
        table: TableName::new("public", "derived_data_bars"),
        op: ChangeOp::Truncate,
    });
    let unknown = m.journal.append_intent(&t).await.unwrap();

    // pgbridge restarts: every intent is in doubt.
    m.reopen().await;
    assert_eq!(m.journal.in_doubt().len(), 5);
    let cfg = ResolveConfig {
        primary: url(&p).parse().unwrap(),
        min_age: Duration::ZERO,
        assume_committed_without_xid: false,
    };
    let r = resolve_at_startup(&m.journal, &cfg, &m.recorder)
        .await
        .unwrap();
    assert_eq!(r.committed, vec![committed]);
    assert_eq!(r.aborted, vec![aborted]);
    assert_eq!(r.in_progress, vec![prepared]);
    assert_eq!(r.unresolvable, vec![no_xid, unknown]);
    let d = m.divergences();
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d.iter().all(|d| d["kind"] == "in_doubt"));
    assert_eq!(d[0]["table"], "derived_data_bars");
    assert_eq!(
        pgbridge::mirror::parked::list(m.journal.dir()),
        vec![no_xid, unknown]
    );

    // The applier applies the committed one and waits at the prepared transaction.
    let s_url = url(&s);
    let applier = m.applier(&s_url, OnError::Halt);
    applier
        .wait_applied(committed, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(applier
        .wait_applied(prepared, Duration::from_millis(500))
        .await
        .is_err());
    primary
        .batch_execute("COMMIT PREPARED 'pgbridge_test_gid'")
        .await
        .unwrap();
    let r = resolve_at_startup(&m.journal, &cfg, &m.recorder)
        .await
        .unwrap();
    assert_eq!(r.committed, vec![prepared]);
    applier
        .wait_applied(unknown, Duration::from_secs(20))
        .await
        .ok();
    assert_eq!(applier.applied(), unknown);
    let secondary = connect(&s).await;
    assert_eq!(
        rows(&secondary, "SELECT ts FROM data_bars ORDER BY ts").await,
        rows(
            &primary,
            "SELECT ts FROM derived_data_bars WHERE ts <> '2026-01-05 10:03+00' ORDER BY ts"
        )
        .await,
        "the committed and the prepared-then-committed rows; the no-xid one is parked"
    );
    // The outcomes are in the journal: a restart has nothing in doubt any more.
    applier.stop();
    drop(applier);
    m.reopen().await;
    assert!(m.journal.in_doubt().is_empty());
}
