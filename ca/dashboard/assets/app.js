// The Tally dashboard page. Read-only: it fetches api/overview whenever the
// event stream (api/events) says something changed, and renders it. Every
// text from the server goes in through textContent, never as HTML.
//
// For tests and benchmarks: document.body.dataset.gen is the generation last
// rendered; performance marks "tally:first-render" and measures
// "tally:refresh" (a "changed" event to the page rendered, fetch included);
// window.tallyStats holds the last refresh's parts.
'use strict';
(function () {
  const ROW = 30; // px, the workload table's row height (style.css .vt-row)
  const OVERSCAN = 8;
  const NONE = [];
  const $ = (id) => document.getElementById(id);

  const state = {
    gen: 0,
    snap: 0, // the snapshot we hold, for deltas
    offset: 0, // server clock minus ours, in seconds
    slots: [],
    agents: [],
    risks: [],
    buckets: [],
    workloads: [],
    filtered: [],
    sort: { key: '', dir: 1 },
    signedOut: false,
  };
  window.tallyStats = {};

  // ---- formatting ----
  const now = () => Date.now() / 1000 + state.offset;

  function dur(sec) {
    const s = Math.abs(Math.round(sec));
    let out;
    if (s < 60) out = s + 's';
    else if (s < 3600) out = Math.floor(s / 60) + 'm ' + (s % 60) + 's';
    else if (s < 86400) out = Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
    else out = Math.floor(s / 86400) + 'd ' + Math.floor((s % 86400) / 3600) + 'h';
    return out;
  }
  const left = (t) => (!t ? '—' : t < now() ? 'expired ' + dur(now() - t) + ' ago' : 'in ' + dur(t - now()));
  const ago = (t) => (!t ? 'never' : dur(now() - t) + ' ago');
  function date(t) {
    if (!t) return '—';
    return new Date(t * 1000).toISOString().slice(0, 16).replace('T', ' ') + ' UTC';
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function cell(tr, text, cls, title) {
    const td = el('td', cls, text);
    if (title) td.title = title;
    tr.appendChild(td);
    return td;
  }
  const short = (id) => (id && id.length > 12 ? id.slice(0, 12) + '…' : id || '—');

  // ---- data ----
  // A workload is identified by its agent, entry and SPIFFE ID.
  const wkey = (agent, entry, id) => agent + '\n' + entry + '\n' + id;

  // decode takes a full overview, or a delta (j.base: the snapshot it
  // starts from) whose rows replace or add to ours, with those removed.
  // Rows come in the page's order; merged ones are sorted back into it,
  // which for an array nearly in order is one pass.
  function decode(j) {
    const S = j.strings;
    const str = (v) => (typeof v === 'number' ? S[v] : v);
    const c = {};
    j.columns.forEach((name, i) => { c[name] = i; });
    const [ID, EN, AG, ND, NS, PD, SE, SG, NB, NA, RN, SU, ER, RK] = [
      c.spiffeID, c.entryID, c['agent#'], c['node#'], c['namespace#'], c.pod, c.serial, c['signer#'],
      c.notBefore, c.notAfter, c.renewals, c.subscribers, c.lastError, c.atRisk];
    const rows = j.workloads;
    const got = new Array(rows.length);
    for (let i = 0; i < rows.length; i++) {
      const r = rows[i];
      const agent = str(r[AG]), node = str(r[ND]), ns = str(r[NS]);
      got[i] = {
        k: wkey(agent, r[EN], r[ID]),
        id: r[ID], entry: r[EN], agent, node, ns, pod: r[PD], serial: r[SE], signer: str(r[SG]),
        nb: r[NB], na: r[NA], renewals: r[RN], subs: r[SU], err: r[ER], risk: r[RK] || NONE,
        text: (r[ID] + '\n' + node + '\n' + ns + '\n' + r[PD]).toLowerCase(),
      };
    }
    if (!j.base) {
      state.workloads = got;
    } else {
      const at = new Map();
      const list = state.workloads.slice();
      list.forEach((w, i) => at.set(w.k, i));
      for (const w of got) {
        const i = at.get(w.k);
        if (i === undefined) list.push(w);
        else list[i] = w;
      }
      let out = list;
      if (j.removed.length) {
        const gone = new Set(j.removed.map((r) => wkey(r[0], r[1], r[2])));
        out = list.filter((w) => !gone.has(w.k));
      }
      out.sort(byDefault);
      state.workloads = out;
    }
    state.snap = j.snap;
    state.gen = j.gen;
    state.offset = j.now - Date.now() / 1000;
    state.td = j.trustDomain;
    state.slots = j.slots;
    state.agents = j.agents;
    state.risks = j.atRisk;
    state.buckets = j.buckets;
    state.delta = got.length;
  }

  // ---- rendering ----
  function render() {
    $('trust-domain').textContent = state.td;
    document.title = 'Tally dashboard · ' + state.td;
    const parts = {};
    const timed = (name, fn) => { const t = performance.now(); fn(); parts[name] = performance.now() - t; };
    timed('risks', renderRisks);
    timed('slots', renderSlots);
    timed('chart', renderChart);
    timed('agents', renderAgents);
    timed('options', renderFilterOptions);
    timed('workloads', () => applyFilter(false));
    renderUpdated();
    document.body.dataset.gen = String(state.gen);
    return parts;
  }

  function renderUpdated() {
    $('updated').textContent = state.fetchedAt ? 'updated ' + dur((Date.now() - state.fetchedAt) / 1000) + ' ago' : '';
  }

  function renderRisks() {
    const list = $('risk-list');
    const items = state.risks.map((r) => {
      const li = el('li', 'risk risk-' + r.kind);
      li.appendChild(el('span', 'badge', r.kind));
      const subject = el(r.kind === 'svid' ? 'button' : 'span', 'subject', r.subject);
      if (r.kind === 'svid') {
        subject.type = 'button';
        subject.title = 'Show this workload';
        subject.addEventListener('click', () => {
          $('q').value = r.subject;
          applyFilter(true);
          $('workloads').scrollIntoView({ behavior: 'smooth' });
        });
      }
      li.appendChild(subject);
      li.appendChild(el('span', 'reason', r.reason));
      if (r.since) li.appendChild(el('span', 'muted', 'for ' + dur(now() - r.since)));
      return li;
    });
    list.replaceChildren(...items);
    $('risk-count').textContent = state.risks.length ? String(state.risks.length) : '';
    $('risk-none').hidden = state.risks.length > 0;
    $('risk').classList.toggle('alarm', state.risks.length > 0);
  }

  const statusOrder = { active: 0, prepared: 1, old: 2 };
  function sortedSlots() {
    return state.slots.slice().sort((a, b) =>
      a.kind.localeCompare(b.kind) || (statusOrder[a.status] ?? 9) - (statusOrder[b.status] ?? 9) || a.notBefore - b.notBefore);
  }

  function renderSlots() {
    const slots = sortedSlots();
    const t = now();
    let t0 = t, t1 = t;
    for (const s of slots) {
      if (s.notBefore && s.notBefore < t0) t0 = s.notBefore;
      if (s.notAfter > t1) t1 = s.notAfter;
    }
    const span = Math.max(t1 - t0, 1);
    const pct = (v) => ((v - t0) / span) * 100;
    const rows = slots.map((s) => {
      const row = el('div', 'tl-row');
      row.appendChild(el('span', 'tl-label', s.kind + ' · ' + s.status));
      const track = el('div', 'tl-track');
      const bar = el('div', 'tl-bar ' + s.status + (s.tainted ? ' tainted' : ''), short(s.id));
      bar.style.left = pct(s.notBefore || t0) + '%';
      bar.style.width = Math.max(pct(s.notAfter) - pct(s.notBefore || t0), 0.5) + '%';
      bar.title = s.kind + ' ' + s.status + (s.tainted ? ' (tainted)' : '') + ' ' + s.id + '\n' +
        date(s.notBefore) + ' → ' + date(s.notAfter);
      track.appendChild(bar);
      const mark = el('div', 'tl-now');
      mark.style.left = pct(t) + '%';
      track.appendChild(mark);
      row.appendChild(track);
      return row;
    });
    $('timeline').replaceChildren(...rows);

    const body = $('slot-table').tBodies[0];
    body.replaceChildren(...slots.map((s) => {
      const tr = el('tr', 'slot-' + s.status);
      tr.dataset.id = s.id;
      cell(tr, s.kind);
      cell(tr, short(s.id), 'mono', s.id);
      const st = cell(tr, s.status, 'status' + (s.atRisk.length ? ' bad' : ''), s.atRisk.join('\n'));
      if (s.tainted) st.appendChild(el('span', 'badge bad', 'tainted'));
      cell(tr, date(s.notBefore));
      cell(tr, left(s.notAfter), s.notAfter - now() < 86400 ? 'warn' : '', date(s.notAfter));
      return tr;
    }));
  }

  let chart = null;
  function chartData() {
    const end = Math.floor(now() / 60) * 60;
    const start = end - 59 * 60;
    const by = new Map(state.buckets.map((b) => [b[0], b]));
    const x = [], first = [], renewals = [], failures = [];
    for (let m = start; m <= end; m += 60) {
      const b = by.get(m);
      x.push(m);
      first.push(b ? b[1] : 0);
      renewals.push(b ? b[2] : 0);
      failures.push(b ? b[3] : 0);
    }
    return [x, first, renewals, failures];
  }
  function renderChart() {
    const box = $('chart');
    const data = chartData();
    if (chart) {
      chart.setData(data);
      return;
    }
    if (typeof uPlot === 'undefined') return;
    chart = new uPlot({
      width: Math.max(box.clientWidth, 300),
      height: 220,
      cursor: { drag: { x: false, y: false } },
      scales: { y: { range: (u, min, max) => [0, Math.max(max, 1)] } },
      series: [
        { label: 'Minute' },
        { label: 'First issuances', stroke: '#2563eb', width: 2, fill: 'rgba(37,99,235,0.08)' },
        { label: 'Renewals', stroke: '#16a34a', width: 2 },
        { label: 'Failures', stroke: '#dc2626', width: 2 },
      ],
      axes: [{}, { label: 'per minute', size: 50 }],
    }, data, box);
    new ResizeObserver(() => chart.setSize({ width: Math.max(box.clientWidth, 300), height: 220 })).observe(box);
  }

  function renderAgents() {
    const q = $('q').value.trim().toLowerCase();
    const node = $('f-node').value;
    const agents = state.agents
      .filter((a) => (!node || a.node === node) && (!q || (a.id + '\n' + a.node).toLowerCase().includes(q)))
      .sort((a, b) => (b.atRisk.length > 0) - (a.atRisk.length > 0) || a.node.localeCompare(b.node));
    $('agent-count').textContent = agents.length === state.agents.length
      ? String(state.agents.length) : agents.length + ' of ' + state.agents.length;
    patchRows($('agent-table').tBodies[0], agents, (a) => a.id, (a) => (a.atRisk.length || a.banned ? 'at-risk' : ''), (a) => [
      [a.node || '—'],
      [a.id, 'mono id'],
      [a.attestation || '—'],
      [ago(a.lastReport), '', date(a.lastReport)],
      [left(a.svidNotAfter), '', date(a.svidNotAfter)],
      [a.tokenNotAfter ? left(a.tokenNotAfter) : '—', '', date(a.tokenNotAfter)],
      [String(a.workloads), 'num'],
      a.atRisk.length || a.banned
        ? [[a.banned ? 'banned' : '', ...a.atRisk].filter(Boolean).join('; '), 'bad'] : ['ok', 'ok'],
    ]);
  }

  // patchRows keeps a table body to one row per item, by key, updating rows
  // in place and writing only what changed, so that the browser lays out
  // only that: cells are [text, class, title].
  function patchRows(tbody, items, keyOf, rowClass, cellsOf) {
    const had = new Map();
    for (const tr of tbody.rows) had.set(tr.dataset.key, tr);
    const rows = items.map((it) => {
      const key = keyOf(it);
      const cells = cellsOf(it);
      let tr = had.get(key);
      if (!tr) {
        tr = el('tr');
        tr.dataset.key = key;
        for (let i = 0; i < cells.length; i++) tr.appendChild(el('td'));
      }
      const rc = rowClass(it);
      if (tr.className !== rc) tr.className = rc;
      cells.forEach(([text, cls = '', title = ''], i) => {
        const td = tr.cells[i];
        if (td.textContent !== text) td.textContent = text;
        if (td.className !== cls) td.className = cls;
        if (td.title !== title) td.title = title;
      });
      return tr;
    });
    const same = rows.length === tbody.rows.length && rows.every((r, i) => tbody.rows[i] === r);
    if (!same) tbody.replaceChildren(...rows);
  }

  function fillSelect(sel, values, all) {
    const key = values.join('\n');
    if (sel.dataset.key === key) return;
    const cur = sel.value;
    sel.replaceChildren(el('option', '', all), ...values.map((v) => {
      const o = el('option', '', v);
      o.value = v;
      return o;
    }));
    sel.firstChild.value = '';
    sel.value = values.includes(cur) ? cur : '';
    sel.dataset.key = key;
  }
  function renderFilterOptions() {
    const nodes = new Set(), nss = new Set();
    for (const w of state.workloads) {
      if (w.node) nodes.add(w.node);
      if (w.ns) nss.add(w.ns);
    }
    for (const a of state.agents) if (a.node) nodes.add(a.node);
    fillSelect($('f-node'), [...nodes].sort(), 'All nodes');
    fillSelect($('f-ns'), [...nss].sort(), 'All namespaces');
  }

  // ---- the workload table: filtered, sorted, and only the visible rows in the DOM ----
  const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
  const sorters = {
    id: (a, b) => cmp(a.id, b.id),
    node: (a, b) => cmp(a.node, b.node) || cmp(a.id, b.id),
    pod: (a, b) => cmp(a.ns + '/' + a.pod, b.ns + '/' + b.pod) || cmp(a.id, b.id),
    left: (a, b) => a.na - b.na || cmp(a.id, b.id),
    renewals: (a, b) => a.renewals - b.renewals || cmp(a.id, b.id),
  };
  // The page's order, the server's too: at risk first, then failing
  // renewals, then by SPIFFE ID.
  const byDefault = (a, b) => (b.risk.length > 0) - (a.risk.length > 0) || (b.err !== '') - (a.err !== '') ||
    cmp(a.id, b.id) || cmp(a.agent, b.agent) || cmp(a.entry, b.entry);

  function applyFilter(resetScroll) {
    const terms = $('q').value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const node = $('f-node').value, ns = $('f-ns').value, risky = $('f-risk').checked;
    const out = [];
    for (const w of state.workloads) {
      if (node && w.node !== node) continue;
      if (ns && w.ns !== ns) continue;
      if (risky && w.risk.length === 0) continue;
      let ok = true;
      for (const t of terms) if (!w.text.includes(t)) { ok = false; break; }
      if (ok) out.push(w);
    }
    const s = state.sort;
    const by = sorters[s.key];
    if (by) out.sort((a, b) => s.dir * by(a, b)); // else they are in the page's order already
    state.filtered = out;
    $('wl-count').textContent = out.length === state.workloads.length
      ? String(out.length) : out.length + ' of ' + state.workloads.length;
    $('wl-spacer').style.height = out.length * ROW + 'px';
    $('wl-empty').hidden = out.length > 0;
    if (resetScroll) $('wl-body').scrollTop = 0;
    renderRows();
  }

  const pool = [];
  function rowEl() {
    const r = el('div', 'vt-row');
    r.id_ = el('span', 'mono id');
    r.node_ = el('span');
    r.pod_ = el('span');
    r.serial_ = el('span', 'mono');
    const lt = el('span', 'left');
    r.bar_ = el('span', 'bar');
    r.fill_ = el('span', 'fill');
    r.bar_.appendChild(r.fill_);
    r.left_ = el('span', 'left-text');
    lt.append(r.bar_, r.left_);
    r.renewals_ = el('span', 'num');
    r.status_ = el('span', 'status');
    r.append(r.id_, r.node_, r.pod_, r.serial_, lt, r.renewals_, r.status_);
    return r;
  }

  function renderRows() {
    const body = $('wl-body');
    const rows = $('wl-rows');
    const first = Math.max(0, Math.floor(body.scrollTop / ROW) - OVERSCAN);
    const count = Math.min(state.filtered.length - first, Math.ceil(body.clientHeight / ROW) + 2 * OVERSCAN);
    while (pool.length < count) {
      pool.push(rowEl());
    }
    if (rows.childElementCount !== Math.max(count, 0)) rows.replaceChildren(...pool.slice(0, Math.max(count, 0)));
    rows.style.transform = 'translateY(' + first * ROW + 'px)';
    const t = now();
    for (let i = 0; i < count; i++) {
      const w = state.filtered[first + i];
      const r = pool[i];
      r.dataset.id = w.id;
      r.classList.toggle('at-risk', w.risk.length > 0);
      r.id_.textContent = w.id;
      r.id_.title = w.id + (w.entry ? '\nentry ' + w.entry : '') + (w.agent ? '\nagent ' + w.agent : '');
      r.node_.textContent = w.node || '—';
      r.pod_.textContent = w.pod ? (w.ns ? w.ns + '/' : '') + w.pod : w.ns || '—';
      r.serial_.textContent = short(w.serial);
      r.serial_.title = w.serial + (w.signer ? '\nsigned by ' + w.signer : '');
      const life = w.na - w.nb;
      const frac = life > 0 ? Math.min(Math.max((w.na - t) / life, 0), 1) : 0;
      r.fill_.style.width = (frac * 100).toFixed(1) + '%';
      r.bar_.className = 'bar ' + (frac > 0.5 ? 'ok' : frac > 0.2 ? 'warn' : 'bad');
      r.left_.textContent = w.na > t ? dur(w.na - t) : 'expired';
      r.renewals_.textContent = String(w.renewals);
      const problem = w.risk.length ? w.risk.join('; ') : w.err;
      r.status_.textContent = problem || (w.subs ? 'ok · ' + w.subs + (w.subs === 1 ? ' stream' : ' streams') : 'ok');
      r.status_.className = 'status ' + (w.risk.length ? 'bad' : w.err ? 'warn' : 'ok');
      r.status_.title = [w.risk.join('; '), w.err && 'last error: ' + w.err].filter(Boolean).join('\n');
    }
  }

  // ---- fetching and the event stream ----
  // latest is the generation the event stream last announced; announced
  // counts the announcements of a generation other than ours.
  let inflight = false, latest = 0, announced = 0, changedAt = 0, firstRender = true;

  async function refresh() {
    if (inflight) return; // the loop below fetches again if it must
    inflight = true;
    try {
      let again;
      do {
        again = false;
        const seen = announced;
        const t0 = performance.now();
        const url = 'api/overview' + (state.snap ? '?since=' + state.snap : '');
        const resp = await fetch(url, { cache: 'no-store', credentials: 'same-origin' });
        if (resp.status === 401) { signedOut(); return; }
        if (!resp.ok) throw new Error('overview: ' + resp.status);
        const text = await resp.text();
        const t1 = performance.now();
        const j = JSON.parse(text);
        if (j.base && j.base !== state.snap) { state.snap = 0; again = true; continue; } // not ours: all of it
        decode(j);
        const t2 = performance.now();
        state.fetchedAt = Date.now();
        const parts = render();
        const t3 = performance.now();
        window.tallyStats = {
          fetchMs: t1 - t0, parseMs: t2 - t1, renderMs: t3 - t2, parts, chars: text.length,
          delta: !!j.base, rows: state.delta, workloads: state.workloads.length,
        };
        if (firstRender) {
          firstRender = false;
          performance.mark('tally:first-render');
        } else if (changedAt) {
          performance.measure('tally:refresh', { start: changedAt, end: t3 });
        }
        changedAt = 0;
        // Again if a generation other than this one was announced meanwhile.
        again = announced !== seen && latest !== state.gen;
      } while (again);
      banner('');
    } catch (e) {
      banner('Cannot load the overview: ' + e.message + '. Retrying.');
      setTimeout(refresh, 3000);
    } finally {
      inflight = false;
    }
  }

  let es = null;
  function connect() {
    es = new EventSource('api/events');
    es.addEventListener('open', () => live('live'));
    es.addEventListener('changed', (e) => {
      latest = JSON.parse(e.data).gen;
      if (latest !== state.gen) {
        announced++;
        if (!changedAt) changedAt = performance.now();
        refresh();
      }
    });
    // The credentials the stream was opened with ended (an admin's client
    // certificate may have been renewed since: try again).
    es.addEventListener('expired', () => { es.close(); recheck(0); });
    es.addEventListener('error', () => {
      live('offline');
      // A refusal (401) closes the stream for good; find out which it was.
      if (es.readyState === EventSource.CLOSED) recheck(2000);
    });
  }
  function recheck(after) {
    setTimeout(async () => {
      const resp = await fetch('api/buckets', { cache: 'no-store' }).catch(() => null); // small, authenticated
      if (resp && resp.status === 401) signedOut();
      else if (!state.signedOut) connect();
    }, after);
  }

  function live(s) {
    const e = $('live');
    e.dataset.state = s;
    e.textContent = s;
  }
  function banner(text, link) {
    const b = $('banner');
    b.hidden = !text;
    b.replaceChildren(text);
    if (link) {
      const a = el('a', '', link.text);
      a.href = link.href;
      b.append(' ', a);
    }
  }
  function signedOut() {
    state.signedOut = true;
    if (es) es.close();
    live('signed out');
    banner('Signed out: the token or session has ended.', { text: 'Sign in again', href: 'login' });
  }

  // ---- wiring ----
  function debounce(fn, ms) {
    let t = 0;
    return () => { clearTimeout(t); t = setTimeout(fn, ms); };
  }
  const refilter = debounce(() => { applyFilter(true); renderAgents(); }, 80);
  $('q').addEventListener('input', refilter);
  for (const id of ['f-node', 'f-ns', 'f-risk']) $(id).addEventListener('change', () => { applyFilter(true); renderAgents(); });
  $('wl-body').addEventListener('scroll', () => requestAnimationFrame(renderRows), { passive: true });
  window.addEventListener('resize', () => requestAnimationFrame(renderRows));
  for (const b of document.querySelectorAll('.vt-head [data-sort]')) {
    b.addEventListener('click', () => {
      const key = b.dataset.sort;
      state.sort = state.sort.key === key ? { key, dir: -state.sort.dir } : { key, dir: 1 };
      for (const o of document.querySelectorAll('.vt-head [data-sort]')) {
        o.dataset.dir = o === b ? (state.sort.dir > 0 ? 'asc' : 'desc') : '';
      }
      applyFilter(true);
    });
  }
  $('logout').addEventListener('click', async () => {
    await fetch('api/logout', { method: 'POST', credentials: 'same-origin' }).catch(() => null);
    if (es) es.close();
    location.replace('login');
  });
  // Time left moves on between updates.
  setInterval(() => { if (state.gen) { renderRows(); renderUpdated(); } }, 1000);

  connect();
  refresh();
})();
