/* qclip monitor dashboard: the wall of sources (#/) and one source's page (#/source/NAME).

   Data: the monitor's HTTP API (monitor/http.py), every URL relative so that the page works at the
   server's root and behind a reverse proxy at a path prefix:
     GET v1/sources            the state of every source (at load, and again at every (re)connection)
     GET v1/sources/NAME       one source with its window history and alert history
     GET v1/events             Server-Sent Events: window, state, alert, health, source_added, source_removed
     POST v1/sources, DELETE v1/sources/NAME, POST v1/sources/NAME/silence   the page's forms and buttons

   Fast with many sources: an event only updates the model of the source it concerns and marks that
   source dirty; the DOM is touched once per animation frame, for the dirty sources only, and only
   where a shown value changed. Nothing is ever rebuilt wholesale.

   Dependable: when the feed drops, a banner says so and EventSource reconnects by itself (a feed
   refused outright, which EventSource gives up on, is reopened here with a backoff); every
   (re)connection re-reads v1/sources, events arriving meanwhile are held and replayed after it;
   items lost on the way (a gap in the feed's running ids that does not fill) cause a re-read too.

   window.qclipDashboard exposes measurements for tests: `latencies` (ms from an event's arrival to
   its tile's DOM update) and `endToEnd` (ms from the monitor publishing it to that update). */
