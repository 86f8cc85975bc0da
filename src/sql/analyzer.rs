//! The one entry point the relay calls per statement text: [`Analyzer::analyze`].
//!
//! It follows the live rules (the `ArcSwap` that hot reload swaps), rebuilding the pre-filter and
//! the parsed views once per new rule set. Unrelated statements return a shared analysis without
//! locking or allocating; everything else is computed once per text and rules generation and then
//! served from the LRU. A text that names a migrated table and misses the LRU is looked up by its
//! shape (its text with the literals normalized, [`super::shape`]): clients that send each write
//! with its own literals then pay a lexer pass instead of a parse.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::cache::Lru;
use super::keywords;
use super::pipeline::{analyze_uncached, seen_tables};
use super::prefilter::Prefilter;
use super::read::Views;
use super::shape::{self, Shape, Template};
use super::{plan, view, Analysis};
use crate::rules::{RuleSet, TableName};
use arc_swap::{ArcSwap, Guard};

/// What the analyzer derived from one rule set.
pub(super) struct Snapshot {
    pub(super) rules: Arc<RuleSet>,
    pub(super) generation: u64,
    pub(super) prefilter: Prefilter,
    pub(super) names: Vec<TableName>,
    pub(super) views: Views,
    /// Literals of the rules' `where`, kept as they are in shape keys.
    pub(super) filter_literals: std::collections::HashSet<String>,
}

impl Snapshot {
    fn new(rules: Arc<RuleSet>, generation: u64) -> Snapshot {
        let names: Vec<TableName> = rules.rules().iter().map(|r| r.source.clone()).collect();
        let prefilter = Prefilter::new(names.iter().map(|n| n.name.as_str()));
        let mut views = HashMap::new();
        for (i, rule) in rules.rules().iter().enumerate() {
            if let Some(v) = view::read_view(rule) {
                views.insert(rule.source.clone(), (i, v));
            }
        }
        let filter_literals =
            shape::filter_literals(rules.rules().iter().filter_map(|r| r.filter.as_deref()));
        Snapshot {
            filter_literals,
            rules,
            generation,
            prefilter,
            names,
            views,
        }
    }
}

/// Classifies and rewrites statement texts under the current rules, with a cache.
pub struct Analyzer {
    live: Arc<ArcSwap<RuleSet>>,
    snapshot: ArcSwap<Snapshot>,
    generations: AtomicU64,
    cache: Mutex<Lru>,
    shapes: Mutex<Lru<Shape>>,
    shape_hits: AtomicU64,
    other: Arc<Analysis>,
}

impl Analyzer {
    /// Follows the rules in `live`; caches up to `capacity` statement texts.
    pub fn new(live: Arc<ArcSwap<RuleSet>>, capacity: usize) -> Analyzer {
        let snapshot = Snapshot::new(live.load_full(), 0);
        Analyzer {
            live,
            snapshot: ArcSwap::from_pointee(snapshot),
            generations: AtomicU64::new(0),
            cache: Mutex::new(Lru::new(capacity)),
            shapes: Mutex::new(Lru::new(capacity)),
            shape_hits: AtomicU64::new(0),
            other: Arc::new(Analysis::default()),
        }
    }

