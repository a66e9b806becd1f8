// Server-sent event streams that survive drops: EventSource reconnects by itself (with Last-Event-ID);
// when it gives up (an HTTP error closes it for good) we open a fresh one after a backoff.

export class LiveStream {
  /**
   * `handlers` maps event names to functions of the parsed JSON data (and the MessageEvent);
   * `onStatus(up)` reports whether the stream is connected.
   */
  constructor(url, handlers, onStatus) {
    this.url = url;
    this.handlers = handlers;
    this.onStatus = onStatus;
    this.source = null;
    this.closed = false;
    this.retryDelay = 500;
    this.retryTimer = null;
    this.up = null;
  }

  open() {
    if (this.closed) return;
    const source = new EventSource(this.url);
    this.source = source;
    for (const [name, handler] of Object.entries(this.handlers)) {
      source.addEventListener(name, (event) => {
        if (this.closed || source !== this.source) return;
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          return;
        }
        handler(data, event);
      });
    }
    source.onopen = () => {
      if (this.closed || source !== this.source) return;
      this.retryDelay = 500;
      this.report(true);
    };
    source.onerror = () => {
      if (this.closed || source !== this.source) return;
      this.report(false);
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an HTTP error or a wrong content type): retry with a backoff.
        this.retryTimer = setTimeout(() => this.open(), this.retryDelay);
        this.retryDelay = Math.min(this.retryDelay * 2, 8000);
      }
    };
  }

  report(up) {
    if (this.up === up) return;
    this.up = up;
    this.onStatus(up);
  }

  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    if (this.source) this.source.close();
    this.source = null;
  }
}
