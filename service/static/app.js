// The seats customer page: flight picker, live seat map, order, countdown and payment.
import { api, ApiError, clock } from './api.js';
import { SeatGrid } from './grid.js';
import { LiveStream } from './streams.js';

const TERMINAL = new Set(['CONFIRMED', 'FAILED', 'EXPIRED', 'CANCELLED']);
/** Nothing more will change: terminal, and no refund under way (paymentStatus 'refunding'). */
const settled = (order) => TERMINAL.has(order.state) && order.paymentStatus !== 'refunding';
// Order states in which the order's `seats` are really held or sold to it.
const OWNS_SEATS = new Set(['SEATS_SELECTED', 'PAYING', 'CONFIRMED', 'FAILED']);
const WARNING_MS = 5 * 60 * 1000;
const POLL_MS = 3000;

const $ = (selector) => document.querySelector(selector);
const el = {
  flight: $('[data-field="flight"]'),
  flightInfo: $('[data-field="flight-info"]'),
  banner: $('[data-banner="connection"]'),
  live: $('[data-field="live-status"]'),
  grid: $('[data-field="seat-grid"]'),
  orderId: $('[data-field="order-id"]'),
  badge: $('[data-order-state]'),
  noOrder: $('[data-field="no-order"]'),
  countdownRow: $('[data-field="countdown-row"]'),
  countdown: $('[data-countdown]'),
  countdownNote: $('[data-field="countdown-note"]'),
  orderSeats: $('[data-field="order-seats"]'),
  confirmationRow: $('[data-field="confirmation-row"]'),
  confirmationId: $('[data-field="confirmation-id"]'),
  selectionRow: $('[data-field="selection-row"]'),
  selectionLabel: $('[data-field="selection-label"]'),
  selection: $('[data-field="selection"]'),
  orderButton: $('[data-action="order-seats"]'),
  clearButton: $('[data-action="clear-selection"]'),
  message: $('[data-message]'),
  paymentForm: $('[data-field="payment-form"]'),
  code: $('[data-field="payment-code"]'),
  payButton: $('[data-action="pay"]'),
  paymentFacts: $('[data-field="payment-facts"]'),
  attempts: $('[data-attempts-left]'),
  paymentStatus: $('[data-payment-status]'),
  cancelButton: $('[data-action="cancel"]'),
  newOrderButton: $('[data-action="new-order"]'),
};

const state = {
  flights: [],
  flightId: null,
  layout: null,
  seats: new Map(), // seat id -> {status, expiresAt, mine: true | false | undefined (not said)}
  version: -1,
  epoch: null, // the epoch of the flight stream's events (see epochOf)
  selection: new Set(), // seats picked locally, not yet requested (blue)
  release: new Set(), // held seats of the order the customer wants to drop
  conflicts: new Set(), // seats the last request (or a live update) found taken
  inflight: null, // seats of a selection request awaiting the server's answer
  order: null,
  token: null,
  busy: false,
  streams: { flight: null, order: null },
  up: { flight: null, order: null, requests: true },
  pollTimer: null,
  refreshTimer: null,
  generation: 0, // bumps when the flight changes; late answers of the old flight are ignored
};

// ---------------------------------------------------------------------------------------------
// sessionStorage: one order per flight, so a reload resumes it instead of abandoning its holds

const storageKey = (flightId) => `seats.order.${flightId}`;

function savedOrder(flightId) {
  try {
    const value = JSON.parse(sessionStorage.getItem(storageKey(flightId)) || 'null');
    return value && value.orderId && value.token ? value : null;
  } catch {
    return null;
  }
}

function saveOrder(flightId, orderId, token) {
  try {
    sessionStorage.setItem(storageKey(flightId), JSON.stringify({ orderId, token }));
  } catch {
    // Storage may be disabled; the order still works until the page is left.
  }
}

function forgetOrder(flightId) {
  try {
    sessionStorage.removeItem(storageKey(flightId));
  } catch {
    // ignore
  }
}

// ---------------------------------------------------------------------------------------------
// messages and connection state

