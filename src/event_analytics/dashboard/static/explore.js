// Explore: a funnel builder and a retention heat map over the archive (POST endpoints).
// Every string from the archive is written with textContent, never parsed as HTML.
(function () {
  "use strict";
  const BASE = new URL("..", window.location.href); // the service root, prefix kept
  const params = new URLSearchParams(window.location.search);
  const NUM = new Intl.NumberFormat("en-US");
  const $ = (id) => document.getElementById(id);
  const MAX_STEPS = 5;
  let range = null;

  // The read key, from key.js (the fragment, kept for this tab).
  const KEY = window.EA_READ_KEY;
  const HEADERS = Object.assign({ "Content-Type": "application/json" }, KEY ? { "X-API-Key": KEY } : {});

  // Waits out a full archive-query pool (retry.js, shared with the dashboard), then any
  // error of the answer is this page's to show.
  async function post(path, body) {
    const response = await window.EARetry.fetch(new URL(path, BASE), {
      method: "POST", headers: HEADERS, body: JSON.stringify(body), cache: "no-store",
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      const reasons = (answer.errors || []).map((e) => `${e.field}: ${e.message}`).join("; ");
      const hint = response.status === 401 || response.status === 403
        ? " (this service needs a read key: open /dashboard/explore#key=YOUR_READ_KEY)" : "";
      throw new Error(`${path}: ${response.status} ${reasons || answer.detail || response.statusText}${hint}`);
    }
    return answer;
  }

  // One error per part of the page: the funnel's success must not hide the retention's failure.
  const errors = new Map();
  function showError(part, err) {
    if (err) errors.set(part, String(err.message || err));
    else errors.delete(part);
    const banner = $("error");
    banner.textContent = [...errors.values()].join(" · ");
    banner.hidden = errors.size === 0;
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---- funnel ------------------------------------------------------------------------
  function addStep(value) {
    const steps = $("steps");
    if (steps.children.length >= MAX_STEPS) return;
    const row = el("div", { class: "step" });
    row.append(el("span", { class: "n" }, String(steps.children.length + 1)));
    const input = el("input", { list: "event-types", required: "", "aria-label": "event type" });
    input.value = value || "";
    const url = el("input", { placeholder: "page URL (optional, * glob)", "aria-label": "page url" });
    row.append(input, url);
    steps.append(row);
    $("add-step").disabled = steps.children.length >= MAX_STEPS;
  }

  function funnelBody() {
    const steps = [...$("steps").children].map((row) => {
      const [type, url] = row.querySelectorAll("input");
      const step = { event_type: type.value.trim() };
      if (url.value.trim()) step.page_url = url.value.trim();
      return step;
    });
    return {
      from: range.from.toISOString(), to: range.to.toISOString(), steps,
      window_s: Number($("window").value), order: $("order").value,
    };
  }

  function drawFunnel(answer) {
    const chart = $("funnel-chart");
    chart.replaceChildren();
    const top = Math.max(1, answer.steps[0].users);
    for (const s of answer.steps) {
      const row = el("div", { class: "bar-row", "data-index": String(s.index), "data-users": String(s.users) });
      row.append(el("span", { class: "label" }, `${s.index}. ${s.event_type}${s.page_url ? " " + s.page_url : ""}`));
      const track = el("span", { class: "track" });
      const bar = el("span", { class: "bar" });
      bar.style.width = `${(100 * s.users) / top}%`;
      track.append(bar);
      row.append(track);
      row.append(el("span", { class: "users num", "data-value": String(s.users) }, NUM.format(s.users)));
      row.append(el("span", { class: "conv num", "data-value": String(s.conversion_from_start) },
        `${(100 * s.conversion_from_start).toFixed(1)}%`));
      const median = s.median_s_from_previous;
      row.append(el("span", { class: "median num", "data-value": median === null ? "" : String(median) },
        median === null ? "" : `median ${formatSeconds(median)}`));
      chart.append(row);
    }
    $("funnel-note").textContent = `exact · counted up to ${answer.archived_until}`;
  }

  function formatSeconds(s) {
    if (s < 120) return `${s.toFixed(0)} s`;
    if (s < 7200) return `${(s / 60).toFixed(1)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  async function runFunnel() {
    try {
      drawFunnel(await post("analytics/funnel", funnelBody()));
      showError("funnel", null);
    } catch (err) { showError("funnel", err); }
  }

  // ---- retention ---------------------------------------------------------------------
  function retentionBody() {
    const period = $("period").value;
    const periods = { hour: 24, day: 7, week: 4 }[period];
    const unit = { hour: 3600e3, day: 86400e3, week: 7 * 86400e3 }[period];
    // Cohorts over the picked range, at least one period.
    const from = new Date(Math.min(range.from.getTime(), range.to.getTime() - unit));
    return {
      from: from.toISOString(), to: range.to.toISOString(), period, periods,
      cohort_event: { event_type: $("cohort").value.trim() },
      return_event: { event_type: $("return").value.trim() }, type: "first_time",
    };
  }

  function drawRetention(answer) {
    const table = $("retention");
    const head = el("tr");
    head.append(el("th", {}, "cohort"), el("th", { class: "num" }, "users"));
    for (let k = 1; k <= answer.periods; k++) head.append(el("th", { class: "num" }, `+${k}`));
    table.tHead.replaceChildren(head);
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const c of answer.cohorts) {
      const row = el("tr", { "data-start": c.start });
      row.append(el("td", {}, c.start.replace("T", " ").replace(":00:00Z", ":00")));
      row.append(el("td", { class: "num", "data-value": String(c.users) }, NUM.format(c.users)));
      for (let k = 1; k <= answer.periods; k++) {
        const share = c.users ? c.values[k] / c.users : 0;
        const cell = el("td", { class: "num cell", "data-value": String(c.values[k]), "data-share": share.toFixed(6) },
          c.users ? `${Math.round(100 * share)}%` : "–");
        cell.style.background = `rgba(37, 99, 235, ${(0.08 + 0.8 * share).toFixed(3)})`;
        if (!c.complete[k]) cell.classList.add("open");
        row.append(cell);
      }
      body.append(row);
    }
    $("retention-note").textContent = `first-time cohorts · open periods dashed · counted up to ${answer.archived_until}`;
  }

  async function runRetention() {
    try {
      drawRetention(await post("analytics/retention", retentionBody()));
      showError("retention", null);
    } catch (err) { showError("retention", err); }
  }

  async function loadTypes() {
    try {
      const answer = await post("analytics/query", {
        date_range: range.name, metrics: ["events"], dimensions: ["event_type"], pagination: { limit: 50 },
      });
      const list = $("event-types");
      list.replaceChildren(...answer.results.map((r) => el("option", { value: r.dimensions[0] })));
    } catch (_) { /* suggestions only */ }
  }

  function showRange() {
    $("range-text").textContent = `${range.from.toISOString().slice(0, 16)}Z – ${range.to.toISOString().slice(0, 16)}Z`;
  }

  function start() {
    range = window.EARange.install($("ranges"), (picked) => {
      range = picked; showRange(); runAll();
    }, "24h");
    showRange();
    const steps = (params.get("steps") || "page_view,signup").split(",").slice(0, MAX_STEPS);
    for (const s of steps) addStep(s);
    while ($("steps").children.length < 2) addStep("");
    if (params.get("window")) $("window").value = params.get("window");
    if (params.get("order")) $("order").value = params.get("order");
    if (params.get("cohort")) $("cohort").value = params.get("cohort");
    if (params.get("return")) $("return").value = params.get("return");
    if (params.get("period")) $("period").value = params.get("period");
    $("add-step").addEventListener("click", () => addStep(""));
    $("funnel-form").addEventListener("submit", (e) => { e.preventDefault(); runFunnel(); });
    $("retention-form").addEventListener("submit", (e) => { e.preventDefault(); runRetention(); });
    runAll();
  }

  // One query after another, so the page alone never takes more than one of the service's
  // archive-query slots.
  async function runAll() {
    await runFunnel();
    await runRetention();
    await loadTypes();
  }
  start();
})();
