// Simple Router dashboard: plain ES module, public REST + /ws only (docs/dashboard.md).
const CHART_LIB = '/static/vendor/lightweight-charts.standalone.production.mjs';
const RECONNECT_BASE_S = 0.5;
const RECONNECT_CAP_S = 10;
const PING_EVERY_MS = 10000;
const SILENCE_LIMIT_MS = 25000; // no frame at all for this long: the connection is dead even if TCP says not
const TAPE_ROWS = 40;
const INTERVAL_S = { '1s': 1, '10s': 10, '1m': 60, '5m': 300 };
const EXCHANGES = ['binance', 'okx'];

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v; else if (k === 'dataset') Object.assign(e.dataset, v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ''));
  return e;
};

const prefs = JSON.parse(localStorage.getItem('sr.prefs') || '{}');
const state = {
  token: sessionStorage.getItem('sr.token'),
  username: sessionStorage.getItem('sr.user'),
  info: null,
  symbols: new Map(),
  symbol: prefs.symbol || 'BTCUSDT',
  interval: prefs.interval || '10s',
  exchange: prefs.exchange || 'all',
  halfLife: prefs.halfLife || '30',
  orders: new Map(),
  versions: new Map(), // token_id -> highest order version seen
  touch: {},
};
const savePrefs = () => localStorage.setItem('sr.prefs', JSON.stringify(
  { symbol: state.symbol, interval: state.interval, exchange: state.exchange, halfLife: state.halfLife }));

// ---------- formatting ----------
const decimalsOf = (step) => (String(step).split('.')[1] || '').replace(/0+$/, '').length;
const sym = () => state.symbols.get(state.symbol);
const pxDec = () => decimalsOf(sym()?.tick_size ?? '0.01');
const qtyDec = () => decimalsOf(sym()?.lot_step ?? '0.00001');
// A JSON number as the server wrote it (JS would print 0.00000099 as 9.9e-7).
const plain = (v) => {
  const s = String(v ?? '');
  const m = /^(-?)(\d)(?:\.(\d+))?e-(\d+)$/.exec(s);
  return m ? `${m[1]}0.${'0'.repeat(Number(m[4]) - 1)}${m[2]}${m[3] ?? ''}` : s;
};
const fmt = (v, dec) => (v === null || v === undefined || v === '') ? '—' : Number(v).toFixed(dec);
const hms = (us) => new Date(us / 1000).toLocaleTimeString([], { hour12: false }) +
  '.' + String(Math.floor(us / 1000) % 1000).padStart(3, '0');

// ---------- REST ----------
class ApiError extends Error {
  constructor(status, body) {
    super(body?.detail || `HTTP ${status}`);
    this.status = status; this.code = body?.code || 'error'; this.errors = body?.errors || [];
  }
}

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, { detail: 'gateway unreachable', code: 'network' });
  }
  const data = await resp.json().catch(() => null);
  if (!resp.ok) {
    if (resp.status === 401 && state.token && !path.startsWith('/login') && !path.startsWith('/register')) {
      logout('Session expired: log in again.');
    }
    throw new ApiError(resp.status, data);
  }
  return data;
}

// ---------- login ----------
function showLogin(message = '') {
  $('#app').hidden = true; $('#login').hidden = false; $('#logout').hidden = true; $('#who').textContent = '';
  $('#login-error').textContent = message;
}

async function authenticate(path) {
  const username = $('#username').value.trim();
  const password = $('#password').value;
  $('#login-error').textContent = '';
  try {
    const out = await api('POST', path, { username, password });
    state.token = out.access_token; state.username = username;
    sessionStorage.setItem('sr.token', state.token); sessionStorage.setItem('sr.user', username);
    await startApp();
  } catch (e) {
    $('#login-error').textContent = `${e.message} (${e.code})`;
  }
}