function setMessage(text, kind = 'error') {
  el.message.textContent = text || '';
  el.message.dataset.kind = kind;
  el.message.hidden = !text;
}

function clearMessage() {
  setMessage('');
}

function setUp(channel, up) {
  state.up[channel] = up;
  renderConnection();
  ensurePolling();
}

function renderConnection() {
  const lost = state.up.flight === false || (orderIsLive() && state.up.order === false) || !state.up.requests;
  el.banner.hidden = !lost;
  el.live.textContent = state.up.flight ? 'live' : state.up.flight === false ? 'reconnecting…' : 'connecting…';
  el.live.dataset.up = state.up.flight ? 'true' : 'false';
}

/** Run an API call; a network failure raises the banner until something succeeds again. */
async function call(method, path, options) {
  try {
    const data = await api(method, path, options);
    if (!state.up.requests) {
      state.up.requests = true;
      renderConnection();
    }
    return data;
  } catch (error) {
    if (error instanceof ApiError && error.network) {
      state.up.requests = false;
      renderConnection();
      startProbe();
    }
    throw error;
  }
}

// After a failed request, probe the server until it answers so the banner clears by itself.
let probeTimer = null;
function startProbe() {
  if (probeTimer) return;
  probeTimer = setInterval(async () => {
    try {
      await api('GET', '/healthz');
      clearInterval(probeTimer);
      probeTimer = null;
      state.up.requests = true;
      renderConnection();
    } catch {
      // still down
    }
  }, 2000);
}

// ---------------------------------------------------------------------------------------------
// seat display states: held and confirmed come from the server's map; `mine` from the map's marks,
// reconciled with our own order while a change arrives without them

function isMine(id, seat) {
  if (seat.mine === true) return true;
  if (seat.mine === false) return false;
  const order = state.order;
  if (order && OWNS_SEATS.has(order.state) && order.seats.includes(id)) return true;
  if (state.inflight && state.inflight.has(id)) return null; // our request is on its way: wait for it
  return false;
}

function displayState(id) {
  const seat = state.seats.get(id) || { status: 'available' };
  if (seat.status === 'available') return state.selection.has(id) ? 'selected' : 'available';
  if (seat.status === 'blocked') return 'blocked'; // an operator took it off sale: nobody's, not clickable
  const mine = isMine(id, seat);
  if (seat.status === 'confirmed') return mine ? 'confirmed-mine' : 'confirmed-other';
  if (mine === null) return 'selected'; // never flash "held by others" for our own pending hold
  return mine ? 'held-mine' : 'held-other';
}

function paintSeats(ids) {
  const grid = state.grid;
  for (const id of ids || grid.ids()) {
    const shown = displayState(id);
    grid.paint(id, shown, {
      release: shown === 'held-mine' && state.release.has(id),
      conflict: state.conflicts.has(id),
    });
  }
}

/** The server wins: a selected seat that someone else holds or buys leaves the selection. */
function dropTakenFromSelection(ids) {
  const taken = [];
  for (const id of ids) {
    const seat = state.seats.get(id);
    if (!seat || seat.status === 'available') continue;
    const mine = isMine(id, seat);
    if (mine === null) continue;
    if (state.selection.delete(id) && !mine) {
      taken.push(id);
      state.conflicts.add(id);
    }
    if (!mine) state.release.delete(id);
  }
  for (const id of ids) {
    const seat = state.seats.get(id);
    if (!seat || seat.status === 'available') state.release.delete(id); // a dropped seat, now released
  }
  if (taken.length) {
    const blocked = taken.every((id) => state.seats.get(id)?.status === 'blocked');
    const why = blocked ? 'just taken off sale' : 'just taken by someone else';
    setMessage(`${seatList(taken)} ${taken.length === 1 ? 'was' : 'were'} ${why} and left your selection.`);
  }
}

function seatList(ids) {
  const sorted = sortSeats(ids);
  return sorted.length === 1 ? `Seat ${sorted[0]}` : `Seats ${sorted.join(', ')}`;
}

function sortSeats(ids) {
  return state.grid.sort(ids);
}

