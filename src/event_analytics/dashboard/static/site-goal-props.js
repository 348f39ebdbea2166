// A site's page, the custom properties of a chosen goal: for one goal and one property
// name, each value's visitors, conversions and revenue, from the Stats API
// (event:props:<name> grouped, filtered on the goal and the view's filters). The goal and
// the name live in the URL (?goal=&prop=). Every value is written with textContent.
(function () {
  "use strict";
  const NUM = new Intl.NumberFormat("en-US");
  const money = (v) => (v && typeof v === "object" ? v.long : "–");

  // ctx: as site-goals.js's; goals: the site's goal names. Returns {load() → Promise}.
  function install(ctx, goals) {
    const $ = (id) => document.getElementById(id);
    const params = new URLSearchParams(window.location.search);
    const picker = $("goal-props-goal");
    const input = $("goal-props-name");
    picker.replaceChildren(...goals.map((g) => new Option(g, g)));
    picker.value = goals.includes(params.get("goal")) ? params.get("goal") : goals[0];
    input.value = params.get("prop") || "";
    $("panel-goal-props").hidden = false;

    function remember() {
      const now = new URLSearchParams(window.location.search);
      now.set("goal", picker.value);
      if (input.value.trim()) now.set("prop", input.value.trim()); else now.delete("prop");
      history.replaceState(null, "", `${window.location.pathname}?${now}`);
    }

    let round = 0;
    async function load() {
      const mine = ++round;
      const list = $("goal-props-rows");
      const note = $("goal-props-source");
      const name = input.value.trim();
      const goal = picker.value;
      // Which view the rows are: set once they are written (a test waits for it).
      delete list.dataset.shown;
      if (!name) {
        list.replaceChildren();
        note.textContent = "type a property name the goal's events carry, e.g. plan";
        return;
      }
      const filters = ctx.api.asV2(ctx.state.filters).filter((f) => f[1] !== "event:goal");
      const answer = await ctx.api.query({
        site_id: ctx.site, dimensions: [`event:props:${name}`],
        filters: [...filters, ["is", "event:goal", [goal]]],
        metrics: ["visitors", "events", "total_revenue"],
        date_range: [ctx.state.range.from, ctx.state.range.to], pagination: { limit: 100 },
      });
      if (mine !== round) return; // a newer choice is being shown
      const max = answer.results.reduce((m, r) => Math.max(m, r.metrics[0]), 0);
      list.replaceChildren(...answer.results.map((r) => {
        const [value] = r.dimensions;
        const [visitors, events, revenue] = r.metrics;
        const li = document.createElement("li");
        li.dataset.value = value === null ? "" : String(value);
        li.dataset.metrics = JSON.stringify([visitors, events, revenue ? revenue.value : null]);
        const label = document.createElement("span");
        label.className = "name";
        const bar = document.createElement("span");
        bar.className = "bar";
        bar.style.width = `${max ? (100 * visitors) / max : 0}%`;
        const text = document.createElement("span");
        text.className = "text";
        text.textContent = value === null ? "(none)" : String(value);
        label.append(bar, text);
        const cells = [NUM.format(visitors), NUM.format(events), money(revenue)].map((t) => {
          const span = document.createElement("span");
          span.className = "num";
          span.textContent = t;
          return span;
        });
        li.append(label, ...cells);
        return li;
      }));
      if (!answer.results.length) {
        const li = document.createElement("li");
        li.className = "empty note";
        li.textContent = "No conversions of this goal in this range.";
        list.append(li);
      }
      list.dataset.shown = JSON.stringify([goal, name]);
      note.dataset.archivedUntil = answer.meta.archived_until;
      note.textContent = `event:props:${name} of ${goal} · archive up to ${answer.meta.archived_until.slice(11, 19)} UTC`;
    }

    const reload = () => { remember(); load().catch((e) => { $("goal-props-source").textContent = e.message; }); };
    picker.addEventListener("change", reload);
    $("goal-props-form").addEventListener("submit", (e) => { e.preventDefault(); reload(); });
    return { load };
  }

  window.EASiteGoalProps = { install };
})();