let expiryTimer = null;
function armExpiry() {
  clearTimeout(expiryTimer);
  try {
    const payload = JSON.parse(atob(state.token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    const ms = payload.exp * 1000 - Date.now();
    if (ms <= 0) return logout('Session expired: log in again.');
    expiryTimer = setTimeout(() => logout('Session expired: log in again.'), Math.min(ms, 2 ** 31 - 1));
  } catch { /* opaque token: the server's 401 / 1008 still sends us back to login */ }
}

// The "Log out" button: the token is revoked on the server (every tab and gateway), then forgotten here.
async function signOut() {
  try { if (state.token) await api('POST', '/logout'); } catch { /* unreachable or already revoked */ }
  logout('Logged out.');
}

function logout(message = '') {
  state.token = null; state.username = null;
  sessionStorage.removeItem('sr.token'); sessionStorage.removeItem('sr.user');
  $('#keys tbody').replaceChildren(); $('#key-secret').textContent = ''; $('#key-new').hidden = true;
  clearTimeout(expiryTimer);
  feed.stop();
  showLogin(message);
}

// ---------- WebSocket with reconnect ----------
class Feed {
  constructor() {
    this.ws = null; this.attempt = 0; this.retryAt = 0; this.timer = null; this.tick = null; this.stopped = true;
    this.topics = {}; this.gen = {}; this.specs = {}; this.sent = {}; this.lastFrame = 0; this.everUp = false;
    setInterval(() => this.heartbeat(), PING_EVERY_MS);
  }

  start() { this.stopped = false; this.connect(); }

  stop() {
    this.stopped = true; clearTimeout(this.timer); clearInterval(this.tick); banner(null);
    if (this.ws) { const ws = this.ws; this.ws = null; ws.close(1000, 'logout'); }
    setConn('down', 'offline');
  }

  connect() {
    if (this.stopped) return;
    clearInterval(this.tick);
    setConn('connecting', 'connecting');
    if (this.everUp) banner('Disconnected — reconnecting now…');
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${proto}://${location.host}/ws`);
    this.ws = ws; this.topics = {}; this.sent = {};
    ws.onopen = () => ws.send(JSON.stringify({ action: 'auth', token: state.token, id: 'auth' }));
    ws.onmessage = (e) => { if (ws === this.ws) { this.lastFrame = Date.now(); this.onMessage(JSON.parse(e.data)); } };
    ws.onclose = (e) => {
      if (ws !== this.ws) return;
      this.ws = null;
      if (e.code === 1008 && /auth/i.test(e.reason)) { logout('Session expired: log in again.'); return; }
      if (e.code === 4001) { logout(`Signed out: ${e.reason || 'token revoked'}.`); return; }
      this.scheduleReconnect();
    };
  }

  scheduleReconnect() {
    if (this.stopped) return;
    const delay = Math.min(RECONNECT_CAP_S, RECONNECT_BASE_S * 2 ** this.attempt) * (0.8 + 0.4 * Math.random());
    this.attempt += 1;
    this.retryAt = Date.now() + delay * 1000;
    setConn('down', 'disconnected');
    const show = () => banner(`Disconnected — reconnecting in ${Math.max(1, Math.ceil((this.retryAt - Date.now()) / 1000))}s`);
    show(); this.tick = setInterval(show, 250);
    this.timer = setTimeout(() => this.connect(), delay * 1000);
  }

  heartbeat() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - this.lastFrame > SILENCE_LIMIT_MS) { this.ws.close(4000, 'silent'); return; }
    this.send({ action: 'ping' });
  }

  send(msg) { if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg)); }

  // role: a name of ours for one subscription; spec: the subscribe message without action/id.
  subscribe(role, spec) {
    if (this.topics[role]) this.send({ action: 'unsubscribe', subscription: this.topics[role] });
    delete this.topics[role];
    this.gen[role] = (this.gen[role] || 0) + 1;
    this.specs[role] = spec;
    const id = `${role}#${this.gen[role]}`;
    this.sent[id] = JSON.stringify(spec);
    this.send({ action: 'subscribe', id, ...spec });
  }

  roleOf(topic) { return Object.keys(this.topics).find((r) => this.topics[r] === topic); }

  onMessage(m) {
    if (m.type === 'auth') {
      this.attempt = 0; this.everUp = true; clearInterval(this.tick); banner(null); setConn('live', 'live');
      for (const [role, spec] of Object.entries(this.specs)) this.subscribe(role, spec);
      refreshAccount();
      return;
    }
    if (m.type === 'ack' || m.type === 'error') {
      const [role, gen] = String(m.id ?? '').split('#');
      if (!role || !(role in this.gen)) return;
      const current = Number(gen) === this.gen[role];
      if (m.type === 'ack' && m.action === 'subscribe') {
        // An older request's ack (sent again on auth, or the controls changed before it came) still subscribed
        // the server: keep it if it is what the role wants now, else leave it at once.
        const wanted = this.sent[m.id] === JSON.stringify(this.specs[role]);
        delete this.sent[m.id];
        if (current || (wanted && !this.topics[role])) { this.topics[role] = m.subscription; controlsError(role, null); }
        else if (m.subscription !== this.topics[role]) this.send({ action: 'unsubscribe', subscription: m.subscription });
        return;
      }
      if (current && m.type === 'error') {
        delete this.sent[m.id];
        if (!(m.code === 'already_subscribed' && this.topics[role])) controlsError(role, m);
      }
      return;
    }
    if (m.type === 'order') { onOrderEvent(m.data); return; }
    if (m.type === 'resync') { refreshAccount(); return; } // the gateway may have missed order events
    const role = this.roleOf(m.topic);
    if (!role) return; // a message of a topic we just left
    if (m.type === 'best_touch') onTouch(role.slice('touch:'.length), m.data);
    else if (m.type === 'klines') onKline(m.data);
    else if (m.type === 'ewma') onEwma(m.data);
    else if (m.type === 'trades') onTrade(m.data);
    else if (m.type === 'book') onBook(m.data);
  }
}
const feed = new Feed();

