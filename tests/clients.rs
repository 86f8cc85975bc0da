//! Real client libraries see through pgbridge what they see directly: psycopg 3 (through libpq)
//! and tokio-postgres, on the behaviours a client's own test suite checks.

mod common;

use common::python;
use common::{cluster, connect_with_messages, direct, Bridge};

/// What psycopg sees of its own backend process id, run against `dsn`: the pid of a
/// notification it sent itself, whether pg_stat_activity finds its session by that pid, and
/// whether terminating that pid breaks the connection as psycopg expects.
const BACKEND_PID: &str = r#"
import sys, psycopg
dsn = sys.argv[1]
me = psycopg.connect(dsn, autocommit=True, application_name="pid-probe")
other = psycopg.connect(dsn, autocommit=True)
pid = me.info.backend_pid
me.execute("LISTEN pgbridge_probe")
me.execute("NOTIFY pgbridge_probe, 'mine'")
other.execute("NOTIFY pgbridge_probe, 'theirs'")
seen = []
for n in me.notifies(timeout=5, stop_after=2):
    seen.append((n.payload, n.pid == pid, n.pid == other.info.backend_pid))
print("notifies", sorted(seen))
name = other.execute(
    "SELECT application_name FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
print("pg_stat_activity", name)
print("backend_pid is pg_backend_pid", me.execute("SELECT pg_backend_pid()").fetchone()[0] == pid)
other.execute("SELECT pg_terminate_backend(%s)", [pid])
try:
    me.execute("SELECT 1")
    print("after terminate: still usable")
except psycopg.OperationalError as e:
    print("after terminate:", type(e).__name__, "broken" if me.broken else "not broken")
"#;

#[test]
fn psycopg_sees_its_own_backend_pid_as_directly() {
    let bridge = Bridge::start("");
    let via = python::run_ok(BACKEND_PID, &[&bridge.conn_str("postgres", "", "postgres")]);
    let straight = python::run_ok(BACKEND_PID, &[&direct("postgres", "", "postgres")]);
    assert_eq!(
        via, straight,
        "through pgbridge:\n{via}\ndirectly:\n{straight}"
    );
    assert!(
        via.contains("notifies [('mine', True, False), ('theirs', False, True)]"),
        "{via}"
    );
    assert!(via.contains("pg_stat_activity ('pid-probe',)"), "{via}");
    assert!(via.contains("backend_pid is pg_backend_pid True"), "{via}");
    assert!(
        via.contains("after terminate: AdminShutdown broken"),
        "{via}"
    );
}

#[tokio::test]
async fn tokio_postgres_notifications_carry_the_senders_backend_pid() {
    let bridge = Bridge::start("");
    let conn = bridge.conn_str("postgres", "", "postgres");
    let (client, mut messages) = connect_with_messages(&conn).await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute("LISTEN probe; NOTIFY probe, 'x'")
        .await
        .unwrap();
    let note = loop {
        match messages.recv().await.expect("a notification") {
            tokio_postgres::AsyncMessage::Notification(n) => break n,
            _ => continue,
        }
    };
    assert_eq!(note.process_id(), pid);
    assert_eq!(note.payload(), "x");
    // The pid is the primary's own: the primary's pg_stat_activity knows it.
    let (straight, _m) = connect_with_messages(&direct("postgres", "", "postgres")).await;
    let found: i64 = straight
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(found, 1);
    let _ = cluster();
}