// ---------------------------------------------------------------------------------------------
// seat map: full maps (GET or the stream's snapshot) and changes from the stream

function seatFrom(view, authoritative) {
  return {
    status: view.status,
    expiresAt: view.expiresAt || null,
    mine: view.mine === true ? true : authoritative ? false : undefined,
  };
}

/** The epoch of a flight event id `<epoch>-<version>`: it changes when the data's lifetime does (the
 * flight created anew, Redis restarted or failed over), and versions may then start over. */
function epochOf(eventId) {
  const at = eventId ? eventId.lastIndexOf('-') : -1;
  return at > 0 ? eventId.slice(0, at) : null;
}

/** A full map; `authoritative` when it was read with our order's token (its `mine` marks are complete);
 * `epoch` when it came from the stream: a map of another epoch replaces ours whatever its version. */
function applyMap(map, authoritative, epoch = null) {
  if (!map || map.flightId !== state.flightId) return;
  const ids = Object.keys(map.seats);
  const newEpoch = epoch !== null && epoch !== state.epoch;
  if (newEpoch || map.version >= state.version) {
    state.version = map.version;
    if (epoch !== null) state.epoch = epoch;
    state.seats = new Map(ids.map((id) => [id, seatFrom(map.seats[id], authoritative)]));
  } else if (authoritative) {
    // Older than what the stream already gave us: keep the newer states, learn only the marks.
    for (const id of ids) {
      const ours = state.seats.get(id);
      const view = map.seats[id];
      if (ours && ours.status === view.status && (ours.expiresAt || null) === (view.expiresAt || null)) {
        ours.mine = view.mine === true;
      }
    }
  }
  el.grid.removeAttribute('aria-busy'); // the first map is in: show the seats
  dropTakenFromSelection(ids);
  if (ids.length !== state.grid.ids().length || ids.some((id) => !state.grid.has(id))) relayout();
  paintSeats();
  renderOrder();
}

/** The flight's layout was replaced (admin): draw the new grid and paint what we know. */
async function relayout() {
  const generation = state.generation;
  try {
    const layout = await call('GET', `/flights/${encodeURIComponent(state.flightId)}`);
    if (generation !== state.generation) return;
    state.layout = layout;
    state.grid.build(layout.rows, layout.columns);
    showLayout(layout);
    paintSeats();
  } catch (error) {
    reportError(error, 'The new seat layout could not be loaded');
  }
}

function showLayout(layout) {
  el.flightInfo.textContent = `${layout.rows} rows × ${layout.columns.length} columns · ${layout.capacity} seats`;
}

/** One `seats` event. On a stream opened with our order's token the server marks every seat of ours
 * (`mine: true`, held or confirmed), so a change without the mark is someone else's. */
function applyChanges(event, authenticated) {
  if (event.lastUpdated) clock.sampleBefore(event.lastUpdated, Date.now());
  if (event.version <= state.version) return; // already part of the map we hold
  const gap = state.version >= 0 && event.version > state.version + 1;
  state.version = event.version;
  const ids = Object.keys(event.changes || {});
  let unsure = false;
  for (const id of ids) {
    const seat = seatFrom(event.changes[id], authenticated);
    if (seat.status !== 'available' && seat.mine === undefined) unsure = unsure || isMine(id, seat) !== false;
    state.seats.set(id, seat);
    if (!state.grid.has(id)) unsure = true;
  }
  dropTakenFromSelection(ids);
  paintSeats(ids);
  renderOrder();
  if (gap || unsure) scheduleRefresh();
}

async function refreshMap() {
  const generation = state.generation;
  const flightId = state.flightId;
  const order = state.order;
  let path = `/flights/${encodeURIComponent(flightId)}/seats`;
  if (order) path += `?orderId=${encodeURIComponent(order.orderId)}`;
  try {
    const map = await call('GET', path, { token: order ? state.token : undefined });
    if (generation !== state.generation) return;
    applyMap(map, Boolean(order));
  } catch (error) {
    if (generation === state.generation) reportError(error, 'The seat map could not be loaded');
  }
}

