// Modelyard console: live regions fed by Server-Sent Events, the outage banner, and pages that
// retry by themselves. No framework, nothing from elsewhere.
(function () {
  "use strict";
  var banner = document.getElementById("banner");

  function showBanner(text) {
    if (!banner) return;
    banner.textContent = text || "";
    banner.hidden = !text;
    // What the live region shows is as of the last answer: dim it while the banner is up.
    var region = document.querySelector("[data-live-src]");
    if (region) region.classList.toggle("stale", Boolean(text));
  }

  var live = document.querySelector("[data-live-src]");
  if (live && window.EventSource) {
    var source = new EventSource(live.getAttribute("data-live-src"));
    source.addEventListener("live", function (event) {
      live.innerHTML = event.data;
      live.setAttribute("data-updated-at", String(Date.now()));
    });
    source.addEventListener("banner", function (event) {
      showBanner(event.data);
    });
    source.addEventListener("open", function () {
      if (banner && banner.getAttribute("data-source") === "console") {
        banner.removeAttribute("data-source");
        showBanner("");
      }
    });
    source.addEventListener("error", function () {
      // The browser reconnects by itself; say so while it does.
      if (source.readyState !== EventSource.OPEN && banner && banner.hidden) {
        banner.setAttribute("data-source", "console");
        showBanner("Lost the connection to the console; reconnecting…");
      }
    });
  }

  // A page rendered while a service was unreachable reloads itself until the service answers.
  var retry = document.body.getAttribute("data-retry-after-ms");
  if (retry) {
    window.setTimeout(function () { window.location.reload(); }, Number(retry));
  }

  // The acknowledgment box gates the confirm button; the server refuses an unacknowledged
  // incompatible switch all the same.
  var ack = document.getElementById("acknowledge");
  var confirm = document.getElementById("confirm-switch");
  if (ack && confirm) {
    var sync = function () { confirm.classList.toggle("needs-ack", !ack.checked); };
    ack.addEventListener("change", sync);
    sync();
  }
})();

// The Benchmark page's deployment picker shows the chosen deployment's versions at once (its
// button does the same without script).
(function () {
  "use strict";
  var pickers = document.querySelectorAll("select[data-autosubmit]");
  Array.prototype.forEach.call(pickers, function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });
})();
