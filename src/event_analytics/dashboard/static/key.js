// The read key (EA_READ_KEYS) of every page: given in the fragment, /dashboard#key=...,
// which browsers never send to a server or a log, and kept for this tab only
// (sessionStorage), so a page opened from another keeps it. The pages are public; the
// answers they ask for are not. Each page sends it as X-API-Key on its data requests.
window.EA_READ_KEY = (function () {
  "use strict";
  const match = /(?:^#|&)key=([^&]+)/.exec(window.location.hash || "");
  if (match) {
    const key = decodeURIComponent(match[1]);
    try { sessionStorage.setItem("ea-read-key", key); } catch (_) {}
    history.replaceState(null, "", window.location.pathname + window.location.search);
    return key;
  }
  try { return sessionStorage.getItem("ea-read-key"); } catch (_) { return null; }
})();

// A shared link's token: /share/<site>?auth=TOKEN (Plausible's shape). The site page sends
// it as X-Share-Token; the server admits it for that one site's stats only.
window.EA_SHARE_TOKEN = new URLSearchParams(window.location.search).get("auth");
