// The seat grid: one <button data-seat data-state> per seat, laid out from the flight's rows and columns.

const LABELS = {
  available: 'available',
  selected: 'selected by you',
  'held-mine': 'held by you',
  'held-other': 'held by someone else',
  'confirmed-mine': 'you confirmed',
  'confirmed-other': 'sold to someone else',
  blocked: 'not for sale',
  held: 'held',
  confirmed: 'sold',
};

/** Where the aisle goes: in the middle of a row of 4 or more columns. */
function aisleAfter(columnCount) {
  return columnCount >= 4 ? Math.ceil(columnCount / 2) : 0;
}

export class SeatGrid {
  /** `onActivate(seatId)` runs when a seat is clicked or pressed. */
  constructor(root, onActivate) {
    this.root = root;
    this.onActivate = onActivate;
    this.buttons = new Map();
    this.order = [];
    this.index = new Map();
    this.painted = new Map();
    this.rows = 0;
    this.columns = '';
    this.active = null;
    root.addEventListener('click', (event) => {
      const button = event.target.closest('button[data-seat]');
      if (!button || !root.contains(button)) return;
      this.setActive(button.dataset.seat, false);
      this.onActivate(button.dataset.seat);
    });
    root.addEventListener('keydown', (event) => this.onKey(event));
  }

  /** Draw the layout; every seat starts `available` until the seat map arrives. */
  build(rows, columns) {
    this.rows = rows;
    this.columns = columns;
    this.buttons.clear();
    this.order = [];
    this.index = new Map();
    this.painted = new Map();
    const aisle = aisleAfter(columns.length);
    const template = ['var(--row-label)'];
    for (let i = 0; i < columns.length; i += 1) {
      if (aisle && i === aisle) template.push('var(--aisle)');
      template.push('var(--seat)');
    }
    // Every row is its own small grid sharing one column template: the browser skips the layout of
    // rows out of view (content-visibility), so a 50,000-seat arena repaints as fast as a plane.
    this.root.style.setProperty('--columns', template.join(' '));
    const fragment = document.createDocumentFragment();
    const head = document.createElement('div');
    head.className = 'seat-row head';
    head.setAttribute('aria-hidden', 'true');
    head.append(document.createElement('span'));
    for (let i = 0; i < columns.length; i += 1) {
      if (aisle && i === aisle) head.append(document.createElement('span'));
      const label = document.createElement('span');
      label.className = 'col-label';
      label.textContent = columns[i];
      head.append(label);
    }
    fragment.append(head);
    for (let row = 1; row <= rows; row += 1) {
      const line = document.createElement('div');
      line.className = 'seat-row';
      const rowLabel = document.createElement('span');
      rowLabel.className = 'row-label';
      rowLabel.textContent = String(row);
      rowLabel.setAttribute('aria-hidden', 'true');
      line.append(rowLabel);
      for (let i = 0; i < columns.length; i += 1) {
        if (aisle && i === aisle) {
          const gap = document.createElement('span');
          gap.className = 'aisle';
          line.append(gap);
        }
        const id = `${row}${columns[i]}`;
        const button = document.createElement('button');
        button.type = 'button';
        button.className = 'seat';
        button.dataset.seat = id;
        button.dataset.state = 'available';
        button.textContent = id;
        button.tabIndex = -1;
        button.setAttribute('aria-label', `Seat ${id}, ${LABELS.available}`);
        this.buttons.set(id, button);
        this.index.set(id, this.order.length);
        this.order.push(id);
        line.append(button);
      }
      fragment.append(line);
    }
    this.root.replaceChildren(fragment);
    this.active = null;
    if (this.order.length) this.setActive(this.order[0], false);
  }

  has(id) {
    return this.buttons.has(id);
  }

  ids() {
    return this.order;
  }

  /** Seat ids in layout order (row by row). */
  sort(ids) {
    return [...ids].sort((a, b) => (this.index.get(a) ?? 0) - (this.index.get(b) ?? 0));
  }

  /**
   * Set one seat's display state and marks (`release`: to be dropped, `conflict`: just taken, `selected`:
   * picked in the admin console); `note` (admin console: order and countdown) is shown under the seat id.
   */
  paint(id, state, { release = false, conflict = false, selected = false, note = '', clickable = null } = {}) {
    const button = this.buttons.get(id);
    if (!button) return;
    const key = `${state}|${release}|${conflict}|${selected}|${note}`;
    if (this.painted.get(id) === key) return; // a 50,000-seat arena repaints only what changed
    this.painted.set(id, key);
    if (button.dataset.state !== state) button.dataset.state = state;
    const canClick = clickable ?? (state === 'available' || state === 'selected' || state === 'held-mine');
    button.setAttribute('aria-disabled', canClick ? 'false' : 'true');
    const pressed = selected || state === 'selected' || (state === 'held-mine' && !release);
    button.setAttribute('aria-pressed', pressed ? 'true' : 'false');
    toggleAttr(button, 'data-release', release);
    toggleAttr(button, 'data-conflict', conflict);
    toggleAttr(button, 'data-picked', selected);
    if (note) button.dataset.note = note;
    else if (button.dataset.note !== undefined) delete button.dataset.note;
    let label = `Seat ${id}, ${LABELS[state]}`;
    if (note) label += `, ${note}`;
    if (release) label += ', will be released';
    if (conflict) label += ', just taken';
    if (button.getAttribute('aria-label') !== label) {
      button.setAttribute('aria-label', label);
      button.title = label.replace(/^Seat /, '');
    }
  }

  /** Roving focus: one seat is in the tab order, arrow keys move between seats. */
  setActive(id, focus) {
    const button = this.buttons.get(id);
    if (!button) return;
    if (this.active && this.active !== id) {
      const previous = this.buttons.get(this.active);
      if (previous) previous.tabIndex = -1;
    }
    this.active = id;
    button.tabIndex = 0;
    if (focus) {
      button.focus();
      button.scrollIntoView({ block: 'nearest', inline: 'nearest' });
    }
  }

  onKey(event) {
    const button = event.target.closest('button[data-seat]');
    if (!button) return;
    const index = this.index.get(button.dataset.seat);
    const width = this.columns.length;
    const row = Math.floor(index / width);
    const col = index % width;
    let next = null;
    switch (event.key) {
      case 'ArrowLeft': next = col > 0 ? index - 1 : null; break;
      case 'ArrowRight': next = col < width - 1 ? index + 1 : null; break;
      case 'ArrowUp': next = row > 0 ? index - width : null; break;
      case 'ArrowDown': next = row < this.rows - 1 ? index + width : null; break;
      case 'Home': next = event.ctrlKey ? 0 : row * width; break;
      case 'End': next = event.ctrlKey ? this.order.length - 1 : row * width + width - 1; break;
      default: return;
    }
    event.preventDefault();
    if (next !== null) this.setActive(this.order[next], true);
  }
}

function toggleAttr(element, name, on) {
  if (on) {
    if (element.getAttribute(name) !== 'true') element.setAttribute(name, 'true');
  } else if (element.hasAttribute(name)) {
    element.removeAttribute(name);
  }
}
