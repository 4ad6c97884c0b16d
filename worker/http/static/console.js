// The console's only script: refreshes the live view from the console (session cookie) every
// few seconds, and opens an account's first number when the account is switched. The page
// works without it.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const select of document.querySelectorAll("[data-submit-on-change]")) {
    select.addEventListener("change", () => select.form.submit());
  }
  const live = document.getElementById("live");
  if (!live || !live.dataset.src) return;
  const refresh = async () => {
    try {
      const reply = await fetch(live.dataset.src, {credentials: "same-origin"});
      live.innerHTML = await reply.text();
      if (reply.status === 401) return; // signed out: the view says so; stop asking
    } catch (unreachable) {
      // Rota unreachable for now: keep the last view and try again.
    }
    setTimeout(refresh, Number(live.dataset.everyMs) || 3000);
  };
  setTimeout(refresh, Number(live.dataset.everyMs) || 3000);
});
