//! Verify and repair against real servers: a verify after a backfill is clean, also while a
//! workload writes through pgbridge; rows changed, deleted and added straight on the secondary
//! are reported exactly (with `verify_mismatch` records and exit 3), a repair fixes them, and
//! the next verify is clean.

mod common;

use common::dxy::*;
use common::jobs::*;
use common::*;

const ROWS: usize = 3000;

/// The report's line of one group and metric, split at its commas.
fn report_line(csv: &str, group: &str, metric: &str) -> Vec<String> {
    let line = csv
        .lines()
        .find(|l| l.contains(&format!(",{group},{metric},")))
        .unwrap_or_else(|| panic!("no {group} {metric} in\n{csv}"));
    line.split(',').map(str::to_string).collect()
}

fn ts(i: usize) -> String {
    format!("'2026-01-01 00:00:00+00'::timestamptz + {i} * interval '1 minute'")
}

/// The text pgbridge gives a key's ts: ISO in UTC.
fn ts_text(i: usize) -> String {
    let c = cluster();
    psql_on(
        c.primary_port,
        "postgres",
        &format!("SET TimeZone = 'UTC'; SELECT ({})::text", ts(i)),
    )
    .trim()
    .to_string()
}

fn verify_json(bridge: &Bridge, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["--json", "verify"];
    all.extend_from_slice(args);
    let out = ctl(bridge, &all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let job = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {out:?}\n{}", bridge.log()));
    (out.status.code().unwrap(), job)
}

#[test]
fn verify_reports_exactly_the_rows_changed_behind_pgbridge_and_repair_fixes_them() {
    let (bridge, db) = with_unmirrored_rows_rule("verify_repair", ROWS, &reconciled_rule(), "");
    backfilled(&bridge);
    let (code, job) = verify_json(&bridge, &["derived_data_bars", "--chunk-rows", "700"]);
    assert_eq!(code, 0, "{job}");
    let t = &job["result"]["tables"][0];
    assert_eq!(t["matched"], ROWS as u64, "{job}");
    assert_eq!(job["result"]["clean"], true);

    let c = cluster();
    let sql = format!(
        "UPDATE data_bars SET close_px = close_px + 1 WHERE ts IN ({}, {}, {}); \
         DELETE FROM data_bars WHERE ts IN ({}, {}); \
         INSERT INTO data_bars VALUES ('DXY.IDX', '1m', {}, 1, 1, 1, 1, 1, true); \
         INSERT INTO data_bars VALUES ('EUR', '1m', {}, 1, 1, 1, 1, 1, true);",
        ts(10),
        ts(1500),
        ts(2999),
        ts(0),
        ts(2100),
        ts(ROWS + 7),
        ts(5)
    );
    psql_on(c.secondary_port, &db, &sql);
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("report.csv");
    let report = csv_path.to_str().unwrap();
    let (code, job) = verify_json(&bridge, &["--chunk-rows", "1000", "--report", report]);
    assert_eq!(code, 3, "{job}");
    // Days of 1,440 one-minute bars: a count off by one is critical, a sum within its bounds is
    // not; the deleted first row had volume 0.
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    assert_eq!(
        csv.lines().next().unwrap(),
        "date,table,group,metric,primary_value,secondary_value,difference,status"
    );
    assert_eq!(csv.lines().count(), 1 + 3 * 3, "{csv}");
    let day1 = "DXY|2026-01-01 00:00:00+00";
    assert_eq!(
        report_line(&csv, day1, "count")[4..],
        ["1440", "1439", "1", "CRITICAL"]
    );
    assert_eq!(
        report_line(&csv, day1, "sum(volume)")[7],
        "MATCHED",
        "{csv}"
    );
    let day2 = "DXY|2026-01-02 00:00:00+00";
    assert_eq!(report_line(&csv, day2, "count")[7], "CRITICAL", "{csv}");
    let day3 = "DXY|2026-01-03 00:00:00+00";
    let close3 = report_line(&csv, day3, "sum(close)");
    // One close one higher on the target, and its extra row's close of 1.
    assert_eq!(close3[6].parse::<f64>().unwrap(), -2.0, "{csv}");
    assert_eq!(close3[7], "WITHIN_TOLERANCE", "{csv}");
    let (code, served) = bridge.admin_get(&format!("/api/jobs/{}/report.csv", job["id"]));
    assert_eq!((code, served.as_str()), (200, csv.as_str()));
    let shown = ctl(&bridge, &["jobs", &job["id"].to_string()]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!(
            "derived_data_bars: {} matched, 2 missing, 1 extra, 3 differing",
            ROWS - 5
        )),
        "ctl jobs ID tells what the verify found: {shown}"
    );
    let t = &job["result"]["tables"][0];
    assert_eq!(
        (&t["matched"], &t["missing"], &t["extra"], &t["differing"]),
        (
            &serde_json::json!(ROWS - 5),
            &serde_json::json!(2),
            &serde_json::json!(1),
            &serde_json::json!(3)
        ),
        "the EUR row is not the rule's: {t}"
    );
    let keys = |what: &str| -> Vec<String> {
        let mut k: Vec<String> = t["samples"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["what"] == what)
            .map(|s| s["key"][1].as_str().unwrap().to_string())
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys("missing"), vec![ts_text(0), ts_text(2100)]);
    assert_eq!(keys("extra"), vec![ts_text(ROWS + 7)]);
    assert_eq!(
        keys("differing"),
        vec![ts_text(10), ts_text(1500), ts_text(2999)]
    );
    let differing = t["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["what"] == "differing");
    assert_eq!(differing.unwrap()["columns"], serde_json::json!(["close"]));
    // The tests' logs are not redacted: the values are shown, in the source's names.
    let (p, s) = (
        &differing.unwrap()["primary"]["close"],
        &differing.unwrap()["secondary"]["close"],
    );
    let value = |v: &serde_json::Value| v.as_str().unwrap().parse::<f64>().unwrap();
    assert_eq!(value(s) - value(p), 1.0, "{differing:?}");
    let records = divergence_records(&bridge, 6);
    let mismatches: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "verify_mismatch")
        .collect();
    assert_eq!(mismatches.len(), 6, "{records:#?}");
    assert!(mismatches.iter().all(|r| r["table"] == "derived_data_bars"));

    let out = ctl(&bridge, &["--json", "repair", "derived_data_bars"]);
    assert!(out.status.success(), "{out:?}\n{}", bridge.log());
    let repair: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(repair["result"]["keys"], 6, "{repair}");
    assert_eq!(repair["result"]["clean"], true, "{repair}");
    let eur = psql_on(
        c.secondary_port,
        &db,
        "SELECT count(*) FROM data_bars WHERE symbol = 'EUR'",
    );
    assert_eq!(
        eur.trim(),
        "1",
        "a row outside the rule is not the repair's"
    );
    psql_on(
        c.secondary_port,
        &db,
        "DELETE FROM data_bars WHERE symbol = 'EUR'",
    );
    wait_applied(&bridge);
    assert_equal(&db);
    let (code, job) = verify_json(&bridge, &["--report", report]);
    assert_eq!(code, 0, "{job}");
    assert_eq!(job["result"]["tables"][0]["matched"], ROWS as u64);
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    assert_eq!(csv.matches(",MATCHED").count(), 9, "{csv}");
}

