// The pgbridge dashboard (src/admin/dashboard.rs serves it): polls this instance's admin API
// and draws it. Read-only. Every value from the API goes into the page as text, never as markup.
'use strict';

const POLL_MS = 2000;
const HISTORY_MS = 5000;
const KINDS = ['read_mismatch', 'write_mismatch', 'secondary_error', 'unmirrored_write', 'in_doubt', 'sync_timeout'];
const SVG = 'http://www.w3.org/2000/svg';

let history = [];
const verifies = new Map(); // verify job id -> its job view (a finished verify does not change)

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

async function get(path) {
  const r = await fetch(path, { cache: 'no-store' });
  if (!r.ok) throw new Error(path + ' answered ' + r.status);
  return r.json();
}

function seconds(s) {
  if (s === null || s === undefined) return '—';
  if (s < 1) return (s * 1000).toFixed(0) + ' ms';
  if (s < 120) return s.toFixed(1) + ' s';
  if (s < 7200) return (s / 60).toFixed(0) + ' min';
  return (s / 3600).toFixed(1) + ' h';
}

function count(n) {
  return n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US');
}

function when(ts) {
  if (!ts) return '—';
  const d = new Date(ts);
  return isNaN(d) ? String(ts) : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function replace(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
}

function tile(label, value, tone) {
  return el('div', { class: 'tile ' + (tone || '') }, el('div', { class: 'label' }, label), el('div', { class: 'value' }, value));
}

function progressBar(done, total, state) {
  const share = total ? Math.min(1, done / total) : state === 'done' ? 1 : 0;
  const fill = el('span');
  fill.style.width = (share * 100).toFixed(1) + '%';
  const label = total ? count(done) + ' / ' + count(total) + ' (' + (share * 100).toFixed(0) + '%)' : count(done);
  return el('div', {},
    el('div', { class: 'bar ' + (state || ''), role: 'progressbar', 'aria-valuenow': (share * 100).toFixed(0) }, fill),
    el('span', { class: 'muted' }, label + ' rows'));
}

const PHASE_TONE = {
  mirroring: 'info', backfilling: 'info', backfilled: 'info', verified: 'ok', shadow: 'info',
  ramping: 'warn', reads_on_secondary: 'ok', writes_on_secondary: 'ok', complete: 'ok',
};

function overview(status) {
  const m = status.mirror || {};
  const div = (status.divergences || {}).total || 0;
  const tiles = [
    tile('sessions', count(status.sessions)),
    tile('mirror lag', seconds(m.lag_seconds), m.lag_seconds > 5 ? 'bad' : m.lag_seconds > 1 ? 'warn' : 'ok'),
    tile('journal / applied', count(m.journal_seq) + ' / ' + count(m.applied_seq)),
    tile('parked', count(m.parked), m.parked ? 'bad' : 'ok'),
    tile('divergences', count(div), div ? 'warn' : 'ok'),
  ];
  if (status.reverse) {
    const r = status.reverse;
    tiles.push(tile('reverse lag', seconds(r.lag_seconds), r.last_error ? 'bad' : 'ok'));
  }
  if (status.state) {
    tiles.push(tile('shared state', status.state.connected ? 'connected' : 'unreachable', status.state.connected ? 'ok' : 'bad'));
  }
  return tiles;
}

function health(status) {
  const m = status.mirror || {};
  const problems = [];
  if (m.parked) problems.push(m.parked + ' parked');
  if (m.halted) problems.push('mirror applier halted');
  if (status.tables && status.tables.length && m.connected === false) problems.push('mirror applier not connected');
  if (m.lag_seconds > 5) problems.push('mirror lags ' + seconds(m.lag_seconds));
  if (status.state && !status.state.connected) problems.push('shared state unreachable');
  if (status.reverse && status.reverse.last_error) problems.push('reverse mirror failing');
  for (const t of status.tables || []) if (t.needs_repair) problems.push(t.source + ' needs repair');
  return problems;
}

// A line chart of the forward (and reverse) lag over the samples kept.
function lagChart(samples) {
  const w = 600, h = 90, pad = 18;
  const root = svg('svg', { viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': 'mirror lag over time' });
  if (samples.length < 2) {
    const t = svg('text', { x: 4, y: h / 2 });
    t.textContent = 'collecting samples (one every ' + HISTORY_MS / 1000 + ' s)';
    root.append(t);
    return root;
  }
  const t0 = samples[0].ts, t1 = samples[samples.length - 1].ts;
  const max = Math.max(0.001, ...samples.map((s) => Math.max(s.lag_seconds, s.reverse_lag_seconds || 0)));
  const x = (ts) => ((ts - t0) / Math.max(1, t1 - t0)) * (w - 2) + 1;
  const y = (v) => h - pad - (v / max) * (h - pad - 4);
  root.append(svg('line', { class: 'axis', x1: 0, x2: w, y1: h - pad, y2: h - pad }));
  const line = (get, cls) => {
    const pts = samples.filter((s) => get(s) !== undefined && get(s) !== null).map((s) => x(s.ts).toFixed(1) + ',' + y(get(s)).toFixed(1));
    if (pts.length > 1) root.append(svg('polyline', { class: cls, points: pts.join(' ') }));
  };
  line((s) => s.lag_seconds, 'line-fwd');
  line((s) => s.reverse_lag_seconds, 'line-rev');
  const top = svg('text', { x: 4, y: 10 });
  top.textContent = 'max ' + seconds(max);
  const span = svg('text', { x: 4, y: h - 4 });
  span.textContent = 'last ' + seconds(t1 - t0);
  root.append(top, span);
  return root;
}

// Divergences recorded per sample interval, stacked by kind.
function divergenceChart(table, samples) {
  const w = 600, h = 70, pad = 14;
  const root = svg('svg', { viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': 'divergences of ' + table + ' over time' });
  const steps = [];
  for (let i = 1; i < samples.length; i++) {
    const a = (samples[i - 1].divergences || {})[table] || {};
    const b = (samples[i].divergences || {})[table] || {};
    const d = {};
    for (const k of Object.keys(b)) d[k] = Math.max(0, (b[k] || 0) - (a[k] || 0));
    steps.push(d);
  }
  const total = (d) => Object.values(d).reduce((s, v) => s + v, 0);
  const max = Math.max(1, ...steps.map(total));
  const bw = (w - 2) / Math.max(1, steps.length);
  root.append(svg('line', { class: 'axis', x1: 0, x2: w, y1: h - pad, y2: h - pad }));
  steps.forEach((d, i) => {
    let base = h - pad;
    for (const k of Object.keys(d).sort()) {
      if (!d[k]) continue;
      const bh = (d[k] / max) * (h - pad - 16);
      base -= bh;
      root.append(svg('rect', { class: kindClass(k), x: (1 + i * bw).toFixed(1), y: base.toFixed(1), width: Math.max(1, bw - 1).toFixed(1), height: bh.toFixed(1) }));
    }
  });
  const top = svg('text', { x: 4, y: 10 });
  top.textContent = steps.length ? 'max ' + max + ' per ' + HISTORY_MS / 1000 + ' s' : 'collecting samples';
  root.append(top);
  return root;
}

function kindClass(kind) {
  const i = KINDS.indexOf(kind);
  return 'k' + (i < 0 ? 5 : i);
}

function legend(kinds) {
  return el('div', { class: 'legend' }, kinds.map(([k, n]) => el('span', { class: 'kind', 'data-kind': k }, el('i', { class: kindClass(k) }), k + ': ' + count(n))));
}

function flags(t) {
  const reads = t.reads + (t.reads !== 'primary' && t.reads_percent !== 100 ? ' (' + t.reads_percent + '% of sessions)' : '');
  return [
    ['reads', reads],
    ['writes', t.writes || 'primary'],
    ['mirror', t.mirror],
    ['mixed transactions', count(t.mixed_transactions)],
  ];
}

function verifyBlock(t) {
  const v = t.last_verify;
  if (!v) return el('p', { class: 'muted' }, 'No verify has run: ', el('code', {}, 'pgbridge ctl verify ' + t.source));
  const tone = v.clean ? (v.current ? 'ok' : 'warn') : 'bad';
  const what = v.clean ? (v.current ? 'clean' : 'clean, but older than the gate allows') : 'differences found';
  const parts = [
    el('h3', {}, 'Last verify ', el('span', { class: 'badge ' + tone }, what), ' ',
      el('span', { class: 'muted' }, 'job ' + v.job + ', ' + when(v.finished_at) + ' (' + seconds(v.age_seconds) + ' ago), ' + v.consecutive_clean + ' clean in a row')),
    el('div', { class: 'chips' },
      el('span', { class: 'chip' }, 'matched ' + count(v.matched)),
      el('span', { class: 'chip' + (v.missing ? ' status-CRITICAL' : '') }, 'missing ' + count(v.missing)),
      el('span', { class: 'chip' + (v.extra ? ' status-CRITICAL' : '') }, 'extra ' + count(v.extra)),
      el('span', { class: 'chip' + (v.differing ? ' status-CRITICAL' : '') }, 'differing ' + count(v.differing))),
  ];
  if (v.reconcile) {
    const r = v.reconcile;
    parts.push(el('div', { class: 'chips reconcile' },
      el('span', { class: 'chip status-MATCHED' }, 'MATCHED ' + r.matched),
      el('span', { class: 'chip status-WITHIN_TOLERANCE' }, 'WITHIN_TOLERANCE ' + r.within_tolerance),
      el('span', { class: 'chip status-INVESTIGATION_REQUIRED' }, 'INVESTIGATION_REQUIRED ' + r.investigation_required),
      el('span', { class: 'chip status-CRITICAL' }, 'CRITICAL ' + r.critical)));
    parts.push(reconciliation(t.source, v.job));
  }
  return el('div', { class: 'verify' }, parts);
}

const STATUS_ORDER = { CRITICAL: 0, INVESTIGATION_REQUIRED: 1, WITHIN_TOLERANCE: 2, MATCHED: 3 };
const SHOWN_GROUPS = 40;

// The reconciliation groups of a verify, worst first, each row coloured by its status.
function reconciliation(table, job) {
  const view = verifies.get(job);
  if (!view) {
    verifies.set(job, null);
    get('/api/jobs/' + job).then((j) => verifies.set(job, j)).catch(() => verifies.delete(job));
  }
  if (!view) return el('p', { class: 'muted' }, 'loading the reconciliation report…');
  const result = ((view.result || {}).tables || []).find((r) => r.table === table) || {};
  const rows = (result.report || []).slice().sort((a, b) => STATUS_ORDER[a.status] - STATUS_ORDER[b.status]);
  const body = rows.slice(0, SHOWN_GROUPS).map((r) => el('tr', { class: 'status-' + r.status },
    el('td', {}, r.date), el('td', {}, r.group), el('td', {}, r.metric),
    el('td', { class: 'num' }, r.primary_value ?? '—'), el('td', { class: 'num' }, r.secondary_value ?? '—'),
    el('td', { class: 'num' }, r.difference ?? '—'), el('td', {}, r.status)));
  const more = rows.length > SHOWN_GROUPS ? el('p', { class: 'muted' }, (rows.length - SHOWN_GROUPS) + ' more rows in ', el('code', {}, '/api/jobs/' + job + '/report.csv')) : null;
  return el('details', { class: 'groups', open: rows.some((r) => r.status !== 'MATCHED') },
    el('summary', {}, 'Reconciliation groups (' + rows.length + ' rows)'),
    el('table', {}, el('thead', {}, el('tr', {}, ['date', 'group', 'metric', 'primary', 'secondary', 'difference', 'status'].map((h) => el('th', {}, h)))), el('tbody', {}, body)),
    more);
}

function tableCard(t) {
  const kinds = Object.entries(t.divergences || {}).sort();
  const phase = el('span', { class: 'badge phase ' + (PHASE_TONE[t.phase] || ''), 'data-phase': t.phase }, (t.phase || '').replaceAll('_', ' '));
  const card = el('article', { class: 'table-card', 'data-table': t.source },
    el('div', { class: 'title' }, el('code', {}, t.source), el('span', { class: 'muted' }, '→ ' + t.target), phase,
      t.needs_repair ? el('span', { class: 'badge bad' }, 'needs repair') : null),
    t.next ? el('div', { class: 'next' }, 'Next: ' + t.next.step + ' — ', el('code', {}, t.next.command)) : null,
    el('dl', { class: 'facts' }, flags(t).map(([k, v]) => [el('dt', {}, k), el('dd', {}, v)])),
    t.backfill ? el('div', { class: 'backfill' }, el('h3', {}, 'Backfill ', el('span', { class: 'muted' }, 'job ' + t.backfill.job + ', ' + t.backfill.state)),
      progressBar(t.backfill.progress.done, t.backfill.progress.total, t.backfill.state)) : null,
    el('div', { class: 'divergences' },
      el('h3', {}, 'Divergences ', el('span', { class: 'muted' }, kinds.length ? count(kinds.reduce((s, [, n]) => s + n, 0)) + ' since start' : 'none since start')),
      el('div', { class: 'chart' }, divergenceChart(t.source, history)),
      legend(kinds)),
    verifyBlock(t));
  return card;
}

function jobRows(jobs) {
  return jobs.slice(0, 20).map((j) => {
    const p = j.progress || {};
    let result = j.error || '';
    if (!result && j.kind === 'verify' && j.result) {
      result = (j.result.tables || []).map((r) => r.table + ': ' + (r.missing + r.extra + r.differing ? (r.missing + r.extra + r.differing) + ' differences' : 'equal')).join(', ');
    }
    return el('tr', { 'data-job': j.id },
      el('td', { class: 'num' }, j.id), el('td', {}, j.kind), el('td', {}, j.table),
      el('td', {}, el('span', { class: 'badge ' + ({ done: 'ok', failed: 'bad', cancelled: 'warn' }[j.state] || 'info') }, j.state)),
      el('td', {}, progressBar(p.done || 0, p.total, j.state)),
      el('td', { class: 'num' }, p.rows_per_sec ? count(Math.round(p.rows_per_sec)) + ' rows/s' : '—'),
      el('td', { class: 'num' }, j.state === 'running' ? seconds(p.eta_seconds) : '—'),
      el('td', {}, j.owner || '—'), el('td', {}, result));
  });
}

function instanceRows(status) {
  const list = status.instances && status.instances.length ? status.instances
    : [{ name: (status.state || {}).instance || 'this instance', seen: null, sessions: status.sessions, lag_seconds: (status.mirror || {}).lag_seconds, live: true }];
  return list.map((i) => el('tr', { 'data-instance': i.name },
    el('td', {}, i.name), el('td', {}, el('span', { class: 'badge ' + (i.live ? 'ok' : 'bad') }, i.live ? 'live' : 'silent')),
    el('td', {}, when(i.seen)), el('td', { class: 'num' }, count(i.sessions)), el('td', { class: 'num' }, seconds(i.lag_seconds))));
}

function auditRows(audit) {
  return (audit.entries || []).slice(0, 50).map((a) => {
    let change = '';
    if (a.kind === 'job') change = a.action + ' ' + a.job_kind + ' job ' + a.job;
    else if (a.from !== undefined || a.to !== undefined) change = (a.from ?? '') + ' → ' + (a.to ?? '') + (a.percent !== undefined && a.percent !== 100 ? ' (' + a.percent + '%)' : '');
    const over = a.overridden || [];
    const gate = a.forced && over.length ? 'forced past: ' + over.join('; ') : '';
    return el('tr', { class: a.forced ? 'forced' : '' },
      el('td', {}, when(a.ts)), el('td', {}, a.instance || '—'), el('td', {}, a.kind || '—'), el('td', {}, a.table || '—'),
      el('td', {}, change), el('td', {}, a.who || '—'), el('td', {}, a.reason || ''), el('td', {}, gate));
  });
}

function render(status, jobs, audit) {
  const s = status.state;
  document.getElementById('instance').textContent = s ? 'instance ' + s.instance : '';
  const problems = health(status);
  const badge = document.getElementById('health');
  badge.className = 'badge ' + (problems.length ? 'bad' : 'ok');
  badge.textContent = problems.length ? problems.join(' · ') : 'healthy';
  document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString('en-GB');
  replace(document.getElementById('overview'), overview(status));
  replace(document.getElementById('lag-chart'), lagChart(history));
  const tables = status.tables || [];
  replace(document.getElementById('tables'), tables.length ? tables.map(tableCard) : el('p', { class: 'muted' }, 'No rules are loaded: pgbridge relays only.'));
  replace(document.querySelector('#jobs tbody'), jobs.length ? jobRows(jobs) : el('tr', {}, el('td', { colspan: 9, class: 'muted' }, 'No jobs yet.')));
  replace(document.querySelector('#instances tbody'), instanceRows(status));
  const rows = auditRows(audit);
  replace(document.querySelector('#audit tbody'), rows.length ? rows : el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'Nothing switched yet.')));
  document.body.dataset.refreshed = String(Date.now());
}

function showError(message) {
  const e = document.getElementById('error');
  e.hidden = !message;
  e.textContent = message ? 'Cannot reach the admin API: ' + message : '';
}

async function refresh() {
  try {
    const [status, jobs, audit] = await Promise.all([
      get('/api/status'),
      get('/api/jobs').catch(() => []),
      get('/api/audit?limit=50').catch(() => ({ entries: [] })),
    ]);
    render(status, jobs, audit);
    showError(null);
  } catch (e) {
    showError(e.message);
  }
  setTimeout(refresh, POLL_MS);
}

async function refreshHistory() {
  try {
    history = (await get('/api/history')).samples || [];
  } catch (e) {
    // The status poll reports an unreachable API.
  }
  setTimeout(refreshHistory, HISTORY_MS);
}

refreshHistory().then(refresh);
