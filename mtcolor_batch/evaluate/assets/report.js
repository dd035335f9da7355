/* mtcolor-batch morning report: filters, before/after slider and toggle, outline switch. No network. */
(function () {
  "use strict";
  var body = document.body;
  var entries = Array.prototype.slice.call(document.querySelectorAll(".entry"));
  var shown = document.getElementById("shown");

  function matches(entry, filter) {
    if (filter === "hinted") return entry.getAttribute("data-hinted") === "1";
    if (filter === "failed") return entry.getAttribute("data-failed") === "1";
    if (filter === "warnings") return entry.getAttribute("data-warn") === "1";
    return true;
  }

  function setFilter(filter) {
    body.setAttribute("data-filter", filter);
    document.querySelectorAll("nav.filters button[data-filter]").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-filter") === filter));
    });
    var n = entries.filter(function (e) { return matches(e, filter); }).length;
    if (shown) shown.textContent = n + " of " + entries.length + " shown";
  }

  document.querySelectorAll("nav.filters button[data-filter]").forEach(function (b) {
    b.addEventListener("click", function () { setFilter(b.getAttribute("data-filter")); });
  });

  var outlines = document.getElementById("outlines");
  if (outlines) {
    outlines.addEventListener("change", function () { body.classList.toggle("no-outlines", !outlines.checked); });
  }

  document.querySelectorAll(".entry .controls").forEach(function (controls) {
    var compare = controls.parentNode.querySelector(".compare");
    var range = controls.querySelector("input[type=range]");
    var toggle = controls.querySelector("button.toggle");
    if (!compare) return;
    if (range) {
      range.addEventListener("input", function () { compare.style.setProperty("--pos", range.value + "%"); });
    }
    if (toggle) {
      toggle.addEventListener("click", function () {
        var before = compare.classList.toggle("show-before");
        toggle.textContent = before ? "show after" : "show before";
        toggle.setAttribute("aria-pressed", String(before));
      });
    }
  });

  var initial = (location.hash || "#all").slice(1);
  setFilter(["all", "hinted", "failed", "warnings"].indexOf(initial) >= 0 ? initial : "all");
  document.documentElement.setAttribute("data-ready", "1");
})();