#[test]
fn a_verify_while_the_applications_write_reports_no_difference() {
    let (bridge, db) = with_unmirrored_rows_and("verify_live", ROWS, "");
    backfilled(&bridge);
    let conn = bridge.conn_str("postgres", "", &db);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (conn, stop) = (conn.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut round = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let i = (round * 37 + w * 1000) % ROWS;
                    let script = format!(
                        "UPDATE derived_data_bars SET close = close + 1 WHERE symbol = 'DXY' AND ts = {a};\n\
                         DELETE FROM derived_data_bars WHERE symbol = 'DXY' AND ts = {b};\n\
                         INSERT INTO derived_data_bars VALUES ('DXY', {n}, 1, 2, 0.5, 1.5, 1) \
                         ON CONFLICT (symbol, ts) DO UPDATE SET volume = derived_data_bars.volume + 1;\n\
                         UPDATE derived_data_bars SET ts = ts + interval '10 years' WHERE symbol = 'DXY' AND ts = {d};\n",
                        a = ts(i),
                        b = ts((i + 11) % ROWS),
                        n = ts(ROWS + (round % 50)),
                        d = ts((i + 23) % ROWS),
                    );
                    let (out, code) = psql_script(&conn, &script);
                    assert_eq!(code, 0, "{out}");
                    round += 1;
                }
                round
            })
        })
        .collect();
    let (code, job) = verify_json(
        &bridge,
        &[
            "derived_data_bars",
            "--chunk-rows",
            "300",
            "--max-rows-per-sec",
            "3000",
        ],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(
        rounds > 10,
        "the workload ran during the verify ({rounds} rounds)"
    );
    let t = &job["result"]["tables"][0];
    assert_eq!(
        code,
        0,
        "writes through pgbridge are no difference: {job}\n{}",
        bridge.log()
    );
    assert_eq!(t["differing"], 0);
    assert!(t["matched"].as_u64().unwrap() > (ROWS as u64) / 2, "{t}");
    wait_applied(&bridge);
    assert_equal(&db);
}

