// The console's own script (no inline script anywhere: the policy forbids it).
// - every htmx request carries the session's CSRF token;
// - "json-enc": forms and buttons send their fields as a JSON object, the
//   body the /v1 API reads; a field named "x:bool" is sent as x = true/false,
//   "x:int" as a number, "x:json" parsed as JSON (empty: left out);
// - an error answer of the API ({"error": {"message"}}) shows in #flash;
// - data-refresh="#id ..." sends "refresh" to those elements after success;
// - data-copy="#id" copies that element's text.
(function () {
  "use strict";

  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function flash(text) {
    var box = document.getElementById("flash");
    if (!box) { return; }
    box.textContent = text;
    box.hidden = !text;
  }

  document.addEventListener("htmx:configRequest", function (evt) {
    evt.detail.headers["X-CSRF-Token"] = csrf();
  });

  htmx.defineExtension("json-enc", {
    onEvent: function (name, evt) {
      if (name === "htmx:configRequest") {
        evt.detail.headers["Content-Type"] = "application/json";
      }
    },
    encodeParameters: function (xhr, parameters) {
      xhr.overrideMimeType("text/json");
      var out = {};
      var failed = "";
      parameters.forEach(function (value, key) {
        var parts = key.split(":");
        var name = parts[0];
        var kind = parts[1] || "";
        if (kind === "bool") {
          out[name] = value === "true" || value === "on";
        } else if (kind === "int") {
          out[name] = value === "" ? 0 : Number(value);
        } else if (kind === "json") {
          if (value.trim() === "") { return; }
          try { out[name] = JSON.parse(value); } catch (e) { failed = name; }
        } else {
          out[name] = value;
        }
      });
      if (failed) { out[failed] = "(not JSON)"; }
      return JSON.stringify(out);
    }
  });

  function apiMessage(xhr) {
    try {
      var body = JSON.parse(xhr.responseText);
      if (body && body.error && body.error.message) { return body.error.message; }
    } catch (e) { /* not JSON */ }
    return "the hub answered " + xhr.status;
  }

  document.addEventListener("htmx:afterRequest", function (evt) {
    var xhr = evt.detail.xhr;
    if (!xhr) { return; }
    if (xhr.status >= 400 || xhr.status === 0) {
      flash(xhr.status === 0 ? "the hub cannot be reached" : apiMessage(xhr));
      return;
    }
    var elt = evt.detail.elt;
    var form = elt.closest ? elt.closest("[data-refresh]") : null;
    var targets = (form && form.getAttribute("data-refresh")) || "";
    if (targets && evt.detail.requestConfig && evt.detail.requestConfig.verb !== "get") {
      flash("");
      targets.split(" ").forEach(function (sel) {
        if (sel) { document.querySelectorAll(sel).forEach(function (t) { htmx.trigger(t, "refresh"); }); }
      });
      if (form.tagName === "FORM" && form.hasAttribute("data-reset")) { form.reset(); }
    }
  });

  document.addEventListener("click", function (evt) {
    var button = evt.target.closest ? evt.target.closest("[data-copy]") : null;
    if (!button) { return; }
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (source && navigator.clipboard) {
      navigator.clipboard.writeText(source.textContent.trim()).then(function () {
        button.textContent = "Copied";
      });
    }
  });
})();
