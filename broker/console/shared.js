// Locus browser code shared by the operator console (index.html) and the
// customer tracking page (track.html). Plain ES2020, no build step.
//
// Everything lives on window.Locus so the page scripts (loaded after this file,
// all with `defer`) can use it without modules.
//
// Security rules that every caller relies on:
//  * the bearer token only ever travels in an Authorization header, never in a
//    URL (that is why the live stream is read with fetch() rather than
//    EventSource, which cannot send headers);
//  * server-provided strings reach the DOM through textContent only (see el()).
'use strict';

(function () {
  // ---------------------------------------------------------------- HTTP ----

  /** Error for a non-2xx answer; `status` is the HTTP status, `message` the
   *  server's {"error": "..."} text when it sent one. */
  class HttpError extends Error {
    constructor(status, message, body) {
      super(message || ('HTTP ' + status));
      this.name = 'HttpError';
      this.status = status;
      this.body = body;
    }
  }

  /** fetch() with `Authorization: Bearer TOKEN` (omitted when token is empty,
   *  which is how anonymous access is used). Never caches: every answer here
   *  is live data. */
  function apiFetch(path, token, init) {
    const opts = Object.assign({ cache: 'no-store' }, init || {});
    const headers = new Headers(opts.headers || {});
    if (token) headers.set('Authorization', 'Bearer ' + token);
    opts.headers = headers;
    return fetch(path, opts);
  }

  /** Reads the body of a failed response into an HttpError. */
  async function toHttpError(resp) {
    let body = null;
    let message = '';
    try {
      const text = await resp.text();
      try {
        body = JSON.parse(text);
        if (body && typeof body.error === 'string') message = body.error;
      } catch (_) {
        message = text.slice(0, 200);
      }
    } catch (_) { /* body unreadable: keep the status only */ }
    return new HttpError(resp.status, message || ('HTTP ' + resp.status), body);
  }

  /** apiFetch + JSON decoding; throws HttpError on a non-2xx status. */
  async function fetchJSON(path, token, init) {
    const resp = await apiFetch(path, token, init);
    if (!resp.ok) throw await toHttpError(resp);
    return resp.json();
  }

  // ------------------------------------------------------------ settings ----

  const DEFAULT_SETTINGS = {
    tile_url: '',
    tile_attribution: '',
    max_zoom: 19,
    stale_after_s: 120,
    moving_min_speed_mps: 1.0,
    initial_view: { lat: 52.52, lon: 13.405, zoom: 12 },
  };

  /** GET /console/settings.json, filled up with defaults for anything missing
   *  (so a failing settings route still gives a working, tile-less map). */
  async function fetchSettings() {
    let s = {};
    try {
      s = await fetchJSON('/console/settings.json', '');
    } catch (e) {
      console.warn('locus: settings unavailable, using defaults', e);
    }
    const out = Object.assign({}, DEFAULT_SETTINGS, s || {});
    out.initial_view = Object.assign({}, DEFAULT_SETTINGS.initial_view, (s && s.initial_view) || {});
    return out;
  }

  // ------------------------------------------------------------ SSE ----

  /**
   * Reads a text/event-stream response body and calls onEvent({event, data})
   * for every dispatched event. Resolves when the stream ends; rejects when it
   * fails (network error, abort).
   *
   * Follows the SSE parsing rules we need: `field: value` lines (one optional
   * space after the colon is dropped), several `data:` lines are joined with
   * "\n", a blank line dispatches, lines starting with ':' are comments
   * (keep-alives), an event with no data is not dispatched, the event type
   * defaults to "message". Lines end with "\n" or "\r\n" (locusd never sends a
   * bare "\r").
   */
  async function readEventStream(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder('utf-8');
    let buf = '';
    let scanFrom = 0; // where to resume looking for "\n": big snapshot lines arrive in many chunks
    let eventType = '';
    let data = [];

    const handleLine = (line) => {
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line === '') {
        if (data.length > 0) {
          const ev = { event: eventType || 'message', data: data.join('\n') };
          eventType = '';
          data = [];
          onEvent(ev);
        } else {
          eventType = '';
        }
        return;
      }
      if (line.charCodeAt(0) === 58 /* ':' */) return; // comment / keep-alive
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.charCodeAt(0) === 32 /* ' ' */) value = value.slice(1);
      if (field === 'event') eventType = value;
      else if (field === 'data') data.push(value);
      // `id` and `retry` are not used: reconnection is ours (see console.js).
    };

    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        buf += decoder.decode();
        if (buf.length) handleLine(buf); // a final unterminated line: no dispatch without a blank line
        return;
      }
      buf += decoder.decode(value, { stream: true });
      let start = 0;
      let nl;
      while ((nl = buf.indexOf('\n', Math.max(start, scanFrom))) >= 0) {
        handleLine(buf.slice(start, nl));
        start = nl + 1;
      }
      buf = buf.slice(start);
      scanFrom = buf.length;
    }
  }

  // ------------------------------------------------------------ time ----

  const pad2 = (n) => String(n).padStart(2, '0');

  /** "HH:MM" in local time. */
  function fmtClock(ms) {
    if (typeof ms !== 'number' || !isFinite(ms)) return '';
    const d = new Date(ms);
    return pad2(d.getHours()) + ':' + pad2(d.getMinutes());
  }

  /** "YYYY-MM-DD HH:MM:SS" in local time. */
  function fmtDateTime(ms) {
    if (typeof ms !== 'number' || !isFinite(ms)) return '';
    const d = new Date(ms);
    return d.getFullYear() + '-' + pad2(d.getMonth() + 1) + '-' + pad2(d.getDate()) + ' ' +
      pad2(d.getHours()) + ':' + pad2(d.getMinutes()) + ':' + pad2(d.getSeconds());
  }

  /** Human age of a duration in ms: "4 s", "3 min", "2 h 5 min", "3 d". */
  function fmtAge(ms) {
    if (typeof ms !== 'number' || !isFinite(ms)) return '';
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + ' min';
    const h = Math.floor(m / 60);
    if (h < 48) return h + ' h' + (m % 60 ? ' ' + (m % 60) + ' min' : '');
    return Math.floor(h / 24) + ' d';
  }

  // ------------------------------------------------------------ DOM ----

  /** Creates an element. `props.text` sets textContent (the only way server
   *  data is put into the page); other props are set as properties, except
   *  `attrs` (setAttribute) and `dataset`. Children may be nodes or strings
   *  (strings become text nodes). */
  function el(tag, props, children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null) continue;
        if (k === 'text') node.textContent = String(v);
        else if (k === 'attrs') for (const [a, av] of Object.entries(v)) node.setAttribute(a, av);
        else if (k === 'dataset') Object.assign(node.dataset, v);
        else node[k] = v;
      }
    }
    if (children) {
      for (const c of children) {
        if (c === null || c === undefined) continue;
        node.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
      }
    }
    return node;
  }

  // ------------------------------------------------------------ map ----

  /** A graticule (faint lat/lon lines with labels) drawn in a pane *below* the
   *  tiles: with working tiles it is hidden by them; without tiles (none
   *  configured, or unreachable) it gives positions a meaningful background. */
  function addGraticule(map) {
    const pane = map.createPane('locusGrid');
    pane.style.zIndex = '150'; // tilePane is 200
    pane.style.pointerEvents = 'none';
    const renderer = L.svg({ pane: 'locusGrid', padding: 0.2 });
    const group = L.layerGroup().addTo(map);
    const STEPS = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
      0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 45];

    const label = (text, latlng, cls) => L.marker(latlng, {
      pane: 'locusGrid',
      interactive: false,
      keyboard: false,
      icon: L.divIcon({
        className: 'locus-grid-label ' + cls,
        html: el('span', { text }),
        iconSize: null,
      }),
    });

    const fmt = (v, step) => {
      const decimals = Math.max(0, Math.ceil(-Math.log10(step) - 1e-9));
      return v.toFixed(decimals) + '°';
    };

    function redraw() {
      group.clearLayers();
      const b = map.getBounds();
      const south = Math.max(-85, b.getSouth()), north = Math.min(85, b.getNorth());
      const west = b.getWest(), east = b.getEast();
      // Lines reach half a screen beyond the view so panning does not show
      // their ends before the next redraw (on moveend).
      const p = b.pad(0.5);
      const pS = Math.max(-85, p.getSouth()), pN = Math.min(85, p.getNorth());
      const pW = p.getWest(), pE = p.getEast();
      const target = Math.max(north - south, east - west) / 8;
      const step = STEPS.find((s) => s >= target) || 45;
      const style = { renderer, color: '#7a8699', weight: 1, opacity: 0.35, interactive: false };
      // Integer multiples of the step, so that 0.1 * 3 prints as 0.3.
      for (let i = Math.ceil(pS / step); i * step <= pN; i++) {
        const lat = i * step;
        group.addLayer(L.polyline([[lat, pW], [lat, pE]], style));
        if (lat >= south && lat <= north) group.addLayer(label(fmt(lat, step), [lat, west], 'lat'));
      }
      for (let i = Math.ceil(pW / step); i * step <= pE; i++) {
        const lon = i * step;
        group.addLayer(L.polyline([[pS, lon], [pN, lon]], style));
        if (lon >= west && lon <= east) group.addLayer(label(fmt(lon, step), [north, lon], 'lon'));
      }
    }
    map.on('moveend resize', redraw);
    map.whenReady(redraw);
    return group;
  }

  /**
   * Creates a Leaflet map in `container` (element or id) from the settings:
   * tile layer with attribution when settings.tile_url is set, a graticule
   * underneath, and a notice in `noticeEl` when there are no tiles or they do
   * not load. Returns the L.Map.
   */
  function createMap(container, settings, opts) {
    opts = opts || {};
    const v = settings.initial_view;
    const map = L.map(container, {
      preferCanvas: true,
      zoomControl: true,
      attributionControl: true,
      maxZoom: settings.max_zoom || 19,
      worldCopyJump: true,
    }).setView([v.lat, v.lon], v.zoom);
    map.getContainer().classList.add('locus-map');
    L.control.scale({ imperial: false }).addTo(map);
    addGraticule(map);

    const notice = typeof opts.noticeEl === 'string' ? document.getElementById(opts.noticeEl) : opts.noticeEl;
    const setNotice = (show) => { if (notice) notice.hidden = !show; };

    if (!settings.tile_url) {
      setNotice(true);
      return map;
    }
    const tiles = L.tileLayer(settings.tile_url, {
      maxZoom: settings.max_zoom || 19,
      attribution: settings.tile_attribution || '',
      crossOrigin: false,
    }).addTo(map);
    // A single failed tile is normal (edge of the world, a hiccup); several
    // errors without any successful tile means the tile server is unreachable
    // (offline, blocked). A later successful tile hides the notice again.
    let errors = 0;
    let loads = 0;
    tiles.on('tileerror', () => {
      errors++;
      if (errors >= 3 && loads === 0) setNotice(true);
    });
    tiles.on('tileload', () => {
      loads++;
      setNotice(false);
    });
    return map;
  }

  // ------------------------------------------------------------ misc ----

  /** Distance in metres between two lat/lon points (haversine). */
  function distanceM(lat1, lon1, lat2, lon2) {
    const R = 6371008.8;
    const rad = Math.PI / 180;
    const dLat = (lat2 - lat1) * rad;
    const dLon = (lon2 - lon1) * rad;
    const a = Math.sin(dLat / 2) ** 2 +
      Math.cos(lat1 * rad) * Math.cos(lat2 * rad) * Math.sin(dLon / 2) ** 2;
    return 2 * R * Math.asin(Math.min(1, Math.sqrt(a)));
  }

  window.Locus = Object.freeze({
    HttpError,
    apiFetch,
    fetchJSON,
    toHttpError,
    fetchSettings,
    readEventStream,
    fmtClock,
    fmtDateTime,
    fmtAge,
    el,
    createMap,
    distanceM,
  });
})();