#[test]
fn a_keyless_rule_and_an_unknown_table_are_refused_and_a_repair_needs_a_verify() {
    let (bridge, _db) = with_unmirrored_rows_and("verify_refused", 10, "");
    let (code, answer) = post(&bridge, "/api/verify", "{\"tables\":[\"nosuch\"]}");
    assert_eq!(code, 404, "{answer}");
    let (code, answer) = post(&bridge, "/api/tables/derived_data_bars/repair", "{}");
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("no verify"),
        "{answer}"
    );
    let out = ctl(&bridge, &["verify", "nosuch"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let (code, _) = http(bridge.admin_port, "POST", "/api/verify", None, Some("{}"));
    assert_eq!(code, 401);
}

#[test]
fn a_merge_through_pgbridge_reaches_the_target_by_the_automatic_repair() {
    let (bridge, db) = with_unmirrored_rows_and("verify_merge", 500, "");
    backfilled(&bridge);
    let conn = bridge.conn_str("postgres", "", &db);
    // A MERGE that inserts one row, updates another and deletes a third: the mirror captures
    // none of it (no RETURNING for MERGE before PostgreSQL 17).
    let script = format!(
        "MERGE INTO derived_data_bars d USING (VALUES ({new}, 1), ({upd}, 2), ({del}, 3)) \
         AS x(ts, what) ON d.symbol = 'DXY' AND d.ts = x.ts \
         WHEN MATCHED AND x.what = 2 THEN UPDATE SET close = 42 \
         WHEN MATCHED AND x.what = 3 THEN DELETE \
         WHEN NOT MATCHED THEN INSERT VALUES ('DXY', x.ts, 1, 1, 1, 1, 1);\n",
        new = ts(900),
        upd = ts(10),
        del = ts(20),
    );
    let (out, code) = psql_script(&conn, &script);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("MERGE 3"), "{out}");
    // Marked, then verified and repaired by itself (the jobs below say so), then unmarked.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s = status(&bridge);
        let t = &s["tables"][0];
        if t["needs_repair"].is_null() && t["last_verify"]["job"].is_i64() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{s}\n{}",
            bridge.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    wait_applied(&bridge);
    assert_equal(&db);
    let (_, jobs) = bridge.admin_get("/api/jobs");
    let jobs: serde_json::Value = serde_json::from_str(&jobs).unwrap();
    let kinds: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["repair", "verify", "backfill"], "{jobs}");
    let verify = &jobs[1]["result"]["tables"][0];
    assert_eq!(
        (&verify["missing"], &verify["extra"], &verify["differing"]),
        (
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(1)
        ),
        "{verify}"
    );
    assert!(metric(&bridge, "pgbridge_table_needs_repair", "derived_data_bars") == 0.0);
}

#[test]
fn status_shows_the_last_verify_and_how_many_in_a_row_were_clean() {
    let (bridge, _db) = with_unmirrored_rows_and("verify_status", 200, "");
    // A backfill's rate is bounded unless asked otherwise.
    let id = start_job(&bridge, "{}");
    assert_eq!(wait_state(&bridge, id, "done")["max_rows_per_sec"], 5000);
    for _ in 0..3 {
        let (code, job) = verify_json(&bridge, &[]);
        assert_eq!(code, 0, "{job}");
    }
    let s = status(&bridge);
    let v = &s["tables"][0]["last_verify"];
    assert_eq!(v["clean"], true, "{s}");
    assert_eq!(v["matched"], 200);
    assert_eq!(v["consecutive_clean"], 3, "{s}");
    assert_eq!(v["current"], true, "clean and younger than a day: {v}");
    assert!(v["age_seconds"].as_f64().unwrap() < 60.0, "{v}");
    assert_eq!(s["tables"][0]["backfill"]["state"], "done");
    assert!(metric(&bridge, "pgbridge_verify_rows_total", "derived_data_bars") >= 600.0);
}

#[test]
fn a_verify_resumes_after_a_sigkill_and_counts_every_row_once() {
    const N: usize = 20_000;
    let (mut bridge, db) = with_unmirrored_rows_and("verify_kill", N, "");
    backfilled(&bridge);
    let c = cluster();
    psql_on(
        c.secondary_port,
        &db,
        &format!("DELETE FROM data_bars WHERE ts = {}", ts(N - 2)),
    );
    let body = "{\"tables\":[\"derived_data_bars\"],\"chunk_rows\":500,\"max_rows_per_sec\":4000}";
    let (code, answer) = post(&bridge, "/api/verify", body);
    assert_eq!(code, 202, "{answer}");
    let id = answer["job"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while job(&bridge, id)["rows_done"].as_i64().unwrap() < 3000 {
        assert!(std::time::Instant::now() < deadline, "{}", bridge.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bridge.signal(9);
    bridge.wait_exit(std::time::Duration::from_secs(5));
    let before = job_after_restart(&mut bridge, id);
    assert!(before < N as i64, "killed in the middle: {before}");
    let done = wait_state(&bridge, id, "done");
    let t = &done["result"]["tables"][0];
    assert_eq!(t["matched"], N as u64 - 1, "{done}");
    assert_eq!(t["missing"], 1, "{done}");
    assert_eq!(
        done["rows_done"], N as u64,
        "every row compared once: {done}"
    );
    assert_eq!(done["result"]["clean"], false);
}

/// Restarts a killed bridge; the job's rows done as the restarted process found them.
fn job_after_restart(bridge: &mut Bridge, id: i64) -> i64 {
    bridge.restart();
    job(bridge, id)["rows_done"].as_i64().unwrap()
}
