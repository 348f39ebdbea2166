// The date-range picker shared by the pages: 1 h, 24 h, 7 d or 30 d ending now, kept in
// the URL (?range=) so a link shows the same range.
(function () {
  "use strict";
  const SPANS = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
  function current() {
    const value = new URLSearchParams(window.location.search).get("range");
    return SPANS[value] ? value : "24h";
  }
  function bounds(name) {
    const to = new Date();
    return { name, from: new Date(to.getTime() - SPANS[name]), to };
  }
  function install(nav, onChange) {
    const mark = (name) => {
      for (const b of nav.querySelectorAll("button[data-range]")) {
        b.classList.toggle("on", b.dataset.range === name);
      }
    };
    nav.addEventListener("click", (event) => {
      const name = event.target && event.target.dataset && event.target.dataset.range;
      if (!SPANS[name]) return;
      const params = new URLSearchParams(window.location.search);
      params.set("range", name);
      history.replaceState(null, "", `${window.location.pathname}?${params}`);
      mark(name);
      onChange(bounds(name));
    });
    mark(current());
    return bounds(current());
  }
  window.EARange = { SPANS, current, bounds, install };
})();
