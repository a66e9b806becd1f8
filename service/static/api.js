// HTTP access to the seats API (same origin) and the server clock estimate.

/**
 * The offset between the server's clock and this browser's: serverNow = Date.now() + offset.
 * Every observation narrows an interval of possible offsets:
 * - the `updatedAt` of a change we just made: written between our send (t0) and receive (t1);
 * - a `Date` header: whole seconds, and uvicorn refreshes it only once a second, so the server's
 *   time at the response lies in [D, D + 2 s);
 * - a timestamp of a live event: it happened before we received it (a lower bound only).
 * Intersecting the intervals gives an estimate within the round trip once we have changed anything.
 */
const CLOCK_KEY = 'seats.clock';

class ServerClock {
  constructor() {
    this.lo = -Infinity;
    this.hi = Infinity;
    // A reload keeps the estimate (the offset does not change with a reload); a later sample that
    // contradicts it replaces it.
    try {
      const saved = JSON.parse(sessionStorage.getItem(CLOCK_KEY) || 'null');
      if (saved && Number.isFinite(saved.lo) && Number.isFinite(saved.hi) && saved.lo <= saved.hi) {
        this.lo = saved.lo;
        this.hi = saved.hi;
      }
    } catch {
      // no storage: estimate afresh
    }
  }

  save() {
    if (!Number.isFinite(this.lo) || !Number.isFinite(this.hi)) return;
    try {
      sessionStorage.setItem(CLOCK_KEY, JSON.stringify({ lo: this.lo, hi: this.hi }));
    } catch {
      // ignore
    }
  }

  sample(lo, hi) {
    if (Number.isNaN(lo) || Number.isNaN(hi) || lo > hi) return;
    const nlo = Math.max(this.lo, lo);
    const nhi = Math.min(this.hi, hi);
    if (nlo <= nhi) {
      this.lo = nlo;
      this.hi = nhi;
    } else {
      // The browser clock jumped (or an estimate was wrong): start over from the newest sample.
      this.lo = lo;
      this.hi = hi;
    }
    this.save();
  }

  /** Server time observed in a `Date` header between the local instants t0 and t1. */
  sampleDateHeader(header, t0, t1) {
    const at = Date.parse(header);
    if (!Number.isNaN(at)) this.sample(at - t1, at + 2000 - t0);
  }

  /** A server timestamp known to be written between the local instants t0 and t1. */
  sampleStamp(stamp, t0, t1) {
    const at = Date.parse(stamp);
    if (!Number.isNaN(at)) this.sample(at - t1, at - t0);
  }

  /** A server timestamp of something that had happened by the local instant `received`. */
  sampleBefore(stamp, received) {
    const at = Date.parse(stamp);
    if (!Number.isNaN(at)) this.sample(at - received, Infinity);
  }

  offset() {
    const lo = Number.isFinite(this.lo);
    const hi = Number.isFinite(this.hi);
    if (lo && hi) return (this.lo + this.hi) / 2;
    if (lo) return this.lo;
    if (hi) return this.hi;
    return 0;
  }

  now() {
    return Date.now() + this.offset();
  }
}

export const clock = new ServerClock();

export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }

  get network() {
    return this.status === 0;
  }
}

/**
 * One API call. `token` goes in `Authorization: Bearer`; `fresh` says the response's `updatedAt` was
 * written by this very request (a change), so it can calibrate the clock.
 * Resolves to the decoded JSON body; rejects with an ApiError whose message is a human sentence.
 */
export async function api(method, path, { body, token, fresh = false, signal } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  const t0 = Date.now();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      signal,
    });
  } catch (error) {
    if (error && error.name === 'AbortError') throw error;
    throw new ApiError(0, 'network', 'The server cannot be reached. Check your connection; the page retries by itself.');
  }
  const t1 = Date.now();
  const date = response.headers.get('Date');
  if (date) clock.sampleDateHeader(date, t0, t1);

  const type = response.headers.get('Content-Type') || '';
  let data = null;
  if (type.includes('json')) {
    try {
      data = await response.json();
    } catch {
      throw new ApiError(response.status, 'bad_response', `The server sent a broken answer (HTTP ${response.status}).`);
    }
  } else if (response.status !== 204 && response.status !== 304) {
    throw new ApiError(
      response.status,
      'bad_response',
      `The server answered HTTP ${response.status} with ${type || 'no content type'} instead of JSON.`,
    );
  }
  if (!response.ok) {
    const message = (data && data.message) || `The request failed with HTTP ${response.status}.`;
    throw new ApiError(response.status, (data && data.error) || `http_${response.status}`, message, data && data.details);
  }
  if (fresh && data && data.updatedAt) clock.sampleStamp(data.updatedAt, t0, t1);
  return data;
}