    /// Everything pgbridge needs to know about one statement text (one Query message, or the
    /// query of one Parse message). Never fails: what cannot be understood is `Kind::Unparsed`.
    pub fn analyze(&self, sql: &str) -> Arc<Analysis> {
        let snap = self.current();
        if snap.prefilter.is_clear(sql)
            && !keywords::may_be_leading(sql)
            && !has_more_statements(sql)
        {
            return self.other.clone();
        }
        if let Ok(mut cache) = self.cache.lock() {
            if let Some(hit) = cache.get(sql, snap.generation) {
                return hit;
            }
        }
        if !snap.prefilter.is_clear(sql) {
            if let Some(analysis) = self.analyze_by_shape(sql, &snap) {
                return analysis;
            }
        }
        let analysis = planned(analyze_uncached(sql, &snap), sql, &snap);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(sql, snap.generation, analysis.clone());
        }
        analysis
    }

    /// The analysis of `sql` from the shape of its literal-normalized text, building the shape
    /// on a miss. `None`: the text has no literals to normalize, or its shape cannot be
    /// filled exactly; analyze the text itself.
    fn analyze_by_shape(&self, sql: &str, snap: &Snapshot) -> Option<Arc<Analysis>> {
        let norm = shape::normalize_keeping(sql, &snap.filter_literals)?;
        let cached = self.shapes.lock().ok()?.get(&norm.key, snap.generation);
        match cached {
            Some(Shape::Template(t)) => {
                // A literal that holds a migrated table's name changes what the pre-filter saw.
                if t.analysis.seen != seen_tables(sql, snap) {
                    return None;
                }
                let mut filled = norm.fill(&t.analysis, sql)?;
                if let Some(b) = &t.bound {
                    filled.statements[0].read_bound = Some(norm.bind(b, sql)?);
                }
                self.shape_hits.fetch_add(1, Ordering::Relaxed);
                Some(planned(filled, sql, snap))
            }
            Some(Shape::Opaque) => None,
            None => {
                let mut real = analyze_uncached(sql, snap);
                let template = analyze_uncached(&norm.sentinel_text(sql), snap);
                // A read proven within its `where` from a literal holds for that literal only.
                let exact = template.parse_error.is_none()
                    && !template.statements.iter().any(|s| s.read_literal_proof)
                    && norm.fill(&template, sql).as_ref() == Some(&real);
                let entry = match exact {
                    true => {
                        let bound = bound_template(&norm, &template);
                        if let Some(b) = &bound {
                            real.statements[0].read_bound = norm.bind(b, sql);
                        }
                        Shape::Template(Arc::new(Template {
                            analysis: template,
                            bound,
                        }))
                    }
                    false => Shape::Opaque,
                };
                if let Ok(mut shapes) = self.shapes.lock() {
                    shapes.insert(&norm.key, snap.generation, entry);
                }
                let real = planned(real, sql, snap);
                if !exact {
                    if let Ok(mut cache) = self.cache.lock() {
                        cache.insert(sql, snap.generation, real.clone());
                    }
                }
                Some(real)
            }
        }
    }

    /// How many analyses were filled from a shape rather than parsed.
    pub fn shape_hits(&self) -> u64 {
        self.shape_hits.load(Ordering::Relaxed)
    }

    /// The analysis without the pre-filter or the cache (for benchmarks and tests).
    pub fn analyze_uncached(&self, sql: &str) -> Analysis {
        let snap = self.current();
        let mut a = analyze_uncached(sql, &snap);
        plan::attach(&mut a, sql, &snap.rules);
        a
    }

    /// The rules the analyzer currently applies.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.current().rules.clone()
    }

    /// The snapshot of the live rules; rebuilt once when hot reload swapped them. The guard
    /// costs no reference count on the fast path.
    fn current(&self) -> Guard<Arc<Snapshot>> {
        let snap = self.snapshot.load();
        if Arc::ptr_eq(&snap.rules, &self.live.load()) {
            return snap;
        }
        drop(snap);
        let live = self.live.load_full();
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(
            generation,
            tables = live.rules().len(),
            "analyzer follows new rules"
        );
        self.snapshot
            .store(Arc::new(Snapshot::new(live, generation)));
        self.snapshot.load()
    }
}

/// The template's read rewrite with the literals that can be parameters as parameters.
fn bound_template(norm: &shape::Normalized, template: &Analysis) -> Option<shape::BoundTemplate> {
    let rewrite = template.read_rewrite()?;
    let params = super::read::bind::parameter_literals(rewrite)?;
    norm.bound_template(rewrite, &params)
}

/// `a` with the plan of each statement, under the snapshot's rules. Plans are made after the
/// shape cache fills an analysis, so they hold the client's own text and offsets.
fn planned(mut a: Analysis, sql: &str, snap: &Snapshot) -> Arc<Analysis> {
    plan::attach(&mut a, sql, &snap.rules);
    Arc::new(a)
}

/// Is there a second statement after a `;`? (Cheap and conservative: a `;` in a string counts.)
pub(super) fn has_more_statements(sql: &str) -> bool {
    match memchr::memchr(b';', sql.as_bytes()) {
        Some(i) => !sql[i + 1..].trim().is_empty(),
        None => false,
    }
}
