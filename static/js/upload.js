/* Upload a data file with a progress bar.
 *
 * Progressive enhancement for <form data-upload>: with JavaScript the form is
 * sent with XMLHttpRequest so upload.onprogress can drive the form's
 * <progress> element; the server answers JSON ({ok, redirect} or {ok, errors})
 * because the request carries X-Requested-With. Without JavaScript the form
 * posts normally. No inline script, no CDN: it runs under a strict CSP.
 */
(function () {
  "use strict";

  function show(element, text) {
    if (element) {
      element.textContent = text;
      element.hidden = false;
    }
  }

  function enhance(form) {
    var progress = form.querySelector("progress");
    var status = form.querySelector("[data-upload-status]");
    var errors = form.querySelector("[data-upload-errors]");
    var button = form.querySelector("button[type=submit]");

    form.addEventListener("submit", function (event) {
      if (!window.FormData || !progress) {
        return; // let the browser post the form
      }
      event.preventDefault();
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("X-Requested-With", "XMLHttpRequest");
      xhr.setRequestHeader("Accept", "application/json");

      progress.hidden = false;
      progress.value = 0;
      progress.removeAttribute("max");
      if (errors) {
        errors.hidden = true;
        errors.textContent = "";
      }
      if (button) {
        button.disabled = true;
      }

      xhr.upload.onprogress = function (e) {
        if (e.lengthComputable) {
          progress.max = e.total;
          progress.value = e.loaded;
          show(status, Math.floor((e.loaded / e.total) * 100) + "% uploaded");
        }
      };
      xhr.upload.onload = function () {
        show(status, "Checking the file…");
      };

      function fail(message) {
        progress.hidden = true;
        if (button) {
          button.disabled = false;
        }
        if (status) {
          status.hidden = true;
        }
        show(errors, message);
      }

      xhr.onload = function () {
        var body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch (err) {
          body = null;
        }
        if (xhr.status >= 200 && xhr.status < 300 && body && body.ok) {
          show(status, "Uploaded.");
          window.location.assign(body.redirect);
        } else if (body && body.errors && body.errors.length) {
          fail(body.errors.join(" "));
        } else {
          fail("The upload failed (HTTP " + xhr.status + "). Please try again.");
        }
      };
      xhr.onerror = function () {
        fail("The upload was interrupted. Check your connection and try again.");
      };
      xhr.onabort = function () {
        fail("The upload was cancelled.");
      };
      xhr.send(new FormData(form));
    });
  }

  var forms = document.querySelectorAll("form[data-upload]");
  for (var i = 0; i < forms.length; i++) {
    enhance(forms[i]);
  }
})();
