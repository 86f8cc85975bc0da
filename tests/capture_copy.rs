//! COPY FROM STDIN into a migrated table: whatever becomes of it on the primary (success, an
//! error in the data, an error at the end, CopyFail from the client; in a transaction or not; in
//! the simple or the extended protocol), the client gets byte for byte the primary's replies,
//! its connection stays usable, and the target holds exactly what the primary committed.

mod common;

use common::dxy::*;
use common::wire::{self, Frame, Wire};
use common::*;

const COPY: &str = "COPY derived_data_bars (symbol, ts, open, high, low, close, volume) FROM STDIN";

fn copy_data(rows: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        out.extend(wire::frame(b'd', format!("{r}\n").as_bytes()));
    }
    out
}

fn copy_done() -> Vec<u8> {
    wire::frame(b'c', &[])
}

fn copy_fail(why: &str) -> Vec<u8> {
    let mut body = why.as_bytes().to_vec();
    body.push(0);
    wire::frame(b'f', &body)
}

const ROW1: &str = "DXY\t2026-01-05 10:00+00\t1\t2\t0.5\t1.5\t100";
const ROW2: &str = "DXY\t2026-01-05 10:01+00\t1\t2\t0.5\t1.75\t100";
/// The key of a row the primary holds before each scenario.
const EXISTING: &str = "DXY\t2026-01-05 09:00+00\t9\t9\t9\t9\t9";
const BAD_NUMBER: &str = "DXY\t2026-01-05 10:02+00\t1\tnot-a-number\t0.5\t1.5\t100";

/// A client's session: messages written, then the replies read up to `readies` ReadyForQuery.
struct Session {
    steps: Vec<Vec<u8>>,
    readies: usize,
}

/// The scenario's replies from a fresh pair of databases through pgbridge and from a fresh
/// database directly; and the bridge, for what reached the target.
fn run(hint: &str, session: &Session) -> (Vec<Frame>, Vec<Frame>, Bridge, String) {
    let (bridge, db) = mirrored_with(
        cluster().primary_port,
        cluster().secondary_port,
        &fresh_db(hint),
        DXY_RULE,
        "",
    );
    let other = fresh_db(&format!("{hint}_direct"));
    psql_on(cluster().primary_port, &other, PRIMARY_DDL);
    let existing = format!("{INSERT} ('DXY', '2026-01-05 09:00+00', 9, 9, 9, 9, 9)");
    psql_on(
        cluster().primary_port,
        &other,
        &format!("TRUNCATE derived_data_bars; {existing}"),
    );
    // Through pgbridge, so that the target has it too.
    let (out, code) = psql_script(
        &bridge.conn_str("postgres", "", &db),
        &format!("{existing};"),
    );
    assert_eq!(code, 0, "{out}");
    wait_applied(&bridge);
    let exchange = |port: u16, db: &str| {
        let mut w = Wire::connect(port);
        w.startup("postgres", db);
        for s in &session.steps {
            w.send(s);
        }
        w.frames_until_ready(session.readies)
    };
    let via = exchange(bridge.port, &db);
    let direct = exchange(cluster().primary_port, &other);
    (via, direct, bridge, db)
}

