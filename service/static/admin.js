// The seats admin console: a live map with every hold's order and deadline, the operators' actions
// (release, extend, block, unblock) with a reason, an order search, and seat or order history.
import { api, ApiError, clock } from './api.js';
import { SeatGrid } from './grid.js';
import { LiveStream } from './streams.js';

const TOKEN_KEY = 'seats.admin.token';
const FLIGHT_KEY = 'seats.admin.flight';
const HISTORY_PAGE = 50;
const TIME = { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false };

const $ = (selector) => document.querySelector(selector);
const el = {
  tokenForm: $('[data-field="token-form"]'),
  token: $('[data-field="token"]'),
  signOut: $('[data-action="sign-out"]'),
  flightPicker: $('[data-field="flight-picker"]'),
  flight: $('[data-field="flight"]'),
  flightInfo: $('[data-field="flight-info"]'),
  banner: $('[data-banner="connection"]'),
  message: $('[data-message]'),
  console: $('[data-field="console"]'),
  live: $('[data-field="live-status"]'),
  grid: $('[data-field="seat-grid"]'),
  holds: $('[data-field="holds"] tbody'),
  reason: $('[data-field="reason"]'),
  selection: $('[data-field="selection"]'),
  orderForm: $('[data-field="order-form"]'),
  orderSearch: $('[data-field="order-search"]'),
  orderFacts: $('[data-field="order-facts"]'),
  orderId: $('[data-field="order-id"]'),
  orderState: $('[data-order-state]'),
  orderSeats: $('[data-field="order-seats"]'),
  orderCountdown: $('[data-field="order-countdown"]'),
  orderPayment: $('[data-field="order-payment"]'),
  minutes: $('[data-field="minutes"]'),
  beyondCap: $('[data-field="beyond-cap"]'),
  history: $('[data-field="history"]'),
  historyTitle: $('[data-field="history-title"]'),
  historyRows: $('[data-field="history-rows"]'),
  historyMore: $('[data-action="history-more"]'),
};

const state = {
  token: null,
  flightId: null,
  seats: new Map(), // seat id -> {status, expiresAt (ms) | null, orderId | null}
  version: -1,
  selection: new Set(),
  order: null, // the order shown in the order panel
  history: null, // {path, title, next}
  stream: null,
  refreshOrderTimer: null,
  generation: 0,
};

// ---------------------------------------------------------------------------------------------
// messages, the token, requests

function setMessage(text, kind = 'error') {
  el.message.textContent = text || '';
  el.message.dataset.kind = kind;
  el.message.hidden = !text;
}

function savedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function keepToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token lasts until the page is left
  }
}

/** An admin API call; a refused token signs the console out. */
async function call(method, path, body) {
  try {
    return await api(method, path, { token: state.token, body });
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      signOut('The admin token was refused; type it again.');
    }
    throw error;
  }
}

function report(error, what) {
  setMessage(`${what}: ${error instanceof ApiError ? error.message : error}`);
}

async function signIn(token) {
  state.token = token;
  try {
    await api('GET', '/admin/payments/summary', { token });
  } catch (error) {
    state.token = null;
    keepToken(null);
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      setMessage('That admin token is wrong (or SEATS_ADMIN_TOKEN is not set on the server).');
    } else {
      report(error, 'Could not sign in');
    }
    showSignedIn(false);
    return;
  }
  keepToken(token);
  setMessage('');
  showSignedIn(true);
  await loadCatalogue();
}

function signOut(message) {
  state.token = null;
  keepToken(null);
  teardown();
  showSignedIn(false);
  setMessage(message || '', 'info');
}

function showSignedIn(on) {
  el.tokenForm.hidden = on;
  el.signOut.hidden = !on;
  el.flightPicker.hidden = !on;
  el.console.hidden = !on;
  if (!on) el.token.value = '';
}

// ---------------------------------------------------------------------------------------------
// the live map

function seatFrom(view) {
  return {
    status: view.status,
    expiresAt: view.expiresAt ? Date.parse(view.expiresAt) : null,
    orderId: view.orderId || null,
  };
}

function applySnapshot(map) {
  if (map.flightId !== state.flightId) return;
  state.version = map.version;
  state.seats = new Map(Object.entries(map.seats).map(([id, view]) => [id, seatFrom(view)]));
  el.grid.removeAttribute('aria-busy');
  paintAll();
}

