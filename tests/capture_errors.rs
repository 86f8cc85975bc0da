//! Every place where the capture adds requests of its own (its BEGIN and COMMIT around an
//! autocommit write, the transaction id, a transaction split at its COMMIT to journal first) or
//! hides replies holds on the error path: a write that fails gets, byte for byte, the replies it
//! gets directly, and the session goes on.

mod common;

use common::dxy::*;
use common::wire::{self, Frame, Wire};
use common::*;

const DUP: &str = "('DXY', '2026-01-05 09:00+00', 9, 9, 9, 9, 9)";
const NEW: &str = "('DXY', '2026-01-05 10:00+00', 1, 2, 0.5, 1.5, 100)";

fn show(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|(t, b)| format!("{} {}", *t as char, String::from_utf8_lossy(b)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `requests` (each written whole, then its `readies` ReadyForQuery read) through pgbridge
/// and directly, on databases that hold the row `DUP`; asserts the replies are the same bytes;
/// returns the bridge and its database, for what reached the target.
fn same_replies(hint: &str, requests: &[(Vec<u8>, usize)]) -> (Bridge, String) {
    let (bridge, db) = mirrored_with(
        cluster().primary_port,
        cluster().secondary_port,
        &fresh_db(hint),
        DXY_RULE,
        "",
    );
    let other = fresh_db(&format!("{hint}_direct"));
    psql_on(cluster().primary_port, &other, PRIMARY_DDL);
    let existing = format!("{INSERT} {DUP}");
    psql_on(
        cluster().primary_port,
        &other,
        &format!("TRUNCATE derived_data_bars; {existing}"),
    );
    let (out, code) = psql_script(
        &bridge.conn_str("postgres", "", &db),
        &format!("{existing};"),
    );
    assert_eq!(code, 0, "{out}");
    let exchange = |port: u16, db: &str| {
        let mut w = Wire::connect(port);
        w.startup("postgres", db);
        let mut frames = Vec::new();
        for (bytes, readies) in requests {
            w.send(bytes);
            frames.extend(w.frames_until_ready(*readies));
        }
        w.send(&wire::query("SELECT count(*) FROM derived_data_bars"));
        frames.extend(w.frames_until_ready(1));
        frames
    };
    let via = exchange(bridge.port, &db);
    let direct = exchange(cluster().primary_port, &other);
    assert!(
        via == direct,
        "through pgbridge:\n{}\n\ndirectly:\n{}",
        show(&via),
        show(&direct)
    );
    wait_applied(&bridge);
    (bridge, db)
}

fn target_rows(db: &str) -> String {
    psql_on(
        cluster().secondary_port,
        db,
        "SELECT count(*) FROM data_bars",
    )
}

#[test]
fn a_failing_write_outside_a_transaction() {
    let q = |sql: String| (wire::query(&sql), 1);
    let (_, db) = same_replies(
        "err_autocommit",
        &[
            q(format!("{INSERT} {DUP}")),
            q(format!("{INSERT} {NEW}; {INSERT} {DUP}")),
            q("TRUNCATE derived_data_bars; SELECT 1/0".into()),
        ],
    );
    assert_eq!(target_rows(&db), "1\n");
}

#[test]
fn a_failing_write_in_a_query_that_commits() {
    // The transaction is split at its COMMIT, so that the changes are journaled first.
    let q = |sql: String| (wire::query(&sql), 1);
    let (_, db) = same_replies(
        "err_commit_split",
        &[
            q("BEGIN".into()),
            q(format!("{INSERT} {NEW}; {INSERT} {DUP}; COMMIT")),
            q("ROLLBACK".into()),
            q(format!("BEGIN; {INSERT} {NEW}; COMMIT; {INSERT} {DUP}")),
        ],
    );
    assert_eq!(target_rows(&db), "2\n");
}

#[test]
fn a_failing_write_in_the_extended_protocol() {
    let batch = |writes: &[&str], with_txn: bool| {
        let mut b = Vec::new();
        if with_txn {
            b.extend(wire::parse("", "BEGIN", &[]));
            b.extend(wire::bind("", "", 0, &[], 0));
            b.extend(wire::execute("", 0));
        }
        for w in writes {
            b.extend(wire::parse("", &format!("{INSERT} {w}"), &[]));
            b.extend(wire::bind("", "", 0, &[], 0));
            b.extend(wire::describe(b'P', ""));
            b.extend(wire::execute("", 0));
        }
        if with_txn {
            b.extend(wire::parse("", "COMMIT", &[]));
            b.extend(wire::bind("", "", 0, &[], 0));
            b.extend(wire::execute("", 0));
        }
        b.extend(wire::sync());
        (b, 1)
    };
    let (_, db) = same_replies(
        "err_extended",
        &[
            batch(&[DUP], false),
            batch(&[NEW, DUP], false),
            batch(&[NEW, DUP], true),
            (wire::query("ROLLBACK"), 1),
        ],
    );
    assert_eq!(target_rows(&db), "1\n");
}
