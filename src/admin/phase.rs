//! A table's phase in its migration, and the next step with the command that takes it, from
//! what status knows of it (docs/RUNBOOK.md walks the same steps).

use serde::{Deserialize, Serialize};

/// What a phase is decided from.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    pub table: &'a str,
    /// primary, shadow or secondary, and the share of sessions.
    pub reads: &'a str,
    pub percent: u8,
    /// primary, secondary or complete.
    pub writes: &'a str,
    /// The last backfill's state, if any ran.
    pub backfill: Option<&'a str>,
    /// The last verify: clean, and no older than the gate allows.
    pub verify: Option<(bool, bool)>,
    pub needs_repair: bool,
}

/// The next step: what to do, and the command that does it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Next {
    pub step: String,
    pub command: String,
}

/// The phase (`mirroring`, `backfilling`, `backfilled`, `verified`, `shadow`, `ramping`,
/// `reads_on_secondary`, `writes_on_secondary`, `complete`) and the next step (none once
/// complete).
pub fn phase(f: &Facts<'_>) -> (&'static str, Option<Next>) {
    let t = f.table;
    let next = |step: &str, command: String| {
        Some(Next {
            step: step.to_string(),
            command,
        })
    };
    if f.writes == "complete" {
        return ("complete", None);
    }
    if f.writes == "secondary" {
        return (
            "writes_on_secondary",
            next(
                "retire the legacy table: stop the reverse mirror",
                format!("pgbridge ctl writes {t} complete"),
            ),
        );
    }
    let repair = || {
        next(
            "repair the differences the mirror missed or the verify found",
            format!("pgbridge ctl repair {t}"),
        )
    };
    let phase = match (f.reads, f.percent) {
        ("secondary", 100) => "reads_on_secondary",
        ("secondary", _) => "ramping",
        ("shadow", _) => "shadow",
        _ => match (f.backfill, f.verify) {
            (Some("running"), _) => "backfilling",
            (Some("done"), Some((true, true))) => "verified",
            (Some("done"), _) => "backfilled",
            _ => "mirroring",
        },
    };
    let next = match phase {
        _ if f.needs_repair => repair(),
        "mirroring" => next(
            "copy the rows that existed before mirroring",
            format!("pgbridge ctl backfill {t}"),
        ),
        "backfilling" => next(
            "wait for the backfill to end",
            "pgbridge ctl jobs".to_string(),
        ),
        "backfilled" if f.verify.is_some_and(|(clean, _)| !clean) => repair(),
        "backfilled" => next("prove the target equal", format!("pgbridge ctl verify {t}")),
        "verified" => next(
            "compare reads in shadow",
            format!("pgbridge ctl reads {t} shadow"),
        ),
        "shadow" => next(
            "serve a share of the reads from the secondary",
            format!("pgbridge ctl reads {t} secondary --percent 10"),
        ),
        "ramping" => {
            let more = (f.percent.saturating_mul(2)).clamp(f.percent + 1, 100);
            next(
                "serve more of the reads from the secondary",
                format!("pgbridge ctl reads {t} secondary --percent {more}"),
            )
        }
        _ => next(
            "move the writes to the target",
            format!("pgbridge ctl writes {t} secondary"),
        ),
    };
    (phase, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts<'static> {
        Facts {
            table: "bars",
            reads: "primary",
            percent: 100,
            writes: "primary",
            ..Facts::default()
        }
    }

    fn command(f: &Facts<'_>) -> (&'static str, String) {
        let (p, n) = phase(f);
        (p, n.map(|n| n.command).unwrap_or_default())
    }

    #[test]
    fn each_step_leads_to_the_next() {
        assert_eq!(
            command(&facts()),
            ("mirroring", "pgbridge ctl backfill bars".into())
        );
        let running = Facts {
            backfill: Some("running"),
            ..facts()
        };
        assert_eq!(command(&running).0, "backfilling");
        let done = Facts {
            backfill: Some("done"),
            ..facts()
        };
        assert_eq!(
            command(&done),
            ("backfilled", "pgbridge ctl verify bars".into())
        );
        let unclean = Facts {
            verify: Some((false, false)),
            ..done.clone()
        };
        assert_eq!(
            command(&unclean),
            ("backfilled", "pgbridge ctl repair bars".into())
        );
        let old = Facts {
            verify: Some((true, false)),
            ..done.clone()
        };
        assert_eq!(
            command(&old),
            ("backfilled", "pgbridge ctl verify bars".into())
        );
        let verified = Facts {
            verify: Some((true, true)),
            ..done.clone()
        };
        assert_eq!(
            command(&verified),
            ("verified", "pgbridge ctl reads bars shadow".into())
        );
        let shadow = Facts {
            reads: "shadow",
            ..verified.clone()
        };
        assert_eq!(
            command(&shadow),
            (
                "shadow",
                "pgbridge ctl reads bars secondary --percent 10".into()
            )
        );
        let ramp = Facts {
            reads: "secondary",
            percent: 10,
            ..verified.clone()
        };
        assert_eq!(
            command(&ramp),
            (
                "ramping",
                "pgbridge ctl reads bars secondary --percent 20".into()
            )
        );
        let ramp = Facts {
            reads: "secondary",
            percent: 60,
            ..verified.clone()
        };
        assert!(command(&ramp).1.ends_with("--percent 100"));
        let all = Facts {
            reads: "secondary",
            ..verified.clone()
        };
        assert_eq!(
            command(&all),
            (
                "reads_on_secondary",
                "pgbridge ctl writes bars secondary".into()
            )
        );
        let writes = Facts {
            writes: "secondary",
            ..all.clone()
        };
        assert_eq!(
            command(&writes),
            (
                "writes_on_secondary",
                "pgbridge ctl writes bars complete".into()
            )
        );
        assert_eq!(
            phase(&Facts {
                writes: "complete",
                ..all
            }),
            ("complete", None)
        );
    }

    #[test]
    fn a_missed_write_asks_for_a_repair_first() {
        let f = Facts {
            reads: "shadow",
            needs_repair: true,
            ..facts()
        };
        assert_eq!(command(&f), ("shadow", "pgbridge ctl repair bars".into()));
    }
}
