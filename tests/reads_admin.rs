//! The read flags through the real binary: the admin API, `pgbridge ctl reads`, the safety
//! gate, the audit log and rules hot reload.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{cluster, fresh_db, http, psql_on, Bridge};
use pgbridge::pgcluster::free_port;

const DXY_RULES: &str = include_str!("../rules/dxy.toml");

/// A bridge over fresh DXY databases with `rules` in `rules/dxy.toml` and `[admin] token = "t"`.
fn dxy_bridge(rules: &str) -> Bridge {
    let c = cluster();
    let db = fresh_db("reads");
    psql_on(
        c.primary_port,
        &db,
        include_str!("../docker/primary-init.sql"),
    );
    psql_on(
        c.secondary_port,
        &db,
        include_str!("../docker/secondary-init.sql"),
    );
    let (port, admin_port) = (free_port().unwrap(), free_port().unwrap());
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules/dxy.toml"), rules).unwrap();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
         rules = \"{rules}\"\n\
         [primary]\nurl = \"postgres://postgres@127.0.0.1:{p}/{db}\"\n\
         [secondary]\nurl = \"postgres://postgres@127.0.0.1:{s}/{db}\"\n\
         shared_tables = [\"instruments\"]\n\
         [mirror]\njournal_dir = \"{dir}/journal\"\n\
         [divergence]\nlog = \"{dir}/divergences.jsonl\"\n\
         [admin]\ntoken = \"t\"\naudit_log = \"{dir}/audit.jsonl\"\n",
        rules = dir.join("rules").display(),
        p = c.primary_port,
        s = c.secondary_port,
        dir = dir.display(),
    );
    let bridge = Bridge::start_with_config(port, admin_port, &config);
    std::fs::write(
        bridge.dir.path().join("state-dir"),
        dir.display().to_string(),
    )
    .unwrap();
    bridge
}

fn state_dir(b: &Bridge) -> std::path::PathBuf {
    std::fs::read_to_string(b.dir.path().join("state-dir"))
        .unwrap()
        .into()
}

fn status(b: &Bridge) -> serde_json::Value {
    let (code, body) = b.admin_get("/api/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn table(b: &Bridge) -> serde_json::Value {
    status(b)["tables"][0].clone()
}

fn put(b: &Bridge, table: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let (code, body) = http(
        b.admin_port,
        "PUT",
        &format!("/api/tables/{table}/reads"),
        token,
        Some(body),
    );
    (code, serde_json::from_str(&body).unwrap_or_default())
}

fn ctl(admin_port: u16, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgbridge"))
        .args(["ctl", "--admin"])
        .arg(format!("http://127.0.0.1:{admin_port}"))
        .args(["--token", "t", "reads"])
        .args(args)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn wait_for(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn audit(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn read_flags_through_the_admin_api_and_ctl() {
    let b = dxy_bridge(DXY_RULES);
    let dir = state_dir(&b);
    assert_eq!(table(&b)["reads"], "primary");

    // Bad requests.
    let body = r#"{"source":"shadow","reason":"compare first"}"#;
    assert_eq!(put(&b, "derived_data_bars", None, body).0, 401);
    assert_eq!(put(&b, "derived_data_bars", Some("wrong"), body).0, 401);
    let (code, answer) = put(&b, "derived_data_bars", Some("t"), r#"{"source":"both"}"#);
    assert_eq!(code, 400, "{answer}");
    let (code, answer) = put(&b, "no_such_table", Some("t"), body);
    assert_eq!(code, 404, "{answer}");

    // A change: 200 with the new state, live in status at once.
    let (code, answer) = put(&b, "derived_data_bars", Some("t"), body);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["reads"], "shadow");
    assert_eq!(answer["previous"], "primary");
    assert_eq!(answer["changed"], true);
    assert_eq!(table(&b)["reads"], "shadow");

    // The healthy mirror lets secondary through once the applier is connected.
    wait_for("the gate to open", || {
        put(
            &b,
            "derived_data_bars",
            Some("t"),
            r#"{"source":"secondary"}"#,
        )
        .0 == 200
    });
    assert_eq!(table(&b)["reads"], "secondary");
    let (code, out) = ctl(
        b.admin_port,
        &["derived_data_bars", "primary", "--reason", "rollback"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("reads now served by primary (was secondary)"),
        "{out}"
    );

    // A reload that changes the mirror keeps the runtime flag (the rule's `reads` is the same).
    let (code, _) = put(&b, "derived_data_bars", Some("t"), body);
    assert_eq!(code, 200);
    let off = DXY_RULES.replace("mirror = \"rows\"", "mirror = \"off\"");
    std::fs::write(dir.join("rules/dxy.toml"), &off).unwrap();
    wait_for("the reload", || table(&b)["mirror"] == "off");
    assert_eq!(table(&b)["reads"], "shadow");

    // Unmirrored: the gate refuses secondary (409, saying why) unless forced.
    let (code, answer) = put(
        &b,
        "derived_data_bars",
        Some("t"),
        r#"{"source":"secondary"}"#,
    );
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("mirror"),
        "{answer}"
    );
    let (code, out) = ctl(
        b.admin_port,
        &["derived_data_bars", "secondary", "--reason", "x"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("409"), "{out}");
    assert_eq!(table(&b)["reads"], "shadow");
    let (code, out) = ctl(
        b.admin_port,
        &[
            "derived_data_bars",
            "secondary",
            "--reason",
            "cutover",
            "--force",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("forced past:"), "{out}");
    assert_eq!(table(&b)["reads"], "secondary");
    // Rollback is always open.
    let (code, out) = ctl(b.admin_port, &["derived_data_bars", "primary"]);
    assert_eq!(code, 0, "{out}");

    // The rule file's own `reads` changed: the rule file wins.
    std::fs::write(
        dir.join("rules/dxy.toml"),
        off.replace("reads = \"primary\"", "reads = \"shadow\""),
    )
    .unwrap();
    wait_for("the rule file's reads", || table(&b)["reads"] == "shadow");

    // ctl's exit codes: 1 for 400 and 404, 2 when the admin API is unreachable.
    assert_eq!(ctl(b.admin_port, &["derived_data_bars", "both"]).0, 1);
    assert_eq!(ctl(b.admin_port, &["nope", "primary"]).0, 1);
    assert_eq!(
        ctl(free_port().unwrap(), &["derived_data_bars", "primary"]).0,
        2
    );

    // Every change in the audit log, in order, with its reason.
    let lines = audit(&dir);
    let moves: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["from"].as_str().unwrap().to_string(),
                l["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("primary", "shadow"),
        ("shadow", "secondary"),
        ("secondary", "primary"),
        ("primary", "shadow"),
        ("shadow", "secondary"),
        ("secondary", "primary"),
        ("primary", "shadow"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(moves, expected, "{lines:#?}");
    assert_eq!(lines[0]["reason"], "compare first");
    assert_eq!(lines[0]["table"], "derived_data_bars");
    assert_eq!(lines[2]["reason"], "rollback");
    assert!(lines[2]["who"].as_str().unwrap().ends_with("@ctl"));
    assert_eq!(lines[4]["forced"], true);
    assert_eq!(lines[4]["reason"], "cutover");
    assert_eq!(lines[6]["who"], "rules");
    assert!(lines
        .iter()
        .all(|l| l["ts"].as_str().unwrap().ends_with('Z')));
    assert!(b.log().contains("reads switched"), "{}", b.log());
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
