// The date-range picker of both pages (the live dashboard and Explore): 1 h, 24 h, 7 d or
// 30 d ending now, kept in the URL (?range=) so a link shows the same range. The buttons
// are made here, into an empty <nav>, so both pages show the one component.
(function () {
  "use strict";
  const SPANS = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
  const LABELS = { "1h": "1 h", "24h": "24 h", "7d": "7 d", "30d": "30 d" };
  // In words, for the pages' headings ("last 24 hours").
  const WORDS = { "1h": "60 minutes", "24h": "24 hours", "7d": "7 days", "30d": "30 days" };
  function current(fallback) {
    const value = new URLSearchParams(window.location.search).get("range");
    return SPANS[value] ? value : fallback || "24h";
  }
  function bounds(name) {
    const to = new Date();
    return { name, words: WORDS[name], from: new Date(to.getTime() - SPANS[name]), to };
  }
  // Fills ``nav`` with the buttons; ``onChange(bounds)`` runs on a pick. Returns the range
  // the URL names, else ``fallback`` (each page has its own default).
  function install(nav, onChange, fallback) {
    if (!nav.querySelector("button[data-range]")) {
      for (const name of Object.keys(SPANS)) {
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.range = name;
        button.textContent = LABELS[name];
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
      if (!SPANS[name]) return;
      const params = new URLSearchParams(window.location.search);
      params.set("range", name);
      history.replaceState(null, "", `${window.location.pathname}?${params}${window.location.hash}`);
      mark(name);
      onChange(bounds(name));
    });
    const name = current(fallback);
    mark(name);
    return bounds(name);
  }
  window.EARange = { SPANS, current, bounds, install };
})();
