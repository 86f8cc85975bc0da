//! The dashboard in a real browser: pgbridge in front of real servers with a backfilled table, a
//! verify that found two rows different and its reconciliation groups, and a read switch in the
//! audit trail; headless Chromium loads `GET /` and the test reads what it rendered. A
//! divergence planted while the page is open appears on it without a reload. A screenshot is
//! saved in the target directory.

mod common;

use std::time::Duration;

use common::cdp::Browser;
use common::dxy::*;
use common::jobs::*;
use common::*;

const TABLE: &str = "[data-table=\"derived_data_bars\"]";

#[test]
fn the_dashboard_shows_each_tables_migration_and_follows_it_live() {
    let c = cluster();
    let (bridge, db) = with_unmirrored_rows_rule("dashboard", 3000, &reconciled_rule(), "");
    let backfill = backfilled(&bridge)["id"].as_i64().unwrap();
    // Two rows made different behind pgbridge: one changed, one gone.
    psql_on(
        c.secondary_port,
        &db,
        "UPDATE data_bars SET close_px = close_px + 5000 WHERE ts = '2026-01-01 00:05:00+00'; \
         DELETE FROM data_bars WHERE ts = '2026-01-02 00:10:00+00'",
    );
    let (code, answer) = post(
        &bridge,
        "/api/verify",
        "{\"tables\":[\"derived_data_bars\"],\"max_rows_per_sec\":0}",
    );
    assert_eq!(code, 202, "{answer}");
    let verify = answer["job"].as_i64().unwrap();
    let result = wait_state(&bridge, verify, "done");
    assert_eq!(result["result"]["tables"][0]["missing"], 1, "{result}");
    set_reads(&bridge, "shadow");
    let phase = status(&bridge)["tables"][0]["phase"]
        .as_str()
        .unwrap()
        .to_string();

    // The page and its assets, as the browser gets them: read-only, nothing from elsewhere.
    let (code, page) = bridge.admin_get("/");
    assert_eq!(code, 200);
    assert!(page.contains("<title>pgbridge</title>"), "{page}");
    let (code, _) = http(bridge.admin_port, "POST", "/", Some(TOKEN), Some("{}"));
    assert_eq!(code, 405, "the dashboard changes nothing");
    let headers = raw_headers(bridge.admin_port, "/dashboard.js");
    assert!(
        headers.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{headers}"
    );
    assert!(
        headers.contains("content-type: text/javascript"),
        "{headers}"
    );

    let mut browser = Browser::launch();
    let url = format!("http://127.0.0.1:{}/", bridge.admin_port);
    let tab = browser.open(&url, 1400, 2000);
    browser.wait_for(
        &tab,
        "document.body.dataset.refreshed",
        Duration::from_secs(20),
    );
    let title = eval_text(&mut browser, &tab, &format!("{TABLE} .title"));
    assert!(
        title.contains("derived_data_bars") && title.contains("data_bars"),
        "{title}"
    );
    let shown = browser.eval(
        &tab,
        &format!("document.querySelector('{TABLE} .phase').dataset.phase"),
    );
    assert_eq!(shown, phase.as_str(), "the phase status gives");
    let facts = eval_text(&mut browser, &tab, &format!("{TABLE} .facts"));
    assert!(facts.contains("shadow"), "the read flag: {facts}");
    // The verify and its reconciliation groups, coloured by status.
    let verified = eval_text(&mut browser, &tab, &format!("{TABLE} .verify"));
    assert!(
        verified.contains("differences found") && verified.contains("missing 1"),
        "{verified}"
    );
    let critical = browser.wait_for(
        &tab,
        &format!("document.querySelectorAll('{TABLE} tr.status-CRITICAL').length"),
        Duration::from_secs(10),
    );
    assert!(critical.as_u64().unwrap() >= 1);
    let matched = browser.eval(
        &tab,
        &format!("document.querySelectorAll('{TABLE} tr.status-MATCHED').length"),
    );
    assert!(matched.as_u64().unwrap() >= 1, "{matched}");
    let colour = browser.eval(
        &tab,
        &format!("getComputedStyle(document.querySelector('{TABLE} tr.status-CRITICAL td:last-child')).color"),
    );
    assert_eq!(colour, "rgb(198, 40, 40)", "CRITICAL is red");
    // The jobs with their progress, the instance, the audit trail.
    for job in [backfill, verify] {
        let row = eval_text(&mut browser, &tab, &format!("#jobs tr[data-job=\"{job}\"]"));
        assert!(
            row.contains("done") && row.contains("100%"),
            "job {job}: {row}"
        );
    }
    let instances = browser.eval(
        &tab,
        "document.querySelectorAll('#instances tbody tr').length",
    );
    assert_eq!(instances, 1);
    let audit = eval_text(&mut browser, &tab, "#audit tbody");
    assert!(audit.contains("primary → shadow"), "{audit}");
    // The verify's two differences are divergences too; no read has differed yet.
    let before = eval_text(&mut browser, &tab, &format!("{TABLE} .divergences"));
    assert!(
        before.contains("verify_mismatch: 2") && !before.contains("read_mismatch"),
        "{before}"
    );

    // A divergence planted now appears on the open page.
    psql_on(
        c.secondary_port,
        &db,
        "UPDATE data_bars SET close_px = close_px + 1 WHERE ts = '2026-01-01 00:07:00+00'",
    );
    let (out, rc) = psql_script(
        &bridge.conn_str("postgres", "", &db),
        "SELECT close FROM derived_data_bars WHERE symbol = 'DXY' AND ts = '2026-01-01 00:07:00+00';",
    );
    assert_eq!(rc, 0, "{out}");
    browser.wait_for(
        &tab,
        &format!("document.querySelector('{TABLE} [data-kind=\"read_mismatch\"]')?.innerText === 'read_mismatch: 1'"),
        Duration::from_secs(10),
    );
    // And in the chart of divergences over time, once a sample has it.
    browser.wait_for(
        &tab,
        &format!("document.querySelectorAll('{TABLE} .divergences svg rect.k0').length"),
        Duration::from_secs(20),
    );
    let health = eval_text(&mut browser, &tab, "#health");
    assert_eq!(health, "healthy");

    let shot = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.screenshot(&tab, &shot);
    println!("the dashboard's screenshot: {}", shot.display());
    let errors = browser.errors();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
}

/// The rendered text of the first element `selector` matches, or empty.
fn eval_text(browser: &mut Browser, tab: &common::cdp::Page, selector: &str) -> String {
    let js = format!(
        "(document.querySelector({}) || {{innerText: ''}}).innerText",
        serde_json::to_string(selector).unwrap()
    );
    browser.eval(tab, &js).as_str().unwrap_or("").to_string()
}

/// The response headers of `GET path` on the admin listener, lower-cased.
fn raw_headers(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let head = reply.split("\r\n\r\n").next().unwrap_or("");
    head.to_lowercase()
}