function applyChanges(event) {
  if (event.lastUpdated) clock.sampleBefore(event.lastUpdated, Date.now());
  if (event.version <= state.version) return;
  state.version = event.version;
  const ids = Object.keys(event.changes || {});
  let touchesOrder = false;
  for (const id of ids) {
    const before = state.seats.get(id);
    const seat = seatFrom(event.changes[id]);
    state.seats.set(id, seat);
    const order = state.order && state.order.orderId;
    if (order && (seat.orderId === order || (before && before.orderId === order))) touchesOrder = true;
  }
  paint(ids);
  renderHolds();
  if (touchesOrder) refreshOrderSoon();
}

function remaining(ms) {
  const total = Math.max(0, Math.ceil((ms - clock.now()) / 1000));
  return `${String(Math.floor(total / 60)).padStart(2, '0')}:${String(total % 60).padStart(2, '0')}`;
}

function shortId(orderId) {
  return orderId.length > 8 ? `${orderId.slice(0, 8)}…` : orderId;
}

function paint(ids) {
  for (const id of ids) {
    const seat = state.seats.get(id) || { status: 'available' };
    let note = '';
    if (seat.status === 'held' && seat.orderId) note = `${shortId(seat.orderId)}\n${remaining(seat.expiresAt)}`;
    else if (seat.status === 'confirmed' && seat.orderId) note = shortId(seat.orderId);
    state.grid.paint(id, seat.status, { selected: state.selection.has(id), note, clickable: true });
  }
}

function paintAll() {
  paint(state.grid.ids());
  renderHolds();
  renderSelection();
}

/** Held seats' countdowns, once a second. */
function tick() {
  if (!state.flightId) return;
  paint([...state.seats.entries()].filter(([, seat]) => seat.status === 'held').map(([id]) => id));
  for (const cell of el.holds.querySelectorAll('[data-deadline]')) cell.textContent = remaining(Number(cell.dataset.deadline));
  renderOrderCountdown();
}

/** The table of orders holding or owning seats, from the live map. */
function renderHolds() {
  const orders = new Map();
  for (const [id, seat] of state.seats) {
    if (!seat.orderId) continue;
    const entry = orders.get(seat.orderId) || { seats: [], status: seat.status, expiresAt: seat.expiresAt };
    entry.seats.push(id);
    orders.set(seat.orderId, entry);
  }
  const rows = [...orders.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([orderId, entry]) => {
    const row = document.createElement('tr');
    row.dataset.order = orderId;
    const open = document.createElement('button');
    open.type = 'button';
    open.textContent = shortId(orderId);
    open.title = `Open order ${orderId}`;
    open.addEventListener('click', () => loadOrder(orderId));
    const time = document.createElement('td');
    if (entry.status === 'held' && entry.expiresAt) {
      time.dataset.deadline = String(entry.expiresAt);
      time.textContent = remaining(entry.expiresAt);
    } else {
      time.textContent = '—';
    }
    row.append(cell(open), cell(state.grid.sort(entry.seats).join(', ')),
      cell(entry.status === 'held' ? 'held' : 'sold'), time);
    return row;
  });
  el.holds.replaceChildren(...rows);
}

function cell(content) {
  const td = document.createElement('td');
  td.append(content);
  return td;
}

function onSeat(id) {
  if (state.selection.has(id)) state.selection.delete(id);
  else state.selection.add(id);
  paint([id]);
  renderSelection();
  const seat = state.seats.get(id);
  if (seat && seat.orderId && state.selection.has(id)) loadOrder(seat.orderId);
}

function renderSelection() {
  const ids = state.grid.sort(state.selection);
  el.selection.textContent = ids.length ? ids.join(', ') : 'none';
}

function clearSelection() {
  const ids = [...state.selection];
  state.selection.clear();
  paint(ids);
  renderSelection();
}

// ---------------------------------------------------------------------------------------------
// flights and the stream

function teardown() {
  state.generation += 1;
  if (state.stream) state.stream.close();
  state.stream = null;
  state.seats = new Map();
  state.version = -1;
  state.selection.clear();
}

