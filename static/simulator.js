// Posts the customer's messages and shows every simulated phone, refreshed each 1.5 s.
(function () {
  "use strict";
  const form = document.getElementById("sim-form");
  const thread = document.getElementById("customer-thread");
  const staff = document.getElementById("staff-phones");
  const error = document.getElementById("sim-error");

  function bubble(m) {
    const li = document.createElement("li");
    li.className = "msg " + (m.direction === "in" ? "from-customer" : "from-desk");
    const body = document.createElement("span");
    body.textContent = m.body;  // untrusted text: never markup
    const meta = document.createElement("small");
    meta.textContent = new Date(m.at).toLocaleTimeString() + " · " + m.status;
    li.append(body, meta);
    return li;
  }
  function fill(list, messages) { list.replaceChildren(...messages.map(bubble)); }

  async function refresh() {
    const phone = form.elements.phone.value.trim();
    const answer = await fetch(thread.dataset.src + "?phone=" + encodeURIComponent(phone));
    if (!answer.ok) return;
    const data = await answer.json();
    fill(thread, data.customer);
    staff.replaceChildren(...data.staff.map((person) => {
      const section = document.createElement("section");
      section.className = "phone";
      const title = document.createElement("h2");
      title.textContent = `${person.name} (${person.role}) ${person.whatsapp}`;
      const list = document.createElement("ol");
      list.className = "thread";
      fill(list, person.messages.filter((m) => m.direction === "out"));
      section.append(title, list);
      return section;
    }));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const answer = await fetch(form.action, {method: "POST", body: new FormData(form)});
    if (!answer.ok) {
      const data = await answer.json().catch(() => ({}));
      error.textContent = data.error || `The webhook answered ${answer.status}.`;
      return;
    }
    form.elements.body.value = "";
    refresh();
  });
  refresh();
  setInterval(refresh, 1500);
})();
