/* Small progressive enhancements; without JavaScript every page works as it is. Loaded as a file, never
 * inline: the Content-Security-Policy forbids inline scripts.
 *
 * - <html> gets the class "js", so the stylesheet can hide buttons that only a browser without JavaScript
 *   needs (the catalog's Sort button: with htmx, changing the menu already sorts).
 * - The language switch returns to the address the user is on when they switch: the catalog's instant
 *   results (htmx) change the address after the page was loaded, and the form's hidden "next" was written
 *   with the old one. */
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  document.addEventListener(
    "submit",
    function (event) {
      var form = event.target;
      if (!form.classList || !form.classList.contains("language-switch")) {
        return;
      }
      var next = form.querySelector('input[name="next"]');
      if (next) {
        next.value = window.location.pathname + window.location.search;
      }
    },
    true
  );
})();
