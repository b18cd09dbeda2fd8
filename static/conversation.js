// A canned reply fills the reply box, where the agent can still change it before sending.
(function () {
  "use strict";
  const canned = document.getElementById("canned");
  const body = document.getElementById("reply-body");
  if (canned && body) {
    canned.addEventListener("change", function () {
      if (canned.value) { body.value = canned.value; body.focus(); }
    });
  }
  const history = document.getElementById("history");
  if (history) { history.scrollTop = history.scrollHeight; }
})();
