// A site's page, its data side: the read key, the requests, the view's state in the URL,
// and the comparison. Plain browser JavaScript, no build step.
(function () {
  "use strict";
  const TIMEOUT_MS = 15000;
  // API paths resolve against the service's root: this page is /dashboard/<site>.
  const ROOT = new URL("..", window.location.href);

  // The read key, from key.js (the fragment, kept for this tab).
  const KEY = window.EA_READ_KEY;

  class ApiError extends Error {}

  // At most two requests in flight: the service runs EA_ANALYTICS_MAX_CONCURRENT (2 by
  // default) archive queries at once and answers one more with 503 busy.
  const IN_FLIGHT = 2;
  let running = 0;
  const waiting = [];
  async function slot() {
    if (running >= IN_FLIGHT) await new Promise((resolve) => waiting.push(resolve));
    running++;
  }
  function release() {
    running--;
    const next = waiting.shift();
    if (next) next();
  }

  // One request; ApiError with words for people on a failure. Archive queries wait out a
  // full query pool (retry.js). The answer's JSON, or with ``asBlob`` its bytes (the export).
  async function request(path, body, asBlob) {
    const init = { method: body === undefined ? "GET" : "POST", cache: "no-store", headers: {} };
    if (KEY) init.headers["X-API-Key"] = KEY;
    if (window.EA_SHARE_TOKEN) {
      init.headers["X-Share-Token"] = window.EA_SHARE_TOKEN;
      const unlock = window.EASharePassword.unlock();
      if (unlock) init.headers["X-Share-Unlock"] = unlock;
    }
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const name = `${init.method} /${path.split("?")[0]}`;
    let response;
    await slot();
    try {
      response = await window.EARetry.fetch(new URL(path, ROOT), init, TIMEOUT_MS);
    } catch (err) {
      throw new ApiError(`${name}: ${err.name === "AbortError" ? "no answer in time" : "unreachable"}`);
    } finally {
      release();
    }
    if (!response.ok) {
      let detail = response.statusText;
      let type = "";
      try {
        const problem = await response.json();
        detail = [problem.title, problem.detail].filter(Boolean).join(": ") || detail;
        type = String(problem.type || "");
      } catch (_) { /* not JSON */ }
      if (type.endsWith(":share-password-required")) {
        window.EASharePassword.ask();
      } else if (response.status === 401 || response.status === 403) {
        detail += " (this page needs a read key: open it with #key=YOUR_READ_KEY)";
      }
      throw new ApiError(`${name}: ${response.status} ${detail}`);
    }
    return asBlob ? response.blob() : response.json();
  }

  const query = (body) => request("api/v2/query", body);
  const sites = (range) => request(`api/sites?date_range=${encodeURIComponent(range)}`);
  const goals = (params) => request(`api/v1/sites/goals?${params}`);
  const exportZip = (params) => request(`api/v1/sites/export?${params}`, undefined, true);

  // ---- the view in the URL: ?range=&from=&to=&compare=&metric=&interval=&f=op|dim|value

  const OPS = ["is", "is_not"];
  function readFilters(params) {
    const out = [];
    for (const raw of params.getAll("f")) {
      const [op, dim, ...rest] = raw.split("|");
      if (OPS.includes(op) && /^(visit|event):[a-z_]+$/.test(dim || "") && rest.length) {
        out.push({ op, dim, value: rest.join("|") });
      }
    }
    return out;
  }
  function writeState(state) {
    const params = new URLSearchParams(window.location.search);
    for (const k of ["compare", "metric", "interval", "f"]) params.delete(k);
    params.set("compare", state.compare);
    params.set("metric", state.metric);
    if (state.interval) params.set("interval", state.interval);
    for (const f of state.filters) params.append("f", `${f.op}|${f.dim}|${f.value}`);
    history.replaceState(null, "", `${window.location.pathname}?${params}`);
  }
  const asV2 = (filters) => filters.map((f) => [f.op, f.dim, [f.value]]);

  // ---- the comparison --------------------------------------------------------------------

  const DAY_MS = 86400e3;
  const shift = (day, ms) => new Date(Date.parse(day) + ms).toISOString().slice(0, 10);
  function yearBefore(day) {
    const d = new Date(day);
    d.setUTCFullYear(d.getUTCFullYear() - 1);
    return d.toISOString().slice(0, 10);
  }
  // The range compared with [from, to] (ISO days, both included): as many days just before
  // it, or the same days a year before; null when off.
  function comparedRange(range, mode) {
    if (mode === "previous") {
      return { from: shift(range.from, -range.days * DAY_MS), to: shift(range.from, -DAY_MS), days: range.days };
    }
    if (mode === "year") return { from: yearBefore(range.from), to: yearBefore(range.to), days: range.days };
    return null;
  }
  // The one place the comparison is made: ``body`` over ``range`` with the API's
  // include.comparisons (one request), {current, previous (or null), range: the compared
  // range as ISO days}. ``previous`` has the answer's shape, made of each row's
  // ``comparison``. The API pairs a comparison row with a main row only, so when a time
  // series has buckets without a main row (nothing counted there), the compared range is
  // asked for itself, as those buckets' compared values are not in the answer.
  const MODES = { previous: "previous_period", year: "year_over_year" };
  async function withComparison(body, range, mode) {
    const main = { ...body, date_range: [range.from, range.to] };
    if (!MODES[mode]) return { current: await query(main), previous: null, range: null };
    const include = { ...(body.include || {}), comparisons: { mode: MODES[mode] } };
    const current = await query({ ...main, include });
    const [start, end] = current.query.comparison_date_range;
    const from = start.slice(0, 10);
    // comparison_date_range ends where the compared range ends (exclusive): the day before.
    const to = new Date(Date.parse(end) - 1).toISOString().slice(0, 10);
    const other = { from, to, days: range.days };
    const labels = current.meta.time_labels;
    if (labels && current.results.length < labels.length) {
      const previous = await query({ ...body, date_range: [from, to] });
      return { current, previous, range: other };
    }
    const previous = {
      results: current.results.map((r) => ({ dimensions: r.comparison.dimensions, metrics: r.comparison.metrics })),
      meta: { ...current.meta, time_labels: current.meta.comparison_time_labels },
    };
    return { current, previous, range: other };
  }

  window.EASite = { KEY, ApiError, query, sites, goals, exportZip, readFilters, writeState, asV2, comparedRange, withComparison };
})();