async function loadCatalogue() {
  let flights;
  try {
    flights = await call('GET', '/flights');
  } catch (error) {
    report(error, 'The flights could not be loaded');
    return;
  }
  el.flight.replaceChildren(...flights.map((flight) => {
    const option = document.createElement('option');
    option.value = flight.flightId;
    option.textContent = `${flight.flightId} (${flight.capacity} seats)`;
    return option;
  }));
  let wanted = new URL(window.location.href).searchParams.get('flight');
  try {
    wanted = wanted || sessionStorage.getItem(FLIGHT_KEY);
  } catch {
    // storage disabled
  }
  const flightId = flights.some((f) => f.flightId === wanted) ? wanted : flights[0] && flights[0].flightId;
  if (flightId) await loadFlight(flightId);
}

async function loadFlight(flightId) {
  teardown();
  const generation = state.generation;
  state.flightId = flightId;
  el.flight.value = flightId;
  try {
    sessionStorage.setItem(FLIGHT_KEY, flightId);
  } catch {
    // storage disabled: the first flight is shown after a reload
  }
  let layout;
  try {
    layout = await call('GET', `/flights/${encodeURIComponent(flightId)}`);
  } catch (error) {
    report(error, `Flight ${flightId} could not be opened`);
    return;
  }
  if (generation !== state.generation) return;
  el.flightInfo.textContent = `${layout.rows} rows × ${layout.columns.length} columns · ${layout.capacity} seats`;
  el.grid.setAttribute('aria-busy', 'true');
  state.grid.build(layout.rows, layout.columns);
  renderSelection();
  const url = `/admin/flights/${encodeURIComponent(flightId)}/events?token=${encodeURIComponent(state.token)}`;
  const stream = new LiveStream(url, { snapshot: applySnapshot, seats: applyChanges }, (up) => {
    if (generation !== state.generation) return;
    el.live.textContent = up ? 'live' : 'reconnecting…';
    el.live.dataset.up = up ? 'true' : 'false';
    el.banner.hidden = up;
  });
  state.stream = stream;
  stream.open();
}

// ---------------------------------------------------------------------------------------------
// orders

async function loadOrder(orderId) {
  try {
    const order = await call('GET', `/admin/orders/${encodeURIComponent(orderId)}`);
    showOrder(order);
  } catch (error) {
    report(error, `Order ${orderId} could not be found`);
  }
}

function refreshOrderSoon() {
  clearTimeout(state.refreshOrderTimer);
  state.refreshOrderTimer = setTimeout(() => state.order && loadOrder(state.order.orderId), 150);
}

function showOrder(order) {
  state.order = order;
  el.orderSearch.value = order.orderId;
  el.orderFacts.hidden = false;
  el.orderId.textContent = order.orderId;
  el.orderState.textContent = order.state;
  el.orderState.dataset.state = order.state;
  el.orderSeats.textContent = order.seats.length ? order.seats.join(', ') : '—';
  el.orderPayment.textContent = [order.paymentStatus, order.attemptsLeft !== undefined ? `${order.attemptsLeft} attempts left` : '']
    .filter(Boolean).join(' · ');
  renderOrderCountdown();
}

function renderOrderCountdown() {
  const order = state.order;
  const live = order && order.holdExpiresAt && (order.state === 'SEATS_SELECTED' || order.state === 'PAYING');
  el.orderCountdown.textContent = live ? remaining(Date.parse(order.holdExpiresAt)) : '—';
}

function reason() {
  const text = el.reason.value.trim();
  if (!text) {
    setMessage('Give a reason first: every action is recorded with it.');
    el.reason.focus();
  }
  return text;
}

async function orderAction(action) {
  const order = state.order;
  if (!order) {
    setMessage('Find an order first (search by id, or click one of its seats).');
    return;
  }
  const why = reason();
  if (!why) return;
  const body = { reason: why };
  if (action === 'extend') {
    body.minutes = Number(el.minutes.value);
    body.beyondCap = el.beyondCap.checked;
  }
  try {
    const updated = await call('POST', `/admin/orders/${encodeURIComponent(order.orderId)}/${action}`, body);
    showOrder(updated);
    setMessage(action === 'release' ? `Order ${updated.orderId} released (${updated.state}).`
      : `Order ${updated.orderId} now holds until ${new Date(updated.holdExpiresAt).toLocaleTimeString(undefined, TIME)}.`,
    'success');
    if (state.history && state.history.order === updated.orderId) showHistory(state.history.path, state.history.title, updated.orderId);
  } catch (error) {
    report(error, action === 'release' ? 'The order could not be released' : 'The hold could not be extended');
    if (error instanceof ApiError && error.status === 409) loadOrder(order.orderId);
  }
}