/// What a frame says, for a readable failure.
fn show(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|(t, b)| format!("{} {}", *t as char, String::from_utf8_lossy(b)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_same(via: &[Frame], direct: &[Frame]) {
    assert!(
        via == direct,
        "through pgbridge:\n{}\n\ndirectly:\n{}",
        show(via),
        show(direct)
    );
}

/// The target's rows, as `ts close` lines.
fn target(db: &str) -> String {
    psql_on(
        cluster().secondary_port,
        db,
        "SELECT ts AT TIME ZONE 'UTC', close_px FROM data_bars ORDER BY ts",
    )
}

fn count_after() -> Vec<u8> {
    wire::query("SELECT count(*), sum(close) FROM derived_data_bars")
}

#[test]
fn a_copy_that_succeeds_in_autocommit() {
    let mut first = wire::query(COPY);
    first.extend(copy_data(&[ROW1, ROW2]));
    first.extend(copy_done());
    let s = Session {
        steps: vec![first, count_after()],
        readies: 2,
    };
    let (via, direct, bridge, db) = run("copy_ok", &s);
    assert_same(&via, &direct);
    wait_applied(&bridge);
    assert_eq!(
        target(&db),
        "2026-01-05 09:00:00|9.000000\n2026-01-05 10:00:00|1.500000\n2026-01-05 10:01:00|1.750000\n"
    );
}

#[test]
fn a_copy_whose_data_is_wrong_fails_as_directly_and_the_session_goes_on() {
    let mut first = wire::query(COPY);
    first.extend(copy_data(&[ROW1, BAD_NUMBER]));
    first.extend(copy_done());
    let s = Session {
        steps: vec![first, count_after()],
        readies: 2,
    };
    let (via, direct, bridge, db) = run("copy_bad_data", &s);
    assert_same(&via, &direct);
    assert!(via
        .iter()
        .any(|f| f.0 == b'E' && wire::sqlstate(&f.1) == "22P02"));
    wait_applied(&bridge);
    assert_eq!(target(&db), "2026-01-05 09:00:00|9.000000\n");
}

#[test]
fn a_copy_that_violates_the_key_at_the_end_fails_as_directly() {
    // The psycopg report: a duplicate of a row the primary holds.
    let mut first = wire::query(COPY);
    first.extend(copy_data(&[ROW1, EXISTING]));
    first.extend(copy_done());
    let s = Session {
        steps: vec![first, count_after()],
        readies: 2,
    };
    let (via, direct, bridge, db) = run("copy_dup", &s);
    assert_same(&via, &direct);
    assert!(via
        .iter()
        .any(|f| f.0 == b'E' && wire::sqlstate(&f.1) == "23505"));
    wait_applied(&bridge);
    assert_eq!(target(&db), "2026-01-05 09:00:00|9.000000\n");
}

#[test]
fn a_copy_the_client_abandons_with_copy_fail_ends_as_directly() {
    let mut first = wire::query(COPY);
    first.extend(copy_data(&[ROW1]));
    first.extend(copy_fail("the client changed its mind"));
    let s = Session {
        steps: vec![first, count_after()],
        readies: 2,
    };
    let (via, direct, bridge, db) = run("copy_fail", &s);
    assert_same(&via, &direct);
    assert!(via
        .iter()
        .any(|f| f.0 == b'E' && wire::sqlstate(&f.1) == "57014"));
    wait_applied(&bridge);
    assert_eq!(target(&db), "2026-01-05 09:00:00|9.000000\n");
}

#[test]
fn copies_in_a_transaction_succeed_fail_and_roll_back_as_directly() {
    let mut good = wire::query(COPY);
    good.extend(copy_data(&[ROW1]));
    good.extend(copy_done());
    let mut dup = wire::query(COPY);
    dup.extend(copy_data(&[ROW2, EXISTING]));
    dup.extend(copy_done());
    let mut again = wire::query(COPY);
    again.extend(copy_data(&[ROW2]));
    again.extend(copy_done());
    let s = Session {
        steps: vec![
            wire::query("BEGIN"),
            good.clone(),
            dup,
            wire::query("ROLLBACK"),
            wire::query("BEGIN"),
            good,
            again,
            wire::query("COMMIT"),
            count_after(),
        ],
        readies: 9,
    };
    let (via, direct, bridge, db) = run("copy_txn", &s);
    assert_same(&via, &direct);
    wait_applied(&bridge);
    assert_eq!(
        target(&db),
        "2026-01-05 09:00:00|9.000000\n2026-01-05 10:00:00|1.500000\n2026-01-05 10:01:00|1.750000\n"
    );
}

#[test]
fn a_copy_that_breaks_a_not_null_constraint_fails_as_directly() {
    // The temporary table drops NOT NULL: the table's own constraint, with its schema, speaks.
    let mut first = wire::query(COPY);
    first.extend(copy_data(&[
        ROW1,
        "DXY\t2026-01-05 10:05+00\t1\t2\t0.5\t\\N\t100",
    ]));
    first.extend(copy_done());
    let s = Session {
        steps: vec![first, count_after()],
        readies: 2,
    };
    let (via, direct, bridge, db) = run("copy_not_null", &s);
    assert_same(&via, &direct);
    assert!(via
        .iter()
        .any(|f| f.0 == b'E' && wire::sqlstate(&f.1) == "23502"));
    wait_applied(&bridge);
    assert_eq!(target(&db), "2026-01-05 09:00:00|9.000000\n");
}

#[test]
fn a_csv_copy_with_a_header_counts_its_lines_as_directly() {
    let csv = "COPY derived_data_bars (symbol, ts, open, high, low, close, volume) FROM STDIN (FORMAT csv, HEADER)";
    let mut ok = wire::query(csv);
    ok.extend(copy_data(&[
        "symbol,ts,open,high,low,close,volume",
        "DXY,2026-01-05 10:00+00,1,2,0.5,1.5,100",
    ]));
    ok.extend(copy_done());
    let mut dup = wire::query(csv);
    dup.extend(copy_data(&[
        "symbol,ts,open,high,low,close,volume",
        "DXY,2026-01-05 10:01+00,1,2,0.5,1.75,100",
        "DXY,2026-01-05 09:00+00,9,9,9,9,9",
    ]));
    dup.extend(copy_done());
    let s = Session {
        steps: vec![ok, dup, count_after()],
        readies: 3,
    };
    let (via, direct, bridge, db) = run("copy_csv_header", &s);
    assert_same(&via, &direct);
    let error = via
        .iter()
        .find(|f| f.0 == b'E')
        .expect("the duplicate fails");
    assert_eq!(
        wire::field(&error.1, b'W'),
        "COPY derived_data_bars, line 3"
    );
    wait_applied(&bridge);
    assert_eq!(
        target(&db),
        "2026-01-05 09:00:00|9.000000\n2026-01-05 10:00:00|1.500000\n"
    );
}

#[test]
fn a_copy_in_the_extended_protocol_is_relayed_as_it_is_and_recorded() {
    // The extended protocol's COPY is not captured: its replies are the primary's own, and the
    // rows it wrote are an unmirrored_write for a verify and repair to mend.
    let s = |rows: &[&str]| {
        let mut b = wire::parse("", COPY, &[]);
        b.extend(wire::bind("", "", 0, &[], 0));
        b.extend(wire::execute("", 0));
        b.extend(copy_data(rows));
        b.extend(copy_done());
        b.extend(wire::sync());
        b
    };
    let session = Session {
        steps: vec![
            s(&[ROW1]),
            s(&[ROW2, EXISTING]),
            s(&[BAD_NUMBER]),
            count_after(),
        ],
        readies: 4,
    };
    let (via, direct, bridge, db) = run("copy_extended", &session);
    assert_same(&via, &direct);
    let records = divergence_records(&bridge, 3);
    assert!(
        records
            .iter()
            .all(|r| r["kind"] == "unmirrored_write" && r["table"] == "derived_data_bars"),
        "{records:#?}"
    );
    wait_applied(&bridge);
    assert_eq!(target(&db), "2026-01-05 09:00:00|9.000000\n");
}

/// psycopg's COPY (the report: a duplicate key raised ValueError, not UniqueViolation, and the
/// connection was unusable after), in autocommit and in a transaction.
const PSYCOPG_COPY: &str = r#"
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=sys.argv[2] == "autocommit")
rows = [("DXY", "2026-01-05 10:00+00", 1, 2, 0.5, 1.5, 100),
        ("DXY", "2026-01-05 09:00+00", 9, 9, 9, 9, 9)]
try:
    with conn.cursor() as cur:
        with cur.copy("COPY derived_data_bars (symbol, ts, open, high, low, close, volume) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
    print("copied")
except psycopg.Error as e:
    print("error", type(e).__name__, e.sqlstate, e.diag.context)
if not conn.autocommit:
    conn.rollback()
with conn.cursor() as cur:
    with cur.copy("COPY derived_data_bars (symbol, ts, open, high, low, close, volume) FROM STDIN") as copy:
        copy.write_row(rows[0])
    conn.commit()
    print("then", cur.execute("SELECT count(*) FROM derived_data_bars").fetchone())
"#;

/// asyncpg's binary COPY of the same rows.
const ASYNCPG_COPY: &str = r#"
import sys, asyncio, asyncpg, datetime
async def main():
    conn = await asyncpg.connect(sys.argv[1])
    ts = datetime.datetime(2026, 1, 5, 11, 0, tzinfo=datetime.timezone.utc)
    dup = datetime.datetime(2026, 1, 5, 9, 0, tzinfo=datetime.timezone.utc)
    cols = ["symbol", "ts", "open", "high", "low", "close", "volume"]
    try:
        await conn.copy_records_to_table("derived_data_bars", records=[("DXY", dup, 9, 9, 9, 9, 9)], columns=cols)
    except asyncpg.UniqueViolationError as e:
        print("error", e.sqlstate)
    await conn.copy_records_to_table("derived_data_bars", records=[("DXY", ts, 1, 2, 0.5, 1.25, 7)], columns=cols)
    print("then", await conn.fetchval("SELECT count(*) FROM derived_data_bars"))
asyncio.run(main())
"#;

#[test]
fn psycopg_and_asyncpg_copies_fail_and_succeed_as_directly() {
    let empty = Session {
        steps: vec![],
        readies: 0,
    };
    for mode in ["autocommit", "transaction"] {
        let (_, _, bridge, db) = run(&format!("copy_psycopg_{mode}"), &empty);
        let direct_db = fresh_db(&format!("copy_psycopg_{mode}_direct"));
        psql_on(cluster().primary_port, &direct_db, PRIMARY_DDL);
        psql_on(
            cluster().primary_port,
            &direct_db,
            &format!("TRUNCATE derived_data_bars; {INSERT} ('DXY', '2026-01-05 09:00+00', 9, 9, 9, 9, 9)"),
        );
        let via = python::run_ok(PSYCOPG_COPY, &[&bridge.conn_str("postgres", "", &db), mode]);
        let straight = python::run_ok(PSYCOPG_COPY, &[&direct("postgres", "", &direct_db), mode]);
        assert_eq!(via, straight);
        assert!(
            via.starts_with("error UniqueViolation 23505 COPY derived_data_bars, line 2"),
            "{via}"
        );
        assert!(via.contains("then (2,)"), "{via}");
        let url = |port: u16, db: &str| format!("postgresql://postgres@127.0.0.1:{port}/{db}");
        let via = python::run_ok(ASYNCPG_COPY, &[&url(bridge.port, &db)]);
        let straight = python::run_ok(ASYNCPG_COPY, &[&url(cluster().primary_port, &direct_db)]);
        assert_eq!(via, straight);
        assert_eq!(via, "error 23505\nthen 3\n");
        wait_applied(&bridge);
        assert_eq!(
            target(&db),
            "2026-01-05 09:00:00|9.000000\n2026-01-05 10:00:00|1.500000\n2026-01-05 11:00:00|1.250000\n"
        );
    }
}

/// tokio-postgres's COPY (it sends Sync with the Execute, before its data, and the server
/// ignores that Sync): the session goes on afterwards as it would directly, into a migrated
/// table (relayed, unmirrored, the table marked for a repair) and into one that is not.
#[test]
fn a_tokio_postgres_copy_in_leaves_the_session_usable() {
    use futures_util::SinkExt;
    let (bridge, db) = mirrored_with(
        cluster().primary_port,
        cluster().secondary_port,
        &fresh_db("copy_tokio"),
        DXY_RULE,
        "[verify]\nauto_repair = false",
    );
    psql_on(
        cluster().primary_port,
        &db,
        "CREATE TABLE plain (a int, b text)",
    );
    let conn = bridge.conn_str("postgres", "", &db);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let counts = rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let run = async {
            for (sql, data) in [
                (COPY, "DXY\t2026-01-05 10:00:00+00\t1\t2\t0.5\t1.5\t100\n"),
                ("COPY plain FROM STDIN", "1\tone\n2\ttwo\n"),
            ] {
                let sink = client.copy_in(sql).await.unwrap();
                futures_util::pin_mut!(sink);
                sink.send(bytes::Bytes::from(data)).await.unwrap();
                sink.finish().await.unwrap();
            }
            // The session is in step: a mirrored write, a prepared query and a simple one.
            client
                .execute(
                    "INSERT INTO derived_data_bars VALUES ('DXY', '2026-01-05 11:00+00', 1, 1, 1, 1, 1)",
                    &[],
                )
                .await
                .unwrap();
            let n: i64 = client
                .query_one("SELECT count(*) FROM derived_data_bars", &[])
                .await
                .unwrap()
                .get(0);
            let m = client.simple_query("SELECT count(*) FROM plain").await.unwrap();
            let m = match &m[1] {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_string(),
                other => panic!("{other:?}"),
            };
            (n, m)
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), run)
            .await
            .expect("the session hangs after a COPY")
    });
    assert_eq!(counts, (2, "2".to_string()));
    wait_applied(&bridge);
    assert_eq!(
        target(&db),
        "2026-01-05 11:00:00|1.000000\n",
        "the INSERT is mirrored, the COPY is not"
    );
    let s = status(&bridge);
    assert_eq!(s["tables"][0]["needs_repair"]["writes"], 1, "{s}");
}
