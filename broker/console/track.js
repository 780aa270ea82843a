// Locus customer tracking page (served at /track/{order}?token=...).
//
// Polls GET /v1/orders/{order}/tracking every 3 s with the link's order token
// as a bearer token, and shows the order's status, its timeline and, while the
// order is active and the courier has a position, one marker on a map.
// The page never shows a courier id: the API does not return one, and nothing
// here adds one.
'use strict';

(function () {
  const { el, apiFetch, fmtClock, fmtAge } = window.Locus;

  const POLL_MS = 3000;

  const STATUS_TEXT = {
    placed: 'Order placed',
    ready: 'Ready for pickup',
    assigned: 'Courier assigned',
    picked_up: 'On its way',
    delivered: 'Delivered',
    cancelled: 'Cancelled',
  };
  const EVENT_TEXT = {
    placed: 'Order placed',
    ready: 'Ready for pickup',
    assigned: 'Courier assigned',
    picked_up: 'Picked up — on its way',
    delivered: 'Delivered',
    cancelled: 'Cancelled',
    feedback: 'Feedback received',
  };
  const ENDED = new Set(['delivered', 'cancelled']);

  const $ = (id) => document.getElementById(id);

  /** Unknown codes (a newer server) still read as words. */
  const words = (code, table) => table[code] ||
    (String(code || '').replace(/_/g, ' ').replace(/^./, (c) => c.toUpperCase()) || 'Unknown');

  // Test hooks (see the brief): state, the marker's position, completed polls.
  const hooks = {
    state: 'loading',
    polls: 0,
    markerLatLng() {
      if (!marker) return null;
      const ll = marker.getLatLng();
      return [ll.lat, ll.lng];
    },
  };
  window.locusTrack = hooks;

  let orderId = null;
  let token = '';
  let settings = null;
  let map = null;
  let marker = null;
  let pollTimer = null;
  let stopped = false;

  function setState(s) {
    hooks.state = s;
    document.body.dataset.state = s;
  }

  function show(id, visible) {
    $(id).hidden = !visible;
  }

  /** Order id from /track/{order}; null when the path has none. */
  function orderFromPath() {
    const m = /^\/track\/([^/]+)\/?$/.exec(window.location.pathname);
    if (!m) return null;
    try {
      return decodeURIComponent(m[1]);
    } catch (_) {
      return null;
    }
  }

  /** Terminal "link does not work" states: nothing else is shown. */
  function fail(state, elementId) {
    stopped = true;
    clearTimeout(pollTimer);
    removeMarker();
    setState(state);
    show('loading', false);
    show('order', false);
    show(elementId, true);
  }

  function removeMarker() {
    if (marker) {
      marker.remove();
      marker = null;
    }
  }

  function ensureMap() {
    show('map-wrap', true);
    if (!map) {
      map = window.Locus.createMap('track-map', settings, { noticeEl: 'tiles-notice' });
    } else {
      map.invalidateSize(); // it may have been hidden
    }
  }

  function renderTimeline(timeline) {
    const ol = $('timeline');
    while (ol.firstChild) ol.removeChild(ol.firstChild);
    for (const t of timeline) {
      const li = el('li', null, [
        el('time', { className: 'at', text: fmtClock(t.at_ms) }),
        ' ',
        el('span', { className: 'what', text: words(t.event, EVENT_TEXT) }),
      ]);
      if (typeof t.at_ms === 'number') li.querySelector('time').dateTime = new Date(t.at_ms).toISOString();
      li.dataset.event = String(t.event);
      ol.appendChild(li);
    }
  }

  /** When the timeline says `kind` happened (the last such event), else null. */
  function eventTime(timeline, kind) {
    let at = null;
    for (const t of timeline) if (t.event === kind && typeof t.at_ms === 'number') at = t.at_ms;
    return at;
  }

  function render(body) {
    const status = String(body.status || '');
    const timeline = Array.isArray(body.timeline) ? body.timeline : [];
    const ended = body.active === false || ENDED.has(status);

    show('loading', false);
    show('order', true);
    show('track-error', false);
    $('status').textContent = words(status, STATUS_TEXT);
    $('status').dataset.status = status;
    // Whether the food is made yet: the status says it for `placed`/`ready`;
    // once a courier is assigned only the timeline still tells.
    let detail = '';
    if (status === 'placed') detail = 'Being prepared';
    else if (status === 'assigned') detail = eventTime(timeline, 'ready') !== null ? 'Ready for pickup' : 'Being prepared';
    $('status-detail').textContent = detail;
    show('status-detail', detail !== '');
    renderTimeline(timeline);

    if (ended) {
      // Stop here for good: no marker, no map, no more polling.
      stopped = true;
      clearTimeout(pollTimer);
      removeMarker();
      show('map-wrap', false);
      show('updated', false);
      show('waiting', false);
      let text;
      if (status === 'delivered') {
        const at = eventTime(timeline, 'delivered');
        text = 'This order was delivered' + (at !== null ? ' at ' + fmtClock(at) : '') + '.';
      } else if (status === 'cancelled') {
        const at = eventTime(timeline, 'cancelled');
        text = 'This order was cancelled' + (at !== null ? ' at ' + fmtClock(at) : '') + '.';
      } else {
        text = 'This order has ended.';
      }
      $('ended').textContent = text;
      show('ended', true);
      setState('ended');
      return;
    }

    setState('active');
    const loc = body.location;
    if (loc && isFinite(loc.lat) && isFinite(loc.lon)) {
      ensureMap();
      const ll = [loc.lat, loc.lon];
      if (!marker) {
        marker = L.circleMarker(ll, {
          radius: 10,
          weight: 3,
          color: '#ffffff',
          fillColor: '#1d4ed8',
          fillOpacity: 1,
          interactive: false,
        }).addTo(map);
        map.setView(ll, Math.max(map.getZoom(), 15));
      } else {
        marker.setLatLng(ll);
        // Follow the courier, without fighting a customer who zoomed out.
        if (!map.getBounds().pad(-0.15).contains(ll)) map.panTo(ll);
      }
      const age = typeof loc.received_ms === 'number' ? Date.now() - loc.received_ms : NaN;
      $('updated').textContent = isFinite(age) ? 'Location updated ' + fmtAge(age) + ' ago' : '';
      show('updated', isFinite(age));
      show('waiting', false);
    } else {
      removeMarker();
      show('map-wrap', false);
      show('updated', false);
      show('waiting', true);
    }
  }

  async function poll() {
    if (stopped) return;
    let resp;
    try {
      resp = await apiFetch('/v1/orders/' + encodeURIComponent(orderId) + '/tracking', token);
    } catch (_) {
      resp = null; // network: try again
    }
    if (stopped) return;
    hooks.polls++;
    // 401: a wrong or expired token; 403: a token for another order.
    if (resp && (resp.status === 401 || resp.status === 403)) return fail('invalid', 'invalid');
    if (resp && resp.status === 404) return fail('not_found', 'not-found');
    if (resp && resp.ok) {
      let body = null;
      try {
        body = await resp.json();
      } catch (_) { /* treated as a failed poll */ }
      if (body) {
        render(body);
        if (stopped) return;
      } else {
        show('track-error', hooks.state !== 'loading');
      }
    } else if (hooks.state !== 'loading') {
      show('track-error', true);
    }
    pollTimer = setTimeout(poll, POLL_MS);
  }

  async function boot() {
    orderId = orderFromPath();
    token = new URLSearchParams(window.location.search).get('token') || '';
    // Without an order or a token the link cannot work: say so without asking.
    if (!orderId || !token) return fail(orderId ? 'invalid' : 'not_found', orderId ? 'invalid' : 'not-found');
    settings = await window.Locus.fetchSettings();
    poll();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
})();
