// Refreshes the dashboard's body every 5 seconds, in place (no reload).
(function () {
  "use strict";
  const board = document.getElementById("dashboard");
  if (!board) return;
  async function refresh() {
    if (document.hidden) return;  // nobody looking: catch up when the tab shows again
    try {
      const answer = await fetch(board.dataset.src, {credentials: "same-origin"});
      // Logged out or no longer a supervisor: show what the server says, whole.
      if (answer.redirected || answer.status === 403) { window.location.reload(); return; }
      if (answer.ok) board.innerHTML = await answer.text();
    } catch (e) { /* offline for a moment: keep the last figures */ }
  }
  document.addEventListener("visibilitychange", refresh);
  setInterval(refresh, 5000);
})();
