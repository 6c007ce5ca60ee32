// sluice dashboard: vanilla JS, no build step. Views per role, live updates over one
// WebSocket with reconnect and backoff, forms validated here and again on the server.
'use strict';

const RANK = { viewer: 1, accountant: 2, admin: 3 };
const RESULT_TOPICS = ['winners', 'loss_risk', 'clients', 'sales_by_category'];
const state = { me: null, ws: null, retry: 0, timer: null, stopped: true };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

const named = (name, id) => (name ? `${name} (${id})` : id);
const money = (cents) => (cents == null ? '–' : (Number(cents) / 100).toFixed(2));

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && state.me) headers['X-CSRF-Token'] = state.me.csrf;
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: 'same-origin' });
  let data = null;
  try { data = await resp.json(); } catch (_) { /* empty body */ }
  if (resp.status === 401 && path !== '/api/login') showLogin();
  return { ok: resp.ok, status: resp.status, data };
}

// ---- connection status and live updates ----

function setConn(s) {
  const c = $('conn');
  c.dataset.state = s;
  c.textContent = { live: 'live', reconnecting: 'reconnecting…', offline: 'offline' }[s];
}

function topics() {
  const t = RESULT_TOPICS.slice();
  if (state.me && RANK[state.me.role] >= RANK.admin) t.push('system');
  return t.join(',');
}

function connect() {
  if (state.stopped) return;
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(`${proto}//${location.host}/api/ws?topics=${topics()}`);
  state.ws = ws;
  ws.onopen = () => { state.retry = 0; setConn('live'); };
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (_) { return; }
    if (msg.type === 'snapshot') render(msg.topic, msg.data);
  };
  ws.onclose = () => {
    if (state.ws !== ws || state.stopped) return;
    setConn('reconnecting');
    // Exponential backoff with full jitter, capped at 10 s; a 401 on /api/me shows the login.
    const cap = Math.min(10000, 500 * 2 ** state.retry++);
    state.timer = setTimeout(async () => {
      const me = await api('GET', '/api/me').catch(() => null);
      if (me && me.status === 401) return;
      connect();
    }, Math.random() * cap + 250);
  };
}

function disconnect() {
  state.stopped = true;
  clearTimeout(state.timer);
  if (state.ws) { const ws = state.ws; state.ws = null; ws.close(1000); }
  setConn('offline');
}

// ---- rendering ----

function placeholder(text) { return el('p', { class: 'placeholder', text }); }

function table(caption, columns, rows) {
  const head = el('tr', {}, ...columns.map((c) => el('th', { scope: 'col', text: c[0] })));
  const body = rows.map((r) => el('tr', {}, ...columns.map((c) => {
    const v = c[1](r);
    return el('td', c[2] ? { class: c[2] } : {}, v instanceof Node ? v : String(v ?? '–'));
  })));
  const t = el('table', {}, el('caption', { class: 'sr-only', text: caption }), el('thead', {}, head), el('tbody', {}, ...body));
  return el('div', { class: 'scroll', tabindex: '0', role: 'region', 'aria-label': caption }, t);
}

const REASONS = {
  margin_below_threshold: 'margin below threshold',
};
function reasonText(r) {
  if (REASONS[r]) return REASONS[r];
  return r.replace(/_/g, ' ');
}

const renderers = {
  winners(d) {
    return table('Product winners', [
      ['#', (r) => r.rank, 'num'], ['Product', (r) => named(r.name, r.product_id)],
      ['Category', (r) => r.category], ['Units', (r) => r.units, 'num'],
      ['Revenue', (r) => r.revenue ?? money(r.revenue_cents), 'num'], ['Profit', (r) => r.profit ?? money(r.profit_cents), 'num'],
    ], d.rows);
  },
  loss_risk(d) {
    return table('Loss-risk products', [
      ['Product', (r) => named(r.name, r.product_id)], ['Category', (r) => r.category],
      ['Reasons', (r) => el('ul', { class: 'reasons' }, ...(r.reasons || []).map((x) => el('li', { text: reasonText(x) })))],
      ['Expires in', (r) => (r.days_to_expiry == null ? '–' : `${r.days_to_expiry} d`), 'num'],
      ['Margin', (r) => (r.margin_bp == null ? '–' : `${(r.margin_bp / 100).toFixed(1)} %`), 'num'],
      ['Qty', (r) => r.quantity, 'num'],
    ], d.rows);
  },
  clients(d) {
    return table('Clients', [
      ['Client', (r) => named(r.name, r.client_id)], ['Tier', (r) => r.loyalty_tier],
      ['Revenue', (r) => r.revenue ?? money(r.revenue_cents), 'num'], ['Invoices', (r) => r.invoices, 'num'],
      ['Promo', (r) => el('span', { class: r.eligible_promo ? 'yes' : 'no', text: r.eligible_promo ? `eligible: ${r.promo_rule || ''}` : 'not eligible' })],
    ], d.rows);
  },
  sales_by_category(d) { return chart(d.rows); },
};

