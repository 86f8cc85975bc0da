//! The shadow step of a read whose tables are flagged `shadow`: what runs on the secondary
//! and what it is recorded as, sampled when the session plans the read.

use std::sync::Arc;

use super::super::expect::{ShadowPlan, Step};
use super::Driver;
use crate::divergence::normalize_query;
use crate::mirror::Value;
use crate::sql::Analysis;

impl<'a> Driver<'a> {
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
        let (reads, shared) = self.routing?;
        let in_write_txn = !self.shared.lock().txn.is_empty();
        let flags = reads.load();
        match crate::reads::route(analysis, &flags, shared, in_write_txn) {
            crate::reads::Route::Shadow { sql, table } => {
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
        let hold = analysis.read_params_hold(|n| params.get(n.checked_sub(1)?)?.bytes.as_deref());
        if !hold {
            return None;
        }
        self.shadow_plan(analysis, text, params)
    }
}
