//! Accepts clients.
use crate::{config::Config, CliError};
pub fn run(_config: Config) -> Result<(), CliError> {
    Err(CliError::user("todo"))
}
