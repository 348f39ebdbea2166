// A site's page (/dashboard/<site>): totals with their change, the main graph, ranked
// panels, click-to-filter; every query is Plausible's Stats API v2 (site-api.js). Every
// value that comes from an event is written with textContent, never parsed as HTML.
(function () {
  "use strict";
  const API = window.EASite;
  const $ = (id) => document.getElementById(id);
  const NUM = new Intl.NumberFormat("en-US");
  const REGIONS = typeof Intl.DisplayNames === "function" ? new Intl.DisplayNames(["en"], { type: "region" }) : null;
  const TOP = ["visitors", "visits", "pageviews", "views_per_visit", "bounce_rate", "visit_duration"];
  const NAMES = {
    visitors: "Unique visitors", visits: "Visits", pageviews: "Pageviews",
    views_per_visit: "Views per visit", bounce_rate: "Bounce rate", visit_duration: "Visit duration",
  };
  const LOWER_IS_BETTER = new Set(["bounce_rate"]);
  const ROWS = 9;
  const DETAIL_ROWS = 100;
  const TABS = {
    pages: ["Top pages", "event:page"], entry: ["Entry pages", "visit:entry_page"],
    exit: ["Exit pages", "visit:exit_page"], source: ["Sources", "visit:source"],
    referrer: ["Referrers", "visit:referrer"], utm_medium: ["UTM medium", "visit:utm_medium"],
    utm_source: ["UTM source", "visit:utm_source"], utm_campaign: ["UTM campaign", "visit:utm_campaign"],
    country: ["Countries", "visit:country"], device: ["Devices", "visit:device"],
    browser: ["Browsers", "visit:browser"], os: ["Operating systems", "visit:os"],
  };
  const DIM_WORDS = {
    "event:page": "page", "visit:entry_page": "entry page", "visit:exit_page": "exit page",
    "visit:source": "source", "visit:referrer": "referrer", "visit:utm_medium": "UTM medium",
    "visit:utm_source": "UTM source", "visit:utm_campaign": "UTM campaign",
    "visit:country": "country", "visit:device": "device", "visit:browser": "browser", "visit:os": "OS",
    "event:goal": "goal",
  };

  // The site: the path's last segment (/dashboard/<site>); "sites" is the bare picker.
  const segment = decodeURIComponent(window.location.pathname.split("/").pop() || "");
  const SITE = segment === "sites" ? "" : segment;
  const params = new URLSearchParams(window.location.search);
  const state = {
    compare: ["previous", "year", "off"].includes(params.get("compare")) ? params.get("compare") : "previous",
    metric: TOP.includes(params.get("metric")) ? params.get("metric") : "visitors",
    interval: params.get("interval") || "",
    filters: API.readFilters(params),
    range: null,
  };
  const panels = {}; // id -> {tab}
  let plot = null;
  let round = 0;
  let goals = null; // site-goals.js's view, when the site has goals

  // ---- formatting -------------------------------------------------------------------------

  function duration(s) {
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  }
  function format(metric, v) {
    if (v === null || v === undefined) return "–";
    if (metric === "views_per_visit") return v.toFixed(2);
    if (metric === "bounce_rate") return `${v}%`;
    if (metric === "visit_duration") return duration(v);
    return NUM.format(v);
  }
  const utcTime = (iso) => `${iso.slice(0, 10)} ${iso.slice(11, 19)} UTC`;
  function label(dim, value) {
    if (value === null) return "(none)";
    if (dim === "visit:country" && REGIONS && /^[A-Z]{2}$/.test(value)) {
      try { return `${REGIONS.of(value)} (${value})`; } catch (_) { return value; }
    }
    return value;
  }

  // ---- errors and status --------------------------------------------------------------------

  function showErrors(errors) {
    const banner = $("error");
    banner.replaceChildren();
    if (!errors.length) { banner.hidden = true; return; }
    const head = document.createElement("strong");
    head.textContent = "Some data could not be loaded:";
    const list = document.createElement("ul");
    for (const e of errors) {
      const li = document.createElement("li");
      li.textContent = e.message;
      list.append(li);
    }
    banner.append(head, list);
    banner.hidden = false;
  }

  // ---- filters --------------------------------------------------------------------------------

  function setFilters(filters) {
    state.filters = filters;
    API.writeState(state);
    renderChips();
    refresh();
  }
  function addFilter(op, dim, value) {
    if ($("details").open) $("details").close();
    const rest = state.filters.filter((f) => f.dim !== dim);
    setFilters([...rest, { op, dim, value }]);
  }
  function renderChips() {
    const box = $("chips");
    box.replaceChildren();
    state.filters.forEach((f, i) => {
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.dataset.dim = f.dim;
      chip.dataset.op = f.op;
      chip.dataset.value = f.value;
      const text = document.createElement("span");
      text.textContent = `${DIM_WORDS[f.dim] || f.dim} ${f.op === "is" ? "is" : "is not"} ${label(f.dim, f.value)}`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "×";
      remove.setAttribute("aria-label", `remove filter: ${text.textContent}`);
      remove.addEventListener("click", () => setFilters(state.filters.filter((_, j) => j !== i)));
      chip.append(text, remove);
      box.append(chip);
    });
  }
  const eventFiltered = () => state.filters.some((f) => f.dim.startsWith("event:"));

  // ---- the top row ------------------------------------------------------------------------------

  // The change of ``metric`` from ``before`` to ``now``: {text, value, good}; percentage points
  // for the bounce rate, per cent for the others; null when there is nothing to compare with.
  function change(metric, now, before) {
    if (now === null || before === null || now === undefined || before === undefined) return null;
    const diff = metric === "bounce_rate" ? now - before : before ? Math.round(((now - before) / before) * 100) : null;
    if (diff === null) return now ? { text: "↑ new", value: "", good: true, up: true } : null;
    const up = diff > 0;
    const unit = metric === "bounce_rate" ? " pp" : "%";
    const text = diff === 0 ? "0%" : `${up ? "↑" : "↓"} ${Math.abs(diff)}${unit}`;
    return { text, value: String(diff), good: diff === 0 ? null : up !== LOWER_IS_BETTER.has(metric), up };
  }

  async function loadTop() {
    const metrics = TOP.filter((m) => !(m === "views_per_visit" && eventFiltered()));
    const body = { site_id: SITE, metrics, filters: API.asV2(state.filters) };
    const got = await API.withComparison(body, state.range, state.compare);
    const now = got.current.results[0].metrics;
    const before = got.previous ? got.previous.results[0].metrics : null;
    for (const m of TOP) {
      const i = metrics.indexOf(m);
      const el = $(`m-${m}`);
      const value = i >= 0 ? now[i] : null;
      el.textContent = format(m, value);
      el.dataset.value = value === null ? "" : String(value);
      el.title = i >= 0 ? "" : "not defined with a page filter (a visit is not made of the filtered events)";
      const c = $(`c-${m}`);
      const d = i >= 0 && before ? change(m, value, before[i]) : null;
      c.textContent = d ? d.text : "\u00a0";
      c.dataset.value = d ? d.value : "";
      c.className = "change" + (d && d.good !== null ? (d.good ? " good" : " bad") : "");
      if (d && got.range) c.title = `against ${got.range.from} – ${got.range.to}: ${format(m, before[i])}`;
    }
    const until = got.current.meta.archived_until;
    $("top-source").dataset.archivedUntil = until;
    $("top-source").textContent = `From the archive, exact, counted up to ${utcTime(until)}` +
      (got.range ? ` · compared with ${got.range.from} – ${got.range.to}` : "");
    return until;
  }

  async function loadCurrent() {
    const to = new Date();
    const from = new Date(to.getTime() - 5 * 60e3);
    const got = await API.sites(`${from.toISOString()},${to.toISOString()}`);
    const row = got.sites.find((s) => s.site_id === SITE);
    const el = $("current-visitors");
    el.dataset.value = String(row ? row.visitors : 0);
    el.textContent = NUM.format(row ? row.visitors : 0);
    el.dataset.archivedUntil = got.meta.archived_until;
    el.title = `distinct visitors with events in the last 5 minutes, archive up to ${utcTime(got.meta.archived_until)}`;
  }

  // ---- the graph ---------------------------------------------------------------------------------

  function intervals(days) {
    if (days <= 1) return ["hour", "day"];
    if (days <= 40) return ["day", "hour", "week"];
    return ["week", "day", "month"];
  }
  function fillIntervals() {
    const allowed = intervals(state.range.days);
    if (!allowed.includes(state.interval)) state.interval = allowed[0];
    const select = $("interval");
    select.replaceChildren(...allowed.map((name) => new Option(name, name, false, name === state.interval)));
  }
  const seconds = (labelText) => Date.parse(labelText.replace(" ", "T") + "Z") / 1000;

  function series(answer) {
    const byLabel = new Map(answer.results.map((r) => [r.dimensions[0], r.metrics[0]]));
    return answer.meta.time_labels.map((l) => [l, byLabel.has(l) ? byLabel.get(l) : 0]);
  }

  async function loadGraph() {
    const body = {
      site_id: SITE, metrics: [state.metric], dimensions: [`time:${state.interval}`],
      filters: API.asV2(state.filters), include: { time_labels: true },
    };
    if (state.metric === "views_per_visit" && eventFiltered()) body.metrics = ["visits"];
    const got = await API.withComparison(body, state.range, state.compare);
    const now = series(got.current);
    const before = got.previous ? series(got.previous) : null;
    $("graph-metric").textContent = NAMES[body.metrics[0]];
    $("graph-compare").textContent = got.range ? `dashed: ${got.range.from} – ${got.range.to}` : "";
    const data = [now.map(([l]) => seconds(l)), now.map(([, v]) => v)];
    if (before) data.push(now.map((_, i) => (i < before.length ? before[i][1] : null)));
    const el = $("graph");
    el.dataset.points = JSON.stringify(now);
    el.dataset.compared = before ? JSON.stringify(before) : "";
    el.dataset.metric = body.metrics[0];
    draw(el, data, body.metrics[0]);
  }

  function bucket(ts, unit) {
    const iso = new Date(ts * 1000).toISOString();
    return unit === "hour" ? iso.slice(11, 16) : unit === "month" ? iso.slice(0, 7) : iso.slice(5, 10);
  }

  function draw(el, data, metric) {
    if (typeof uPlot === "undefined") return;
    if (plot) { plot.destroy(); plot = null; }
    const s = [
      {},
      { label: NAMES[metric], stroke: "#2563eb", width: 2, fill: "rgba(37, 99, 235, 0.12)", points: { show: data[0].length < 60 } },
    ];
    if (data.length > 2) s.push({ label: "compared", stroke: "#94a3b8", width: 1.5, dash: [6, 4], points: { show: false } });
    plot = new uPlot({
      width: Math.max(280, el.clientWidth), height: 240,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      // Ticks on the buckets (at most 12 of them), labelled in UTC as the buckets are.
      axes: [
        {
          splits: () => data[0].filter((_, i) => i % Math.ceil(data[0].length / 12) === 0),
          values: (u, vals) => vals.map((v) => bucket(v, state.interval)),
        },
        { values: (u, vals) => vals.map((v) => format(metric, v)), size: 60 },
      ],
      legend: { show: false },
      series: s,
    }, data, el);
  }

  // ---- panels --------------------------------------------------------------------------------------

  function buildPanel(el) {
    const tabs = el.dataset.tabs.split(",");
    panels[el.id] = { tab: tabs[0] };
    const head = document.createElement("div");
    head.className = "panel-head";
    const h2 = document.createElement("h2");
    h2.textContent = TABS[tabs[0]][0];
    head.append(h2);
    if (tabs.length > 1) {
      const nav = document.createElement("nav");
      nav.className = "tablist";
      nav.setAttribute("aria-label", `${TABS[tabs[0]][0]}: views`);
      for (const t of tabs) {
        const b = document.createElement("button");
        b.type = "button";
        b.dataset.tab = t;
        b.textContent = TABS[t][0];
        b.setAttribute("aria-pressed", String(t === tabs[0]));
        b.addEventListener("click", () => {
          panels[el.id].tab = t;
          for (const o of nav.querySelectorAll("button")) o.setAttribute("aria-pressed", String(o === b));
          h2.textContent = TABS[t][0];
          loadPanel(el).catch((e) => showErrors([e]));
        });
        nav.append(b);
      }
      head.append(nav);
    }
    const cols = document.createElement("div");
    cols.className = "cols note";
    const left = document.createElement("span");
    left.className = "dim-name";
    const right = document.createElement("span");
    right.textContent = "visitors";
    cols.append(left, right);
    const list = document.createElement("ol");
    list.className = "rows";
    const foot = document.createElement("div");
    foot.className = "panel-foot";
    const note = document.createElement("span");
    note.className = "note source";
    const more = document.createElement("button");
    more.type = "button";
    more.className = "more";
    more.textContent = "Details";
    more.addEventListener("click", () => openDetails(el));
    foot.append(note, more);
    el.append(head, cols, list, foot);
  }

  function panelQuery(dim, limit, search) {
    const filters = API.asV2(state.filters);
    if (search) filters.push(["contains", dim, [search], { case_sensitive: false }]);
    return {
      site_id: SITE, metrics: ["visitors"], dimensions: [dim], filters,
      date_range: [state.range.from, state.range.to], pagination: { limit },
      include: { total_rows: true },
    };
  }

  // One ranked row: the value as a button (filters the page by it), its bar, its visitors,
  // and "≠" (filters the value out).
  function row(dim, r, max) {
    const li = document.createElement("li");
    const value = r.dimensions[0];
    li.dataset.value = value === null ? "" : value;
    li.dataset.visitors = String(r.metrics[0]);
    const name = value === null ? document.createElement("span") : document.createElement("button");
    name.className = "name";
    if (value !== null) {
      name.type = "button";
      name.title = `filter: ${DIM_WORDS[dim]} is ${value}`;
      name.addEventListener("click", () => addFilter("is", dim, value));
    }
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${max ? (100 * r.metrics[0]) / max : 0}%`;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = label(dim, value);
    name.append(bar, text);
    const num = document.createElement("span");
    num.className = "num";
    num.textContent = NUM.format(r.metrics[0]);
    li.append(name, num);
    if (value !== null) {
      const not = document.createElement("button");
      not.type = "button";
      not.className = "not";
      not.textContent = "≠";
      not.title = "filter out";
      not.setAttribute("aria-label", `filter: ${DIM_WORDS[dim]} is not ${value}`);
      not.addEventListener("click", () => addFilter("is_not", dim, value));
      li.append(not);
    }
    return li;
  }

  function fillRows(list, dim, answer) {
    const max = answer.results.reduce((m, r) => Math.max(m, r.metrics[0]), 0);
    list.replaceChildren(...answer.results.map((r) => row(dim, r, max)));
    if (!answer.results.length) {
      const li = document.createElement("li");
      li.className = "empty note";
      li.textContent = "Nothing in this range.";
      list.append(li);
    }
  }

  async function loadPanel(el) {
    const [, dim] = TABS[panels[el.id].tab];
    const answer = await API.query(panelQuery(dim, ROWS));
    el.dataset.dim = dim;
    el.querySelector(".dim-name").textContent = DIM_WORDS[dim];
    fillRows(el.querySelector(".rows"), dim, answer);
    const note = el.querySelector(".panel-foot .source");
    note.dataset.archivedUntil = answer.meta.archived_until;
    note.textContent = `${answer.meta.total_rows} values · archive up to ${answer.meta.archived_until.slice(11, 19)} UTC`;
  }

  // ---- the details view ----------------------------------------------------------------------------

  let detailsOf = null;
  let searchTimer = null;
  async function loadDetails() {
    const [title, dim] = TABS[panels[detailsOf.id].tab];
    $("details-title").textContent = title;
    const search = $("details-search").value.trim();
    const answer = await API.query(panelQuery(dim, DETAIL_ROWS, search));
    fillRows($("details-rows"), dim, answer);
    $("details-source").textContent = `${answer.results.length} of ${answer.meta.total_rows} values` +
      ` · archive up to ${utcTime(answer.meta.archived_until)}`;
  }
  function openDetails(el) {
    detailsOf = el;
    $("details-search").value = "";
    $("details-rows").replaceChildren();
    $("details").showModal();
    loadDetails().catch((e) => showErrors([e]));
  }

  // ---- one round ----------------------------------------------------------------------------------

  async function refresh() {
    if (!SITE) return;
    const mine = ++round;
    document.body.dataset.ready = "0";
    const work = [loadTop(), loadGraph(), loadCurrent(), ...Object.keys(panels).map((id) => loadPanel($(id)))];
    if (goals) work.push(goals.load());
    const results = await Promise.allSettled(work);
    if (mine !== round) return; // a newer round started: its numbers are the page's
    const errors = results.filter((r) => r.status === "rejected").map((r) => r.reason);
    showErrors(errors);
    const until = results[0].status === "fulfilled" ? results[0].value : null;
    $("status-dot").className = "dot " + (errors.length ? "bad" : "ok");
    $("status-text").textContent = until ? `archive up to ${utcTime(until)}` : "no data";
    document.body.dataset.ready = "1";
    document.body.dataset.rounds = String(Number(document.body.dataset.rounds || 0) + 1);
  }

  // Written as the range is picked, not when its numbers come: no line appears later.
  const showRange = () => { $("range-text").textContent = `${state.range.from} – ${state.range.to} (UTC)`; };

  async function loadSites() {
    const picker = $("site-picker");
    let list = [];
    try {
      list = (await API.sites("12mo")).sites;
    } catch (e) {
      showErrors([e]);
    }
    if (!SITE) {
      if (list.length) {
        window.location.replace(encodeURIComponent(list[0].site_id) + window.location.search);
      } else {
        $("no-site").hidden = false;
        $("site-main").hidden = true;
        $("status-text").textContent = "no sites yet";
        document.body.dataset.ready = "1";
      }
      return;
    }
    const names = list.map((s) => s.site_id);
    if (!names.includes(SITE)) names.unshift(SITE);
    picker.replaceChildren(...names.map((n) => {
      const s = list.find((x) => x.site_id === n);
      return new Option(s ? `${n} (${NUM.format(s.visitors)})` : n, n, false, n === SITE);
    }));
  }

  function start() {
    document.title = `${SITE || "sites"} · event-analytics`;
    $("compare").value = state.compare;
    $("site-picker").addEventListener("change", (e) => {
      const params = new URLSearchParams(window.location.search);
      params.delete("f");
      window.location.assign(`${encodeURIComponent(e.target.value)}?${params}`);
    });
    const onRange = (range) => {
      state.range = range;
      const custom = $("custom");
      custom.hidden = range.name !== "custom";
      $("custom-from").value = range.from;
      $("custom-to").value = range.to;
      fillIntervals();
      showRange();
      API.writeState(state);
      refresh();
    };
    state.range = window.EARange.install($("ranges"), onRange, "7d", true);
    $("custom").hidden = state.range.name !== "custom";
    $("custom-from").value = state.range.from;
    $("custom-to").value = state.range.to;
    $("custom").addEventListener("submit", (e) => {
      e.preventDefault();
      const params = new URLSearchParams(window.location.search);
      params.set("range", "custom");
      params.set("from", $("custom-from").value);
      params.set("to", $("custom-to").value);
      history.replaceState(null, "", `${window.location.pathname}?${params}`);
      onRange(window.EARange.days("custom"));
    });
    $("compare").addEventListener("change", (e) => {
      state.compare = e.target.value;
      API.writeState(state);
      refresh();
    });
    $("interval").addEventListener("change", (e) => {
      state.interval = e.target.value;
      API.writeState(state);
      loadGraph().catch((err) => showErrors([err]));
    });
    for (const b of document.querySelectorAll(".stat[data-metric]")) {
      b.setAttribute("aria-pressed", String(b.dataset.metric === state.metric));
      b.addEventListener("click", () => {
        state.metric = b.dataset.metric;
        for (const o of document.querySelectorAll(".stat[data-metric]")) o.setAttribute("aria-pressed", String(o === b));
        API.writeState(state);
        loadGraph().catch((err) => showErrors([err]));
      });
    }
    $("details-search").addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => loadDetails().catch((e) => showErrors([e])), 250);
    });
    for (const el of document.querySelectorAll(".panel.list")) buildPanel(el);
    fillIntervals();
    showRange();
    renderChips();
    if (SITE) API.writeState(state);
    const withGoals = () => (SITE ? window.EASiteGoals.install({ site: SITE, api: API, state, addFilter, change })
      .then((view) => { goals = view; }, (e) => showErrors([e])) : null);
    if (SITE) window.EASiteExport.install({ site: SITE, api: API, state, showErrors });
    loadSites().then(withGoals).then(refresh);
  }

  start();
})();
