//! Several pgbridge instances on one shared state (src/state/mod.rs): a read flag changed
//! through one is applied by the two others within a second; each lists the instances; with the
//! state database stopped both keep serving, changes are refused, and everything resumes once
//! it is back. What a user checks: each instance's status and metrics, which side served a read,
//! and the answers of the admin API.

mod common;

use std::time::{Duration, Instant};

use common::dxy::*;
use common::*;
use pgbridge::pgcluster::{PgOptions, PgServer};

/// A second pgbridge over the same databases as the first, named `name`, with `state` lines.
fn another(db: &str, name: &str, state_url: Option<&str>) -> Bridge {
    let c = cluster();
    let url = |port| format!("postgres://postgres@127.0.0.1:{port}/{db}");
    let (port, admin, config) = dxy_config(
        &url(c.primary_port),
        &url(c.secondary_port),
        DXY_RULE,
        &state_section(name, state_url),
    );
    Bridge::start_with_config(port, admin, &config)
}

/// Instances `a` and `b` over a fresh pair of databases, on the state at `state_url` (the
/// secondary's by default).
fn pair(hint: &str, state_url: Option<&str>) -> (Bridge, Bridge, String) {
    let (a, db) = first(hint, state_url);
    let b = another(&db, "b", state_url);
    (a, b, db)
}

/// Instance `a` over a fresh pair of databases, on the state at `state_url`.
fn first(hint: &str, state_url: Option<&str>) -> (Bridge, String) {
    let c = cluster();
    let db = fresh_db(hint);
    mirrored_with(
        c.primary_port,
        c.secondary_port,
        &db,
        DXY_RULE,
        &state_section("a", state_url),
    )
}

fn state_section(name: &str, url: Option<&str>) -> String {
    let url = url.map(|u| format!("url = \"{u}\"\n")).unwrap_or_default();
    format!("[state]\ninstance = \"{name}\"\n{url}")
}

fn put_reads(bridge: &Bridge, body: &str) -> (u16, String) {
    http(
        bridge.admin_port,
        "PUT",
        "/api/tables/derived_data_bars/reads",
        Some(TOKEN),
        Some(body),
    )
}

