// The event-analytics dashboard: polls the JSON API every 5 s and renders it.
// Plain browser JavaScript, no build step. Every client-supplied string (page URLs) is
// written with textContent, never parsed as HTML.
(function () {
  "use strict";

  const REFRESH_MS = 5000;
  const TIMEOUT_MS = 4000;
  // The breakdowns read the archive (DuckDB over the hour files): every 30 s is plenty for
  // numbers that move with the archiver, and spares the query pool five-second polling.
  const BREAKDOWN_MS = 30000;
  // What each range of the picker shows: the live counters' buckets (minute buckets for the
  // last hour, hours for a day or a week, days for a month). ``points`` beyond the API's
  // default for the interval are asked for with ``from``.
  const VIEWS = {
    "1h": { interval: "minute", seconds: 60, points: 60 },
    "24h": { interval: "hour", seconds: 3600, points: 24 },
    "7d": { interval: "hour", seconds: 3600, points: 168 },
    "30d": { interval: "day", seconds: 86400, points: 30 },
  };
  const DEFAULT_POINTS = { minute: 60, hour: 24, day: 30 };
  // API paths are resolved against the page's folder, so a path prefix keeps working.
  const BASE = new URL(".", window.location.href);
  const params = new URLSearchParams(window.location.search);
  const EVENT_TYPE = params.get("event_type") || "page_view";
  // Bots are counted apart, under their own type (bot_page_view): never in the numbers
  // of EVENT_TYPE, shown on their own with ?event_type=bot_page_view.
  const BOT_TYPE = EVENT_TYPE.startsWith("bot_") ? null : ("bot_" + EVENT_TYPE).slice(0, 64).replace(/_+$/, "");
  const NUM = new Intl.NumberFormat("en-US");
  const REGIONS = typeof Intl.DisplayNames === "function" ? new Intl.DisplayNames(["en"], { type: "region" }) : null;
  let range = null; // the picked range: {name, words, from, to} (range.js)
  let view = null; // VIEWS[range.name]
  let breakdownsAt = null; // {at: ms, name: range} of the last breakdown round

  const $ = (id) => document.getElementById(id);
  let plot = null;
  let lastOk = null; // Date of the last refresh in which every request succeeded
  let failing = false;
  let previousAccepted = null; // {at: ms, value: accepted events, all types} from /metrics
  let timer = null;
  let running = false;
  let again = false; // a range picked while a round was in flight: run once more after it

  class ApiError extends Error {
    constructor(path, message, unreachable) {
      super(message);
      this.path = path;
      this.unreachable = unreachable;
    }
  }

  // The read key, from key.js (the fragment, kept for this tab).
  const KEY = window.EA_READ_KEY;
  const HEADERS = KEY ? { "X-API-Key": KEY } : {};

  // One request (GET, or POST with a JSON body); ApiError on a network failure, a timeout
  // or a non-2xx answer. The archive queries (the POSTs: the breakdowns) wait out a full
  // query pool (retry.js, shared with Explore): another tab or the Explore page may hold
  // its slots for a moment. The GETs never meet that 503, so they are asked once.
  // TIMEOUT_MS bounds each attempt.
  async function request(method, path, query, body, asText) {
    const url = new URL(path, BASE);
    for (const [k, v] of Object.entries(query || {})) url.searchParams.set(k, v);
    const init = { method, cache: "no-store", headers: HEADERS };
    if (body !== undefined) {
      init.headers = { ...HEADERS, "Content-Type": "application/json" };
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await window.EARetry.fetch(url, init, TIMEOUT_MS);
    } catch (err) {
      const why = err.name === "AbortError" ? `no answer within ${TIMEOUT_MS / 1000} s` : "unreachable";
      throw new ApiError(path, `${method} /${path}: ${why}`, true);
    }
    if (!response.ok) {
      let detail = response.statusText;
      try {
        const problem = await response.json(); // RFC 9457 problem+json
        const reasons = (problem.errors || []).map((e) => `${e.field}: ${e.message}`).join("; ");
        detail = [problem.title, reasons || problem.detail].filter(Boolean).join(": ") || detail;
      } catch (_) { /* not JSON: keep the status text */ }
      if (response.status === 401 || response.status === 403) {
        detail += " (this service needs a read key: open /dashboard#key=YOUR_READ_KEY)";
      }
      throw new ApiError(path, `${method} /${path}: ${response.status} ${detail}`, false);
    }
    return asText ? response.text() : response.json();
  }
  const get = (path, query, asText) => request("GET", path, query, undefined, asText);
  const post = (path, body) => request("POST", path, null, body, false);

  function setNumber(id, value, text) {
    const el = $(id);
    el.dataset.value = String(value);
    el.textContent = text !== undefined ? text : NUM.format(value);
  }

  const hhmm = (iso) => iso.slice(11, 16);
  const hhmmss = (date) => date.toISOString().slice(11, 19);
  // A bucket's start as the chart and its table show it, for the range's interval.
  function bucketLabel(iso) {
    if (view.interval === "minute") return hhmm(iso);
    if (view.interval === "day") return iso.slice(0, 10);
    return view.points > 24 ? `${iso.slice(5, 10)} ${hhmm(iso)}` : hhmm(iso);
  }

  function formatRate(perSecond) {
    if (perSecond >= 100) return NUM.format(Math.round(perSecond));
    return perSecond.toFixed(perSecond >= 10 ? 1 : 2);
  }

  function formatDuration(seconds) {
    if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  // ---- panels -------------------------------------------------------------------------

  function renderRealtime(rt) {
    setNumber("active-users", rt.active_users);
    setNumber("current-minute", rt.current_minute.count);
    $("current-minute-time").textContent = hhmm(rt.current_minute.timestamp);
    setNumber("previous-minute", rt.previous_minute.count);
    // The previous minute is the last complete one: its events / 60 is a steady rate.
    const rate = rt.previous_minute.count / 60;
    setNumber("ingest-rate", rate, formatRate(rate));
    $("ingest-minute").textContent = hhmm(rt.previous_minute.timestamp);
  }

  function renderSeries(series) {
    setNumber("total-count", series.total.count);
    setNumber("total-users", series.total.unique_users);
    const xs = series.points.map((p) => Date.parse(p.timestamp) / 1000);
    const counts = series.points.map((p) => p.count);
    const users = series.points.map((p) => p.unique_users);
    drawChart([xs, counts, users]);

    const body = document.createElement("tbody");
    for (const p of series.points.slice().reverse()) {
      const row = body.insertRow();
      row.dataset.start = p.timestamp;
      row.insertCell().textContent = bucketLabel(p.timestamp);
      row.insertCell().textContent = NUM.format(p.count);
      row.insertCell().textContent = NUM.format(p.unique_users);
    }
    $("chart-data").tBodies[0].replaceWith(body);
  }

  // A ranked table (top pages, sources, countries, devices): rows of {key, label, link,
  // count, users}, most first, each with a bar as wide as its share of the first row's.
  function fillTable(tableId, rows, keyName) {
    const body = document.createElement("tbody");
    const max = rows.length ? Math.max(1, rows[0].count) : 1;
    for (const item of rows) {
      const row = body.insertRow();
      row.dataset[keyName] = item.key;
      const cell = row.insertCell();
      cell.className = "page";
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${(100 * item.count) / max}%`;
      const link = document.createElement("a");
      link.textContent = item.label;
      link.title = item.key;
      if (item.link && /^https?:$/.test(safeProtocol(item.key))) {
        link.href = item.key;
        link.rel = "noopener noreferrer nofollow";
        link.target = "_blank";
      }
      cell.append(bar, link);
      const count = row.insertCell();
      count.className = "num count";
      count.dataset.value = String(item.count);
      count.textContent = NUM.format(item.count);
      const users = row.insertCell();
      users.className = "num users";
      users.dataset.value = String(item.users);
      users.textContent = NUM.format(item.users);
    }
    $(tableId).tBodies[0].replaceWith(body);
    $(`${tableId}-empty`).hidden = rows.length > 0;
  }

  function renderTopPages(top) {
    const rows = top.pages.map((page) => ({
      key: page.page_url, label: page.page_url, link: true, count: page.count, users: page.unique_users,
    }));
    fillTable("top-pages", rows, "pageUrl");
  }

  // ---- breakdowns from the archive (POST /analytics/query) ------------------------------

  const UNSET = { source: "Direct / none", country: "unknown", device: "unknown" };

  function breakdownQuery(dimensions, types) {
    return post("analytics/query", {
      date_range: range.name,
      metrics: ["events", "visitors"],
      dimensions,
      filters: [["is", "event_type", types]],
      pagination: { limit: 10 },
    });
  }

  // Rows of one property's answer (the property's value is the last dimension).
  function breakdownRows(results, name) {
    return results.map((r) => {
      const value = r.dimensions[r.dimensions.length - 1];
      let label = value === null ? UNSET[name] : String(value);
      if (name === "country" && value !== null && REGIONS) {
        try { label = `${REGIONS.of(String(value))} (${value})`; } catch (_) { /* not a region code */ }
      }
      return { key: value === null ? "" : String(value), label, link: false, count: r.metrics[0], users: r.metrics[1] };
    });
  }

  function renderBreakdown(tableId, name) {
    return (answer) => {
      fillTable(tableId, breakdownRows(answer.results, name), "value");
      showFreshness(answer.meta.archived_until);
    };
  }

  // Devices: the event type's rows, and its bots' (another type) summed apart.
  function renderDevices(answer) {
    const people = answer.results.filter((r) => r.dimensions[0] === EVENT_TYPE);
    const bots = answer.results.filter((r) => r.dimensions[0] !== EVENT_TYPE);
    fillTable("devices", breakdownRows(people, "device"), "value");
    setNumber("bot-events", bots.reduce((sum, r) => sum + r.metrics[0], 0));
    showFreshness(answer.meta.archived_until);
  }

  // One after another: the service runs few archive queries at once (EA_ANALYTICS_MAX_CONCURRENT,
  // 503 past it), and the page should not take them all. The 503 that others cause (the
  // Explore page, another tab) is waited out in request(), not shown.
  async function runBreakdowns() {
    const settle = (promise) => promise.then(
      (value) => ({ status: "fulfilled", value }), (reason) => ({ status: "rejected", reason }));
    const sources = await settle(breakdownQuery(["property:source"], [EVENT_TYPE]));
    const countries = await settle(breakdownQuery(["property:country"], [EVENT_TYPE]));
    const devices = await settle(breakdownQuery(["event_type", "property:device"],
      BOT_TYPE ? [EVENT_TYPE, BOT_TYPE] : [EVENT_TYPE]));
    return [sources, countries, devices];
  }

  function showFreshness(archivedUntil) {
    const note = $("breakdown-note");
    note.dataset.archivedUntil = archivedUntil;
    note.textContent = `Sources, countries and devices (${range.words}): exact, from the archive, ` +
      `counted up to ${archivedUntil.slice(11, 19)} UTC · refreshed every ${BREAKDOWN_MS / 1000} s`;
  }

  function safeProtocol(url) {
    try {
      return new URL(url).protocol;
    } catch (_) {
      return "";
    }
  }

  function renderArchive(status) {
    const s = status.stats;
    const badge = $("archive-status");
    badge.textContent = status.status.replace(/_/g, " ");
    badge.dataset.value = status.status;
    badge.className = "badge " + (status.status === "healthy" ? "ok" : status.status === "blocked" ? "bad" : "warn");
    const lag = $("archive-lag");
    setNumber("archive-lag", s.lag_seconds, s.lag_seconds === 0 ? "0 s (caught up)" : formatDuration(s.lag_seconds));
    lag.classList.toggle("warn", s.lag_seconds > 60);
    setNumber("archive-waiting", s.stream_length);
    setNumber("archive-archived", s.events_archived);
    setNumber("archive-dead", s.dead_letters);
    $("archive-dead").classList.toggle("warn", s.dead_letters > 0);
    $("archive-files").textContent = `${NUM.format(s.files_count)} (${s.files_size_mb} MB)`;
    if (s.last_fsync) {
      const ago = (Date.parse(status.timestamp) - Date.parse(s.last_fsync)) / 1000;
      $("archive-fsync").textContent = `${s.last_fsync.slice(11, 19)} UTC (${formatDuration(Math.max(0, ago))} ago)`;
    } else {
      $("archive-fsync").textContent = "none yet";
    }
  }

  function renderMetrics(text) {
    // ea_events_total{event_type="…",outcome="accepted"} 3001.0 — summed over event types.
    let accepted = 0;
    for (const line of text.split("\n")) {
      if (line.startsWith("ea_events_total{") && line.includes('outcome="accepted"')) {
        accepted += Number(line.slice(line.lastIndexOf(" ") + 1)) || 0;
      }
    }
    const now = performance.now();
    const prev = previousAccepted;
    previousAccepted = { at: now, value: accepted };
    if (prev && accepted >= prev.value && now > prev.at) {
      const rate = (accepted - prev.value) / ((now - prev.at) / 1000);
      $("ingest-now").textContent =
        `all types, accepted over the last ${Math.round((now - prev.at) / 1000)} s: ${formatRate(rate)} events/s (from /metrics)`;
    }
  }

  // ---- chart --------------------------------------------------------------------------

  function drawChart(data) {
    const el = $("chart");
    if (plot) {
      plot.setData(data);
      return;
    }
    const opts = {
      width: Math.max(300, el.clientWidth),
      height: 260,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      cursor: { points: { size: 7 } },
      scales: {
        // Half a bucket of room on each side, so the first and last bars are whole.
        x: { time: true, range: (u, min, max) => [min - view.seconds / 2, max + view.seconds / 2] },
        y: { range: (u, min, max) => [0, Math.max(5, Math.ceil(max * 1.15))] },
      },
      axes: [
        {
          stroke: "#475569",
          grid: { stroke: "#e2e8f0" },
          ticks: { stroke: "#cbd5e1" },
          values: (u, splits) => splits.map((ts) => bucketLabel(new Date(ts * 1000).toISOString())),
        },
        {
          stroke: "#475569",
          grid: { stroke: "#e2e8f0" },
          ticks: { stroke: "#cbd5e1" },
          values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? NUM.format(v) : "")),
        },
      ],
      series: [
        { value: (u, ts) => (ts == null ? "–" : bucketLabel(new Date(ts * 1000).toISOString()) + " UTC") },
        {
          label: EVENT_TYPE + " events",
          stroke: "#2563eb",
          fill: "rgba(37, 99, 235, 0.35)",
          width: 1,
          paths: uPlot.paths.bars({ size: [0.7, 24] }),
          points: { show: false },
        },
        { label: "unique users", stroke: "#ea580c", width: 2, points: { show: false } },
      ],
    };
    plot = new uPlot(opts, data, el);
    window.addEventListener("resize", () => plot.setSize({ width: Math.max(300, el.clientWidth), height: 260 }));
  }

  // ---- refresh loop -------------------------------------------------------------------

  function markStale(panelIds, stale) {
    for (const id of panelIds) $(id).classList.toggle("stale", stale);
  }

  function showErrors(errors) {
    const banner = $("error");
    banner.replaceChildren();
    if (!errors.length) {
      banner.hidden = true;
      return;
    }
    const title = document.createElement("strong");
    title.textContent = errors.every((e) => e.unreachable)
      ? "Service unreachable: the numbers below are not current."
      : "Some data could not be loaded: the greyed-out panels are not current.";
    const list = document.createElement("ul");
    // Once each: the three breakdowns fail alike when the query API does.
    for (const message of new Set(errors.map((e) => e.message))) {
      const item = document.createElement("li");
      item.textContent = message;
      list.append(item);
    }
    banner.append(title, list);
    banner.hidden = false;
  }

  function showStatus() {
    const dot = $("status-dot");
    const text = $("status-text");
    dot.className = "dot " + (failing ? "bad" : "ok");
    if (!lastOk) {
      text.textContent = failing ? "no data yet" : "loading…";
      return;
    }
    const ago = Math.round((Date.now() - lastOk.getTime()) / 1000);
    text.textContent = failing
      ? `last updated ${hhmmss(lastOk)} UTC, ${ago} s ago · refresh failing`
      : `live · updated ${hhmmss(lastOk)} UTC · every ${REFRESH_MS / 1000} s`;
    text.dataset.updated = lastOk.toISOString();
  }

  function seriesQuery() {
    const query = { event_type: EVENT_TYPE, interval: view.interval };
    if (view.points !== DEFAULT_POINTS[view.interval]) {
      // The last ``points`` buckets, the current one included (what the default does).
      const now = Date.now();
      const current = now - (now % (view.seconds * 1000));
      query.from = new Date(current - (view.points - 1) * view.seconds * 1000).toISOString();
    }
    return query;
  }

  async function refresh() {
    const type = { event_type: EVENT_TYPE };
    const now = Date.now();
    const due = !breakdownsAt || breakdownsAt.name !== range.name || now - breakdownsAt.at >= BREAKDOWN_MS;
    const breakdowns = due ? runBreakdowns() : null;
    if (due) breakdownsAt = { at: now, name: range.name };
    const [series, realtime, archive, metrics] = await Promise.allSettled([
      get("analytics/timeseries", seriesQuery()),
      get("analytics/realtime", type),
      get("persistent/status"),
      get("metrics", null, true),
    ]);
    // Top pages over exactly the chart's window (the buckets the series read).
    const top = series.status === "fulfilled"
      ? await get("analytics/top-pages", { ...type, from: series.value.from, to: series.value.to, limit: 10 })
          .then((value) => ({ status: "fulfilled", value }), (reason) => ({ status: "rejected", reason }))
      : { status: "rejected", reason: null };

    const errors = [];
    const apply = (result, render, panels) => {
      if (result.status === "fulfilled") {
        try {
          render(result.value);
          markStale(panels, false);
          return;
        } catch (err) {
          errors.push(new ApiError("", `could not show the answer: ${err.message}`, false));
        }
      } else if (result.reason) {
        errors.push(result.reason);
      }
      markStale(panels, true);
    };
    apply(series, renderSeries, ["chart-panel", "card-total"]);
    apply(realtime, renderRealtime, ["card-active", "card-current", "card-rate"]);
    apply(top, renderTopPages, ["pages-panel"]);
    apply(archive, renderArchive, ["archive-panel"]);
    apply(metrics, renderMetrics, ["ingest-now"]);
    if (breakdowns) {
      const [sources, countries, devices] = await breakdowns;
      apply(sources, renderBreakdown("sources", "source"), ["sources-panel"]);
      apply(countries, renderBreakdown("countries", "country"), ["countries-panel"]);
      apply(devices, renderDevices, ["devices-panel"]);
      // A failed round is tried again at the next refresh, not in 30 s.
      if ([sources, countries, devices].some((r) => r.status === "rejected")) breakdownsAt = null;
    }

    failing = errors.length > 0;
    if (!failing) lastOk = new Date();
    showErrors(errors);
    showStatus();
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  }

  async function loop() {
    if (running) {
      again = true; // a tab made visible again, or a range picked, while a round is in flight
      return;
    }
    running = true;
    clearTimeout(timer);
    try {
      await refresh();
    } catch (err) {
      failing = true;
      showErrors([new ApiError("", `dashboard error: ${err.message}`, false)]);
      showStatus();
    } finally {
      running = false;
    }
    if (again) {
      again = false;
      loop();
      return;
    }
    // Poll again only after this round finished: a slow service never gets a pile-up.
    if (!document.hidden) timer = setTimeout(loop, REFRESH_MS);
  }

  function pickRange(picked) {
    range = picked;
    view = VIEWS[range.name];
    for (const el of document.querySelectorAll(".range-words")) el.textContent = range.words;
    $("chart-unit").textContent = view.interval;
    $("chart-unit-head").textContent = `${view.interval} (UTC)`;
  }

  function start() {
    pickRange(window.EARange.install($("ranges"), (picked) => { pickRange(picked); loop(); }, "1h"));
    for (const el of document.querySelectorAll(".bot-type")) el.textContent = BOT_TYPE || "";
    if (BOT_TYPE) {
      const link = new URLSearchParams(window.location.search);
      link.set("event_type", BOT_TYPE);
      $("bot-link").href = `?${link}`;
    } else {
      $("bots").hidden = true;
    }
    for (const el of document.querySelectorAll(".type-name")) el.textContent = EVENT_TYPE;
    $("event-type").textContent = EVENT_TYPE;
    document.title = `${EVENT_TYPE} · event-analytics`;
    if (typeof uPlot === "undefined") {
      showErrors([new ApiError("", "the chart library (dashboard/static/uPlot.iife.min.js) did not load", false)]);
    }
    setInterval(showStatus, 1000);
    // Hidden tabs stop polling; coming back refreshes at once.
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) loop();
    });
    loop();
  }

  start();
})();