function banner(text) { const b = $('#banner'); b.hidden = !text; b.textContent = text || ''; }
function setConn(stateName, label) { const c = $('#conn'); c.className = `badge ${stateName}`; c.dataset.state = stateName; c.textContent = label; }

function controlsError(role, err) {
  const box = $('#controls-error');
  if (!err) { if (box.dataset.role === role) { box.textContent = ''; box.dataset.role = ''; $('#half-life').classList.remove('invalid'); } return; }
  box.textContent = `${err.message} (${err.code})`; box.dataset.role = role;
  if (err.code === 'bad_half_life') $('#half-life').classList.add('invalid');
}

// ---------- subscriptions for the chosen pair ----------
function subscribeMarket({ touch = true, chart = true, tape = true } = {}) {
  const s = state.symbol, ex = state.exchange;
  if (touch) {
    state.touch = {};
    for (const e of [...EXCHANGES, 'all']) feed.subscribe(`touch:${e}`, { stream: 'best_touch', symbol: s, exchange: e });
    renderTouchAll();
    state.book = null;
    feed.subscribe('book', { stream: 'book', symbol: s, exchange: 'all', depth: 10 });
    renderLadder();
  }
  if (chart) {
    resetChart();
    feed.subscribe('klines', { stream: 'klines', symbol: s, exchange: ex, interval: state.interval });
    subscribeEwma();
  }
  if (tape) {
    $('#trades tbody').replaceChildren();
    feed.subscribe('trades', { stream: 'trades', symbol: s, exchange: ex });
  }
  $('#touch-symbol').textContent = s;
  $('#chart-title').textContent = `${s} · ${ex} · ${state.interval} · EWMA ${state.halfLife}s`;
}

