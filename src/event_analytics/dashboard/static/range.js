// The date-range picker of the pages (the live dashboard, Explore, a site's page): a row
// of buttons kept in the URL (?range=) so a link shows the same range. The buttons are
// made here, into an empty <nav>, so every page shows the one component.
//
// The live pages pick 1 h, 24 h, 7 d or 30 d ending now (``bounds``). A site's page picks
// calendar days in UTC (``days``: today, yesterday, the last 7 or 30 days, this month,
// last month, or a custom from–to), which its Stats API v2 queries send as ``date_range``.
(function () {
  "use strict";
  const SPANS = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
  const LABELS = { "1h": "1 h", "24h": "24 h", "7d": "7 d", "30d": "30 d" };
  // In words, for the pages' headings ("last 24 hours").
  const WORDS = { "1h": "60 minutes", "24h": "24 hours", "7d": "7 days", "30d": "30 days" };
  const CALENDAR = {
    today: "Today", yesterday: "Yesterday", "7d": "7 days", "30d": "30 days",
    month: "This month", lastmonth: "Last month", custom: "Custom",
  };
  const DAY_MS = 86400e3;
  const iso = (date) => date.toISOString().slice(0, 10);
  const midnight = (date) => new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate()));
  const isDay = (text) => typeof text === "string" && /^\d{4}-\d{2}-\d{2}$/.test(text) && !isNaN(Date.parse(text));

  function current(fallback, names) {
    const value = new URLSearchParams(window.location.search).get("range");
    return (names || Object.keys(SPANS)).includes(value) ? value : fallback || "24h";
  }
  function bounds(name) {
    const to = new Date();
    return { name, words: WORDS[name], from: new Date(to.getTime() - SPANS[name]), to };
  }
  // Whole UTC days, both ends included: {name, from: "YYYY-MM-DD", to: "YYYY-MM-DD", days}.
  // ``custom`` reads ?from= and ?to= (a bad or missing pair falls back to the last 7 days).
  function days(name, now) {
    const today = midnight(now || new Date());
    let from = today;
    let to = today;
    if (name === "yesterday") from = to = new Date(today - DAY_MS);
    else if (name === "7d") from = new Date(today - 6 * DAY_MS);
    else if (name === "30d") from = new Date(today - 29 * DAY_MS);
    else if (name === "month") from = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), 1));
    else if (name === "lastmonth") {
      from = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth() - 1, 1));
      to = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), 0));
    } else if (name === "custom") {
      const params = new URLSearchParams(window.location.search);
      const a = params.get("from");
      const b = params.get("to");
      if (!isDay(a) || !isDay(b) || a > b) return days("7d", now);
      from = new Date(a);
      to = new Date(b);
    }
    return { name, from: iso(from), to: iso(to), days: Math.round((to - from) / DAY_MS) + 1 };
  }
  // Fills ``nav`` with the buttons; ``onChange(bounds)`` runs on a pick. Returns the range
  // the URL names, else ``fallback`` (each page has its own default). ``calendar``: the
  // site page's day ranges (``days``) instead of the live ones.
  function install(nav, onChange, fallback, calendar) {
    const labels = calendar ? CALENDAR : LABELS;
    const names = Object.keys(labels);
    const pick = (name) => (calendar ? days(name) : bounds(name));
    if (!nav.querySelector("button[data-range]")) {
      for (const name of names) {
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.range = name;
        button.textContent = labels[name];
        nav.append(button);
      }
    }
    const mark = (name) => {
      for (const b of nav.querySelectorAll("button[data-range]")) {
        b.classList.toggle("on", b.dataset.range === name);
        b.setAttribute("aria-pressed", String(b.dataset.range === name));
      }
    };
    nav.addEventListener("click", (event) => {
      const name = event.target && event.target.dataset && event.target.dataset.range;
      if (!names.includes(name)) return;
      const params = new URLSearchParams(window.location.search);
      params.set("range", name);
      history.replaceState(null, "", `${window.location.pathname}?${params}${window.location.hash}`);
      mark(name);
      onChange(pick(name));
    });
    const name = current(fallback, names);
    mark(name);
    return pick(name);
  }
  window.EARange = { SPANS, current, bounds, days, install, iso };
})();