(() => {
  "use strict";

  const SPARK_S = 300; // the tiles' sparklines: the last 5 minutes of window scores
  const SPARK_MIN_S = 10;
  const SPARK_MAX = 2000;
  const TIMELINE_MAX = 20000; // windows kept for an open source page
  const TABLE_ROWS = 20;
  const SEED_CONCURRENCY = 2; // window histories fetched at once to fill the sparklines of visible tiles
  const GAP_WAIT_MS = 2000; // a missing feed id not arrived by then: items were lost, re-read the state
  const RESYNC_MIN_MS = 5000;
  const SYNC_TIMEOUT_MS = 15000; // a state read that hangs is given up (the items held meanwhile are replayed)
  const EVENT_TYPES = ["window", "state", "alert", "health", "source_added", "source_removed"];
  const RULES = ["score_below", "frozen", "black", "stalled", "failed"];
  const RULE_LABELS = { score_below: "low score", frozen: "frozen", black: "black", stalled: "stalled", failed: "failed" };
  const SVG = "http://www.w3.org/2000/svg";
  const PROBE_MAX = 20000;

  const probe = (window.qclipDashboard = {
    latencies: [], endToEnd: [], events: 0, syncs: 0, connected: false, resyncs: 0,
    reset() { this.latencies.length = 0; this.endToEnd.length = 0; },
  });

  const $ = (id) => document.getElementById(id);
  const sources = new Map(); // name → the source's model (below)
  const tiles = new Map(); // name → its tile's elements (and the model it shows)
  const tilesEl = $("tiles");

  // ---- formatting ------------------------------------------------------------------------------
  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const fmt = (x, digits) => (isNum(x) ? x.toFixed(digits) : "—");
  function clock(unix) {
    if (!isNum(unix)) return "—";
    const d = new Date(unix * 1000);
    const sameDay = d.toDateString() === new Date().toDateString();
    return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svgEl(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  const timeout = (ms) => (AbortSignal.timeout ? AbortSignal.timeout(ms) : undefined);
  const sourcePath = (name) => "v1/sources/" + encodeURIComponent(name);
  const sourceHash = (name) => "#/source/" + encodeURIComponent(name);

  // ---- the models ------------------------------------------------------------------------------
  function newModel(name) {
    return {
      name, url: "", state: "connecting", since: null, reason: null, error: null, last: null,
      windows: 0, errors: 0, reconnects: 0, skipped: 0, dropped: 0, alerts: new Set(), silencedUntil: null,
      settings: null, added: null,
      spark: [], sparkVersion: 0, seeded: false, seeding: false,
    };
  }
  function compact(item) {
    const keep = {};
    for (const k of ["index", "start_s", "end_s", "score", "mos", "levels", "error", "time", "partial"]) {
      if (item[k] !== undefined) keep[k] = item[k];
    }
    return keep;
  }
  function applySnapshot(m, s) {
    m.url = s.url; m.state = s.state; m.since = s.since; m.reason = s.reason; m.error = s.error;
    m.windows = s.windows || 0; m.errors = s.errors || 0; m.reconnects = s.reconnects || 0;
    m.skipped = s.skipped_windows || 0; m.dropped = s.dropped_frames || 0;
    m.alerts = new Set(s.alerts || []); m.silencedUntil = s.silenced_until; m.settings = s.settings; m.added = s.added;
    if (s.last && (!m.last || !isNum(m.last.index) || s.last.index >= m.last.index)) {
      m.last = compact(s.last);
      pushSpark(m, m.last);
    }
    if (Array.isArray(s.history)) seedSpark(m, s.history);
  }
  function pushSpark(m, w) {
    if (!isNum(w.score) || !isNum(w.time)) return;
    const tail = m.spark[m.spark.length - 1];
    if (tail && isNum(w.index) && w.index <= tail[2]) return; // seen already
    m.spark.push([w.time, w.score, isNum(w.index) ? w.index : (tail ? tail[2] + 1 : 0)]);
    const oldest = w.time - SPARK_S;
    let drop = 0;
    while (drop < m.spark.length && (m.spark[drop][0] < oldest || m.spark.length - drop > SPARK_MAX)) drop++;
    if (drop) m.spark.splice(0, drop);
    m.sparkVersion++;
  }
  function seedSpark(m, history) {
    const first = m.spark.length ? m.spark[0][2] : Infinity;
    const newest = m.spark.length ? m.spark[m.spark.length - 1][0] : (history.length ? history[history.length - 1].time : 0);
    const older = [];
    for (const h of history) {
      if (isNum(h.score) && isNum(h.time) && isNum(h.index) && h.index < first && h.time >= newest - SPARK_S) {
        older.push([h.time, h.score, h.index]);
      }
    }
    if (older.length) {
      m.spark = older.concat(m.spark).slice(-SPARK_MAX);
      m.sparkVersion++;
    }
    m.seeded = true;
  }

  // ---- the render queue: dirty sources, one DOM pass per animation frame ----------------------
  const dirty = new Set();
  let stamps = []; // [performance.now() at arrival, unix publish time] of events waiting for the next frame
  let frameRequested = false;
  let summaryDirty = true;
  const page = { name: null, data: null, history: [], alerts: [], loading: false, early: [], dirty: new Set(), gone: false };

  function touch(name, stamp, published) {
    dirty.add(name);
    summaryDirty = true;
    if (stamp !== undefined) {
      stamps.push([stamp, published]);
      if (stamps.length > PROBE_MAX) stamps = stamps.slice(-PROBE_MAX);
    }
    requestFrame();
  }
  function requestFrame() {
    if (!frameRequested) {
      frameRequested = true;
      requestAnimationFrame(flush);
    }
  }
  function flush() {
    frameRequested = false;
    for (const name of dirty) renderTile(name);
    dirty.clear();
    if (summaryDirty) renderSummary();
    if (page.name && page.dirty.size) renderPage();
    if (stamps.length) {
      const now = performance.now(), wall = Date.now() / 1000;
      for (const [stamp, published] of stamps) {
        probe.latencies.push(now - stamp);
        if (isNum(published)) probe.endToEnd.push((wall - published) * 1000);
      }
      stamps = [];
      if (probe.latencies.length > PROBE_MAX) probe.latencies.splice(0, probe.latencies.length - PROBE_MAX);
      if (probe.endToEnd.length > PROBE_MAX) probe.endToEnd.splice(0, probe.endToEnd.length - PROBE_MAX);
    }
  }

  // ---- tiles -----------------------------------------------------------------------------------
  const seenTiles = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      const m = sources.get(entry.target.dataset.name);
      if (m && !m.seeded) queueSeed(m);
    }
  }) : null;

  function createTile(m) {
    const li = el("li", "tile");
    li.dataset.name = m.name;
    const head = el("div", "tile-head");
    const h3 = el("h3", "tile-name");
    const link = el("a", null, m.name);
    link.href = sourceHash(m.name);
    h3.append(link);
    const state = el("span", "state");
    head.append(h3, state);
    const reason = el("p", "tile-reason");
    const scores = el("p", "tile-score");
    const scoreBox = el("span"), mosBox = el("span");
    const score = el("span", "value"), mos = el("span", "value");
    scoreBox.append(el("span", "label", "score"), score);
    mosBox.append(el("span", "label", "MOS"), mos);
    scores.append(scoreBox, mosBox);
    const spark = svgEl("svg", { class: "spark", viewBox: "0 0 100 30", preserveAspectRatio: "none", role: "img" });
    const path = svgEl("path", { d: "" });
    spark.append(path);
    const badges = el("ul", "badges");
    badges.setAttribute("aria-label", "Active alerts");
    li.append(head, reason, scores, spark, badges);
    const tile = { model: m, li, state, reason, score, mos, spark, path, badges, shown: {} };
    tiles.set(m.name, tile);
    tilesEl.append(li);
    if (seenTiles) seenTiles.observe(li);
    else queueSeed(m);
    return tile;
  }
  function dropTile(name) {
    const tile = tiles.get(name);
    if (!tile) return;
    if (seenTiles) seenTiles.unobserve(tile.li);
    tile.li.remove();
    tiles.delete(name);
  }

  function set(t, key, value, apply) {
    if (t.shown[key] !== value) {
      t.shown[key] = value;
      apply(value);
    }
  }

  function renderTile(name) {
    const m = sources.get(name);
    if (!m || (tiles.has(name) && tiles.get(name).model !== m)) dropTile(name); // removed (and maybe added again)
    if (!m) return;
    const t = tiles.get(name) || createTile(m);
    set(t, "state", m.state, (s) => {
      t.li.dataset.state = s;
      t.state.textContent = s;
      t.state.className = "state state-" + s;
    });
    const last = m.last;
    let reason = m.state === "live" ? "" : m.reason || "";
    if (m.error && m.error.code && m.state !== "live") reason += (reason ? ": " : "") + m.error.code;
    if (last && last.error && last.error.code) reason = "last window: " + last.error.code + (reason ? " · " + reason : "");
    set(t, "reason", reason, (r) => { t.reason.textContent = r; t.reason.title = r; });
    set(t, "score", last ? (last.error ? "error" : fmt(last.score, 3)) : "—", (s) => { t.score.textContent = s; });
    set(t, "mos", last && !last.error ? fmt(last.mos, 2) : "—", (s) => { t.mos.textContent = s; });
    if (t.shown.spark !== m.sparkVersion) {
      t.shown.spark = m.sparkVersion;
      drawSpark(t, m.spark);
    }
    const silenced = isNum(m.silencedUntil) && m.silencedUntil * 1000 > Date.now();
    const active = RULES.filter((r) => m.alerts.has(r));
    set(t, "badges", active.join(",") + (silenced ? ",silenced" : ""), () => {
      const items = active.map((r) => {
        const b = el("li", "badge badge-" + r, RULE_LABELS[r]);
        b.title = "alert raised: " + r;
        return b;
      });
      if (silenced) items.push(el("li", "badge badge-silenced", "silenced"));
      t.badges.replaceChildren(...items);
    });
    set(t, "ok", m.state === "live" && active.length === 0 ? "1" : "0", (ok) => { t.li.dataset.ok = ok; });
  }

  function drawSpark(t, points) {
    const n = points.length;
    if (!n) {
      t.path.setAttribute("d", "");
      t.spark.setAttribute("aria-label", "No window scored in the last 5 minutes");
      return;
    }
    let lo = Infinity, hi = -Infinity;
    for (const p of points) { if (p[1] < lo) lo = p[1]; if (p[1] > hi) hi = p[1]; }
    const span = Math.max(hi - lo, 0.05), mid = (hi + lo) / 2, bottom = mid - span / 2;
    // Time runs left to right over the windows' own span (at least SPARK_MIN_S, at most SPARK_S):
    // a source watched for a minute fills its sparkline too.
    const end = points[n - 1][0], width = Math.min(SPARK_S, Math.max(SPARK_MIN_S, end - points[0][0]));
    let d = "";
    for (let i = 0; i < n; i++) {
      const x = 100 - ((end - points[i][0]) / width) * 100;
      const y = 28 - ((points[i][1] - bottom) / span) * 26;
      d += (i ? "L" : "M") + x.toFixed(2) + " " + y.toFixed(2);
    }
    if (n === 1) d += "h-1.5";
    t.path.setAttribute("d", d);
    t.spark.setAttribute("aria-label",
      `Score over the last ${width >= 90 ? Math.round(width / 60) + " min" : Math.round(width) + " s"}: ` +
      `${n} window${n === 1 ? "" : "s"}, from ${lo.toFixed(3)} to ${hi.toFixed(3)}, ` +
      `latest ${points[n - 1][1].toFixed(3)}`);
  }

  function renderSummary() {
    summaryDirty = false;
    const counts = {};
    let alerting = 0;
    for (const m of sources.values()) {
      counts[m.state] = (counts[m.state] || 0) + 1;
      if (m.alerts.size) alerting++;
    }
    const n = sources.size;
    const parts = [`${n} source${n === 1 ? "" : "s"}`];
    for (const s of ["live", "stalled", "reconnecting", "failed", "connecting", "stopped"]) {
      if (counts[s]) parts.push(`${counts[s]} ${s}`);
    }
    if (alerting) parts.push(`${alerting} with active alerts`);
    $("summary").textContent = parts.join(" · ");
    $("empty").hidden = n !== 0 || !synced;
  }

  // ---- filling the sparklines of visible tiles from the sources' histories ----------------------
  const seedQueue = [];
  let seeding = 0;
  function queueSeed(m) {
    if (m.seeded || m.seeding) return;
    m.seeding = true;
    seedQueue.push(m.name);
    pumpSeeds();
  }
  function pumpSeeds() {
    while (seeding < SEED_CONCURRENCY && seedQueue.length) {
      const name = seedQueue.shift();
      seeding++;
      fetch(sourcePath(name), { cache: "no-store" })
        .then((r) => (r.ok ? r.json() : null))
        .then((s) => {
          const m = sources.get(name);
          if (m && s && Array.isArray(s.history)) {
            seedSpark(m, s.history);
            touch(name);
          }
        })
        .catch(() => {})
        .finally(() => {
          const m = sources.get(name);
          if (m) { m.seeding = false; m.seeded = true; }
          seeding--;
          pumpSeeds();
        });
    }
  }

  // ---- the feed --------------------------------------------------------------------------------
  let syncing = false, synced = false, syncSeq = 0, held = [];
  let lastId = null;
  const missing = new Map(); // feed id → performance.now() when it was found missing
  let lastResync = 0;

  function onItem(ev) {
    const stamp = performance.now();
    let item;
    try { item = JSON.parse(ev.data); } catch (e) { return; }
    if (!item || typeof item !== "object") return;
    probe.events++;
    trackId(item.id);
    if (syncing) held.push([item, stamp]);
    else apply(item, stamp);
  }

  function trackId(id) {
    if (!isNum(id)) return;
    if (lastId === null || id > lastId) {
      if (lastId !== null && id > lastId + 1) {
        if (id - lastId > 1000) resync();
        else for (let k = lastId + 1; k < id; k++) missing.set(k, performance.now());
      }
      lastId = id;
    } else {
      missing.delete(id); // arrived out of order: two publishers raced; not lost
    }
  }
  setInterval(() => {
    const now = performance.now();
    for (const [id, since] of missing) {
      if (now - since > GAP_WAIT_MS) {
        missing.clear();
        resync();
        break;
      }
    }
  }, 1000);
  function resync() {
    const now = performance.now();
    if (now - lastResync < RESYNC_MIN_MS) return;
    lastResync = now;
    probe.resyncs++;
    sync(0);
  }

  function apply(item, stamp) {
    const name = item.source;
    if (typeof name !== "string") return;
    let m = sources.get(name);
    switch (item.type) {
      case "window": {
        if (!m) return;
        const w = compact(item);
        if (m.last && isNum(m.last.index) && isNum(w.index) && w.index <= m.last.index) return;
        m.last = w;
        if (w.error) m.errors++;
        else m.windows++;
        pushSpark(m, w);
        if (page.name === name) pageWindow(w);
        break;
      }
      case "state":
        if (!m) return;
        m.state = item.state; m.since = item.time; m.reason = item.reason; m.error = item.error;
        if (page.name === name) page.dirty.add("head");
        break;
      case "alert":
        if (!m) return;
        if (item.status === "raised") m.alerts.add(item.rule);
        else if (item.status === "cleared") m.alerts.delete(item.rule);
        if (page.name === name) pageAlert(item);
        break;
      case "source_added":
        if (m) return;
        m = newModel(name);
        m.url = item.url || "";
        m.added = item.time;
        sources.set(name, m);
        break;
      case "source_removed":
        if (!m) return;
        sources.delete(name);
        if (page.name === name) { page.gone = true; page.dirty.add("head"); }
        break;
      default:
        return; // health spans: the alerts they cause come as alert items
    }
    touch(name, stamp, item.time);
  }

  /* Re-read every source's state (after `delay` ms): items arriving meanwhile are held and
     replayed after it, so nothing is applied twice out of order or lost. */
  function sync(delay) {
    const seq = ++syncSeq;
    syncing = true;
    const done = () => {
      if (seq !== syncSeq) return;
      syncing = false;
      const replay = held;
      held = [];
      for (const [item, stamp] of replay) apply(item, stamp);
      requestFrame();
    };
    setTimeout(() => {
      fetch("v1/sources", { cache: "no-store", signal: timeout(SYNC_TIMEOUT_MS) })
        .then((r) => {
          if (!r.ok) throw new Error("HTTP " + r.status);
          return r.json();
        })
        .then((body) => {
          if (seq !== syncSeq) return;
          const list = Array.isArray(body.sources) ? body.sources : [];
          const names = new Set(list.map((s) => s.name));
          for (const name of [...sources.keys()]) {
            if (!names.has(name)) { sources.delete(name); touch(name); }
          }
          for (const s of list) {
            let m = sources.get(s.name);
            if (!m) { m = newModel(s.name); sources.set(s.name, m); }
            applySnapshot(m, s);
            touch(s.name);
          }
          synced = true;
          probe.syncs++;
          summaryDirty = true;
          if (page.name) loadPage(page.name, false);
        })
        .catch(() => {})
        .finally(done);
    }, delay);
  }

  let es = null, reopenTimer = null, reopenDelay = 1000;
  function setConnected(up) {
    probe.connected = up;
    $("banner").textContent = up ? "" : "Reconnecting to the monitor…";
  }
  function connect() {
    if (es) es.close();
    es = new EventSource("v1/events");
    es.onopen = () => {
      setConnected(true);
      reopenDelay = 1000;
      lastId = null;
      missing.clear();
      // The feed's subscription is made as its answer starts streaming: read the state a moment
      // later, so that no item falls between the two. Items meanwhile are held, then replayed.
      sync(150);
    };
    es.onerror = () => {
      setConnected(false);
      if (es.readyState === EventSource.CLOSED) { // refused (e.g. a proxy's 502): EventSource gave up
        clearTimeout(reopenTimer);
        reopenTimer = setTimeout(connect, reopenDelay);
        reopenDelay = Math.min(reopenDelay * 2, 15000);
      } // else EventSource reconnects by itself
    };
    for (const type of EVENT_TYPES) es.addEventListener(type, onItem);
  }

  // ---- one source's page -----------------------------------------------------------------------
  function loadPage(name, fresh) {
    if (fresh) {
      page.name = name; page.data = null; page.history = []; page.alerts = []; page.gone = false; page.early = [];
      page.loading = true;
      $("src-title").textContent = name;
      $("src-missing").hidden = true;
      $("src-body").hidden = false;
      $("action-status").textContent = "";
      $("action-error").textContent = "";
      for (const id of ["levels", "alert-history", "windows-table", "settings"]) $(id).replaceChildren();
      clearTimeline();
      $("src-latest").textContent = "Loading…";
      page.dirty = new Set(["head"]);
      requestFrame();
    }
    fetch(sourcePath(name), { cache: "no-store" })
      .then(async (r) => {
        const body = await r.json().catch(() => null);
        if (page.name !== name) return;
        if (!r.ok) {
          const msg = body && body.error ? body.error.message : "HTTP " + r.status;
          showMissing(r.status === 404 ? `No source named “${name}” is watched (it may have been removed).` : msg);
          return;
        }
        page.data = body;
        page.history = (body.history || []).slice(-TIMELINE_MAX);
        page.alerts = (body.alert_history || []).slice();
        const lastIndex = page.history.length ? page.history[page.history.length - 1].index : -Infinity;
        const lastAlert = page.alerts.reduce((a, x) => Math.max(a, isNum(x.id) ? x.id : -Infinity), -Infinity);
        for (const [kind, item] of page.early) {
          if (kind === "window" && isNum(item.index) && item.index > lastIndex) page.history.push(item);
          if (kind === "alert" && isNum(item.id) && item.id > lastAlert) page.alerts.push(item);
        }
        page.early = [];
        page.loading = false;
        const m = sources.get(name);
        if (m) applySnapshot(m, body);
        page.dirty = new Set(["head", "timeline", "levels", "alerts", "settings"]);
        requestFrame();
      })
      .catch(() => {
        if (page.name === name && page.loading) $("src-latest").textContent = "Could not reach the monitor; retrying when the feed is back.";
      });
  }
  function showMissing(message) {
    page.loading = false;
    $("src-missing").textContent = message;
    $("src-missing").hidden = false;
    $("src-body").hidden = true;
    $("src-state").hidden = true;
    $("src-reason").textContent = "";
  }
  function pageWindow(w) {
    if (page.loading) { page.early.push(["window", w]); return; }
    const tail = page.history[page.history.length - 1];
    if (tail && isNum(tail.index) && isNum(w.index) && w.index <= tail.index) return;
    page.history.push(w);
    if (page.history.length > TIMELINE_MAX) page.history.splice(0, page.history.length - TIMELINE_MAX);
    page.dirty.add("timeline"); page.dirty.add("levels"); page.dirty.add("settings");
  }
  function pageAlert(item) {
    if (page.loading) { page.early.push(["alert", item]); return; }
    page.alerts.push(item);
    if (page.alerts.length > 100) page.alerts.shift();
    page.dirty.add("alerts");
  }

  function renderPage() {
    const parts = page.dirty;
    page.dirty = new Set();
    const m = sources.get(page.name);
    if (parts.has("head")) renderPageHead(m);
    if (page.loading || !page.data) return;
    if (parts.has("timeline")) renderTimeline(m);
    if (parts.has("levels")) renderLevels();
    if (parts.has("alerts")) renderAlerts();
    if (parts.has("settings")) renderSettings(m);
  }

  function renderPageHead(m) {
    const state = $("src-state"), reason = $("src-reason");
    if (page.gone) {
      state.hidden = false;
      state.textContent = "removed";
      state.className = "state state-stopped";
      reason.textContent = "The monitor no longer watches this source.";
      $("silence-button").disabled = true;
      $("remove-button").disabled = true;
      return;
    }
    $("silence-button").disabled = false;
    $("remove-button").disabled = false;
    if (!m) { state.hidden = true; return; }
    state.hidden = false;
    state.textContent = m.state;
    state.className = "state state-" + m.state;
    let text = m.state === "live" ? "" : m.reason || "";
    if (m.error && m.error.message && m.state !== "live") text += (text ? ": " : "") + m.error.message;
    if (isNum(m.since)) text += (text ? " · " : "") + "since " + clock(m.since);
    reason.textContent = text;
  }

  function thresholdOf(settings) {
    // the rules in effect (the monitor's global ones merged with the source's own), else its own
    const rules = settings && Array.isArray(settings.rules) ? settings.rules
      : settings && Array.isArray(settings.alerts) ? settings.alerts : [];
    const rule = rules.find((r) => r && r.rule === "score_below" && isNum(r.threshold));
    return rule ? rule.threshold : null;
  }

  function niceTicks(lo, hi, count) {
    const span = hi - lo;
    if (!(span > 0)) return [lo];
    const raw = span / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((k) => k * mag).find((s) => s >= raw) || 10 * mag;
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    return ticks;
  }
  const tickText = (v, step) => {
    const digits = Math.max(0, Math.min(6, -Math.floor(Math.log10(step || 1) + 1e-9)));
    return v.toFixed(digits);
  };

  function clearTimeline() {
    const svg = $("timeline");
    for (const child of [...svg.childNodes]) if (child.nodeName !== "title") child.remove();
  }

  /* The picture `qclip-score --timeline` draws (cli/timeline.py): the score of each window at its
     middle over media time, windows below the threshold shaded and marked, the threshold dashed,
     error windows dotted. */
  function renderTimeline(m) {
    const svg = $("timeline");
    clearTimeline();
    const W = 960, H = 340, L = 64, R = 16, T = 34, B = 46;
    const rows = page.history;
    const ok = rows.filter((r) => isNum(r.score) && isNum(r.start_s) && isNum(r.end_s));
    const bad = rows.filter((r) => r.error);
    const threshold = thresholdOf(page.data.settings);
    const name = page.name;
    svg.append(Object.assign(svgEl("text", { x: W / 2, y: 20, "text-anchor": "middle", class: "title" }),
      { textContent: `quality per window — ${name}` }));
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const r of rows) {
      if (isNum(r.start_s)) x0 = Math.min(x0, r.start_s);
      if (isNum(r.end_s)) x1 = Math.max(x1, r.end_s);
    }
    for (const r of ok) { y0 = Math.min(y0, r.score); y1 = Math.max(y1, r.score); }
    if (threshold !== null) { y0 = Math.min(y0, threshold); y1 = Math.max(y1, threshold); }
    if (!(x1 > x0)) { x0 = 0; x1 = 10; }
    if (!(y1 >= y0)) { y0 = 0; y1 = 1; }
    const yPad = Math.max((y1 - y0) * 0.08, 0.01);
    y0 -= yPad; y1 += yPad;
    const xPad = (x1 - x0) * 0.02;
    x0 -= xPad; x1 += xPad;
    const X = (v) => L + ((v - x0) / (x1 - x0)) * (W - L - R);
    const Y = (v) => H - B - ((v - y0) / (y1 - y0)) * (H - T - B);
    const grid = svgEl("g", { class: "grid" }), labels = svgEl("g", {});
    const xt = niceTicks(x0, x1, 8), yt = niceTicks(y0, y1, 5);
    const xStep = xt.length > 1 ? xt[1] - xt[0] : 1, yStep = yt.length > 1 ? yt[1] - yt[0] : 1;
    for (const v of xt) {
      grid.append(svgEl("line", { x1: X(v), x2: X(v), y1: T, y2: H - B }));
      labels.append(Object.assign(svgEl("text", { x: X(v), y: H - B + 17, "text-anchor": "middle" }), { textContent: tickText(v, xStep) }));
    }
    for (const v of yt) {
      grid.append(svgEl("line", { x1: L, x2: W - R, y1: Y(v), y2: Y(v) }));
      labels.append(Object.assign(svgEl("text", { x: L - 6, y: Y(v) + 4, "text-anchor": "end" }), { textContent: tickText(v, yStep) }));
    }
    svg.append(grid);
    const below = ok.filter((r) => r.alert || (threshold !== null && r.score < threshold));
    if (below.length) {
      let d = "";
      for (const r of below) d += `M${X(r.start_s).toFixed(1)} ${T}H${X(r.end_s).toFixed(1)}V${H - B}H${X(r.start_s).toFixed(1)}Z`;
      svg.append(svgEl("path", { class: "alert-span", d }));
    }
    if (threshold !== null) svg.append(svgEl("line", { class: "threshold", x1: L, x2: W - R, y1: Y(threshold), y2: Y(threshold) }));
    for (const r of bad) {
      if (isNum(r.start_s)) svg.append(svgEl("line", { class: "error-mark", x1: X(r.start_s), x2: X(r.start_s), y1: T, y2: H - B }));
    }
    if (ok.length) {
      let line = "", dots = "";
      for (let i = 0; i < ok.length; i++) {
        const x = X((ok[i].start_s + ok[i].end_s) / 2).toFixed(1), y = Y(ok[i].score).toFixed(1);
        line += (i ? "L" : "M") + x + " " + y;
        dots += "M" + x + " " + y + "h0";
      }
      svg.append(svgEl("path", { class: "score-line", d: line }));
      if (ok.length <= 2000) svg.append(svgEl("path", { class: "score-dots", d: dots }));
      if (below.length) {
        let d = "";
        for (const r of below) d += "M" + X((r.start_s + r.end_s) / 2).toFixed(1) + " " + Y(r.score).toFixed(1) + "h0";
        svg.append(svgEl("path", { class: "alert-dots", d }));
      }
    }
    svg.append(svgEl("rect", { class: "axis", x: L, y: T, width: W - L - R, height: H - T - B }));
    svg.append(labels);
    svg.append(Object.assign(svgEl("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle" }), { textContent: "media time (s)" }));
    svg.append(Object.assign(svgEl("text", { x: 16, y: (T + H - B) / 2, "text-anchor": "middle",
      transform: `rotate(-90 16 ${(T + H - B) / 2})` }), { textContent: "score" }));
    svg.dataset.windows = String(ok.length);
    svg.dataset.errors = String(bad.length);

    $("legend-threshold").hidden = threshold === null;
    $("legend-below").hidden = threshold === null && !below.length;
    $("legend-threshold-text").textContent = threshold === null ? "threshold" : `threshold ${threshold}`;
    const last = ok[ok.length - 1];
    let lo = Infinity, hi = -Infinity;
    for (const r of ok) { lo = Math.min(lo, r.score); hi = Math.max(hi, r.score); }
    // The monitor keeps a source's latest `history` windows (settings.history): said when older ones are gone.
    const since = rows.length && rows[0].index === 0 ? "since the source was added" : "over the latest windows the monitor keeps";
    const desc = ok.length
      ? `Score per window ${since}: ${ok.length} windows over media time ` +
        `${fmt(ok[0].start_s, 1)} to ${fmt(last.end_s, 1)} s, scores from ${lo.toFixed(3)} to ${hi.toFixed(3)}, ` +
        `latest ${last.score.toFixed(3)}` + (threshold !== null ? `, threshold ${threshold}, ${below.length} windows below it` : "") +
        (bad.length ? `, ${bad.length} windows with errors` : "") + "."
      : "Score per window: no window scored yet.";
    $("timeline-desc").textContent = desc;
    const lastRow = rows[rows.length - 1];
    $("src-latest").textContent = lastRow
      ? (lastRow.error ? `Last window ${lastRow.index}: error ${lastRow.error.code}` :
        `Last window ${lastRow.index} (${fmt(lastRow.start_s, 1)}–${fmt(lastRow.end_s, 1)} s): score ${fmt(lastRow.score, 3)}, MOS ${fmt(lastRow.mos, 2)}`)
      : "No window scored yet.";
    renderWindowTable();
  }

  function renderWindowTable() {
    const details = $("windows-table").closest("details");
    if (!details.open) return;
    const rows = page.history.slice(-TABLE_ROWS).reverse().map((r) => {
      const tr = el("tr");
      tr.append(el("td", null, String(r.index)), el("td", null, `${fmt(r.start_s, 1)}–${fmt(r.end_s, 1)}`),
        el("td", null, r.error ? "error: " + r.error.code : fmt(r.score, 3)), el("td", null, fmt(r.mos, 2)));
      return tr;
    });
    $("windows-table").replaceChildren(...rows);
  }

  function renderLevels() {
    let last = null;
    for (let i = page.history.length - 1; i >= 0; i--) {
      if (page.history[i].levels) { last = page.history[i]; break; }
    }
    const levels = last ? Object.entries(last.levels).filter(([, v]) => isNum(v)) : [];
    $("levels-empty").hidden = levels.length > 0;
    const top = levels.reduce((a, [, v]) => Math.max(a, v), -Infinity);
    const scale = levels.reduce((a, [, v]) => Math.max(a, Math.abs(v)), 0) || 1;
    const items = levels.map(([name, v]) => {
      const li = el("li", v === top ? "highest" : "");
      const bar = el("span", "bar"), fill = el("span");
      fill.style.width = `${Math.max(0, (v / scale) * 100).toFixed(1)}%`;
      bar.append(fill);
      bar.setAttribute("aria-hidden", "true");
      li.append(el("span", "name", name), bar, el("span", "num", v.toFixed(3)));
      if (v === top) li.title = "the highest similarity";
      return li;
    });
    $("levels").replaceChildren(...items);
    $("levels").setAttribute("aria-label", last ? `window ${last.index}` : "no window yet");
  }

  // An alert's detail (monitor/alerts.py) in words: media times in s, the score, the state.
  const DETAIL_WORDS = {
    threshold: (v) => `threshold ${v}`, score: (v) => `score ${fmt(v, 3)}`, start_s: (v) => `from ${fmt(v, 1)} s`,
    end_s: (v) => `to ${fmt(v, 1)} s`, duration_s: (v) => `lasted ${fmt(v, 1)} s`, seconds: (v) => `after ${fmt(v, 1)} s`,
    state: (v) => `state ${v}`, reason: (v) => `(${v})`,
  };
  function detailText(detail) {
    if (!detail || typeof detail !== "object") return "";
    const parts = [];
    for (const [k, v] of Object.entries(detail)) {
      if (v === null || v === undefined) continue;
      const word = DETAIL_WORDS[k];
      parts.push(word ? word(v) : `${k.replace(/_/g, " ")} ${isNum(v) ? fmt(v, 3) : String(v)}`);
    }
    return parts.join(", ");
  }
  function renderAlerts() {
    const rows = page.alerts.slice().reverse().map((a) => {
      const tr = el("tr");
      const status = el("td", "status-" + a.status, a.status + (a.silenced ? " (silenced)" : ""));
      tr.append(el("td", null, clock(a.time)), el("td", null, RULE_LABELS[a.rule] || String(a.rule)), status,
        el("td", null, detailText(a.detail)));
      return tr;
    });
    $("alert-history").replaceChildren(...rows);
    $("alerts-empty").hidden = rows.length > 0;
  }

  function renderSettings(m) {
    const s = page.data.settings || {};
    const rules = Array.isArray(s.alerts) ? s.alerts : [];
    const options = s.options && Object.keys(s.options).length
      ? Object.entries(s.options).map(([k, v]) => `${k}=${v}`).join(", ") : "none";
    const ruleText = rules.length ? rules.map((r) => {
      const extra = [];
      if (isNum(r.threshold)) extra.push(`threshold ${r.threshold}`);
      if (r.for_s) extra.push(`for ${r.for_s} s`);
      if (r.clear_s) extra.push(`clear after ${r.clear_s} s`);
      return RULE_LABELS[r.rule] + (extra.length ? ` (${extra.join(", ")})` : "");
    }).join("; ") : "the monitor's global rules";
    const src = m || {};
    const silenced = isNum(src.silencedUntil) && src.silencedUntil * 1000 > Date.now() ? "until " + clock(src.silencedUntil) : "no";
    const entries = [
      ["URL", s.url ?? page.data.url],
      ["Paced in real time", s.realtime ? "yes" : "no"],
      ["At the end of the media", s.on_end],
      ["FFmpeg options", options],
      ["Alert rules of its own", ruleText],
      ["Watched since", clock(page.data.added)],
      ["Windows scored", String(src.windows ?? page.data.windows)],
      ["Window errors", String(src.errors ?? page.data.errors)],
      ["Reconnections", String(src.reconnects ?? page.data.reconnects)],
      ["Windows skipped", String(src.skipped ?? page.data.skipped_windows)],
      ["Dropped frames", String(src.dropped ?? page.data.dropped_frames)],
      ["Alerts silenced", silenced],
    ];
    const nodes = [];
    for (const [k, v] of entries) nodes.push(el("dt", null, k), el("dd", null, v === undefined || v === null ? "—" : String(v)));
    $("settings").replaceChildren(...nodes);
  }

  // ---- actions ---------------------------------------------------------------------------------
  async function call(method, url, body) {
    let r;
    try {
      r = await fetch(url, {
        method, cache: "no-store",
        headers: body === undefined ? {} : { "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      return { ok: false, message: "Could not reach the monitor." };
    }
    const data = await r.json().catch(() => null);
    if (r.ok) return { ok: true, data };
    const err = data && data.error;
    return { ok: false, code: err && err.code, message: err && err.message ? err.message : `The monitor answered HTTP ${r.status}.` };
  }

  $("add-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = $("add-button"), error = $("add-error"), status = $("add-status");
    const name = $("add-name").value.trim(), url = $("add-url").value.trim();
    error.textContent = "";
    status.textContent = "";
    button.disabled = true;
    const answer = await call("POST", "v1/sources", { name, url });
    button.disabled = false;
    if (!answer.ok) {
      error.textContent = answer.message;
      if (answer.code) error.dataset.code = answer.code;
      return;
    }
    const s = answer.data && answer.data.source;
    if (s && s.name) {
      let m = sources.get(s.name);
      if (!m) { m = newModel(s.name); sources.set(s.name, m); }
      applySnapshot(m, s);
      touch(s.name);
    }
    $("add-name").value = "";
    $("add-url").value = "";
    status.textContent = `Added ${name}.`;
  });

  $("silence-button").addEventListener("click", async () => {
    const name = page.name, seconds = Number($("silence-for").value);
    $("action-status").textContent = "";
    $("action-error").textContent = "";
    const answer = await call("POST", sourcePath(name) + "/silence", { seconds });
    if (page.name !== name) return;
    if (!answer.ok) { $("action-error").textContent = answer.message; return; }
    const until = answer.data.silenced_until;
    const m = sources.get(name);
    if (m) { m.silencedUntil = until; touch(name); }
    $("action-status").textContent =
      `Alerts silenced until ${clock(until)}: still tracked and shown here, not sent to the webhook.`;
    page.dirty.add("settings");
    requestFrame();
  });

  $("remove-button").addEventListener("click", async () => {
    const name = page.name;
    if (!window.confirm(`Remove the source “${name}”? The monitor stops watching it.`)) return;
    $("action-error").textContent = "";
    const answer = await call("DELETE", sourcePath(name));
    if (!answer.ok) { $("action-error").textContent = answer.message; return; }
    if (sources.delete(name)) touch(name);
    $("add-status").textContent = `Removed ${name}.`;
    location.hash = "#/";
  });

  $("only-problems").addEventListener("change", (ev) => {
    tilesEl.classList.toggle("only-problems", ev.target.checked);
  });
  $("windows-table").closest("details").addEventListener("toggle", () => renderWindowTable());

  // ---- routing ---------------------------------------------------------------------------------
  function route() {
    const match = /^#\/source\/(.+)$/.exec(location.hash);
    let name = null;
    if (match) {
      try { name = decodeURIComponent(match[1]); } catch (e) { name = null; }
    }
    if (name !== null) {
      $("wall-view").hidden = true;
      $("source-view").hidden = false;
      document.title = `${name} · qclip monitor`;
      loadPage(name, true);
      $("src-title").focus();
    } else {
      const wasPage = page.name !== null;
      page.name = null;
      $("source-view").hidden = true;
      $("wall-view").hidden = false;
      document.title = "qclip monitor";
      if (wasPage) $("wall-title").focus();
    }
  }
  window.addEventListener("hashchange", route);

  route();
  sync(0);
  connect();
})();