function subscribeEwma() {
  const hl = Number(state.halfLife);
  // Sent as a JSON number; the server judges it (bad_half_life shows next to the controls).
  feed.subscribe('ewma', { stream: 'ewma', symbol: state.symbol, exchange: state.exchange, half_life: Number.isFinite(hl) ? hl : state.halfLife });
}

// ---------- best touch ----------
function onTouch(ex, d) { state.touch[ex] = d; renderTouchAll(); }

function renderTouchAll() {
  const agg = state.touch.all;
  for (const ex of [...EXCHANGES, 'all']) {
    const row = $(`#touch-${ex}`), d = state.touch[ex];
    const set = (cls, v, dec) => { row.querySelector(`.${cls}`).textContent = d ? fmt(v, dec) : ''; };
    set('bid', d?.bid_px, pxDec()); set('ask', d?.ask_px, pxDec());
    set('bid-sz', d?.bid_sz, qtyDec()); set('ask-sz', d?.ask_sz, qtyDec());
    const badge = row.querySelector('.feed .badge');
    if (!d) { badge.className = 'badge'; badge.textContent = '—'; continue; }
    if (ex === 'all') {
      const n = d.live.length;
      badge.className = `badge ${n === EXCHANGES.length ? 'live' : n ? 'stale' : 'down'}`;
      badge.textContent = `${n}/${EXCHANGES.length} live`;
    } else {
      const live = d.live.includes(ex);
      badge.className = `badge ${live ? 'live' : 'stale'}`; badge.textContent = live ? 'live' : 'stale';
      row.dataset.live = live ? '1' : '0';
    }
    if (ex !== 'all') {
      row.querySelector('.bid').classList.toggle('best', !!agg?.bid_exchanges?.includes(ex));
      row.querySelector('.ask').classList.toggle('best', !!agg?.ask_exchanges?.includes(ex));
    }
  }
  if (agg && agg.bid_px != null && agg.ask_px != null) {
    $('#spread').textContent = `${fmt(agg.ask_px - agg.bid_px, pxDec())}${agg.crossed ? ' (crossed across exchanges)' : ''} · best bid ${agg.bid_exchanges.join('+')} · best ask ${agg.ask_exchanges.join('+')}`;
  } else $('#spread').textContent = '—';
}

// ---------- depth ladder: both exchanges merged by price, asks above bids ----------
function onBook(d) { state.book = d; renderLadder(); }

function renderLadder() {
  const d = state.book, body = $('#ladder tbody');
  if (!d) { body.replaceChildren(); $('#ladder').dataset.levels = '0'; return; }
  const row = (lv, side) => {
    const tr = document.createElement('tr'); tr.className = side;
    const cells = [['binance', lv.sizes.binance, qtyDec()], ['okx', lv.sizes.okx, qtyDec()], ['price', lv.price, pxDec()],
      ['total', lv.size, qtyDec()]];
    for (const [cls, v, dec] of cells) {
      const td = document.createElement('td'); td.className = `num ${cls}`;
      td.textContent = v === undefined ? '' : fmt(v, dec); tr.append(td);
    }
    return tr;
  };
  body.replaceChildren(...[...d.asks].reverse().map(lv => row(lv, 'ask')), ...d.bids.map(lv => row(lv, 'bid')));
  $('#ladder').dataset.levels = String(d.bids.length + d.asks.length);
}

// ---------- chart ----------
const chartState = { lib: null, chart: null, candles: null, ewma: null, lastBar: 0, lastEwma: 0, count: 0 };

