// Locus operator console (served at /). Needs leaflet.js and shared.js first.
//
// Data flow for the live map, built to stay smooth with thousands of couriers:
//   SSE event -> parse JSON -> put each courier's newest position into `pending`
//   (a Map, so ten updates of one courier between two frames cost one apply);
//   one requestAnimationFrame callback applies everything pending to the
//   courier records, redraws the courier canvas once and updates the counters.
// Nothing touches the DOM per message, and no Leaflet object exists per
// courier: all couriers are drawn by one custom layer (CourierLayer) on one
// <canvas>, because Leaflet's per-path bookkeeping (bounds, redraw requests)
// is what made 10 000 circleMarkers slow.
'use strict';

(function () {
  const { el, fetchJSON, apiFetch, toHttpError, HttpError, readEventStream,
    fmtAge, fmtDateTime, fmtClock, distanceM } = window.Locus;

  const TOKEN_KEY = 'locus.token';
  const TRACK_WINDOW_MS = 30 * 60 * 1000;
  const TRACK_PAGE_LIMIT = 1000;
  const TRACK_MAX_PAGES = 10; // follow next_since at most this often (10 000 points)
  const MOVED_M = 10; // without a speed, "moving" = moved more than this since the previous fix
  const RECOLOUR_EVERY_MS = 5000;
  const LIVE_STALL_MS = 90000; // no bytes at all for this long: assume a dead connection
  const COLOURS = { moving: '#22a043', idle: '#e3a008', stale: '#9aa1ab' };
  const STROKES = { moving: '#13692a', idle: '#8a6100', stale: '#5f6670' };
  const ADMIN_ROLES = new Set(['admin', 'anonymous']);
  const CONSOLE_ROLES = new Set(['admin', 'anonymous', 'reader']);

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------ state ----

  let token = null; // '' = anonymous access
  let role = null;
  let settings = null;
  let map = null;
  let courierLayer = null;
  let trackRenderer = null;
  let hoverTooltip = null;
  let hoverId = null; // the courier under the pointer (its tooltip is open)
  let hoverPoint = null; // newest pointer position, handled on the next animation frame
  let hoverRequested = false;

  /** courier id -> {id, pos, motion: 'moving'|'idle', colour, px, py, pz}
   *  (px, py: the position projected to pixels at zoom pz; see CourierLayer). */
  const couriers = new Map();
  /** courier id -> newest position not yet applied */
  let pending = new Map();
  /** set by a snapshot: couriers it does not list are removed on the next frame */
  let snapshotIds = null;
  /** whether the map was fitted to the couriers yet */
  let fitted = false;
  let frameRequested = false;
  const colourCounts = { moving: 0, idle: 0, stale: 0 };

  /** server clock minus ours, from the stream's server_ms (network delay
   *  included, which makes ages look a few ms younger: harmless). */
  let clockOffsetMs = 0;
  const serverNow = () => Date.now() + clockOffsetMs;

  // Selected courier and its track.
  let selectedId = null;
  let selectGen = 0;
  let trackLine = null;
  let trackLastTs = -Infinity;

  // Live stream.
  let liveCtrl = null;
  let liveGen = 0;
  let liveBackoffMs = 1000;
  let liveTimer = null;
  let liveLastDataAt = 0;
  let liveWatchdog = null;
  let recolourTimer = null;

  // ------------------------------------------------------------ test hooks ----

  const frameDurations = []; // ring buffer of the last 1000 apply durations
  let frameDurIdx = 0;
  const stats = {
    events: 0,
    positions_received: 0,
    positions_applied: 0,
    frames: 0,
    max_batch: 0,
    last_frame_ms: 0,
    max_frame_ms: 0,
    // A getter so the sort only happens when someone asks (it is enumerable,
    // so JSON.stringify and test harnesses see it like the other fields).
    get frame_ms_p99() {
      if (frameDurations.length === 0) return 0;
      const sorted = frameDurations.slice().sort((a, b) => a - b);
      return sorted[Math.min(sorted.length - 1, Math.ceil(sorted.length * 0.99) - 1)];
    },
    lag_ms_last: 0,
    lag_ms_max: 0,
  };

  window.locusConsole = {
    stats,
    markerCount: () => couriers.size,
    markerLatLng(id) {
      const c = couriers.get(id);
      return c ? [c.pos.lat, c.pos.lon] : null;
    },
    markerColour(id) {
      const c = couriers.get(id);
      return c ? c.colour : null;
    },
    trackPointCount: () => (trackLine ? trackLine.getLatLngs().length : 0),
    selectedCourier: () => selectedId,
    selectCourier: (id) => selectCourier(id, { pan: true }),
    map: () => map, // the L.Map, for tests that click on a marker's pixel
    /** Zeroes the counters and starts timing the browser's own frames (for benchmarks:
     *  applyPending, timed in frame_ms_*, includes the canvas redraw; the browser's own
     *  painting and compositing is the rest of a frame). */
    resetStats() {
      for (const k of ['events', 'positions_received', 'positions_applied', 'frames', 'max_batch',
        'last_frame_ms', 'max_frame_ms', 'lag_ms_max']) stats[k] = 0;
      frameDurations.length = 0;
      frameDurIdx = 0;
      frameGaps.length = 0;
      stats.rendered_frames = 0;
      if (!sampling) {
        sampling = true;
        let last = performance.now();
        const sample = (t) => {
          if (frameGaps.length < 100000) frameGaps.push(t - last);
          stats.rendered_frames++;
          last = t;
          requestAnimationFrame(sample);
        };
        requestAnimationFrame(sample);
      }
    },
  };
  /** Gaps between rendered frames while sampling (see resetStats). */
  const frameGaps = [];
  let sampling = false;
  Object.defineProperty(stats, 'frame_gap_ms_p99', {
    enumerable: true,
    get() {
      if (frameGaps.length === 0) return 0;
      const sorted = frameGaps.slice().sort((a, b) => a - b);
      return sorted[Math.min(sorted.length - 1, Math.ceil(sorted.length * 0.99) - 1)];
    },
  });
  Object.defineProperty(stats, 'frame_gap_ms_max', {
    enumerable: true,
    get: () => frameGaps.reduce((a, b) => Math.max(a, b), 0),
  });

  // ------------------------------------------------------------ helpers ----

  /** Shows an API error in `errEl`; a 401 ends the session instead.
   *  Returns true when the caller should stop. */
  function reportError(e, errEl) {
    if (e instanceof HttpError && e.status === 401) {
      logout('Your session has expired or the token was revoked. Sign in again.');
      return true;
    }
    if (errEl) errEl.textContent = e instanceof HttpError ? (e.status + ': ' + e.message) : String(e.message || e);
    return false;
  }

  function clearChildren(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  const numOr = (v, dflt) => (typeof v === 'number' && isFinite(v) ? v : dflt);

  // ------------------------------------------------------------ login ----

  async function whoami(tok) {
    const who = await fetchJSON('/v1/whoami', tok);
    if (!who || !CONSOLE_ROLES.has(who.role)) {
      throw new Error('This token cannot open the console' + (who && who.role ? ' (role "' + who.role + '").' : '.'));
    }
    return who;
  }

  function showLogin(message) {
    $('app').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('login-token').value = '';
    $('login-token').focus();
  }

  async function onLoginSubmit(ev) {
    ev.preventDefault();
    const tok = $('login-token').value.trim();
    $('login-error').textContent = '';
    $('login-submit').disabled = true;
    try {
      const who = await whoami(tok);
      await enter(tok, who);
    } catch (e) {
      $('login-error').textContent = e instanceof HttpError && e.status === 401
        ? 'Invalid or expired token.'
        : (e.message || String(e));
    } finally {
      $('login-submit').disabled = false;
    }
  }

  async function enter(tok, who) {
    token = tok;
    role = who.role;
    sessionStorage.setItem(TOKEN_KEY, tok);
    $('login').hidden = true;
    $('login-token').value = '';
    $('app').hidden = false;
    $('whoami').textContent = who.subject ? (who.role + ': ' + who.subject) : who.role;

    const isAdmin = ADMIN_ROLES.has(role);
    for (const node of document.querySelectorAll('[data-admin]')) node.hidden = !isAdmin;
    // Panels are shown by showPanel(); admin panels must stay hidden for readers.
    for (const node of document.querySelectorAll('section.panel[data-admin]')) node.hidden = true;

    if (!settings) settings = await window.Locus.fetchSettings();
    if (!map) initMap();
    // The map container only got its size now that #app is visible.
    map.invalidateSize();

    startLive();
    recolourTimer = setInterval(recolourAll, RECOLOUR_EVERY_MS);
    showPanel('couriers');
  }

  function logout(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    token = null;
    role = null;
    stopLive();
    clearInterval(recolourTimer);
    stopPanelTimer();
    clearSelection();
    setHover(null);
    couriers.clear();
    redrawCouriers();
    pending = new Map();
    snapshotIds = null;
    colourCounts.moving = colourCounts.idle = colourCounts.stale = 0;
    dlNextAfter = null;
    dlListedOnce = false;
    clearChildren($('dl-table').tBodies[0]);
    $('dl-result').hidden = true;
    showLogin(message);
  }

  // ------------------------------------------------------------ map ----

  const DOT_R = 6; // radius of a courier's dot, CSS pixels
  const SELECTED_R = 9; // radius of the selected courier's dot
  const SELECTED_RING = '#1d4ed8';
  const HIT_PX = 8; // the pointer is "on" a courier within this distance of its centre
  const GRID_PX = 16; // hit-test grid cell; > HIT_PX, so a lookup only needs the 3x3 cells around the pointer
  // The canvas reaches this share of the map's size beyond each edge, so a drag
  // shows the couriers next to the view before moveend redraws (like L.canvas's padding).
  const CANVAS_PAD = 0.3;
  const DRAW_ORDER = ['stale', 'idle', 'moving']; // later colours are drawn on top

  /**
   * Every courier as a dot on one <canvas>, redrawn whole by draw() (a few ms for
   * 10 000 couriers). Positioned like Leaflet's own renderers: the canvas lies in
   * its own pane over the view (plus CANVAS_PAD), placed in layer pixels (relative
   * to the map's pixel origin), so it moves with the map pane while it is dragged;
   * it is re-positioned and redrawn when the view settles. During a zoom animation
   * it is hidden instead of scaled; zoomend redraws it.
   *
   * Coordinates: a courier's position is projected once per zoom level to absolute
   * pixels (entry.px/py at entry.pz, kept on the entry); the canvas's top-left
   * corner in the same pixels is `topLeft`, so a dot is drawn at (px, py) - topLeft.
   *
   * The layer only reads the `couriers` Map; the code that changes it calls
   * markDirty() (and clears entry.pz when a position changes), and applyPending
   * calls draw() once per frame. View changes redraw right away (see _reset).
   */
  const CourierLayer = L.Layer.extend({
    options: { pane: 'locusCouriers' },

    initialize(entries) {
      this._entries = entries; // the `couriers` Map
      this._selectedId = null;
      this._dirty = true;
      this._zooming = false;
      this._canvas = null;
      this._topLeft = null; // canvas top-left in absolute pixels at this._zoom
      this._zoom = null;
      this._w = 0; // canvas size in CSS pixels
      this._h = 0;
      this._dpr = 1;
      // What the last draw put on screen, for hit tests: couriers and their canvas positions.
      this._drawn = [];
      this._xs = new Float32Array(0);
      this._ys = new Float32Array(0);
      this._drawnCount = 0;
      this._grid = null; // built from the above on the first hit test after a draw
    },

    onAdd() {
      this._canvas = L.DomUtil.create('canvas', 'locus-couriers', this.getPane());
      this._ctx = this._canvas.getContext('2d');
      this._topLeft = null;
      this._reset();
    },

    onRemove() {
      L.DomUtil.remove(this._canvas);
      this._canvas = null;
      this._ctx = null;
      this._grid = null;
      this._drawnCount = 0;
    },

    getEvents() {
      return {
        viewreset: this._reset,
        resize: this._reset,
        zoomstart: this._hide,
        zoomanim: this._hide,
        // zoomend comes right before moveend after a zoom; either shows the canvas again.
        zoomend: this._onViewSettled,
        moveend: this._onViewSettled,
      };
    },

    markDirty() {
      this._dirty = true;
    },

    isDirty() {
      return this._dirty;
    },

    setSelected(id) {
      if (id === this._selectedId) return;
      this._selectedId = id;
      this._dirty = true;
    },

    /** Pointer cursor while the mouse is over a courier: Leaflet's own class for
     *  that (leaflet.css also turns it into a grabbing cursor during a drag). */
    setHovering(on) {
      if (this._canvas) this._canvas.classList.toggle('leaflet-interactive', on);
    },

    _hide() {
      this._zooming = true; // also stops draw() and hit tests until the view settles
      this._dirty = true; // even if the zoom ends where it started
      if (this._canvas) this._canvas.hidden = true;
    },

    _onViewSettled() {
      this._zooming = false;
      if (this._canvas) this._canvas.hidden = false;
      this._reset();
    },

    /** Places the canvas over the current view; redraws when the view (or the data) changed.
     *  Several of its events come together (viewreset, zoomend, moveend): only the first draws. */
    _reset() {
      if (!this._canvas || this._zooming) return;
      const map = this._map;
      const size = map.getSize();
      const pad = size.multiplyBy(CANVAS_PAD).round();
      const topLeft = map.getPixelBounds().min.subtract(pad).round();
      const w = size.x + 2 * pad.x;
      const h = size.y + 2 * pad.y;
      const dpr = window.devicePixelRatio || 1;
      const zoom = map.getZoom();
      L.DomUtil.setPosition(this._canvas, topLeft.subtract(map.getPixelOrigin()));

      if (w !== this._w || h !== this._h || dpr !== this._dpr) {
        // HiDPI: the bitmap has device pixels, the element CSS pixels; draw() scales by dpr.
        this._canvas.width = Math.round(w * dpr);
        this._canvas.height = Math.round(h * dpr);
        this._canvas.style.width = w + 'px';
        this._canvas.style.height = h + 'px';
        this._w = w;
        this._h = h;
        this._dpr = dpr;
        this._dirty = true;
      }
      if (!this._topLeft || !topLeft.equals(this._topLeft) || zoom !== this._zoom) {
        this._topLeft = topLeft;
        this._zoom = zoom;
        this._dirty = true;
      }
      if (this._dirty) this.draw();
    },

    /** Redraws every courier: dots batched by colour (one path and one fill/stroke
     *  per colour), then the selected courier on top with a ring. */
    draw() {
      // While zooming the view has no stable pixels: stay dirty, zoomend draws.
      if (!this._canvas || this._zooming || !this._topLeft) return;
      this._dirty = false;
      this._grid = null;
      const map = this._map;
      const ctx = this._ctx;
      const zoom = this._zoom;
      const left = this._topLeft.x;
      const top = this._topLeft.y;
      const w = this._w;
      const h = this._h;
      ctx.setTransform(this._dpr, 0, 0, this._dpr, 0, 0);
      ctx.clearRect(0, 0, w, h);

      // Project (only couriers that moved or a new zoom level) and skip those off the canvas.
      if (this._xs.length < this._entries.size) {
        this._xs = new Float32Array(this._entries.size * 2);
        this._ys = new Float32Array(this._entries.size * 2);
      }
      const xs = this._xs;
      const ys = this._ys;
      const drawn = this._drawn;
      let n = 0;
      for (const c of this._entries.values()) {
        if (c.pz !== zoom) {
          const pt = map.project([c.pos.lat, c.pos.lon], zoom);
          c.px = pt.x;
          c.py = pt.y;
          c.pz = zoom;
        }
        const x = c.px - left;
        const y = c.py - top;
        if (x < -SELECTED_R || y < -SELECTED_R || x > w + SELECTED_R || y > h + SELECTED_R) continue;
        xs[n] = x;
        ys[n] = y;
        drawn[n] = c;
        n++;
      }
      drawn.length = n;
      this._drawnCount = n;

      const selected = this._selectedId === null ? null : this._entries.get(this._selectedId);
      ctx.lineWidth = 1;
      for (const colour of DRAW_ORDER) {
        ctx.beginPath();
        let any = false;
        for (let i = 0; i < n; i++) {
          const c = drawn[i];
          if (c.colour !== colour || c === selected) continue;
          ctx.moveTo(xs[i] + DOT_R, ys[i]);
          ctx.arc(xs[i], ys[i], DOT_R, 0, 2 * Math.PI);
          any = true;
        }
        if (!any) continue;
        ctx.globalAlpha = 0.9;
        ctx.fillStyle = COLOURS[colour];
        ctx.fill();
        ctx.globalAlpha = 1;
        ctx.strokeStyle = STROKES[colour];
        ctx.stroke();
      }

      if (selected && selected.pz === zoom) {
        const x = selected.px - left;
        const y = selected.py - top;
        ctx.beginPath();
        ctx.arc(x, y, SELECTED_R, 0, 2 * Math.PI);
        ctx.globalAlpha = 0.9;
        ctx.fillStyle = COLOURS[selected.colour];
        ctx.fill();
        ctx.globalAlpha = 1;
        ctx.lineWidth = 3;
        ctx.strokeStyle = SELECTED_RING;
        ctx.stroke();
      }
    },

    /** Id of the drawn courier nearest to a container point, within HIT_PX; or null. */
    courierAt(containerPoint) {
      const map = this._map;
      if (!map || this._zooming || this._drawnCount === 0 || map.getZoom() !== this._zoom) return null;
      if (!this._grid) this._grid = this._buildGrid();
      const { cols, rows, start, items } = this._grid;
      // Container point -> absolute pixels -> canvas pixels (the same space as xs/ys).
      const p = map.containerPointToLayerPoint(containerPoint).add(map.getPixelOrigin()).subtract(this._topLeft);
      const cx = Math.floor(p.x / GRID_PX);
      const cy = Math.floor(p.y / GRID_PX);
      let best = HIT_PX * HIT_PX;
      let bestI = -1;
      for (let gy = Math.max(0, cy - 1); gy <= Math.min(rows - 1, cy + 1); gy++) {
        for (let gx = Math.max(0, cx - 1); gx <= Math.min(cols - 1, cx + 1); gx++) {
          const cell = gy * cols + gx;
          for (let k = start[cell]; k < start[cell + 1]; k++) {
            const i = items[k];
            const dx = this._xs[i] - p.x;
            const dy = this._ys[i] - p.y;
            const d2 = dx * dx + dy * dy;
            if (d2 <= best) {
              best = d2;
              bestI = i;
            }
          }
        }
      }
      return bestI < 0 ? null : this._drawn[bestI].id;
    },

    /** Buckets the drawn couriers into GRID_PX cells (a counting sort): the couriers
     *  of cell k are items[start[k]] .. items[start[k + 1] - 1]. */
    _buildGrid() {
      const n = this._drawnCount;
      const cols = Math.max(1, Math.ceil(this._w / GRID_PX));
      const rows = Math.max(1, Math.ceil(this._h / GRID_PX));
      const start = new Int32Array(cols * rows + 1);
      const cellOf = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        // Dots just off the canvas edge go to the edge cells.
        const gx = Math.min(cols - 1, Math.max(0, Math.floor(this._xs[i] / GRID_PX)));
        const gy = Math.min(rows - 1, Math.max(0, Math.floor(this._ys[i] / GRID_PX)));
        cellOf[i] = gy * cols + gx;
        start[cellOf[i] + 1]++;
      }
      for (let k = 0; k < cols * rows; k++) start[k + 1] += start[k];
      const next = start.slice(0, cols * rows);
      const items = new Int32Array(n);
      for (let i = 0; i < n; i++) items[next[cellOf[i]]++] = i;
      return { cols, rows, start, items };
    },
  });

  function initMap() {
    map = window.Locus.createMap('map', settings, { noticeEl: 'tiles-notice' });
    // The track gets its own canvas in a pane just below the couriers' pane, so
    // it is drawn under the dots. The couriers' pane is where Leaflet puts paths
    // by default (overlayPane's z-index); created later, it lies above that pane.
    map.createPane('locusTrack').style.zIndex = '390';
    trackRenderer = L.canvas({ pane: 'locusTrack', padding: 0.3 });
    map.createPane('locusCouriers').style.zIndex = '400';
    courierLayer = new CourierLayer(couriers).addTo(map);
    hoverTooltip = L.tooltip({ direction: 'top', offset: [0, -8], opacity: 0.95 });

    map.on('click', (e) => {
      const id = courierLayer.courierAt(e.containerPoint);
      if (id) selectCourier(id, { pan: false });
      else clearSelection();
    });
    map.on('mousemove', (e) => {
      hoverPoint = e.containerPoint;
      if (hoverRequested) return;
      hoverRequested = true;
      requestAnimationFrame(updateHover);
    });
    map.on('mouseout', () => {
      hoverPoint = null;
      setHover(null);
    });
    map.on('dragstart zoomstart', () => setHover(null));
    addLegend();
  }

  /** Redraws the couriers on the next frame (for changes other than live positions). */
  function redrawCouriers() {
    if (!courierLayer) return;
    courierLayer.markDirty();
    scheduleFrame();
  }

  function addLegend() {
    const legend = L.control({ position: 'bottomleft' });
    legend.onAdd = () => {
      const box = el('div', { id: 'legend', className: 'legend' });
      for (const [key, label] of [['moving', 'moving'], ['idle', 'idle'], ['stale', 'stale (no fix for ' + fmtAge(settings.stale_after_s * 1000) + ')']]) {
        const dot = el('span', { className: 'dot' });
        dot.style.background = COLOURS[key];
        dot.style.borderColor = STROKES[key];
        box.appendChild(el('div', { className: 'legend-row' }, [dot, label]));
      }
      L.DomEvent.disableClickPropagation(box);
      return box;
    };
    legend.addTo(map);
  }

  function isStale(pos, now) {
    const at = numOr(pos.received_ms, numOr(pos.ts, 0));
    return now - at > settings.stale_after_s * 1000;
  }

  /** Motion from the new position and the one before it (see the brief's rule). */
  function motionOf(entry, pos) {
    if (typeof pos.speed === 'number' && isFinite(pos.speed)) {
      return pos.speed >= settings.moving_min_speed_mps ? 'moving' : 'idle';
    }
    const prev = entry && entry.pos;
    if (!prev) return 'idle';
    // The same fix again (e.g. in the snapshot after a reconnect) changes nothing.
    if (prev.ts === pos.ts && prev.lat === pos.lat && prev.lon === pos.lon) return entry.motion;
    return distanceM(prev.lat, prev.lon, pos.lat, pos.lon) > MOVED_M ? 'moving' : 'idle';
  }

  function setColour(entry, colour) {
    if (entry.colour === colour) return;
    if (entry.colour) colourCounts[entry.colour]--;
    colourCounts[colour]++;
    entry.colour = colour;
    courierLayer.markDirty();
  }

  function createCourier(id, pos, now) {
    // px/py/pz: projection cache of CourierLayer (pz NaN = not projected yet).
    const entry = { id, pos, motion: motionOf(null, pos), colour: null, px: 0, py: 0, pz: NaN };
    setColour(entry, isStale(pos, now) ? 'stale' : entry.motion);
    couriers.set(id, entry);
    return entry;
  }

  function removeCourier(id) {
    const entry = couriers.get(id);
    if (!entry) return;
    colourCounts[entry.colour]--;
    couriers.delete(id);
    courierLayer.markDirty();
  }

  function scheduleFrame() {
    if (frameRequested) return;
    frameRequested = true;
    requestAnimationFrame(applyPending);
  }

  /** The one place where live positions reach the map (once per frame), and where
   *  the courier canvas is redrawn after any change. */
  function applyPending() {
    frameRequested = false;
    if (!map || (pending.size === 0 && !snapshotIds && !courierLayer.isDirty())) return;
    const t0 = performance.now();
    const batch = pending;
    pending = new Map();
    const now = serverNow();

    if (snapshotIds) {
      for (const id of Array.from(couriers.keys())) {
        if (!snapshotIds.has(id)) removeCourier(id);
      }
      snapshotIds = null;
    }

    let newest = -Infinity;
    for (const [id, pos] of batch) {
      let entry = couriers.get(id);
      if (!entry) {
        entry = createCourier(id, pos, now);
      } else {
        entry.motion = motionOf(entry, pos);
        const prev = entry.pos;
        entry.pos = pos;
        if (prev.lat !== pos.lat || prev.lon !== pos.lon) entry.pz = NaN; // project again
        setColour(entry, isStale(pos, now) ? 'stale' : entry.motion);
      }
      const rec = numOr(pos.received_ms, -Infinity);
      if (rec > newest) newest = rec;
      if (id === selectedId) onSelectedMoved(pos);
    }

    // The first couriers to arrive decide where the map opens (once: after that the view is
    // the operator's).
    if (!fitted && couriers.size > 0) {
      fitted = true;
      const bounds = L.latLngBounds(Array.from(couriers.values(), (e) => [e.pos.lat, e.pos.lon]));
      map.fitBounds(bounds, { padding: [40, 40], maxZoom: 15, animate: false });
    }

    if (batch.size > 0) courierLayer.markDirty();
    // fitBounds above may have redrawn already (moveend); then this does nothing.
    if (courierLayer.isDirty()) courierLayer.draw();

    if (batch.size > 0) {
      stats.positions_applied += batch.size;
      stats.frames++;
      if (batch.size > stats.max_batch) stats.max_batch = batch.size;
      if (isFinite(newest)) {
        stats.lag_ms_last = Math.max(0, serverNow() - newest);
        if (stats.lag_ms_last > stats.lag_ms_max) stats.lag_ms_max = stats.lag_ms_last;
      }
    }
    updateCounters();

    const dt = performance.now() - t0;
    stats.last_frame_ms = dt;
    if (dt > stats.max_frame_ms) stats.max_frame_ms = dt;
    if (frameDurations.length < 1000) frameDurations.push(dt);
    else frameDurations[frameDurIdx] = dt;
    frameDurIdx = (frameDurIdx + 1) % 1000;
  }

  function updateCounters() {
    $('courier-count').textContent = String(couriers.size);
    $('count-moving').textContent = String(colourCounts.moving);
    $('count-idle').textContent = String(colourCounts.idle);
    $('count-stale').textContent = String(colourCounts.stale);
  }

  /** Staleness changes with time alone, so colours are re-checked periodically. */
  function recolourAll() {
    const now = serverNow();
    for (const entry of couriers.values()) {
      setColour(entry, isStale(entry.pos, now) ? 'stale' : entry.motion);
    }
    // setColour marked the layer dirty if any colour changed: one redraw on the next frame.
    if (courierLayer.isDirty()) scheduleFrame();
    updateCounters();
    if (selectedId) renderTrackInfo();
  }

  // ------------------------------------------------------------ tooltip ----

  /** Courier details as DOM nodes (all values via textContent). */
  function courierDetails(id, withId) {
    const entry = couriers.get(id);
    const box = el('div', { className: 'courier-tip' }, withId === false ? [] : [el('strong', { text: id })]);
    if (!entry) return box;
    const p = entry.pos;
    const line = (label, value) => box.appendChild(el('div', null, [label + ': ', el('span', { text: value })]));
    line('state', entry.colour);
    line('age', fmtAge(serverNow() - numOr(p.received_ms, numOr(p.ts, 0))));
    if (typeof p.speed === 'number') line('speed', p.speed.toFixed(1) + ' m/s (' + (p.speed * 3.6).toFixed(0) + ' km/h)');
    if (typeof p.battery === 'number') line('battery', Math.round(p.battery) + ' %');
    if (typeof p.accuracy === 'number') line('accuracy', Math.round(p.accuracy) + ' m');
    if (p.order) line('order', String(p.order));
    return box;
  }

  /** Mouse moves are handled once per animation frame: the nearest courier under
   *  the pointer gets the tooltip. */
  function updateHover() {
    hoverRequested = false;
    if (!map || !hoverPoint) return;
    // Like Leaflet's canvas renderer: no hover changes while the map is dragged.
    if (map.dragging && map.dragging.moving()) return;
    setHover(courierLayer.courierAt(hoverPoint));
  }

  /** Opens the tooltip of courier `id` (null: closes it) and shows the pointer cursor over it. */
  function setHover(id) {
    if (!map) return;
    const entry = id === null ? null : couriers.get(id);
    if (!entry) {
      if (hoverId !== null) map.closeTooltip(hoverTooltip);
      hoverId = null;
    } else if (id !== hoverId) {
      hoverId = id;
      hoverTooltip.setContent(courierDetails(id));
      hoverTooltip.setLatLng([entry.pos.lat, entry.pos.lon]);
      map.openTooltip(hoverTooltip);
    }
    if (courierLayer) courierLayer.setHovering(hoverId !== null);
  }

  // ------------------------------------------------------------ track ----

  function clearSelection() {
    selectGen++;
    const prev = selectedId;
    selectedId = null;
    if (trackLine) {
      trackLine.remove();
      trackLine = null;
    }
    trackLastTs = -Infinity;
    if (prev) {
      courierLayer.setSelected(null);
      redrawCouriers();
    }
    const info = $('track-info');
    clearChildren(info);
    info.hidden = true;
  }

  async function selectCourier(id, opts) {
    if (!id) return;
    clearSelection();
    const gen = selectGen;
    selectedId = id;
    courierLayer.setSelected(id); // drawn last, with a ring
    redrawCouriers();
    const entry = couriers.get(id);
    if (entry && opts && opts.pan) map.setView([entry.pos.lat, entry.pos.lon], Math.max(map.getZoom(), 15));
    renderTrackInfo('loading track…');

    const fixes = [];
    try {
      let since = Math.floor(serverNow() - TRACK_WINDOW_MS);
      for (let page = 0; page < TRACK_MAX_PAGES; page++) {
        const r = await fetchJSON('/v1/couriers/' + encodeURIComponent(id) + '/track?since=' + since +
          '&limit=' + TRACK_PAGE_LIMIT, token);
        if (gen !== selectGen) return; // another selection happened meanwhile
        const got = Array.isArray(r.fixes) ? r.fixes : [];
        for (const f of got) if (isFinite(f.lat) && isFinite(f.lon)) fixes.push(f);
        if (r.next_since === undefined || r.next_since === null || got.length === 0) break;
        since = r.next_since;
      }
    } catch (e) {
      if (gen !== selectGen) return;
      if (reportError(e, null)) return;
      renderTrackInfo('track unavailable: ' + (e.message || e));
      return;
    }
    if (gen !== selectGen) return;
    trackLine = L.polyline(fixes.map((f) => [f.lat, f.lon]), {
      renderer: trackRenderer,
      color: '#1d4ed8',
      weight: 3,
      opacity: 0.75,
      interactive: false,
    }).addTo(map);
    trackLastTs = fixes.length ? numOr(fixes[fixes.length - 1].ts, -Infinity) : -Infinity;
    if (!entry && fixes.length) {
      const last = fixes[fixes.length - 1];
      if (opts && opts.pan) map.setView([last.lat, last.lon], Math.max(map.getZoom(), 15));
    }
    renderTrackInfo();
  }

  /** A live position of the selected courier extends its track. */
  function onSelectedMoved(pos) {
    if (!trackLine) return;
    const ts = numOr(pos.ts, -Infinity);
    if (ts <= trackLastTs) return;
    trackLastTs = ts;
    trackLine.addLatLng([pos.lat, pos.lon]);
  }

  function renderTrackInfo(note) {
    const info = $('track-info');
    clearChildren(info);
    if (!selectedId) {
      info.hidden = true;
      return;
    }
    const points = trackLine ? trackLine.getLatLngs().length : 0;
    const head = el('div', { className: 'track-head' }, [
      'Courier ', el('strong', { id: 'track-courier', text: selectedId }), ' — ',
      el('span', { id: 'track-points', text: String(points) }), ' points (last 30 min)',
    ]);
    const close = el('button', { type: 'button', id: 'track-clear', className: 'small', text: '×', title: 'Clear selection' });
    close.addEventListener('click', clearSelection);
    head.appendChild(close);
    info.appendChild(head);
    if (note) info.appendChild(el('div', { className: 'muted', text: note }));
    if (couriers.has(selectedId)) info.appendChild(courierDetails(selectedId, false));
    else info.appendChild(el('div', { className: 'muted', text: 'no live position' }));
    info.hidden = false;
  }

  // ------------------------------------------------------------ live stream ----

  function setLiveStatus(state, text) {
    const node = $('live-status');
    node.dataset.state = state;
    node.textContent = text;
  }

  function stopLive() {
    liveGen++;
    if (liveCtrl) liveCtrl.abort();
    liveCtrl = null;
    clearTimeout(liveTimer);
    clearInterval(liveWatchdog);
  }

  async function startLive() {
    stopLive();
    const gen = liveGen;
    const ctrl = new AbortController();
    liveCtrl = ctrl;
    let stalled = false;
    liveLastDataAt = Date.now();
    // Keep-alive comments count as data; a connection silent for longer than
    // that is half-open (laptop sleep, NAT timeout) and is replaced.
    liveWatchdog = setInterval(() => {
      if (Date.now() - liveLastDataAt > LIVE_STALL_MS) {
        stalled = true;
        ctrl.abort();
      }
    }, 15000);

    try {
      const resp = await apiFetch('/v1/live', token, {
        signal: ctrl.signal,
        headers: { Accept: 'text/event-stream' },
      });
      if (gen !== liveGen) return;
      if (resp.status === 401) {
        logout('Your session has expired or the token was revoked. Sign in again.');
        return;
      }
      if (resp.status === 403) {
        clearInterval(liveWatchdog);
        setLiveStatus('error', 'no access to live positions');
        return;
      }
      if (!resp.ok) throw await toHttpError(resp);
      await readEventStream(trackActivity(resp), (ev) => {
        if (gen === liveGen) onLiveEvent(ev);
      });
    } catch (e) {
      if (gen !== liveGen || (ctrl.signal.aborted && !stalled)) return;
      console.warn('locus: live stream failed', e);
    }
    if (gen !== liveGen) return;
    clearInterval(liveWatchdog);
    setLiveStatus('reconnecting', 'reconnecting…');
    liveTimer = setTimeout(startLive, liveBackoffMs);
    liveBackoffMs = Math.min(liveBackoffMs * 2, 10000);
  }

  /** Wraps the response so every received chunk (keep-alives included)
   *  refreshes the stall watchdog. */
  function trackActivity(resp) {
    const reader = resp.body.getReader();
    return {
      body: {
        getReader: () => ({
          read: () => reader.read().then((r) => {
            liveLastDataAt = Date.now();
            return r;
          }),
        }),
      },
    };
  }

  function onLiveEvent(ev) {
    stats.events++;
    if (ev.event !== 'snapshot' && ev.event !== 'positions') return;
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch (e) {
      console.warn('locus: bad live event', e);
      return;
    }
    if (typeof msg.server_ms === 'number') clockOffsetMs = msg.server_ms - Date.now();
    const list = Array.isArray(msg.couriers) ? msg.couriers : [];
    if (ev.event === 'snapshot') {
      snapshotIds = new Set();
      liveBackoffMs = 1000; // a working connection resets the backoff
      setLiveStatus('live', 'live'); // once per connection, not per message
    }
    for (const c of list) {
      if (!c || typeof c.courier !== 'string' || !isFinite(c.lat) || !isFinite(c.lon)) continue;
      if (snapshotIds && ev.event === 'snapshot') snapshotIds.add(c.courier);
      pending.set(c.courier, c);
      stats.positions_received++;
    }
    scheduleFrame();
  }

  // ------------------------------------------------------------ panels ----

  const panels = {
    couriers: { refresh: renderCourierList, every: 2000 },
    orders: { refresh: refreshOrders, every: 5000 },
    'dead-letters': { refresh: null, every: 0 }, // listed on demand (filters)
    plugins: { refresh: refreshPlugins, every: 5000 },
    health: { refresh: refreshHealth, every: 2000, onShow: () => { metricsPrev = null; } },
  };
  let panelTimer = null;
  let currentPanel = null;
  let dlListedOnce = false;

  function stopPanelTimer() {
    clearInterval(panelTimer);
    panelTimer = null;
    currentPanel = null;
  }

  function showPanel(name) {
    stopPanelTimer();
    currentPanel = name;
    for (const btn of document.querySelectorAll('.tabs button')) {
      btn.classList.toggle('active', btn.dataset.panel === name);
      btn.setAttribute('aria-selected', btn.dataset.panel === name ? 'true' : 'false');
    }
    for (const sec of document.querySelectorAll('section.panel')) sec.hidden = sec.id !== name;
    document.querySelector('.side').classList.toggle('wide', name === 'dead-letters');
    if (map) map.invalidateSize(); // the map's width follows the side panel's
    const p = panels[name];
    if (p.onShow) p.onShow();
    if (name === 'dead-letters' && !dlListedOnce) {
      dlListedOnce = true;
      dlList(false);
    }
    if (p.refresh) {
      // Skip a tick while the previous request is still running.
      let busy = false;
      const run = async () => {
        if (busy || currentPanel !== name) return;
        busy = true;
        try {
          await p.refresh();
        } finally {
          busy = false;
        }
      };
      run();
      panelTimer = setInterval(run, p.every);
    }
  }

  // ---- couriers list

  function renderCourierList() {
    const list = $('courier-list');
    const q = $('courier-search').value.trim().toLowerCase();
    const ids = [];
    for (const id of couriers.keys()) if (!q || id.toLowerCase().includes(q)) ids.push(id);
    ids.sort();
    clearChildren(list);
    const shown = ids.slice(0, 100);
    for (const id of shown) {
      const entry = couriers.get(id);
      const dot = el('span', { className: 'dot' });
      dot.style.background = COLOURS[entry.colour];
      const btn = el('button', { type: 'button', className: 'link' }, [dot, el('span', { text: id })]);
      btn.dataset.courier = id;
      list.appendChild(el('li', null, [btn]));
    }
    if (ids.length > shown.length) {
      list.appendChild(el('li', { className: 'muted', text: (ids.length - shown.length) + ' more — refine the search' }));
    }
  }

  function onCourierListClick(ev) {
    const btn = ev.target.closest('button[data-courier]');
    if (btn) selectCourier(btn.dataset.courier, { pan: true });
  }

  function onCourierSearchKey(ev) {
    if (ev.key !== 'Enter') return;
    ev.preventDefault();
    const q = $('courier-search').value.trim();
    const msg = $('courier-search-msg');
    msg.textContent = '';
    if (!q) return;
    if (couriers.has(q)) {
      selectCourier(q, { pan: true });
      return;
    }
    const lower = q.toLowerCase();
    const matches = [];
    for (const id of couriers.keys()) if (id.toLowerCase().includes(lower)) matches.push(id);
    if (matches.length === 1) selectCourier(matches[0], { pan: true });
    else if (matches.length === 0) msg.textContent = 'No courier matches.';
    else msg.textContent = matches.length + ' couriers match — pick one below.';
  }

  // ---- orders

  async function refreshOrders() {
    const errEl = $('orders-error');
    let r;
    try {
      r = await fetchJSON('/v1/orders?state=active&limit=200', token);
    } catch (e) {
      reportError(e, errEl);
      return;
    }
    errEl.textContent = '';
    const orders = Array.isArray(r.orders) ? r.orders : [];
    $('orders-count').textContent = '(' + orders.length + ')';
    const tbody = $('orders-table').tBodies[0];
    clearChildren(tbody);
    const now = serverNow();
    for (const o of orders) {
      let last = o.location ? numOr(o.location.received_ms, NaN) : NaN;
      if (!isFinite(last) && Array.isArray(o.timeline)) {
        for (const t of o.timeline) last = isFinite(last) ? Math.max(last, numOr(t.at_ms, -Infinity)) : numOr(t.at_ms, NaN);
      }
      const tr = el('tr', null, [
        el('td', { text: o.order }),
        el('td', { text: String(o.status || '') + (o.ready && o.status !== 'ready' ? ' (ready)' : '') }),
        el('td', { text: o.courier || '—' }),
        el('td', { text: isFinite(last) ? fmtClock(last) + ' (' + fmtAge(now - last) + ' ago)' : '—' }),
      ]);
      tr.dataset.order = String(o.order);
      if (o.courier) {
        tr.dataset.courier = String(o.courier);
        tr.classList.add('clickable');
      }
      tbody.appendChild(tr);
    }
  }

  function onOrdersClick(ev) {
    const tr = ev.target.closest('tr[data-courier]');
    if (tr) selectCourier(tr.dataset.courier, { pan: true });
  }

  // ---- plugins

  /** Numeric fields of a plugin record, nested objects flattened as a.b. */
  function numericFields(obj, prefix, out) {
    for (const [k, v] of Object.entries(obj)) {
      const key = prefix ? prefix + '.' + k : k;
      if (typeof v === 'number') out.push([key, v]);
      else if (v && typeof v === 'object' && !Array.isArray(v)) numericFields(v, key, out);
    }
    return out;
  }

  async function refreshPlugins() {
    const errEl = $('plugins-error');
    let r;
    try {
      r = await fetchJSON('/v1/plugins', token);
    } catch (e) {
      if (e instanceof HttpError && e.status === 403) {
        // Not an admin after all: the panel is not for this token.
        $('tab-plugins').hidden = true;
        $('plugins').hidden = true;
        showPanel('couriers');
        return;
      }
      reportError(e, errEl);
      return;
    }
    errEl.textContent = '';
    const box = $('plugins-list');
    clearChildren(box);
    const plugins = Array.isArray(r.plugins) ? r.plugins : [];
    if (plugins.length === 0) box.appendChild(el('p', { className: 'muted', text: 'No plugins loaded.' }));
    for (const p of plugins) {
      const name = p && typeof p === 'object' ? p.name : p;
      const version = p && typeof p === 'object' ? p.version : '';
      const card = el('div', { className: 'plugin' }, [
        el('h4', null, [el('span', { text: name === undefined ? '(unnamed)' : String(name) }), ' ',
          el('span', { className: 'muted', text: version === undefined || version === null ? '' : String(version) })]),
      ]);
      card.dataset.plugin = String(name);
      const fields = p && typeof p === 'object' ? numericFields(p, '', []) : [];
      if (fields.length) {
        const tbody = el('tbody');
        for (const [k, v] of fields) tbody.appendChild(el('tr', null, [el('th', { text: k }), el('td', { text: v.toLocaleString() })]));
        card.appendChild(el('table', { className: 'grid kv' }, [tbody]));
      }
      box.appendChild(card);
    }
  }

  // ---- health

  const RATE_METRICS = [
    ['locus_reports_received_total', 'Reports received /s'],
    ['locus_fixes_committed_total', 'Fixes committed /s'],
    ['locus_dead_letters_total', 'Dead letters /s'],
    ['locus_acks_published_total', 'Acks published /s'],
  ];
  const GAUGE_METRICS = [
    ['locus_mqtt_connected_clients', 'MQTT clients connected'],
    ['locus_acks_paused', 'Acks paused'],
    ['locus_influx_outbox_depth', 'InfluxDB outbox depth'],
    ['locus_influx_outbox_oldest_age_seconds', 'InfluxDB outbox oldest (s)'],
  ];
  let metricsPrev = null; // {t, values}

  /** Sums of `name{labels} value [timestamp]` samples per metric name. */
  function parseMetrics(text) {
    const out = new Map();
    for (const raw of text.split('\n')) {
      const line = raw.trim();
      if (!line || line[0] === '#') continue;
      let name;
      let rest;
      const brace = line.indexOf('{');
      const space = line.indexOf(' ');
      if (brace >= 0 && (space < 0 || brace < space)) {
        name = line.slice(0, brace);
        // Label values may contain '}' or spaces inside quotes.
        let i = brace + 1;
        let inQuote = false;
        for (; i < line.length; i++) {
          const ch = line[i];
          if (inQuote) {
            if (ch === '\\') i++;
            else if (ch === '"') inQuote = false;
          } else if (ch === '"') inQuote = true;
          else if (ch === '}') break;
        }
        rest = line.slice(i + 1).trim();
      } else {
        if (space < 0) continue;
        name = line.slice(0, space);
        rest = line.slice(space + 1).trim();
      }
      const value = Number(rest.split(/\s+/)[0]);
      if (!isFinite(value)) continue;
      out.set(name, (out.get(name) || 0) + value);
    }
    return out;
  }

  function kvRow(tbody, key, label) {
    let tr = tbody.querySelector('tr[data-metric="' + key + '"]');
    if (!tr) {
      tr = el('tr', null, [el('th', { text: label }), el('td', { className: 'value' })]);
      tr.dataset.metric = key;
      tbody.appendChild(tr);
    }
    return tr.querySelector('td.value');
  }

  async function refreshHealth() {
    const errEl = $('health-error');
    const errors = [];
    const [health, metricsText] = await Promise.all([
      apiFetch('/healthz', '').then((r) => r.json()).catch((e) => { errors.push('healthz: ' + e.message); return null; }),
      apiFetch('/metrics', '').then((r) => {
        if (!r.ok) throw new Error('HTTP ' + r.status);
        return r.text();
      }).catch((e) => { errors.push('metrics: ' + e.message); return null; }),
    ]);
    if (currentPanel !== 'health') return;
    errEl.textContent = errors.join('; ');

    const status = $('health-status');
    status.textContent = health && health.status !== undefined ? String(health.status) : 'unknown';
    status.dataset.status = health && health.status !== undefined ? String(health.status) : 'unknown';

    const influxWrap = $('health-influx-wrap');
    const influx = health && health.influx;
    if (influx && typeof influx === 'object') {
      const tbody = $('health-influx').tBodies[0];
      clearChildren(tbody);
      for (const [k, v] of Object.entries(influx)) {
        const text = v !== null && typeof v === 'object' ? JSON.stringify(v) : String(v);
        const tr = el('tr', null, [el('th', { text: k }), el('td', { text })]);
        tr.dataset.field = k;
        tbody.appendChild(tr);
      }
      influxWrap.hidden = false;
    } else {
      influxWrap.hidden = true;
    }

    if (metricsText === null) return;
    const values = parseMetrics(metricsText);
    const t = performance.now();
    const tbody = $('health-metrics').tBodies[0];
    for (const [name, label] of RATE_METRICS) {
      const cell = kvRow(tbody, name, label);
      const prev = metricsPrev === null ? undefined : metricsPrev.values.get(name);
      const cur = values.get(name);
      if (cur === undefined) cell.textContent = '—';
      else if (prev === undefined || cur < prev) cell.textContent = '…'; // first sample or counter reset
      else cell.textContent = ((cur - prev) / ((t - metricsPrev.t) / 1000)).toFixed(1);
      cell.dataset.total = cur === undefined ? '' : String(cur);
    }
    for (const [name, label] of GAUGE_METRICS) {
      const cur = values.get(name);
      const isInflux = name.startsWith('locus_influx_');
      const existing = tbody.querySelector('tr[data-metric="' + name + '"]');
      if (cur === undefined && isInflux) {
        if (existing) existing.remove(); // only exists with InfluxDB configured
        continue;
      }
      const cell = kvRow(tbody, name, label);
      if (cur === undefined) cell.textContent = '—';
      else if (name === 'locus_acks_paused') cell.textContent = cur >= 1 ? 'yes' : 'no';
      else cell.textContent = String(cur);
    }
    $('acks-paused').hidden = !(values.get('locus_acks_paused') >= 1);
    metricsPrev = { t, values };
  }

  // ---- dead letters

  let dlNextAfter = null;

  function dlFilterParams() {
    const params = new URLSearchParams();
    const reason = $('dl-reason').value.trim();
    const courier = $('dl-courier').value.trim();
    const source = $('dl-source').value;
    if (reason) params.set('reason', reason);
    if (courier) params.set('courier', courier);
    if (source) params.set('source', source);
    // datetime-local values have no zone: Date parses them as local time.
    for (const [id, key] of [['dl-since', 'since'], ['dl-until', 'until']]) {
      const v = $(id).value;
      if (v) {
        const ms = new Date(v).getTime();
        if (isFinite(ms)) params.set(key, String(ms));
      }
    }
    return params;
  }

  function dlSourceText(src) {
    if (!src) return '';
    if (typeof src === 'string') return src;
    return String(src.kind || '');
  }

  function dlRow(d) {
    const replay = el('button', { type: 'button', className: 'dl-replay small', text: 'Replay' });
    const purge = el('button', { type: 'button', className: 'dl-purge small danger', text: 'Purge' });
    const tr = el('tr', { className: 'clickable' }, [
      el('td', { text: String(d.id) }),
      el('td', { text: fmtDateTime(d.received_ms) }),
      el('td', { text: String(d.reason || '') + (d.plugin_reason ? ' (' + d.plugin_reason + ')' : '') }),
      el('td', { text: d.courier || '' }),
      el('td', { text: dlSourceText(d.source) }),
      el('td', { className: 'detail', text: d.detail || '' }),
      el('td', { className: 'actions' }, [replay, purge]),
    ]);
    tr.dataset.id = String(d.id);
    tr.dlLetter = d; // kept on the element for the payload view
    return tr;
  }

  async function dlList(append) {
    const errEl = $('dl-error');
    const params = dlFilterParams();
    params.set('limit', '100');
    if (append && dlNextAfter !== null) params.set('after', String(dlNextAfter));
    let r;
    try {
      r = await fetchJSON('/v1/dead-letters?' + params.toString(), token);
    } catch (e) {
      reportError(e, errEl);
      return;
    }
    errEl.textContent = '';
    const tbody = $('dl-table').tBodies[0];
    if (!append) clearChildren(tbody);
    const letters = Array.isArray(r.dead_letters) ? r.dead_letters : [];
    for (const d of letters) tbody.appendChild(dlRow(d));
    if (!append && letters.length === 0) {
      tbody.appendChild(el('tr', { className: 'empty' }, [el('td', { colSpan: 7, className: 'muted', text: 'No dead letters match.' })]));
    }
    dlNextAfter = r.next_after === undefined ? null : r.next_after;
    $('dl-more').hidden = dlNextAfter === null;
  }

  function hexToBytes(hex) {
    const clean = String(hex || '').replace(/[^0-9a-fA-F]/g, '');
    const bytes = new Uint8Array(Math.floor(clean.length / 2));
    for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(clean.substr(i * 2, 2), 16);
    return bytes;
  }

  /** UTF-8 text of the payload, or null when it is not printable text. */
  function printableText(bytes) {
    let text;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch (_) {
      return null;
    }
    // Control characters other than tab/newline/CR mean binary data.
    return /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(text) ? null : text;
  }

  function toggleDlPayload(tr) {
    const next = tr.nextElementSibling;
    if (next && next.classList.contains('dl-payload')) {
      next.remove();
      return;
    }
    const d = tr.dlLetter || {};
    const bytes = hexToBytes(d.payload_hex);
    const hexGrouped = (String(d.payload_hex || '').match(/.{1,2}/g) || []).join(' ');
    const text = printableText(bytes);
    const box = el('div', { className: 'payload' }, [
      el('div', null, ['topic: ', el('code', { text: d.topic || '' })]),
      el('div', null, ['source: ', el('code', { text: d.source ? JSON.stringify(d.source) : '' })]),
      el('div', null, ['payload (' + bytes.length + ' bytes, hex):']),
      el('pre', { className: 'hex', text: hexGrouped }),
    ]);
    if (text !== null) {
      box.appendChild(el('div', null, ['as text:']));
      box.appendChild(el('pre', { className: 'text', text }));
    } else {
      box.appendChild(el('div', { className: 'muted', text: 'not printable UTF-8 text' }));
    }
    const row = el('tr', { className: 'dl-payload' }, [el('td', { colSpan: 7 }, [box])]);
    row.dataset.for = tr.dataset.id;
    tr.after(row);
  }

  function showDlResult(nodes) {
    const box = $('dl-result');
    clearChildren(box);
    for (const n of nodes) box.appendChild(n);
    box.hidden = false;
  }

  function showReplayResult(r) {
    const n = (k) => numOr(r[k], 0);
    const nodes = [el('p', {
      className: 'summary',
      text: 'Replayed ' + n('replayed') + ': ' + n('resolved') + ' resolved (' + n('fixes_stored') +
        ' fixes stored, ' + n('duplicates') + ' duplicates), ' + n('refused') + ' refused, ' +
        n('unsupported') + ' unsupported.',
    })];
    const letters = Array.isArray(r.letters) ? r.letters : [];
    if (letters.length) {
      const ul = el('ul', { className: 'letters' });
      for (const l of letters.slice(0, 100)) {
        const li = el('li', { text: '#' + l.id + ' ' + l.outcome + (l.detail ? ': ' + l.detail : '') });
        li.dataset.outcome = String(l.outcome);
        ul.appendChild(li);
      }
      if (letters.length > 100) ul.appendChild(el('li', { className: 'muted', text: (letters.length - 100) + ' more' }));
      nodes.push(ul);
    }
    showDlResult(nodes);
  }

  async function dlAction(method, path, onResult) {
    const errEl = $('dl-error');
    try {
      const r = await fetchJSON(path, token, { method });
      errEl.textContent = '';
      onResult(r);
    } catch (e) {
      reportError(e, errEl);
      return false;
    }
    return true;
  }

  async function onDlTableClick(ev) {
    const tr = ev.target.closest('tr[data-id]');
    if (!tr) return;
    const id = tr.dataset.id;
    if (ev.target.closest('button.dl-replay')) {
      if (await dlAction('POST', '/v1/dead-letters/' + encodeURIComponent(id) + '/replay', showReplayResult)) dlList(false);
      return;
    }
    if (ev.target.closest('button.dl-purge')) {
      await dlAction('DELETE', '/v1/dead-letters/' + encodeURIComponent(id), (r) => {
        showDlResult([el('p', { className: 'summary', text: 'Purged ' + numOr(r.purged, 0) + '.' })]);
        const next = tr.nextElementSibling;
        if (next && next.classList.contains('dl-payload')) next.remove();
        tr.remove();
      });
      return;
    }
    if (ev.target.closest('button')) return;
    toggleDlPayload(tr);
  }

  async function onDlReplayAll() {
    const params = dlFilterParams();
    const q = params.toString();
    if (await dlAction('POST', '/v1/dead-letters/replay' + (q ? '?' + q : ''), showReplayResult)) dlList(false);
  }

  async function onDlPurge() {
    const params = dlFilterParams();
    if ([...params.keys()].length === 0) {
      if (!window.confirm('No filter is set: this purges ALL dead letters, permanently. ' +
        'They cannot be replayed afterwards. Purge everything?')) return;
      params.set('all', 'true');
    } else if (!window.confirm('Purge every dead letter matching ' + params.toString() + '? This cannot be undone.')) {
      return;
    }
    const ok = await dlAction('DELETE', '/v1/dead-letters?' + params.toString(), (r) => {
      showDlResult([el('p', { className: 'summary', text: 'Purged ' + numOr(r.purged, 0) + '.' })]);
    });
    if (ok) dlList(false);
  }

  async function onDlExport() {
    const errEl = $('dl-error');
    const q = dlFilterParams().toString();
    try {
      // fetch with the header, then hand the body to the browser as a Blob:
      // a plain link would need the token in the URL.
      const resp = await apiFetch('/v1/dead-letters/export' + (q ? '?' + q : ''), token);
      if (!resp.ok) throw await toHttpError(resp);
      const blob = await resp.blob();
      const url = URL.createObjectURL(blob);
      const a = el('a', { href: url, download: 'dead-letters.jsonl' });
      a.hidden = true;
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      errEl.textContent = '';
    } catch (e) {
      reportError(e, errEl);
    }
  }

  // ------------------------------------------------------------ boot ----

  function wire() {
    $('login').addEventListener('submit', onLoginSubmit);
    $('logout').addEventListener('click', () => logout(''));
    for (const btn of document.querySelectorAll('.tabs button')) {
      btn.addEventListener('click', () => showPanel(btn.dataset.panel));
    }
    $('courier-list').addEventListener('click', onCourierListClick);
    $('courier-search').addEventListener('keydown', onCourierSearchKey);
    $('courier-search').addEventListener('input', () => {
      $('courier-search-msg').textContent = '';
      renderCourierList();
    });
    $('orders-table').addEventListener('click', onOrdersClick);
    $('dl-apply').addEventListener('click', () => dlList(false));
    $('dl-more').addEventListener('click', () => dlList(true));
    $('dl-replay-all').addEventListener('click', onDlReplayAll);
    $('dl-purge').addEventListener('click', onDlPurge);
    $('dl-export').addEventListener('click', onDlExport);
    $('dl-table').addEventListener('click', onDlTableClick);
    for (const id of ['dl-reason', 'dl-courier', 'dl-since', 'dl-until']) {
      $(id).addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter') dlList(false);
      });
    }
  }

  async function boot() {
    wire();
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved !== null) {
      try {
        const who = await whoami(saved);
        await enter(saved, who);
        return;
      } catch (e) {
        sessionStorage.removeItem(TOKEN_KEY);
        showLogin(e instanceof HttpError && e.status === 401 ? 'Your session has expired. Sign in again.' : (e.message || ''));
        return;
      }
    }
    showLogin('');
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
})();
