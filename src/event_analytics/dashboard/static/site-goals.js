// A site's page, its goals: the Goals panel (visitors, conversions, conversion rate and
// revenue per goal) and the top row's "conversions" and "revenue", shown only when the site
// has goals. Every goal name is written with textContent, never parsed as HTML.
(function () {
  "use strict";
  const NUM = new Intl.NumberFormat("en-US");
  const GOAL = "event:goal";

  // The site's goal names (GET /api/v1/sites/goals, every page of it).
  async function names(api, site) {
    const out = [];
    let after = null;
    for (let page = 0; page < 100; page++) { // bounded: 100 pages of 1000 goals
      const cursor = after ? `&after=${encodeURIComponent(after)}` : "";
      const got = await api.goals(`site_id=${encodeURIComponent(site)}&limit=1000${cursor}`);
      out.push(...got.goals.map((g) => g.display_name));
      after = got.meta.after;
      if (!after) break;
    }
    return out;
  }

  // The money object's text ("$1,322.22"), "–" when there is none (no currency, or several).
  const money = (v) => (v && typeof v === "object" ? v.long : "–");

  // ctx: {site, api, state, addFilter, change, range}. Returns {load() → Promise} or null
  // (no goals: nothing is shown and nothing asked).
  async function install(ctx) {
    const goals = await names(ctx.api, ctx.site);
    if (!goals.length) return null;
    const $ = (id) => document.getElementById(id);
    for (const id of ["s-conversions", "s-revenue", "panel-goals"]) $(id).hidden = false;

    // The goal filters of the view, or, without one, every goal (the site's conversions).
    function goalFilters() {
      const filters = ctx.api.asV2(ctx.state.filters);
      if (ctx.state.filters.some((f) => f.dim === GOAL)) return filters;
      return [...filters, ["is", GOAL, goals]];
    }

    async function loadTop() {
      const body = { site_id: ctx.site, metrics: ["events", "total_revenue"], filters: goalFilters() };
      const got = await ctx.api.withComparison(body, ctx.state.range, ctx.state.compare);
      const now = got.current.results[0].metrics;
      const before = got.previous ? got.previous.results[0].metrics : null;
      const plain = (m, v) => (m === "total_revenue" ? (v && typeof v === "object" ? v.value : null) : v);
      [["conversions", "events"], ["revenue", "total_revenue"]].forEach(([id, m], i) => {
        const el = $(`m-${id}`);
        const value = plain(m, now[i]);
        el.textContent = m === "total_revenue" ? money(now[i]) : NUM.format(now[i]);
        el.dataset.value = value === null ? "" : String(value);
        const c = $(`c-${id}`);
        const d = before ? ctx.change(m, value, plain(m, before[i])) : null;
        c.textContent = d ? d.text : "\u00a0";
        c.dataset.value = d ? d.value : "";
        c.className = "change" + (d && d.good !== null ? (d.good ? " good" : " bad") : "");
      });
    }

    async function loadPanel() {
      const answer = await ctx.api.query({
        site_id: ctx.site, dimensions: [GOAL], filters: ctx.api.asV2(ctx.state.filters),
        metrics: ["visitors", "events", "conversion_rate", "total_revenue"],
        date_range: [ctx.state.range.from, ctx.state.range.to], pagination: { limit: 100 },
      });
      const list = $("goal-rows");
      const max = answer.results.reduce((m, r) => Math.max(m, r.metrics[0]), 0);
      list.replaceChildren(...answer.results.map((r) => {
        const [name] = r.dimensions;
        const [visitors, events, rate, revenue] = r.metrics;
        const li = document.createElement("li");
        li.dataset.value = name;
        li.dataset.metrics = JSON.stringify([visitors, events, rate, revenue ? revenue.value : null]);
        const button = document.createElement("button");
        button.type = "button";
        button.className = "name";
        button.title = `filter: goal is ${name}`;
        button.addEventListener("click", () => ctx.addFilter("is", GOAL, name));
        const bar = document.createElement("span");
        bar.className = "bar";
        bar.style.width = `${max ? (100 * visitors) / max : 0}%`;
        const text = document.createElement("span");
        text.className = "text";
        text.textContent = name;
        button.append(bar, text);
        const cells = [NUM.format(visitors), NUM.format(events), `${rate}%`, money(revenue)].map((t) => {
          const span = document.createElement("span");
          span.className = "num";
          span.textContent = t;
          return span;
        });
        li.append(button, ...cells);
        return li;
      }));
      if (!answer.results.length) {
        const li = document.createElement("li");
        li.className = "empty note";
        li.textContent = "No conversions in this range.";
        list.append(li);
      }
      const note = $("goals-source");
      note.dataset.archivedUntil = answer.meta.archived_until;
      note.textContent = `${goals.length} goals · archive up to ${answer.meta.archived_until.slice(11, 19)} UTC`;
    }

    const props = window.EASiteGoalProps.install(ctx, goals);
    return { load: () => Promise.all([loadTop(), loadPanel(), props.load()]) };
  }

  window.EASiteGoals = { install };
})();