async function initChart() {
  if (chartState.chart || chartState.failed) return;
  try {
    chartState.lib = await import(CHART_LIB);
  } catch {
    chartState.failed = true;
    const msg = $('#chart-msg'); msg.hidden = false; msg.textContent = 'chart library not installed (run make)';
    $('#chart').hidden = true;
    return;
  }
  const { createChart, CandlestickSeries, LineSeries, ColorType } = chartState.lib;
  chartState.chart = createChart($('#chart'), {
    autoSize: true,
    layout: { background: { type: ColorType.Solid, color: '#171e26' }, textColor: '#9aa6b2', attributionLogo: false },
    grid: { vertLines: { color: '#1f2833' }, horzLines: { color: '#1f2833' } },
    timeScale: { timeVisible: true, secondsVisible: true, borderColor: '#26313d', barSpacing: 12, rightOffset: 4 },
    rightPriceScale: { borderColor: '#26313d' },
    localization: { timeFormatter: (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false }) },
  });
  chartState.candles = chartState.chart.addSeries(CandlestickSeries, {
    upColor: '#26a69a', downColor: '#ef5350', borderVisible: false, wickUpColor: '#26a69a', wickDownColor: '#ef5350',
  });
  chartState.ewma = chartState.chart.addSeries(LineSeries, { color: '#f0b429', lineWidth: 2, title: 'EWMA', priceLineVisible: false });
  applyPriceFormat();
}

function applyPriceFormat() {
  if (!chartState.candles) return;
  const s = sym(); if (!s) return;
  const format = { type: 'price', precision: pxDec(), minMove: Number(s.tick_size) };
  chartState.candles.applyOptions({ priceFormat: format });
  chartState.ewma.applyOptions({ priceFormat: format });
}

function resetChart() {
  chartState.lastBar = 0; chartState.lastEwma = 0; chartState.count = 0;
  $('#chart').dataset.candles = '0';
  $('#ewma-value').textContent = '—';
  if (chartState.candles) { chartState.candles.setData([]); chartState.ewma.setData([]); applyPriceFormat(); }
}

function onKline(d) {
  const t = Math.floor(d.open_time_us / 1e6);
  if (t < chartState.lastBar) return; // the library only takes the newest bar or a later one
  if (t > chartState.lastBar) chartState.count += 1;
  chartState.lastBar = t;
  $('#chart').dataset.candles = String(chartState.count);
  chartState.candles?.update({ time: t, open: d.open, high: d.high, low: d.low, close: d.close });
}

function onEwma(d) {
  $('#ewma-value').textContent = `${fmt(d.value, pxDec() + 2)} (half-life ${d.half_life}s)`;
  const iv = INTERVAL_S[state.interval];
  const t = Math.floor(d.ts_event_us / 1e6 / iv) * iv; // one point per candle, on the candle's time
  if (t < chartState.lastEwma) return;
  chartState.lastEwma = t;
  chartState.ewma?.update({ time: t, value: d.value });
}

// ---------- trades tape ----------
function onTrade(d) {
  const body = $('#trades tbody');
  body.prepend(el('tr', {}, el('td', {}, hms(d.ts_event_us)), el('td', {}, d.exchange),
    el('td', { class: `num side-${d.side}` }, fmt(d.price, pxDec())), el('td', { class: 'num' }, fmt(d.size, qtyDec()))));
  while (body.children.length > TAPE_ROWS) body.lastChild.remove();
}

// ---------- account: balances and open orders ----------
let balanceTimer = null;
function refreshBalanceSoon() { clearTimeout(balanceTimer); balanceTimer = setTimeout(refreshBalance, 80); }

async function refreshBalance() {
  try { renderBalance(await api('GET', '/balance')); } catch (e) { if (e.status) console.warn(e); }
}

async function refreshAccount() {
  refreshBalance();
  try {
    const out = await api('GET', '/orders?status=open&limit=500');
    const fresh = new Map();
    for (const o of out.orders) {
      const known = state.versions.get(o.token_id) ?? -1;
      if (Number(o.version) >= known) { state.versions.set(o.token_id, Number(o.version)); fresh.set(o.token_id, o); }
      else if (state.orders.has(o.token_id)) fresh.set(o.token_id, state.orders.get(o.token_id));
    }
    state.orders = fresh; // an order missing from the answer was closed meanwhile
    renderOrders();
  } catch (e) { $('#orders-error').textContent = `${e.message} (${e.code})`; }
}

