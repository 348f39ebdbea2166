// The archive queries' POST of both pages (the live dashboard's breakdowns, Explore's
// funnel, retention and event types), waiting out a full query pool. The service runs
// EA_ANALYTICS_MAX_CONCURRENT archive queries at once per worker and answers one more with
// 503 analytics-busy + Retry-After: another tab, the other page or another person may hold
// the slots for a moment, which is no error to show. Only that 503 is waited out: a 503
// for a storage outage is shown at once, not after seconds of retries. Each page reads the
// answer and shows its errors its own way; only this loop is shared.
(function () {
  "use strict";
  const RETRIES = 4; // then the 503 is the caller's to show
  const MAX_WAIT_S = 5; // a Retry-After longer than this is not waited in full
  const BUSY = "urn:event-analytics:problem:analytics-busy";
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function busy(response) {
    if (response.status !== 503) return false;
    const problem = await response.clone().json().catch(() => null);
    return Boolean(problem) && problem.type === BUSY;
  }

  // fetch(url, init), again after the Retry-After (at most MAX_WAIT_S) while the answer is
  // the busy 503, RETRIES times at most; the last Response. ``timeoutMs``, if given, bounds
  // each attempt (an AbortError then, as from fetch), not the waits between them.
  async function fetchRetrying(url, init, timeoutMs) {
    for (let attempt = 0; ; attempt++) {
      const abort = timeoutMs ? new AbortController() : null;
      const timer = abort ? setTimeout(() => abort.abort(), timeoutMs) : null;
      let response;
      try {
        response = await fetch(url, abort ? { ...init, signal: abort.signal } : init);
      } finally {
        clearTimeout(timer);
      }
      if (attempt >= RETRIES || !(await busy(response))) return response;
      const wait = Number(response.headers.get("Retry-After")) || 1;
      await sleep(Math.min(wait, MAX_WAIT_S) * 1000);
    }
  }

  window.EARetry = { fetch: fetchRetrying, RETRIES, MAX_WAIT_S };
})();