// Grouped bars: revenue and profit per category, summed over the minutes of the last hour.
function chart(rows) {
  const sums = new Map();
  for (const r of rows) {
    const s = sums.get(r.category) || { revenue: 0, profit: 0 };
    s.revenue += Number(r.revenue_cents) || 0;
    s.profit += Number(r.profit_cents) || 0;
    sums.set(r.category, s);
  }
  const cats = [...sums.keys()].sort();
  const max = Math.max(1, ...cats.map((c) => Math.max(sums.get(c).revenue, sums.get(c).profit)));
  const W = 600, H = 260, left = 70, bottom = 40, top = 14;
  const plotH = H - bottom - top, slot = (W - left - 10) / Math.max(1, cats.length), bar = Math.min(40, slot / 3);
  const desc = cats.map((c) => `${c}: sales ${money(sums.get(c).revenue)}, profit ${money(sums.get(c).profit)}`).join('; ');
  const g = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': 'chart-svg-title chart-svg-desc', class: 'chart' },
    svg('title', { id: 'chart-svg-title', text: 'Sales and profit per category, last hour' }),
    svg('desc', { id: 'chart-svg-desc', text: desc }));
  for (let i = 0; i <= 4; i++) {
    const y = top + plotH - (plotH * i) / 4;
    g.append(svg('line', { x1: left, x2: W - 10, y1: y, y2: y, class: 'grid' }));
    g.append(svg('text', { x: left - 6, y: y + 4, 'text-anchor': 'end', class: 'axis', text: money((max * i) / 4) }));
  }
  cats.forEach((c, i) => {
    const x = left + i * slot + slot / 2;
    const s = sums.get(c);
    [['revenue', s.revenue, -bar - 2], ['profit', s.profit, 2]].forEach(([kind, v, dx]) => {
      const h = (plotH * Math.max(0, v)) / max;
      g.append(svg('rect', { x: x + dx, y: top + plotH - h, width: bar, height: Math.max(h, 0.5), class: `bar ${kind}` },
        svg('title', { text: `${c} ${kind === 'revenue' ? 'sales' : 'profit'}: ${money(v)}` })));
    });
    g.append(svg('text', { x, y: H - bottom + 16, 'text-anchor': 'middle', class: 'axis', text: c }));
  });
  const legend = el('p', { class: 'legend' }, el('span', { class: 'key revenue' }), ' sales ', el('span', { class: 'key profit' }), ' profit');
  return el('div', {}, g, legend);
}

function render(topic, data) {
  if (topic === 'system') return renderSystem(data);
  const body = $(`${topic}-body`);
  if (!body || !renderers[topic]) return;
  body.replaceChildren(data.empty ? placeholder(data.message || 'Nothing yet.') : renderers[topic](data));
  body.dataset.rows = String((data.rows || []).length);
}

function stat(label, value) {
  return el('div', { class: 'stat' }, el('span', { class: 'label', text: label }), el('span', { class: 'value', text: value == null ? '–' : String(value) }));
}

function renderSystem(d) {
  const a = d.aggregator || {}, s = d.streams || {}, r = d.results || {}, k = d.analytics || {};
  const stats = el('div', { class: 'stats' },
    stat('winners', r.product_winners), stat('loss-risk', r.loss_risk_products), stat('clients', r.clients),
    stat('received', a.received), stat('unique', a.unique_processed), stat('duplicates', a.duplicate_dropped),
    stat('stream backlog', s.length), stat('pending', s.pending), stat('dead letters', s.dead_letters),
    stat('analytics lag', k.lag));
  const errors = [a.error && `aggregator: ${a.error}`, s.error && `streams: ${s.error}`].filter(Boolean);
  const dead = (s.latest_dead_letters || []);
  $('system-body').replaceChildren(stats,
    ...errors.map((e) => el('p', { class: 'error', text: e })),
    el('h3', { text: 'Latest dead letters' }),
    dead.length ? el('ul', { class: 'dead' }, ...dead.map((x) => el('li', {}, el('code', { text: x.entry_id || x.id }), ` ${x.reason}`)))
      : placeholder('No dead letters.'));
}

async function loadUsers() {
  const r = await api('GET', '/api/users');
  if (!r.ok) return;
  const rows = r.data.users;
  $('users-body').replaceChildren(table('Users', [
    ['Name', (u) => u.name], ['Role', (u) => u.role],
    ['', (u) => (u.name === state.me.name ? '' : el('button', { type: 'button', 'aria-label': `Remove ${u.name}`, text: 'Remove', onclick: () => removeUser(u.name) }))],
  ], rows));
}

async function removeUser(name) {
  if (!window.confirm(`Remove user ${name}?`)) return;
  const r = await api('DELETE', `/api/users/${encodeURIComponent(name)}`);
  $('user-result').textContent = r.ok ? `Removed ${name}.` : (r.data && r.data.detail) || 'Failed.';
  loadUsers();
}

// ---- forms ----

