/* Loaded first: records script errors, console.error calls and failed loads (images, CSS, JS) into
   <html data-js-errors data-js-error-text>, so a headless browser's --dump-dom shows them. */
(function () {
  "use strict";
  var errs = [];
  var root = document.documentElement;
  function rec(m) {
    errs.push(String(m));
    root.setAttribute("data-js-errors", String(errs.length));
    root.setAttribute("data-js-error-text", errs.join(" | "));
  }
  window.addEventListener("error", function (ev) {
    var t = ev.target;
    if (t && t !== window && (t.src || t.href)) {
      rec("failed to load " + (t.src || t.href));
    } else {
      rec((ev.message || "error") + " at " + (ev.filename || "") + ":" + (ev.lineno || 0));
    }
  }, true);
  window.addEventListener("unhandledrejection", function (ev) { rec("unhandled rejection: " + ev.reason); });
  var original = console.error;
  console.error = function () {
    rec(Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
})();
