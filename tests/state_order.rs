//! One row written through two instances at once (`[mirror] order_rows`, src/mirror/apply/
//! order.rs): each instance applies its own sessions' transactions, and instance a's applier
//! lingers up to a second for a batch to fill, so its images reach the target after b's newer
//! ones. Four writers change hot rows through both while a backfill runs; then each hot row is
//! written through a and at once through b. The target must end as the image of the primary's
//! rows: every hot row as its last writer left it, no older image brought back. (Without
//! `order_rows` the last step alone leaves a's older images on the target.)

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::dxy::*;
use common::jobs::*;
use common::*;

/// Rows in the table, and how many of them the writers keep changing.
const ROWS: usize = 200;
const HOT: usize = 10;

fn ts(i: usize) -> String {
    format!("'2026-01-01 00:00:00+00'::timestamptz + {i} * interval '1 minute'")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_one_row_through_two_instances_land_in_the_primarys_order() {
    let c = cluster();
    let db = fresh_db("state_order");
    let section = |linger: u32, name: &str| {
        format!("apply_linger_ms = {linger}\norder_rows = true\n[state]\ninstance = \"{name}\"\n")
    };
    let (a, db) = mirrored_with(
        c.primary_port,
        c.secondary_port,
        &db,
        DXY_RULE,
        &section(1000, "a"),
    );
    let url = |port| format!("postgres://postgres@127.0.0.1:{port}/{db}");
    let (port, admin, config) = dxy_config(
        &url(c.primary_port),
        &url(c.secondary_port),
        DXY_RULE,
        &section(0, "b"),
    );
    let b = Bridge::start_with_config(port, admin, &config);
    // Half the rows written before pgbridge mirrored them: the backfill's.
    insert_unmirrored(c.primary_port, &db, ROWS / 2);
    let client = connect(&a.conn_str("postgres", "", &db)).await;
    for i in ROWS / 2..ROWS {
        client
            .batch_execute(&format!("{INSERT} ('DXY', {}, 1, 1, 1, 1, 0)", ts(i)))
            .await
            .unwrap();
    }
    let (stop, writers) = common::writes::writers(&[&a, &b, &a, &b], &db, |n, round| {
        // The hot rows of both halves, by turns; now and then one deleted and written again
        // in one transaction.
        let key = ts((n + round) % HOT + (round % 2) * (ROWS / 2));
        match round % 7 {
            6 => format!(
                "BEGIN; DELETE FROM derived_data_bars WHERE symbol = 'DXY' AND ts = {key}; \
                 {INSERT} ('DXY', {key}, {n}, {n}, {n}, {round}, {round}); COMMIT"
            ),
            _ => format!(
                "UPDATE derived_data_bars SET volume = volume + 1, close = {n}.{round:04} \
                 WHERE symbol = 'DXY' AND ts = {key}"
            ),
        }
    });
    // A backfill of the first half while the writers run, through instance b.
    std::thread::sleep(Duration::from_millis(300));
    let (code, answer) = post(
        &b,
        "/api/tables/derived_data_bars/backfill",
        "{\"max_rows_per_sec\":0,\"chunk_rows\":20}",
    );
    assert_eq!(code, 202, "{answer}");
    wait_state(&b, answer["job"].as_i64().unwrap(), "done");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in writers {
        total += w.await.unwrap();
    }
    assert!(total > 100, "{total} writes");
    // Each hot row through a, then at once through b: a applies its write up to a second later.
    let (through_a, through_b) = (
        connect(&a.conn_str("postgres", "", &db)).await,
        connect(&b.conn_str("postgres", "", &db)).await,
    );
    for i in 0..2 * HOT {
        let key = ts(i % HOT + (i / HOT) * (ROWS / 2));
        for (client, close) in [(&through_a, 1000 + i), (&through_b, 2000 + i)] {
            let sql = format!(
                "UPDATE derived_data_bars SET close = {close} WHERE symbol = 'DXY' AND ts = {key}"
            );
            client.batch_execute(&sql).await.unwrap();
        }
    }
    wait_applied(&a);
    wait_applied(&b);
    assert_equal(&db);
    // Every hot row's position is recorded; the older images were left out.
    let versions = psql_on(
        c.secondary_port,
        &db,
        "SELECT count(*) FROM pgbridge.row_versions WHERE tbl = 'derived_data_bars'",
    );
    let versions: usize = versions.trim().parse().unwrap();
    assert!(versions >= 2 * HOT, "{versions} rows versioned");
    println!(
        "{total} writes of {} hot rows through two instances",
        2 * HOT
    );
}
