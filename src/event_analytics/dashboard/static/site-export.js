// A site's page, its export: the view (site, range, filters, the graph's interval) as CSV
// files in a zip from GET /api/v1/sites/export. Fetched with the read key (a header, so not a
// plain link) and handed to the browser as a download.
(function () {
  "use strict";

  // ctx: {site, api, state, showErrors}; the button is #export.
  function install(ctx) {
    const button = document.getElementById("export");
    button.addEventListener("click", async () => {
      const { range, filters, interval } = ctx.state;
      const params = new URLSearchParams({
        site_id: ctx.site,
        date_range: `${range.from},${range.to}`,
        filters: JSON.stringify(ctx.api.asV2(filters)),
        interval: interval || "day",
      });
      button.disabled = true;
      button.textContent = "Exporting…";
      try {
        const blob = await ctx.api.exportZip(params.toString());
        const a = document.createElement("a");
        a.href = URL.createObjectURL(blob);
        a.download = `${ctx.site}-${range.from}-${range.to}.zip`;
        document.body.append(a);
        a.click();
        a.remove();
        // The download has its own copy once started; the URL is let go a little later.
        setTimeout(() => URL.revokeObjectURL(a.href), 60e3);
      } catch (e) {
        ctx.showErrors([e]);
      } finally {
        button.disabled = false;
        button.textContent = "Export CSV";
      }
    });
  }

  window.EASiteExport = { install };
})();
