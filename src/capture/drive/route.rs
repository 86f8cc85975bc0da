//! Where a session's read goes: the router's decision with the flags of this moment and the
//! session's bucket (its side of a percent ramp, drawn once), the shadow step of a read whose
//! tables are flagged `shadow` (sampled when the session plans the read), and the count of
//! reads by the side that served them.

use std::sync::Arc;

use super::super::expect::{ShadowPlan, Step};
use super::Driver;
use crate::divergence::normalize_query;
use crate::mirror::Value;
use crate::reads::Route;
use crate::sql::{Analysis, Kind};

/// Which side served a read of a migrated table, for `pgbridge_reads_total{side}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::capture) enum Side {
    Primary,
    /// Served by the primary, compared on the secondary.
    Shadow,
    Secondary,
}

impl<'a> Driver<'a> {
    /// Where `analysis` goes now, for this session (the primary when reads are not routed).
    pub(in crate::capture) fn route<'x>(&self, analysis: &'x Analysis) -> Route<'x> {
        let Some((reads, shared)) = self.routing else {
            return Route::Primary;
        };
        let in_write_txn = !self.shared.lock().txn.is_empty();
        // A transaction block with one snapshot reads where it took it
        // (`capture/secondary/snapshot.rs`).
        if self.snapshot_allows_known() == Some(false) {
            return Route::Primary;
        }
        crate::reads::route(analysis, &reads.load(), shared, in_write_txn, self.bucket)
    }

    /// Counts a read of a migrated table by the side that serves it; statements that read no
    /// migrated table are not counted.
    pub(in crate::capture) fn count_read(&self, analysis: &Analysis, side: Side) {
        let [s] = analysis.statements.as_slice() else {
            return;
        };
        if s.kind != Kind::Read || s.reads.is_empty() {
            return;
        }
        let side = match side {
            Side::Primary => "primary",
            Side::Shadow => "shadow",
            Side::Secondary => "secondary",
        };
        metrics::counter!("pgbridge_reads_total", "table" => analysis.first_read(), "side" => side)
            .increment(1);
    }

    /// The step of a read that the flags say to shadow, if this one is.
    pub(super) fn shadow_step(&self, analysis: &Analysis, text: &str) -> Option<Step> {
        self.shadow_plan(analysis, text, Vec::new())
    }

    pub(super) fn shadow_plan(
        &self,
        analysis: &Analysis,
        text: &str,
        params: Vec<Value>,
    ) -> Option<Step> {
        match self.route(analysis) {
            Route::Shadow { sql, table } => {
                // A block of one snapshot was routed to the primary; one whose level the
                // primary has not told yet is not compared (it is asked, for the next read).
                if self.snapshot_allows_known().is_none() {
                    self.learn_default_level();
                    return None;
                }
                // Not sampled: served as any read, nothing kept.
                let shadow = self.shared.lock().shadow.clone()?;
                if !shadow.sampled() {
                    return None;
                }
                Some(Step::Shadow(Arc::new(ShadowPlan {
                    sql: sql.to_string(),
                    table: table.to_string(),
                    query: normalize_query(text),
                    after: self.journal.map(|j| j.last_id()),
                    bound: match params.is_empty() {
                        true => analysis.read_bound().cloned(),
                        false => None,
                    },
                    params,
                    ordered: analysis.read_ordered(),
                })))
            }
            _ => None,
        }
    }

    /// The shadow step of a portal running a prepared read flagged `shadow`.
    pub(super) fn portal_shadow(&self, analysis: &Analysis, portal: &str) -> Option<Step> {
        self.routing?;
        let stmt = self.portal_statements.get(portal)?;
        let text = self.texts.get(stmt)?;
        let params = self
            .portal_params
            .get(portal)
            .map(|r| r.values.clone())
            .unwrap_or_default();
        // Bound beyond the rules' `where`: the secondary cannot give the same answer.
        let hold = analysis.read_params_hold(|n| {
            let v = params.get(n.checked_sub(1)?)?;
            Some(crate::sql::read::Bound {
                format: v.format as u16,
                type_oid: v.type_oid,
                value: v.bytes.as_deref(),
            })
        });
        if !hold {
            return None;
        }
        self.shadow_plan(analysis, text, params)
    }
}