/** Refetch the map with our token unless the live stream already marks our seats. */
function refreshUnlessMarked() {
  const order = state.order;
  if (order && state.up.flight && state.streamOrder === order.orderId) return;
  scheduleRefresh(0);
}

function scheduleRefresh(delay = 80) {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(refreshMap, delay);
}

// While a live stream is down the page polls: the cheap version endpoint (refetching the map when it
// moved) and the order, so nothing goes stale until the stream is back.
function ensurePolling() {
  const flightDown = state.up.flight === false;
  const orderDown = orderIsLive() && state.up.order === false;
  if ((flightDown || orderDown) && !state.pollTimer) {
    state.pollTimer = setInterval(pollOnce, POLL_MS);
  } else if (!flightDown && !orderDown && state.pollTimer) {
    stopPolling();
  }
}

async function pollOnce() {
  if (state.up.flight === false) {
    try {
      const head = await call('GET', `/flights/${encodeURIComponent(state.flightId)}/seats/version`);
      if (head.version !== state.version) await refreshMap();
    } catch {
      // the banner already says so
    }
  }
  if (orderIsLive() && state.up.order === false) await recheckOrder(state.order.orderId);
  ensurePolling();
}

function stopPolling() {
  clearInterval(state.pollTimer);
  state.pollTimer = null;
}

function orderIsLive() {
  return Boolean(state.order && !settled(state.order) && state.streams.order);
}

// ---------------------------------------------------------------------------------------------
// streams

function openFlightStream() {
  if (state.streams.flight) state.streams.flight.close();
  const order = state.order;
  let url = `/flights/${encodeURIComponent(state.flightId)}/events`;
  const authenticated = Boolean(order);
  state.streamOrder = order ? order.orderId : null;
  if (order) url += `?orderId=${encodeURIComponent(order.orderId)}&token=${encodeURIComponent(state.token)}`;
  const generation = state.generation;
  const stream = new LiveStream(
    url,
    {
      snapshot: (map, event) => applyMap(map, authenticated, epochOf(event.lastEventId)),
      seats: (event) => applyChanges(event, authenticated),
    },
    (up) => {
      if (generation !== state.generation) return;
      setUp('flight', up);
    },
  );
  state.streams.flight = stream;
  stream.open();
}

function openOrderStream() {
  closeOrderStream();
  const order = state.order;
  if (!order || settled(order)) return;
  const url = `/orders/${encodeURIComponent(order.orderId)}/events?token=${encodeURIComponent(state.token)}`;
  const orderId = order.orderId;
  const stream = new LiveStream(
    url,
    {
      order: (data) => {
        if (data.updatedAt) clock.sampleBefore(data.updatedAt, Date.now());
        applyOrder(data);
        if (settled(data) && state.streams.order === stream) closeOrderStream();
      },
    },
    (up) => {
      if (state.streams.order !== stream) return;
      setUp('order', up);
      if (!up) recheckOrder(orderId);
    },
  );
  state.streams.order = stream;
  stream.open();
}

function closeOrderStream() {
  if (state.streams.order) state.streams.order.close();
  state.streams.order = null;
  state.up.order = null;
  renderConnection();
  ensurePolling();
}

