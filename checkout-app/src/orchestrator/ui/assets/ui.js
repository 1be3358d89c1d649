// The saga UI's operator buttons (served from /ui/assets/ui.js; the pages
// carry no inline script). A button POSTs /sagas/{id}/{action} with the
// operator token as a bearer token; without a token nothing is sent. The
// token is kept in sessionStorage (this tab only).
"use strict";

(function () {
  const KEY = "saga-operator-token";

  function init() {
    const panel = document.getElementById("operator");
    const input = document.getElementById("operator-token");
    const message = document.getElementById("operator-message");
    if (!panel || !input || !message) {
      return;
    }
    const sagaId = panel.dataset.sagaId;
    try {
      input.value = sessionStorage.getItem(KEY) || "";
    } catch (e) {
      // Storage may be unavailable; the field still works.
    }
    input.addEventListener("input", function () {
      try {
        sessionStorage.setItem(KEY, input.value);
      } catch (e) {
        // ignore
      }
    });

    function show(text, kind) {
      message.textContent = text;
      message.className = kind;
    }

    const buttons = panel.querySelectorAll("button[data-action]");
    buttons.forEach(function (button) {
      button.addEventListener("click", function () {
        const action = button.dataset.action;
        const token = input.value.trim();
        if (!token) {
          show("Enter the operator token to " + action + " this saga.", "failure");
          input.focus();
          return;
        }
        buttons.forEach(function (b) { b.dataset.wasDisabled = b.disabled ? "1" : ""; b.disabled = true; });
        show(action + ": sending…", "");
        fetch("/sagas/" + encodeURIComponent(sagaId) + "/" + encodeURIComponent(action), {
          method: "POST",
          headers: { "Authorization": "Bearer " + token },
          credentials: "same-origin",
        })
          .then(function (response) {
            return response.text().then(function (text) {
              let body = null;
              try {
                body = JSON.parse(text);
              } catch (e) {
                body = null;
              }
              return { status: response.status, ok: response.ok, body: body, text: text };
            });
          })
          .then(function (result) {
            if (result.ok) {
              const status = result.body && result.body.status ? " (status now " + result.body.status + ")" : "";
              show(action + " done" + status + "; reloading…", "success");
              window.location.reload();
              return;
            }
            const detail = result.body && result.body.message ? result.body.message : result.text;
            let lead = "Failed";
            if (result.status === 401) {
              lead = "Wrong or missing operator token";
            } else if (result.status === 403) {
              lead = "Operator actions are disabled";
            } else if (result.status === 409) {
              lead = "Not allowed in this status";
            } else if (result.status === 404) {
              lead = "Not found";
            }
            show(lead + " (" + result.status + "): " + detail, "failure");
            buttons.forEach(function (b) { b.disabled = b.dataset.wasDisabled === "1"; });
          })
          .catch(function (error) {
            show("Request failed: " + error, "failure");
            buttons.forEach(function (b) { b.disabled = b.dataset.wasDisabled === "1"; });
          });
      });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
