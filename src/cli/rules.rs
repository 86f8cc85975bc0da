//! `pgbridge rules check`: validate the rule files, offline or against both databases.

use std::path::Path;

use crate::{config, rules, CliError};

/// `pgbridge rules check`: every problem on stderr as `FILE:LINE:COL: message` (exit 1), a
/// database that cannot be reached exit 2, and on success one summary line per table on stdout.
pub fn check(config: &Path, offline: bool) -> Result<(), CliError> {
    let config = config::Config::load(config).map_err(CliError::user)?;
    let checked = if offline {
        rules::load_offline(&config.rules)
    } else {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CliError::unreachable)?;
        let secondary = config.secondary.as_ref().map(|s| &s.url);
        runtime.block_on(rules::load_online(
            &config.rules,
            &config.primary.url,
            secondary,
        ))
    };
    match checked {
        Ok(set) => {
            for rule in set.rules() {
                println!("{}", rule.summary());
            }
            println!(
                "{}: {} rule(s) valid",
                config.rules.display(),
                set.rules().len()
            );
            Ok(())
        }
        Err(rules::RulesError::Invalid(problems)) => {
            for p in &problems {
                eprintln!("{p}");
            }
            Err(CliError::user(format!(
                "{} problem(s) in the rules",
                problems.len()
            )))
        }
        Err(e) => Err(CliError::unreachable(e)),
    }
}
