//! Hot reload: valid rule changes take effect, invalid ones leave the last good rules in force.

mod sql_support;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pgbridge::rules::reload::{start, Loader};
use pgbridge::rules::{ReadSource, RuleSet};

async fn wait_for(current: &ArcSwap<RuleSet>, what: &str, ok: impl Fn(&RuleSet) -> bool) {
    for _ in 0..100 {
        if ok(&current.load()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn rules_reload_on_change_and_sighup_and_keep_the_last_good_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dxy.toml");
    std::fs::write(&file, sql_support::DXY_RULES).unwrap();
    let loader = Loader {
        path: dir.path().to_path_buf(),
        primary: None,
        secondary: None,
    };
    let (current, task) = start(loader).await.unwrap();
    assert_eq!(current.load().rules().len(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let reads = |rs: &RuleSet| rs.lookup("derived_data_bars").map(|r| r.reads);
    std::fs::write(
        &file,
        sql_support::DXY_RULES.replace("reads = \"primary\"", "reads = \"shadow\""),
    )
    .unwrap();
    wait_for(&current, "the edited file", |rs| {
        reads(rs) == Some(ReadSource::Shadow)
    })
    .await;

    // An invalid edit is refused: the shadow rules stay.
    let before = current.load_full();
    std::fs::write(&file, "[[table]]\nsource = \"derived_data_bars\"\n").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(Arc::ptr_eq(&before, &current.load_full()));
    assert_eq!(reads(&current.load()), Some(ReadSource::Shadow));

    // A new file in the directory adds its rules.
    std::fs::write(&file, sql_support::DXY_RULES).unwrap();
    std::fs::write(
        dir.path().join("more.toml"),
        "[[table]]\nsource = \"orders\"\ntarget = \"orders_v2\"\n",
    )
    .unwrap();
    wait_for(&current, "the second file", |rs| rs.rules().len() == 2).await;

    // SIGHUP reloads too (the file watcher cannot see this one: the set is replaced by hand).
    current.store(Arc::new(RuleSet::default()));
    unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    wait_for(&current, "SIGHUP", |rs| rs.rules().len() == 2).await;
    task.abort();
}
