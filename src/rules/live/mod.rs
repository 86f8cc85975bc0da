//! What the rules need from the outside world: the rule files read from disk ([`load`]), hot
//! reload on file changes and SIGHUP ([`reload`]), and the checks against the live schemas of
//! both databases ([`online`], which [`schema`] reads the catalogs for). Everything else under
//! `rules/` is pure.

pub mod load;
pub mod online;
pub mod reload;
pub mod schema;
