//! `pgbridge ctl`.
use crate::CliError;
pub fn status(_admin: &str, _token: Option<&str>) -> Result<(), CliError> {
    Err(CliError::user("todo"))
}
pub fn set_reads(
    _admin: &str,
    _token: Option<&str>,
    _t: &str,
    _s: &str,
    _r: Option<&str>,
) -> Result<(), CliError> {
    Err(CliError::user("todo"))
}