function renderBalance(b) {
  const s = sym();
  const assets = state.info.assets.filter((a) => Number(b.total[a]) !== 0 || a === s?.base || a === s?.quote);
  $('#balances tbody').replaceChildren(...assets.map((a) => el('tr', { id: `bal-${a}`, dataset: { asset: a } },
    el('td', {}, a), el('td', { class: 'num total' }, plain(b.total[a] ?? 0)),
    el('td', { class: 'num available' }, plain(b.available[a] ?? 0)), el('td', { class: 'num reserved' }, plain(b.reserved[a] ?? 0)))));
}

function upsertOrder(o) {
  // The REST answer and the order events race (a fill can be announced before the answer that placed it):
  // the highest version seen of each order wins, closed ones included.
  const v = Number(o.version);
  if ((state.versions.get(o.token_id) ?? -1) >= v) return;
  state.versions.set(o.token_id, v);
  if (o.status === 'open') state.orders.set(o.token_id, o); else state.orders.delete(o.token_id);
  renderOrders();
}

function renderOrders() {
  const rows = [...state.orders.values()].sort((a, b) => b.created_us - a.created_us).map((o) => {
    const dec = decimalsOf(state.symbols.get(o.symbol)?.tick_size ?? '0.01');
    const row = el('tr', { id: `order-${o.token_id}`, dataset: { token: o.token_id } },
      el('td', { title: o.token_id }, o.token_id.replace(/^web-/, '')), el('td', {}, o.symbol),
      el('td', { class: `side-${o.side}` }, `${o.side} ${o.type}`),
      el('td', { class: 'num price' }, o.price == null ? 'market' : fmt(o.price, dec)),
      el('td', { class: 'num qty' }, plain(o.quantity)), el('td', { class: 'num' }, plain(o.filled_quantity)),
      el('td', { class: 'actions' },
        el('button', { type: 'button', class: 'secondary modify' }, 'Modify'), ' ',
        el('button', { type: 'button', class: 'secondary cancel' }, 'Cancel')));
    return row;
  });
  $('#orders tbody').replaceChildren(...rows);
}

function onOrderEvent(ev) {
  upsertOrder(ev.order);
  refreshBalanceSoon();
  const o = ev.order;
  const px = o.average_price ?? o.price ?? 'market';
  const li = el('li', { class: 'flash' }, `${new Date().toLocaleTimeString([], { hour12: false })} ${ev.event}: ${o.side} ${plain(o.quantity)} ${o.symbol} @ ${plain(px)} (${o.token_id.replace(/^web-/, '')})`);
  $('#events').prepend(li);
  while ($('#events').children.length > 5) $('#events').lastChild.remove();
}

async function onOrdersClick(e) {
  const row = e.target.closest('tr'); if (!row) return;
  const token = row.dataset.token, o = state.orders.get(token);
  $('#orders-error').textContent = '';
  try {
    if (e.target.classList.contains('cancel')) {
      upsertOrder(await api('DELETE', `/orders/${encodeURIComponent(token)}`));
      refreshBalanceSoon();
    } else if (e.target.classList.contains('modify')) {
      row.querySelector('.price').replaceChildren(el('input', { class: 'new-price', value: plain(o.price ?? ''), inputmode: 'decimal' }));
      row.querySelector('.qty').replaceChildren(el('input', { class: 'new-qty', value: plain(o.quantity), inputmode: 'decimal' }));
      row.querySelector('.actions').replaceChildren(el('button', { type: 'button', class: 'save' }, 'Save'), ' ',
        el('button', { type: 'button', class: 'secondary undo' }, '×'));
    } else if (e.target.classList.contains('undo')) {
      renderOrders();
    } else if (e.target.classList.contains('save')) {
      const body = {};
      const price = row.querySelector('.new-price').value.trim(), qty = row.querySelector('.new-qty').value.trim();
      if (price !== plain(o.price)) body.price = price;
      if (qty !== plain(o.quantity)) body.quantity = qty;
      if (!Object.keys(body).length) { renderOrders(); return; }
      upsertOrder(await api('PUT', `/orders/${encodeURIComponent(token)}`, body));
      refreshBalanceSoon();
    }
  } catch (err) {
    $('#orders-error').textContent = `${err.message} (${err.code})`;
  }
}

