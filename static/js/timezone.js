/* Tell the server the browser's time zone, so pages show dates and times in the user's own zone.
 * Sets the `tz` cookie (an IANA name such as "Asia/Shanghai") that exchange.timezones.TimezoneMiddleware reads;
 * the server checks the name and ignores anything it does not know. Loaded as a file, never inline: the
 * Content-Security-Policy forbids inline scripts. When the zone changes, the next page load uses it. */
(function () {
  "use strict";
  var zone;
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  } catch (error) {
    return; // A browser without Intl keeps the server's default zone.
  }
  if (!zone || !/^[A-Za-z0-9_+\-\/]{1,64}$/.test(zone)) {
    return;
  }
  var current = document.cookie.split("; ").find(function (part) { return part.indexOf("tz=") === 0; });
  if (current === "tz=" + zone) {
    return;
  }
  var secure = window.location.protocol === "https:" ? "; Secure" : "";
  document.cookie = "tz=" + zone + "; Path=/; Max-Age=31536000; SameSite=Lax" + secure;
})();
