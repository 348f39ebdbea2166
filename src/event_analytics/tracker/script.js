/* event-analytics tracker: page views and custom events to /api/event (Plausible's API).
 * <script defer data-domain="example.com" src="https://HOST/js/script.js"></script>
 * Optional attributes: data-api (another endpoint), data-allow-localhost (send from
 * localhost and file: pages too). No cookies, no local storage: the service counts a
 * visitor per day from a salted hash it never stores the inputs of. MIT licence. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) return;
  var attr = function (name) { return script.getAttribute(name); };
  var domain = attr("data-domain") || location.hostname;
  var api = attr("data-api") || new URL("/api/event", script.src).href;
  var allowLocal = script.hasAttribute("data-allow-localhost");
  var local = /^(localhost|127(\.\d+){3}|\[::1\])$/.test(location.hostname) ||
    location.protocol === "file:";
  var queued = (window.ea && window.ea.q) || (window.plausible && window.plausible.q) || [];
  var lastPage = null;

  function send(name, options) {
    options = options || {};
    var done = typeof options.callback === "function" ? options.callback : null;
    if (local && !allowLocal) {
      if (console && console.warn) console.warn("event-analytics: ignoring events from localhost");
      if (done) done();  // as Plausible's: a callback with no result means "not sent"
      return;
    }
    var body = { n: name, u: options.u || location.href, d: domain, r: document.referrer || null };
    if (options.props) body.p = options.props;
    if (options.revenue) body.$ = options.revenue;
    if (options.interactive === false) body.i = false;
    var text = JSON.stringify(body);
    // A string body is sent as text/plain: no CORS preflight, and the beacon outlives
    // the page (it is queued even when the user is navigating away).
    if (!done && navigator.sendBeacon && navigator.sendBeacon(api, text)) return;
    fetch(api, { method: "POST", body: text, keepalive: true, credentials: "omit",
                 headers: { "Content-Type": "text/plain" } })
      .then(function (r) { if (done) done({ status: r.status }); })
      .catch(function (e) { if (done) done({ error: e }); });
  }

  function pageview() {
    if (location.href === lastPage) return; // replaced state, same page: not a new view
    lastPage = location.href;
    send("pageview");
  }

  function ea(name, options) { send(name, options); }
  window.ea = ea;
  window.plausible = ea;  // pages written for Plausible's script work unchanged
  for (var i = 0; i < queued.length; i++) ea.apply(null, queued[i]);

  // Single-page apps: a pushState or a back/forward step is a page view.
  var push = history.pushState;
  if (push) {
    history.pushState = function () {
      var result = push.apply(this, arguments);
      pageview();
      return result;
    };
    window.addEventListener("popstate", pageview);
  }
  if (document.visibilityState === "prerender") {
    document.addEventListener("visibilitychange", function once() {
      if (document.visibilityState === "visible") {
        document.removeEventListener("visibilitychange", once);
        pageview();
      }
    });
  } else {
    pageview();
  }
})();