// ---------- order entry ----------
function newTokenId() {
  const rnd = crypto.getRandomValues(new Uint32Array(1))[0].toString(36);
  return `web-${Date.now().toString(36)}-${rnd}`;
}

function fieldOf(err) {
  for (const e of err.errors) { const f = e.loc?.[e.loc.length - 1]; if (f === 'price' || f === 'quantity') return f; }
  return { invalid_price: 'price', invalid_quantity: 'quantity', below_min_notional: 'quantity', insufficient_balance: 'quantity' }[err.code];
}

async function placeOrder(ev) {
  ev.preventDefault();
  const type = $('#order-type').value;
  const side = document.querySelector('input[name=side]:checked').value;
  const body = { token_id: newTokenId(), symbol: state.symbol, side, type };
  const qty = $('#order-qty').value.trim(), price = $('#order-price').value.trim();
  if (qty) body.quantity = qty;
  if (type !== 'market' && price) body.price = price;
  for (const i of ['#order-qty', '#order-price']) $(i).classList.remove('invalid');
  $('#order-error').textContent = ''; $('#order-error').dataset.code = ''; $('#order-result').textContent = '';
  $('#order-submit').disabled = true;
  try {
    const o = await api('POST', '/orders', body);
    upsertOrder(o);
    refreshBalanceSoon();
    const filled = Number(o.filled_quantity) ? `, filled ${plain(o.filled_quantity)} @ ${plain(o.average_price)}` : '';
    $('#order-result').textContent = `${o.side} ${plain(o.quantity)} ${o.symbol}: ${o.status}${filled}`;
  } catch (e) {
    $('#order-error').textContent = `${e.message} (${e.code})`;
    $('#order-error').dataset.code = e.code;
    const f = fieldOf(e);
    if (f) $(f === 'price' ? '#order-price' : '#order-qty').classList.add('invalid');
  } finally {
    $('#order-submit').disabled = false;
  }
}

async function deposit(ev) {
  ev.preventDefault();
  $('#deposit-error').textContent = '';
  try {
    await api('POST', '/deposit', { asset: $('#deposit-asset').value, amount: $('#deposit-amount').value.trim() });
    $('#deposit-amount').value = '';
    refreshBalance();
  } catch (e) { $('#deposit-error').textContent = `${e.message} (${e.code})`; }
}

// ---------- API keys ----------
const day = (us) => (us === null || us === undefined) ? '—' : new Date(us / 1000).toISOString().slice(0, 16).replace('T', ' ');

async function refreshKeys() {
  try {
    const keys = await api('GET', '/api-keys');
    $('#keys tbody').replaceChildren(...keys.map((k) => el('tr', { id: `key-${k.id}`, dataset: { id: k.id } },
      el('td', { class: 'name' }, k.name), el('td', { class: 'scopes' }, k.scopes.join(', ')),
      el('td', {}, day(k.created_us)), el('td', { class: 'used' }, day(k.last_used_us)),
      el('td', {}, el('button', { type: 'button', class: 'delete secondary' }, 'Delete')))));
  } catch (e) { if (state.token) $('#key-error').textContent = `${e.message} (${e.code})`; }
}

