// Ticks the waiting clocks every second and refreshes the rows every 5 seconds.
(function () {
  "use strict";
  const tbody = document.getElementById("queue-rows");
  const counter = document.getElementById("queue-total");
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
        tbody.innerHTML = await answer.text();
        const total = answer.headers.get("X-Queue-Total");
        if (total !== null && counter) counter.textContent = total;
        tick();
      }
    } catch (e) { /* offline for a moment: keep the last rows */ }
  }
  setInterval(tick, 1000);
  setInterval(refresh, 5000);
})();
