// Ticks the waiting clocks every second and refreshes the rows and the pager every 5 seconds.
(function () {
  "use strict";
  const tbody = document.getElementById("queue-rows");
  const counter = document.getElementById("queue-total");
  const pager = document.getElementById("queue-pager");
  function human(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
    const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    const pad = (n) => String(n).padStart(2, "0");
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${pad(m)}m`;
    if (m) return `${m}m ${pad(s)}s`;
    return `${s}s`;
  }
  function tick() {
    for (const clock of tbody.querySelectorAll(".clock")) {
      clock.textContent = human((Date.now() - Date.parse(clock.dataset.since)) / 1000);
    }
  }
  async function refresh() {
    try {
      const answer = await fetch(tbody.dataset.src, {credentials: "same-origin"});
      // Logged out meanwhile: the fragment was redirected to the login page; show it whole.
      if (answer.redirected) { window.location.reload(); return; }
      if (answer.ok) {
        // The rows and the pager, rendered by the same partials as the full page.
        const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
        const rows = fresh.getElementById("queue-rows");
        const pages = fresh.getElementById("queue-pager");
        if (!rows) return;
        tbody.innerHTML = rows.innerHTML;
        // The page shown (the last one if the backlog shrank below ours): refresh that one.
        tbody.dataset.src = rows.dataset.src;
        // Swapped only when it changed, so a focused Previous/Next link keeps its focus.
        if (pages && pager && pager.innerHTML !== pages.innerHTML) pager.innerHTML = pages.innerHTML;
        const total = answer.headers.get("X-Queue-Total");
        if (total !== null && counter) counter.textContent = total;
        tick();
      }
    } catch (e) { /* offline for a moment: keep the last rows */ }
  }
  setInterval(tick, 1000);
  setInterval(refresh, 5000);
})();