async function createKey(ev) {
  ev.preventDefault();
  $('#key-error').textContent = ''; $('#key-new').hidden = true;
  const scopes = $('#key-trade').checked ? ['read', 'trade'] : ['read'];
  try {
    const k = await api('POST', '/api-keys', { name: $('#key-name').value.trim(), scopes });
    $('#key-secret').textContent = k.key; $('#key-new').hidden = false; $('#key-name').value = '';
    await refreshKeys();
  } catch (e) { $('#key-error').textContent = `${e.message} (${e.code})`; }
}

async function onKeysClick(e) {
  const row = e.target.closest('tr'); if (!row || !e.target.classList.contains('delete')) return;
  $('#key-error').textContent = '';
  try { await api('DELETE', `/api-keys/${encodeURIComponent(row.dataset.id)}`); $('#key-new').hidden = true; }
  catch (err) { $('#key-error').textContent = `${err.message} (${err.code})`; }
  await refreshKeys();
}

// ---------- controls ----------
function renderControls() {
  $('#pair').replaceChildren(...state.info.pairs.map((p) => el('option', { value: p }, p)));
  if (!state.symbols.has(state.symbol)) state.symbol = state.info.pairs[0];
  $('#pair').value = state.symbol;
  $('#exchange').value = state.exchange;
  $('#half-life').value = state.halfLife;
  $('#deposit-asset').replaceChildren(...state.info.assets.map((a) => el('option', { value: a }, a)));
  $('#deposit-asset').value = 'USDT';
  markInterval();
}

function markInterval() {
  for (const b of document.querySelectorAll('#intervals button')) b.classList.toggle('active', b.dataset.interval === state.interval);
}

function wireControls() {
  $('#pair').addEventListener('change', () => { state.symbol = $('#pair').value; savePrefs(); subscribeMarket(); refreshBalance(); });
  $('#exchange').addEventListener('change', () => { state.exchange = $('#exchange').value; savePrefs(); subscribeMarket({ touch: false }); });
  $('#intervals').addEventListener('click', (e) => {
    const iv = e.target.dataset?.interval; if (!iv) return;
    state.interval = iv; savePrefs(); markInterval(); subscribeMarket({ touch: false, tape: false });
  });
  $('#half-life').addEventListener('change', () => {
    state.halfLife = $('#half-life').value.trim(); savePrefs(); subscribeMarket({ touch: false, tape: false });
  });
  $('#order-type').addEventListener('change', () => { $('#order-price').disabled = $('#order-type').value === 'market'; });
  $('#order-form').addEventListener('submit', placeOrder);
  $('#deposit-form').addEventListener('submit', deposit);
  $('#orders tbody').addEventListener('click', onOrdersClick);
  $('#login-form').addEventListener('submit', (e) => { e.preventDefault(); authenticate('/login'); });
  $('#register-btn').addEventListener('click', () => authenticate('/register'));
  $('#logout').addEventListener('click', () => signOut());
  $('#key-form').addEventListener('submit', createKey);
  $('#keys tbody').addEventListener('click', onKeysClick);
}

// ---------- start ----------
async function loadInfo() {
  for (let wait = 1; !state.info; wait = Math.min(wait * 2, RECONNECT_CAP_S)) {
    try {
      state.info = await api('GET', '/info');
    } catch {
      banner(`Gateway unreachable — retrying in ${wait}s`);
      await new Promise((r) => setTimeout(r, wait * 1000));
    }
  }
  banner(null);
  for (const s of state.info.symbols) state.symbols.set(s.symbol, s);
}

async function startApp() {
  $('#login').hidden = true; $('#app').hidden = false; $('#logout').hidden = false;
  $('#who').textContent = state.username || '';
  armExpiry();
  renderControls();
  await initChart();
  feed.specs = {};
  feed.specs.orders = { stream: 'orders' };
  subscribeMarket(); // recorded in feed.specs; sent once the socket is authenticated
  feed.start();
  $('#key-new').hidden = true; $('#key-error').textContent = '';
  refreshKeys();
}

async function main() {
  wireControls();
  await loadInfo();
  if (state.token) await startApp(); else showLogin();
}

main();