async function seatAction(action) {
  const seats = state.grid.sort(state.selection);
  if (!seats.length) {
    setMessage('Select seats on the map first.');
    return;
  }
  const why = reason();
  if (!why) return;
  try {
    const result = await call('POST', `/admin/flights/${encodeURIComponent(state.flightId)}/seats/${action}`,
      { reason: why, seats });
    const done = result.changed.length ? `${action === 'block' ? 'Blocked' : 'Unblocked'} ${result.changed.join(', ')}.` : '';
    const same = result.unchanged.length ? ` Already as asked: ${result.unchanged.join(', ')}.` : '';
    setMessage(`${done}${same}`.trim(), 'success');
    clearSelection();
  } catch (error) {
    report(error, action === 'block' ? 'The seats could not be blocked' : 'The seats could not be unblocked');
  }
}

// ---------------------------------------------------------------------------------------------
// history

async function showHistory(path, title, orderId = null) {
  state.history = { path, title, next: null, order: orderId };
  el.historyRows.replaceChildren();
  el.historyTitle.textContent = title;
  el.history.hidden = false;
  await moreHistory();
}

async function moreHistory() {
  const history = state.history;
  if (!history) return;
  const cursor = history.next ? `&cursor=${encodeURIComponent(history.next)}` : '';
  try {
    const page = await call('GET', `${history.path}?limit=${HISTORY_PAGE}${cursor}`);
    if (state.history !== history) return;
    history.next = page.next;
    el.historyRows.append(...page.entries.map(historyRow));
    if (!el.historyRows.children.length) {
      const row = document.createElement('tr');
      row.append(cell('No entries.'));
      el.historyRows.append(row);
    }
    el.historyMore.hidden = !page.next;
  } catch (error) {
    report(error, 'The history could not be loaded');
  }
}

function historyRow(entry) {
  const row = document.createElement('tr');
  row.dataset.cause = entry.cause;
  const when = new Date(entry.at);
  const change = entry.seat ? `${entry.from} → ${entry.to}` : 'order';
  const deadline = entry.expiresAt ? ` (until ${new Date(entry.expiresAt).toLocaleTimeString(undefined, TIME)})` : '';
  const order = document.createElement('code');
  order.textContent = entry.orderId ? shortId(entry.orderId) : '—';
  if (entry.orderId) order.title = entry.orderId;
  row.append(cell(when.toLocaleTimeString(undefined, TIME)), cell(String(entry.version)), cell(entry.seat || '—'),
    cell(change + deadline), cell(order), cell(entry.cause), cell(entry.reason || ''));
  row.title = entry.at;
  return row;
}

function seatHistory() {
  const seats = [...state.selection];
  if (seats.length !== 1) {
    setMessage('Select exactly one seat to see its history.');
    return;
  }
  const [seat] = seats;
  showHistory(`/admin/flights/${encodeURIComponent(state.flightId)}/seats/${encodeURIComponent(seat)}/history`,
    `History of seat ${seat}`);
}

function orderHistory() {
  if (!state.order) {
    setMessage('Find an order first.');
    return;
  }
  const { orderId } = state.order;
  showHistory(`/admin/orders/${encodeURIComponent(orderId)}/history`, `History of order ${shortId(orderId)}`, orderId);
}

// ---------------------------------------------------------------------------------------------
// wiring

function main() {
  state.grid = new SeatGrid(el.grid, onSeat);
  el.tokenForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const token = el.token.value.trim();
    if (token) signIn(token);
  });
  el.signOut.addEventListener('click', () => signOut('Signed out.'));
  el.flight.addEventListener('change', () => loadFlight(el.flight.value));
  el.orderForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const orderId = el.orderSearch.value.trim();
    if (orderId) loadOrder(orderId);
  });
  const actions = {
    block: () => seatAction('block'),
    unblock: () => seatAction('unblock'),
    'seat-history': seatHistory,
    'clear-selection': clearSelection,
    release: () => orderAction('release'),
    extend: () => orderAction('extend'),
    'order-history': orderHistory,
    'history-more': moreHistory,
  };
  for (const [name, run] of Object.entries(actions)) $(`[data-action="${name}"]`).addEventListener('click', run);
  setInterval(tick, 1000);
  const token = savedToken();
  if (token) signIn(token);
  else showSignedIn(false);
}

main();
