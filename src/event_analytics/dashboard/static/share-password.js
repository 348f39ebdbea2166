// A shared link with a password (docs/api.md, "Shared links"): its requests are refused
// (401 share-password-required) until the password is traded for an unlock value, kept
// for this tab (sessionStorage, per link) and sent as X-Share-Unlock by site-api.js.
window.EASharePassword = (function () {
  "use strict";
  const TOKEN = window.EA_SHARE_TOKEN;
  const STORE = `ea-share-unlock:${TOKEN}`;
  const unlock = () => { try { return sessionStorage.getItem(STORE); } catch (_) { return null; } };
  let asked = false;

  // The password dialog, once per page: a right password reloads the page with the unlock.
  function ask() {
    if (asked || !TOKEN) return;
    asked = true;
    const dialog = document.getElementById("share-password");
    const form = document.getElementById("share-password-form");
    const input = document.getElementById("share-password-input");
    const said = document.getElementById("share-password-said");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      said.textContent = "checking…";
      let response;
      try {
        response = await fetch(new URL("../api/v1/sites/shared-links/unlock", window.location.href), {
          method: "POST", cache: "no-store",
          headers: { "Content-Type": "application/json", "X-Share-Token": TOKEN },
          body: JSON.stringify({ password: input.value }),
        });
      } catch (_) {
        said.textContent = "the service did not answer: try again";
        return;
      }
      if (response.ok) {
        const answer = await response.json();
        try { sessionStorage.setItem(STORE, answer.unlock); } catch (_) {}
        window.location.reload();
        return;
      }
      input.value = "";
      said.textContent = response.status === 401 ? "wrong password" : `refused (${response.status})`;
    });
    dialog.addEventListener("cancel", (e) => e.preventDefault()); // nothing to see without it
    dialog.showModal();
    input.focus();
  }

  return { unlock, ask };
})();
