//! The admin HTTP API.
pub mod ctl;