/// Waits until `check` holds of the bridge's status; returns how long it took.
fn until(bridge: &Bridge, what: &str, check: impl Fn(&serde_json::Value) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let s = status(bridge);
        if check(&s) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{what}: {s}\n{}",
            bridge.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn names(s: &serde_json::Value) -> Vec<String> {
    s["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["live"] == true)
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_on_one_instance_is_applied_by_the_two_others_within_a_second() {
    let c = cluster();
    let (a, b, db) = pair("state_flip", None);
    let third = another(&db, "c", None);
    for bridge in [&a, &b, &third] {
        until(bridge, "the three instances listed", |s| {
            names(s) == ["a", "b", "c"] && s["state"]["connected"] == true
        });
    }
    assert_eq!(status(&b)["state"]["instance"], "b");

    let (code, body) = put_reads(&a, r#"{"source":"shadow","reason":"compare"}"#);
    assert_eq!(code, 200, "{body}");
    for (name, other) in [("b", &b), ("c", &third)] {
        let took = until(other, "the others follow a's flip", |s| {
            s["tables"][0]["reads"] == "shadow"
        });
        println!("{name} applied a's flip after {} ms", took.as_millis());
        assert!(took < Duration::from_secs(1), "{} ms", took.as_millis());
    }

    // More of the reads on the secondary: agreed by both others (their mirrors are ready).
    let (code, body) = put_reads(&a, r#"{"source":"secondary","percent":50,"reason":"ramp"}"#);
    assert_eq!(code, 200, "{body}");
    for other in [&b, &third] {
        until(other, "the others follow the agreed ramp", |s| {
            s["tables"][0]["reads"] == "secondary" && s["tables"][0]["reads_percent"] == 50
        });
    }
    assert!(
        a.log()
            .contains("reads on the secondary agreed by every live instance"),
        "{}",
        a.log()
    );
    let (code, body) = put_reads(&a, r#"{"source":"shadow","reason":"compare"}"#);
    assert_eq!(code, 200, "{body}");
    until(&b, "b follows a's way back", |s| {
        s["tables"][0]["reads"] == "shadow"
    });

    // B's sessions read as the shared flag says: the read is compared on the secondary.
    let client = connect(&b.conn_str("postgres", "", &db)).await;
    client
        .simple_query("SELECT count(*) FROM derived_data_bars WHERE symbol = 'DXY'")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&b, "pgbridge_reads_total", "side=\"shadow\"") < 1.0 {
        assert!(Instant::now() < deadline, "no shadow read on b");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Metrics carry the instance.
    let (_, metrics) = b.admin_get("/metrics");
    assert!(metrics.contains("pgbridge_instance=\"b\""), "{metrics}");

    // The switch's audit line is in the shared trail, with the instance that made it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let trail = psql_on(
            c.secondary_port,
            &db,
            "SELECT instance || ' ' || (line->>'to') || ' ' || (line->>'reason') FROM pgbridge.audit \
             ORDER BY id",
        );
        if trail.trim() == "a shadow compare\na secondary ramp\na shadow compare" {
            break;
        }
        assert!(Instant::now() < deadline, "{trail}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // b's status shows the phase and the next step; its audit trail has a's switch.
    let t = &status(&b)["tables"][0];
    assert_eq!(t["phase"], "shadow", "{t}");
    assert_eq!(
        t["next"]["command"],
        "pgbridge ctl reads derived_data_bars secondary --percent 10"
    );
    let out = common::jobs::ctl(&b, &["--json", "status", "derived_data_bars"]);
    assert!(out.status.success(), "{out:?}");
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["phase"], "shadow");
    let out = common::jobs::ctl(&b, &["status", "derived_data_bars"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("phase: shadow") && text.contains("next: "),
        "{text}"
    );
    let (code, trail) = b.admin_get("/api/audit?table=derived_data_bars");
    assert_eq!(code, 200, "{trail}");
    let trail: serde_json::Value = serde_json::from_str(&trail).unwrap();
    assert_eq!(trail["source"], "state", "{trail}");
    let first = &trail["entries"][0];
    assert_eq!(
        (first["instance"].as_str(), first["kind"].as_str()),
        (Some("a"), Some("reads")),
        "{trail}"
    );
    assert_eq!(first["to"], "shadow");
    let out = common::jobs::ctl(&b, &["audit", "derived_data_bars"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("primary -> shadow") && text.contains("compare"),
        "{text}"
    );

    // A percent set through b is applied by a, and the way back too.
    let (code, body) = put_reads(&b, r#"{"source":"primary"}"#);
    assert_eq!(code, 200, "{body}");
    until(&a, "a follows b", |s| s["tables"][0]["reads"] == "primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_state_database_stopped_both_serve_refuse_changes_and_resume() {
    let c = cluster();
    let mut state = PgServer::start(&PgOptions::default())
        .unwrap_or_else(|e| panic!("cannot start PostgreSQL for the tests: {e}"));
    let state_url = format!("postgres://postgres@127.0.0.1:{}/postgres", state.port());
    let (a, b, db) = pair("state_down", Some(&state_url));
    for bridge in [&a, &b] {
        until(bridge, "connected", |s| names(s) == ["a", "b"]);
    }
    let (code, body) = put_reads(&a, r#"{"source":"shadow"}"#);
    assert_eq!(code, 200, "{body}");
    until(&b, "b follows", |s| s["tables"][0]["reads"] == "shadow");

    state.stop().unwrap();
    for bridge in [&a, &b] {
        until(bridge, "the state is unreachable", |s| {
            s["state"]["connected"] == false
        });
        assert!(metric(bridge, "pgbridge_state_connected", "") == 0.0);
    }
    // Changes are refused, and say why; nothing switched.
    let (code, body) = put_reads(&b, r#"{"source":"primary"}"#);
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("unreachable") && body.contains("nothing was changed"),
        "{body}"
    );
    for bridge in [&a, &b] {
        assert_eq!(status(bridge)["tables"][0]["reads"], "shadow");
        // Sessions go on through both.
        let client = connect(&bridge.conn_str("postgres", "", &db)).await;
        client
            .batch_execute(&format!(
                "{INSERT} ('DXY', now(), 1, 1, 1, 1, {})",
                bridge.port
            ))
            .await
            .unwrap();
    }

    state.start_again().unwrap();
    for bridge in [&a, &b] {
        until(bridge, "reconnected", |s| {
            s["state"]["connected"] == true && names(s) == ["a", "b"]
        });
    }
    let (code, body) = put_reads(&b, r#"{"source":"primary"}"#);
    assert_eq!(code, 200, "{body}");
    until(&a, "a follows b after the outage", |s| {
        s["tables"][0]["reads"] == "primary"
    });
    // Both sessions' writes were mirrored by their own instance.
    wait_applied(&a);
    wait_applied(&b);
    let rows = psql_on(c.secondary_port, &db, "SELECT count(*) FROM data_bars");
    assert_eq!(rows.trim(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_after_a_write_switch_adopts_it_before_it_writes() {
    let c = cluster();
    let (a, b, db) = pair("state_writes", None);
    until(&a, "b listed", |s| names(s) == ["a", "b"]);
    drop(b);
    until(&a, "b no longer live", |s| names(s) == ["a"]);
    let (code, body) = http(
        a.admin_port,
        "PUT",
        "/api/tables/derived_data_bars/writes",
        Some(TOKEN),
        Some(r#"{"target":"secondary","force":true,"reason":"alone"}"#),
    );
    assert_eq!(code, 200, "{body}");

    // A new instance (its own, empty journal and writes.json) comes up with writes on the
    // secondary, and its sessions' writes go there at once.
    let c2 = another(&db, "c", None);
    until(&c2, "c adopted the direction", |s| {
        s["tables"][0]["writes"] == "secondary"
    });
    let client = connect(&c2.conn_str("postgres", "", &db)).await;
    client
        .batch_execute(&format!(
            "{INSERT} ('DXY', '2026-05-05 00:00:00+00', 1, 1, 1, 1, 7)"
        ))
        .await
        .unwrap();
    let on_target = psql_on(
        c.secondary_port,
        &db,
        "SELECT volume FROM data_bars WHERE ts = '2026-05-05 00:00:00+00'",
    );
    assert_eq!(on_target.trim(), "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_whose_instance_is_killed_goes_on_on_the_other() {
    let c = cluster();
    let (mut a, b, db) = pair("state_jobs", None);
    common::jobs::insert_unmirrored(c.primary_port, &db, 6000);
    // Throttled, so that it is still running when its instance dies.
    let id = common::jobs::start_job(&a, r#"{"max_rows_per_sec":1000,"chunk_rows":200}"#);
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::jobs::job(&a, id)["rows_done"].as_i64().unwrap_or(0) < 400 {
        assert!(Instant::now() < deadline, "the backfill does not progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(common::jobs::job(&a, id)["owner"], "a");
    // The job runs on a: b refuses a second one on the table.
    let (code, answer) = common::jobs::start(&b, "derived_data_bars", "{}");
    assert_eq!(code, 409, "{answer}");
    a.signal(9);
    a.wait_exit(Duration::from_secs(10));

    // Its lease lapses; b takes it over, resumes after the last chunk a applied, and ends it.
    let done = common::jobs::wait_state_within(&b, id, "done", Duration::from_secs(60));
    assert_eq!(done["owner"], "b", "{done}");
    let expected = psql_on(c.primary_port, &db, common::jobs::EXPECTED);
    let actual = psql_on(c.secondary_port, &db, common::jobs::ACTUAL);
    assert_eq!(expected, actual);
    assert!(b.log().contains("resuming the job"), "{}", b.log());
}

#[test]
fn a_read_switch_to_the_secondary_waits_for_every_instances_mirror() {
    let c = cluster();
    let (a, db) = first("state_reads_agree", None);
    // Instance b mirrors to a secondary of its own, which then goes away; it shares the state
    // with a all the same.
    let mut own = PgServer::start(&PgOptions::default())
        .unwrap_or_else(|e| panic!("cannot start PostgreSQL for the tests: {e}"));
    psql_on(own.port(), "postgres", &format!("CREATE DATABASE {db}"));
    psql_on(own.port(), &db, SECONDARY_DDL);
    let state_url = format!("postgres://postgres@127.0.0.1:{}/{db}", c.secondary_port);
    let (port, admin, config) = dxy_config(
        &format!("postgres://postgres@127.0.0.1:{}/{db}", c.primary_port),
        &format!("postgres://postgres@127.0.0.1:{}/{db}", own.port()),
        DXY_RULE,
        &state_section("b", Some(&state_url)),
    );
    let b = Bridge::start_with_config(port, admin, &config);
    until(&a, "both listed", |s| names(s) == ["a", "b"]);
    own.stop().unwrap();
    // A write through b that its applier cannot apply.
    psql_script(
        &b.conn_str("postgres", "", &db),
        &format!("{INSERT} ('DXY', now(), 1, 1, 1, 1, 1);"),
    );
    until(&b, "b's applier without its secondary", |s| {
        s["mirror"]["connected"] == false
            && s["mirror"]["journal_seq"].as_u64() > s["mirror"]["applied_seq"].as_u64()
    });
    let (code, body) = put_reads(&a, r#"{"source":"secondary","reason":"cut over"}"#);
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("instance b is not ready: the mirror"),
        "{body}"
    );
    println!("a's switch: {body}");
    assert_eq!(status(&a)["tables"][0]["reads"], "primary");
    assert_eq!(status(&b)["tables"][0]["reads"], "primary");
    // Forced past the gate, it goes through, and b follows.
    let (code, body) = put_reads(
        &a,
        r#"{"source":"secondary","reason":"cut over","force":true}"#,
    );
    assert_eq!(code, 200, "{body}");
    until(&b, "b follows the forced switch", |s| {
        s["tables"][0]["reads"] == "secondary"
    });
}

/// Two instances in front of one database (the target in the primary's database), on one
/// state.
fn two_on_one_database(hint: &str) -> (Bridge, Bridge, String) {
    let port = cluster().primary_port;
    let db = fresh_db(hint);
    psql_on(port, &db, PRIMARY_DDL);
    psql_on(port, &db, "TRUNCATE derived_data_bars");
    psql_on(port, &db, common::writes::target_ddl());
    let url = format!("postgres://postgres@127.0.0.1:{port}/{db}");
    let start = |name: &str| {
        let (p, admin, config) = dxy_config(&url, &url, DXY_RULE, &state_section(name, None));
        Bridge::start_with_config(p, admin, &config)
    };
    let (a, b) = (start("a"), start("b"));
    for bridge in [&a, &b] {
        until(bridge, "both listed", |s| names(s) == ["a", "b"]);
    }
    (a, b, db)
}

fn put_writes(bridge: &Bridge, body: &str) -> (u16, String) {
    http(
        bridge.admin_port,
        "PUT",
        "/api/tables/derived_data_bars/writes",
        Some(TOKEN),
        Some(body),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_switch_under_load_through_two_instances_is_agreed_and_loses_nothing() {
    let (a, b, db) = two_on_one_database("state_switch");
    let (stop, writers) = common::writes::writers(&[&a, &b, &a, &b], &db, |n, round| {
        let minute = n * 100_000 + round;
        format!(
            "BEGIN; {INSERT} ('DXY', '2026-01-01'::timestamptz + {minute} * interval '1 minute', 1, 1, 1, 1, {n}); \
             UPDATE derived_data_bars SET volume = volume + 1 WHERE symbol = 'DXY' \
             AND ts = '2026-01-01'::timestamptz + {minute} * interval '1 minute'; COMMIT"
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let (code, body) = put_writes(
        &a,
        r#"{"target":"secondary","force":true,"timeout_ms":10000}"#,
    );
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    println!(
        "switch to secondary agreed by both: paused {} ms",
        answer["paused_ms"]
    );
    // The other instance set the direction with the decision.
    assert_eq!(status(&b)["tables"][0]["writes"], "secondary");
    assert!(b.log().contains("write switch agreed"), "{}", b.log());
    std::thread::sleep(Duration::from_millis(700));
    // And back, through the other instance.
    let (code, body) = put_writes(&b, r#"{"target":"primary","timeout_ms":10000}"#);
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(&a)["tables"][0]["writes"], "primary");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in writers {
        total += w.await.unwrap();
    }
    assert!(total > 20, "{total} transactions");
    // Every transaction is in the legacy table once, updated once; the target is its image.
    let port = cluster().primary_port;
    let rows = psql_on(
        port,
        &db,
        "SELECT count(*), count(*) FILTER (WHERE volume = 1 + (extract(epoch FROM ts - '2026-01-01') / 60)::int / 100000) FROM derived_data_bars",
    );
    assert_eq!(rows.trim(), format!("{total}|{total}"));
    wait_applied(&b);
    common::writes::assert_images_equal(&a, port, &db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_open_on_the_other_instance_aborts_the_switch_for_both() {
    let (a, b, db) = two_on_one_database("state_abort");
    let client = connect(&b.conn_str("postgres", "", &db)).await;
    client
        .batch_execute(&format!(
            "BEGIN; {INSERT} ('DXY', '2026-06-01', 1, 1, 1, 1, 1)"
        ))
        .await
        .unwrap();
    let (code, body) = put_writes(
        &a,
        r#"{"target":"secondary","force":true,"timeout_ms":800}"#,
    );
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("sessions of b"), "{body}");
    for bridge in [&a, &b] {
        assert_eq!(status(bridge)["tables"][0]["writes"], "primary");
    }
    // Released: the transaction goes on and commits, and new writes through both run.
    client.batch_execute("COMMIT").await.unwrap();
    for bridge in [&a, &b] {
        let c = connect(&bridge.conn_str("postgres", "", &db)).await;
        c.batch_execute(&format!(
            "{INSERT} ('DXY', now(), 1, 1, 1, 1, {})",
            bridge.port
        ))
        .await
        .unwrap();
    }
    let rows = psql_on(
        cluster().primary_port,
        &db,
        "SELECT count(*) FROM derived_data_bars",
    );
    assert_eq!(rows.trim(), "3");
}