function itemRow() {
  const n = $('sale-items').children.length + 1;
  const row = el('div', { class: 'row item' },
    el('div', {}, el('label', { for: `item-product-${n}`, text: `Product id ${n}` }), el('input', { id: `item-product-${n}`, name: 'product_id', required: '', maxlength: '64' })),
    el('div', {}, el('label', { for: `item-qty-${n}`, text: `Quantity ${n}` }), el('input', { id: `item-qty-${n}`, name: 'quantity', type: 'number', min: '1', step: '1', required: '' })));
  row.append(el('button', { type: 'button', class: 'remove', 'aria-label': `Remove line item ${n}`, text: 'Remove', onclick: () => { if ($('sale-items').children.length > 1) row.remove(); } }));
  $('sale-items').append(row);
  return row;
}

function checkForm(form, resultId) {
  if (form.checkValidity()) return true;
  const bad = form.querySelector(':invalid');
  $(resultId).textContent = `Check "${bad.labels && bad.labels[0] ? bad.labels[0].textContent : bad.name}".`;
  $(resultId).className = 'result error';
  bad.focus();
  return false;
}

function showResult(id, r, okText) {
  $(id).className = r.ok ? 'result ok' : 'result error';
  $(id).textContent = r.ok ? okText(r.data) : (r.data && r.data.detail) || `Failed (${r.status}).`;
}

async function submitSale(ev) {
  ev.preventDefault();
  const f = ev.target;
  if (!checkForm(f, 'sale-result')) return;
  const items = [...$('sale-items').children].map((row) => ({
    product_id: row.querySelector('[name=product_id]').value.trim(),
    quantity: Number(row.querySelector('[name=quantity]').value),
  }));
  const body = { client_id: f.elements.namedItem('client_id').value.trim(), total_amount: f.elements.namedItem('total_amount').value.trim(), items };
  if (f.elements.namedItem('invoice_id').value.trim()) body.invoice_id = f.elements.namedItem('invoice_id').value.trim();
  const r = await api('POST', '/api/sales', body);
  showResult('sale-result', r, (d) => `Published sale ${d.key} (${items.length} line items).`);
  if (r.ok) { f.reset(); $('sale-items').replaceChildren(); itemRow(); }
}

async function submitInventory(ev) {
  ev.preventDefault();
  const f = ev.target;
  if (!checkForm(f, 'inventory-result')) return;
  const body = Object.fromEntries([...new FormData(f)].map(([k, v]) => [k, String(v).trim()]));
  body.quantity = Number(body.quantity);
  const r = await api('POST', '/api/inventory', body);
  showResult('inventory-result', r, (d) => `Published the update of ${d.key}.`);
}

async function submitUser(ev) {
  ev.preventDefault();
  const f = ev.target;
  if (!checkForm(f, 'user-result')) return;
  const r = await api('POST', '/api/users', { name: f.elements.namedItem('name').value.trim(), role: f.elements.namedItem('role').value, password: f.elements.namedItem('password').value });
  showResult('user-result', r, (d) => `Added ${d.name} (${d.role}).`);
  if (r.ok) { f.reset(); loadUsers(); }
}

// ---- login and views ----

function showLogin() {
  disconnect();
  state.me = null;
  $('app').hidden = true;
  $('who').hidden = true;
  $('login-view').hidden = false;
  $('login-name').focus();
}

async function showApp(me) {
  state.me = me;
  $('login-view').hidden = true;
  $('who').hidden = false;
  $('who-name').textContent = me.name;
  $('who-role').textContent = me.role;
  document.body.dataset.role = me.role;
  // Sections above the role are removed from the page, not just hidden: the server refuses
  // their requests anyway.
  for (const s of document.querySelectorAll('[data-least]')) s.hidden = RANK[me.role] < RANK[s.dataset.least];
  $('app').hidden = false;
  if ($('sale-items').children.length === 0) itemRow();
  for (const t of RESULT_TOPICS) {
    api('GET', `/api/results/${t}`).then((r) => { if (r.ok) render(t, r.data); });
  }
  if (RANK[me.role] >= RANK.admin) loadUsers();
  state.stopped = false;
  state.retry = 0;
  connect();
}

async function login(ev) {
  ev.preventDefault();
  const f = ev.target;
  $('login-error').textContent = '';
  if (!f.elements.namedItem('name').value.trim() || !f.elements.namedItem('password').value) { $('login-error').textContent = 'Enter your user name and password.'; return; }
  const r = await api('POST', '/api/login', { name: f.elements.namedItem('name').value.trim(), password: f.elements.namedItem('password').value });
  if (!r.ok) {
    $('login-error').textContent = r.status === 429 ? 'Too many attempts; wait a minute.' : (r.data && r.data.detail) || 'Login failed.';
    return;
  }
  f.reset();
  showApp(r.data);
}

async function logout() {
  await api('POST', '/api/logout');
  showLogin();
}

document.addEventListener('DOMContentLoaded', async () => {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('sale-form').addEventListener('submit', submitSale);
  $('sale-add-item').addEventListener('click', () => itemRow().querySelector('input').focus());
  $('inventory-form').addEventListener('submit', submitInventory);
  $('user-form').addEventListener('submit', submitUser);
  const me = await api('GET', '/api/me').catch(() => null);
  if (me && me.ok) showApp(me.data); else showLogin();
});