/** The order stream dropped: read the order once (it may have ended, or be gone). */
async function recheckOrder(orderId) {
  if (!state.order || state.order.orderId !== orderId) return;
  try {
    const order = await call('GET', `/orders/${encodeURIComponent(orderId)}`, { token: state.token });
    applyOrder(order);
    if (settled(order)) closeOrderStream();
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 401)) {
      forgetOrder(state.flightId);
      setMessage('Your order is no longer known to the server; pick seats to start a new one.');
      dropOrder();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// the order

function applyOrder(order) {
  if (!order || !state.order || order.orderId !== state.order.orderId) return;
  const previous = state.order;
  if (previous.version !== undefined && order.version < previous.version) return; // stale
  const { token, ...plain } = order;
  state.order = plain;
  const changedState = previous.state !== plain.state || previous.paymentStatus !== plain.paymentStatus;
  if (changedState) announce(previous, plain);
  // Our seats leave the selection once the map shows them ours: until the flight stream catches up
  // with the order's answer they stay blue, so they never flash grey (or yellow) in between.
  for (const id of plain.seats) {
    const seat = state.seats.get(id);
    if (seat && seat.status !== 'available' && isMine(id, seat)) state.selection.delete(id);
  }
  if (!OWNS_SEATS.has(plain.state)) state.release.clear();
  if (previous.seats.join() !== plain.seats.join() || previous.state !== plain.state) refreshUnlessMarked();
  paintSeats(new Set([...previous.seats, ...plain.seats, ...state.selection, ...state.release]));
  renderOrder();
  renderConnection();
}

/** Say what a state change means, in words. */
function announce(previous, order) {
  switch (order.state) {
    case 'FAILED':
      setMessage(order.lastError || 'The payment failed.', 'error');
      break;
    case 'EXPIRED':
      // A payment that went through too late says so, and then that it was refunded (lastError).
      setMessage(order.lastError || 'The hold expired before payment; the seats were released.', 'error');
      break;
    case 'CANCELLED':
      setMessage('Order cancelled; the seats were released.', 'info');
      break;
    case 'CONFIRMED':
      setMessage(`Payment accepted — your seats are confirmed (${order.confirmationId || 'confirmed'}).`, 'success');
      break;
    case 'PAYING':
      if (order.paymentStatus === 'retrying' && order.lastError) {
        setMessage(`${order.lastError} Retrying…`, 'info');
      } else if (previous.state !== 'PAYING') {
        clearMessage();
      }
      break;
    default:
      break;
  }
}

function dropOrder() {
  closeOrderStream();
  state.order = null;
  state.token = null;
  state.release.clear();
  openFlightStream(); // without the old token: its seats are no longer "mine"
  paintSeats();
  renderOrder();
}

async function createOrder() {
  const created = await call('POST', '/orders', { body: { flightId: state.flightId }, fresh: true });
  const { token, ...order } = created;
  state.order = order;
  state.token = token;
  saveOrder(state.flightId, order.orderId, token);
  openFlightStream(); // now with our token, so the map marks our seats
  openOrderStream();
  renderOrder();
  return order;
}

async function orderSeats() {
  if (state.busy) return;
  let order = state.order;
  if (order && TERMINAL.has(order.state)) {
    forgetOrder(state.flightId);
    dropOrder();
    order = null;
  }
  if (order && order.state === 'PAYING') {
    setMessage('A payment is in progress; seats can change only after it ends.');
    return;
  }
  const kept = order ? order.seats.filter((id) => !state.release.has(id)) : [];
  const desired = sortSeats(new Set([...kept, ...state.selection]));
  if (!desired.length) {
    setMessage(order ? 'An order keeps at least one seat; use Cancel order to release them all.' : 'Select a seat first.');
    return;
  }
  const sent = new Set(state.selection);
  const dropped = new Set(state.release);
  state.busy = true;
  state.inflight = sent;
  state.conflicts.clear();
  clearMessage();
  renderOrder();
  const generation = state.generation;
  try {
    if (!order) order = await createOrder();
    const updated = await call('POST', `/orders/${encodeURIComponent(order.orderId)}/seats`, {
      body: { seats: desired },
      token: state.token,
      fresh: true,
    });
    if (generation !== state.generation) return;
    state.inflight = null;
    for (const id of dropped) {
      if (state.seats.get(id)?.status === 'available') state.release.delete(id);
    }
    applyOrder(updated);
  } catch (error) {
    if (generation !== state.generation) return;
    state.inflight = null;
    if (error instanceof ApiError && error.code === 'seats_unavailable') {
      showConflicts(error.details.conflicts || []);
    } else if (error instanceof ApiError && (error.code === 'order_closed' || error.code === 'payment_in_progress')) {
      setMessage(error.message);
      if (state.order) recheckOrder(state.order.orderId);
    } else if (error instanceof ApiError && (error.status === 404 || error.status === 401) && state.order) {
      recheckOrder(state.order.orderId);
      reportError(error, 'The seats could not be ordered');
    } else {
      reportError(error, 'The seats could not be ordered');
    }
  } finally {
    if (generation === state.generation) {
      state.busy = false;
      state.inflight = null;
      paintSeats();
      renderOrder();
    }
  }
}

/** A 409: name the taken seats, mark them, keep the rest of the selection. */
function showConflicts(conflicts) {
  const held = [];
  const sold = [];
  const blocked = [];
  for (const { seat, status } of conflicts) {
    state.selection.delete(seat);
    state.conflicts.add(seat);
    ({ confirmed: sold, blocked }[status] || held).push(seat);
    const known = state.seats.get(seat);
    if (!known || known.status === 'available') {
      const shown = status === 'confirmed' || status === 'blocked' ? status : 'held';
      state.seats.set(seat, { status: shown, expiresAt: null, mine: false });
    }
  }
  const parts = [];
  if (held.length) parts.push(`${seatList(held)} ${held.length === 1 ? 'is' : 'are'} held by someone else`);
  if (sold.length) parts.push(`${seatList(sold)} ${sold.length === 1 ? 'is' : 'are'} already sold`);
  if (blocked.length) parts.push(`${seatList(blocked)} ${blocked.length === 1 ? 'is' : 'are'} not for sale`);
  const rest = state.selection.size ? ' Your other seats are still selected — order again to hold them.' : '';
  setMessage(`Not ordered: ${parts.join('; ')}. Nothing was changed.${rest}`, 'error');
  paintSeats(conflicts.map((c) => c.seat));
  refreshUnlessMarked();
}

async function pay(event) {
  event.preventDefault();
  const order = state.order;
  if (!order || state.busy) return;
  const code = el.code.value.trim();
  if (!/^[0-9]{5}$/.test(code)) {
    setMessage('The payment code is exactly 5 digits.');
    el.code.focus();
    return;
  }
  state.busy = true;
  renderOrder();
  try {
    const updated = await call('POST', `/orders/${encodeURIComponent(order.orderId)}/payment`, {
      body: { code },
      token: state.token,
      fresh: true,
    });
    el.code.value = '';
    clearMessage();
    applyOrder(updated);
    if (!state.streams.order) openOrderStream();
  } catch (error) {
    reportError(error, 'The payment could not start');
    if (error instanceof ApiError && error.status === 409) recheckOrder(order.orderId);
  } finally {
    state.busy = false;
    renderOrder();
  }
}

async function cancelOrder() {
  const order = state.order;
  if (!order || state.busy) return;
  state.busy = true;
  renderOrder();
  try {
    const updated = await call('DELETE', `/orders/${encodeURIComponent(order.orderId)}`, { token: state.token, fresh: true });
    applyOrder(updated);
    closeOrderStream();
  } catch (error) {
    reportError(error, 'The order could not be cancelled');
    if (error instanceof ApiError && error.status === 409) recheckOrder(order.orderId);
  } finally {
    state.busy = false;
    renderOrder();
  }
}

function newOrder() {
  forgetOrder(state.flightId);
  dropOrder();
  clearMessage();
}

function reportError(error, what) {
  if (error instanceof ApiError) setMessage(`${what}: ${error.message}`);
  else setMessage(`${what}: ${error && error.message ? error.message : error}`);
}

// ---------------------------------------------------------------------------------------------
// clicking seats

function onSeat(id) {
  const shown = displayState(id);
  const order = state.order;
  if (state.conflicts.size) {
    const marked = [...state.conflicts];
    state.conflicts.clear();
    paintSeats(marked);
  }
  if (shown === 'available') {
    state.selection.add(id);
  } else if (shown === 'selected') {
    if (state.inflight && state.inflight.has(id)) return; // its request is on its way
    state.selection.delete(id);
  } else if (shown === 'held-mine' && order && order.state === 'SEATS_SELECTED') {
    if (state.release.has(id)) state.release.delete(id);
    else state.release.add(id);
  } else {
    return;
  }
  paintSeats([id]);
  renderOrder();
}

// ---------------------------------------------------------------------------------------------
// rendering the order panel

function pad(n) {
  return String(n).padStart(2, '0');
}

function formatRemaining(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  return `${pad(Math.floor(total / 60))}:${pad(total % 60)}`;
}

function renderCountdown() {
  const order = state.order;
  if (!order || !order.holdExpiresAt || order.state === 'PENDING') {
    el.countdownRow.hidden = true;
    return;
  }
  const deadline = Date.parse(order.holdExpiresAt);
  const frozen = TERMINAL.has(order.state);
  // Frozen at the terminal state: the time that was left when the order ended.
  const remaining = frozen ? deadline - Date.parse(order.updatedAt) : deadline - clock.now();
  const text = formatRemaining(remaining);
  if (el.countdown.textContent !== text) el.countdown.textContent = text;
  const warning = !frozen && remaining < WARNING_MS;
  el.countdown.dataset.warning = warning ? 'true' : 'false';
  el.countdown.dataset.frozen = frozen ? 'true' : 'false';
  el.countdownNote.textContent = frozen ? ' (stopped)' : warning ? ' — pay soon' : '';
  el.countdownRow.hidden = false;
}

function renderOrder() {
  const order = state.order;
  const terminal = Boolean(order && TERMINAL.has(order.state));
  el.orderId.textContent = order ? order.orderId : 'none yet';
  el.badge.hidden = !order;
  el.noOrder.hidden = Boolean(order);
  el.badge.textContent = order ? order.state : '';
  el.badge.dataset.state = order ? order.state : '';
  el.orderSeats.textContent = order && order.seats.length ? sortSeats(order.seats).join(', ') : '—';
  el.confirmationRow.hidden = !(order && order.confirmationId);
  el.confirmationId.textContent = (order && order.confirmationId) || '';
  renderCountdown();

  // selection and the order button
  const owned = order && OWNS_SEATS.has(order.state) ? new Set(order.seats) : new Set();
  const adding = sortSeats([...state.selection].filter((id) => !owned.has(id)));
  const dropping = sortSeats([...state.release].filter((id) => order && order.seats.includes(id)));
  const pending = adding.length + dropping.length > 0;
  el.selectionRow.hidden = !pending && !state.inflight;
  const parts = [];
  if (adding.length) parts.push(adding.join(', '));
  if (dropping.length) parts.push(`release ${dropping.join(', ')}`);
  el.selectionLabel.textContent = order && !terminal && order.seats.length ? 'Change' : 'Selected';
  el.selection.textContent = parts.join('; ') || (state.inflight ? sortSeats(state.inflight).join(', ') : '');
  el.orderButton.hidden = !pending && !state.inflight;
  el.orderButton.disabled = state.busy || Boolean(order && order.state === 'PAYING');
  el.orderButton.setAttribute('aria-busy', state.inflight ? 'true' : 'false');
  el.clearButton.hidden = !pending;

  // payment
  const canPay = Boolean(order && order.state === 'SEATS_SELECTED' && order.seats.length);
  const paying = Boolean(order && order.state === 'PAYING');
  el.paymentForm.hidden = !(canPay || paying);
  el.code.disabled = !canPay;
  el.payButton.disabled = !canPay || state.busy;
  el.paymentFacts.hidden = !order;
  el.attempts.textContent = order ? String(order.attemptsLeft) : '';
  el.paymentStatus.textContent = (order && order.paymentStatus) || '';
  el.paymentStatus.dataset.status = (order && order.paymentStatus) || '';

  // actions
  el.cancelButton.hidden = !order || terminal;
  el.cancelButton.disabled = state.busy || paying;
  el.newOrderButton.hidden = !terminal;
}

function clearSelection() {
  const ids = [...state.selection, ...state.release, ...state.conflicts];
  state.selection.clear();
  state.release.clear();
  state.conflicts.clear();
  paintSeats(ids);
  renderOrder();
}

// ---------------------------------------------------------------------------------------------
// flights

function teardown() {
  state.generation += 1;
  if (state.streams.flight) state.streams.flight.close();
  state.streams.flight = null;
  closeOrderStream();
  stopPolling();
  clearTimeout(state.refreshTimer);
  state.up.flight = null;
  state.seats = new Map();
  state.version = -1;
  state.epoch = null;
  state.selection.clear();
  state.release.clear();
  state.conflicts.clear();
  state.inflight = null;
  state.order = null;
  state.token = null;
  state.busy = false;
}

async function loadFlight(flightId) {
  teardown();
  const generation = state.generation;
  state.flightId = flightId;
  el.flight.value = flightId;
  const url = new URL(window.location.href);
  if (url.searchParams.get('flight') !== flightId) {
    url.searchParams.set('flight', flightId);
    history.replaceState(null, '', url);
  }
  clearMessage();
  renderOrder();
  let layout;
  try {
    layout = await call('GET', `/flights/${encodeURIComponent(flightId)}`);
  } catch (error) {
    if (generation !== state.generation) return;
    reportError(error, `Flight ${flightId} could not be opened`);
    if (!(error instanceof ApiError && error.status === 404)) setTimeout(() => {
      if (generation === state.generation) loadFlight(flightId);
    }, 2000);
    return;
  }
  if (generation !== state.generation) return;
  state.layout = layout;
  el.grid.setAttribute('aria-busy', 'true'); // seats stay invisible until the map says what they are
  state.grid.build(layout.rows, layout.columns);
  showLayout(layout);

  const saved = savedOrder(flightId);
  if (saved) {
    try {
      const order = await call('GET', `/orders/${encodeURIComponent(saved.orderId)}`, { token: saved.token });
      if (generation !== state.generation) return;
      state.order = order;
      state.token = saved.token;
      if (TERMINAL.has(order.state)) announce({ state: null, paymentStatus: null }, order);
    } catch (error) {
      if (generation !== state.generation) return;
      if (error instanceof ApiError && (error.status === 404 || error.status === 401)) forgetOrder(flightId);
      else reportError(error, 'Your order could not be loaded');
    }
  }
  renderOrder();
  await refreshMap();
  if (generation !== state.generation) return;
  openFlightStream();
  openOrderStream();
}

async function loadCatalogue() {
  try {
    state.flights = await call('GET', '/flights');
  } catch (error) {
    reportError(error, 'The flights could not be loaded');
    setTimeout(loadCatalogue, 2000);
    return;
  }
  el.flight.replaceChildren(
    ...state.flights.map((flight) => {
      const option = document.createElement('option');
      option.value = flight.flightId;
      option.textContent = `${flight.flightId} (${flight.capacity} seats)`;
      return option;
    }),
  );
  const wanted = new URL(window.location.href).searchParams.get('flight');
  let flightId = wanted || sessionStorage.getItem('seats.flight') || (state.flights[0] && state.flights[0].flightId);
  if (wanted && !state.flights.some((f) => f.flightId === wanted)) {
    // Not in the catalogue list (yet): offer it anyway; loading says whether it exists.
    const option = document.createElement('option');
    option.value = wanted;
    option.textContent = wanted;
    el.flight.append(option);
  }
  if (!flightId) {
    setMessage('There are no flights in the catalogue.');
    return;
  }
  flightId = String(flightId);
  await loadFlight(flightId);
}

// ---------------------------------------------------------------------------------------------
// wiring

function main() {
  state.grid = new SeatGrid(el.grid, onSeat);
  el.flight.addEventListener('change', () => {
    sessionStorage.setItem('seats.flight', el.flight.value);
    loadFlight(el.flight.value);
  });
  el.orderButton.addEventListener('click', orderSeats);
  el.clearButton.addEventListener('click', clearSelection);
  el.paymentForm.addEventListener('submit', pay);
  el.cancelButton.addEventListener('click', cancelOrder);
  el.newOrderButton.addEventListener('click', newOrder);
  el.code.addEventListener('input', () => {
    const digits = el.code.value.replace(/[^0-9]/g, '').slice(0, 5);
    if (digits !== el.code.value) el.code.value = digits;
  });
  window.addEventListener('online', () => {
    if (state.flightId && state.up.flight === false) openFlightStream();
  });
  setInterval(renderCountdown, 250);
  renderOrder();
  renderConnection();
  loadCatalogue();
}

main();
