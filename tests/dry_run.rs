//! `--dry-run` on every `ctl` command that changes something, end to end against real servers:
//! what it prints and exits with, and that it changed nothing (flags, jobs, audit trail); the
//! read gate's shadow mismatch rate over its window; a named token recorded as `who`.

mod common;

use std::time::{Duration, Instant};

use common::dxy::*;
use common::jobs::*;
use common::*;

const ROWS: usize = 300;

fn json(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn audit_entries(bridge: &Bridge) -> Vec<serde_json::Value> {
    let (code, body) = bridge.admin_get("/api/audit");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["entries"].as_array().cloned().unwrap_or_default()
}

/// The audit trail once `ok` holds of it (the shared state takes its lines a moment later).
fn audit_until(
    bridge: &Bridge,
    ok: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = audit_entries(bridge);
        if ok(&entries) {
            return entries;
        }
        assert!(Instant::now() < deadline, "the audit trail: {entries:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn jobs(bridge: &Bridge) -> Vec<serde_json::Value> {
    let (code, body) = bridge.admin_get("/api/jobs");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn dry_runs_say_what_would_happen_and_change_nothing() {
    let extra = "[admin.tokens]\nalice = \"alice-token\"\n";
    let (bridge, db) = with_unmirrored_rows_and("dry_run", ROWS, extra);

    // A backfill: the rows it would copy; no job made.
    let out = ctl(
        &bridge,
        &["--json", "backfill", "derived_data_bars", "--dry-run"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let plan = json(&out);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["kind"], "backfill");
    assert_eq!(plan["rows"], ROWS as i64, "{plan}");
    let out = ctl(&bridge, &["backfill", "derived_data_bars", "--dry-run"]);
    assert!(
        text(&out).contains(&format!(
            "dry run, nothing changed: a backfill of derived_data_bars would copy {ROWS} rows"
        )),
        "{}",
        text(&out)
    );
    // A repair with no verify to work from: the refusal a start would get.
    let out = ctl(&bridge, &["repair", "derived_data_bars", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no verify"), "{}", text(&out));
    assert!(jobs(&bridge).is_empty(), "a dry run made a job");
    assert!(audit_entries(&bridge).is_empty());

    // The real backfill, then a verify's dry run.
    backfilled(&bridge);
    let out = ctl(&bridge, &["--json", "verify", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(json(&out)["rows"], ROWS as i64);
    assert_eq!(jobs(&bridge).len(), 1, "only the backfill");

    // Reads: the gate would let a switch to the secondary through; nothing switched.
    let out = ctl(
        &bridge,
        &[
            "reads",
            "derived_data_bars",
            "secondary",
            "--percent",
            "10",
            "--dry-run",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("reads would move from primary to secondary for 10% of the sessions")
            && said.contains("the gate would let it through"),
        "{said}"
    );
    assert_eq!(status(&bridge)["tables"][0]["reads"], "primary");

    // Shadow, with alice's token: she is who switched.
    let (code, answer) = http(
        bridge.admin_port,
        "PUT",
        "/api/tables/derived_data_bars/reads",
        Some("alice-token"),
        Some(r#"{"source":"shadow","reason":"compare first","who":"root@ctl"}"#),
    );
    assert_eq!(code, 200, "{answer}");
    let entries = audit_until(&bridge, |e| e.iter().any(|e| e["kind"] == "reads"));
    let switch = entries.iter().find(|e| e["kind"] == "reads").unwrap();
    assert_eq!(switch["who"], "alice (root@ctl)", "{switch}");
    let (code, _) = http(
        bridge.admin_port,
        "PUT",
        "/api/tables/derived_data_bars/reads",
        Some("not-a-token"),
        Some(r#"{"source":"primary"}"#),
    );
    assert_eq!(code, 401);
    // Job lines name their starter too.
    let started = entries.iter().find(|e| e["kind"] == "job").unwrap();
    assert_eq!(started["action"], "start");
    assert_eq!(started["job_kind"], "backfill");

    // A shadow read that differs: the gate's window now refuses the switch, and says so.
    let c = cluster();
    psql_on(
        c.secondary_port,
        &db,
        "UPDATE data_bars SET close_px = close_px + 1 WHERE ts = '2026-01-01 00:07:00+00'",
    );
    let conn = bridge.conn_str("postgres", "", &db);
    for minute in [7, 8, 9] {
        let sql = format!(
            "SELECT close FROM derived_data_bars WHERE symbol = 'DXY' AND ts = '2026-01-01 00:0{minute}:00+00';"
        );
        let (out, rc) = psql_script(&conn, &sql);
        assert_eq!(rc, 0, "{out}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&bridge)["divergences"]["by_kind"]["read_mismatch"] != 1 {
        assert!(
            Instant::now() < deadline,
            "no read_mismatch: {}",
            status(&bridge)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = ctl(
        &bridge,
        &[
            "--json",
            "reads",
            "derived_data_bars",
            "secondary",
            "--dry-run",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let verdict = json(&out);
    let refused: Vec<String> = serde_json::from_value(verdict["refused"].clone()).unwrap();
    assert!(
        refused.iter().any(|r| r
            .starts_with("1 of 3 shadow reads of derived_data_bars differed in the last 900 s")),
        "{refused:?}"
    );
    assert_eq!(verdict["evidence"]["shadow"]["compared"], 3, "{verdict}");
    let out = ctl(
        &bridge,
        &[
            "reads",
            "derived_data_bars",
            "secondary",
            "--force",
            "--dry-run",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("--force would override: "),
        "{}",
        text(&out)
    );
    assert_eq!(status(&bridge)["tables"][0]["reads"], "shadow");

    // Writes: refused without a verify (the secondary is another server here), nothing held.
    let out = ctl(
        &bridge,
        &[
            "--json",
            "writes",
            "derived_data_bars",
            "secondary",
            "--dry-run",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let verdict = json(&out);
    assert_eq!(verdict["would_change"], true);
    assert!(
        verdict["refused"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("verify")),
        "{verdict}"
    );
    assert_eq!(verdict["evidence"]["backfill"], "done", "{verdict}");
    assert_eq!(status(&bridge)["tables"][0]["writes"], "primary");
    // Only the real changes are in the trail: the backfill and the shadow switch.
    std::thread::sleep(Duration::from_millis(500));
    let kinds: Vec<String> = audit_entries(&bridge)
        .iter()
        .map(|e| format!("{}", e["kind"]))
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
}
