//! `pgbridge demo`.
use crate::CliError;
pub fn run(_listen: &str) -> Result<(), CliError> {
    Err(CliError::user("todo"))
}
