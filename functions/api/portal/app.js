// Settings → Webhooks: the venue's page. Plain script, no build step. The session token comes
// in the URL fragment (never sent to a server), is kept in sessionStorage for this tab only, and
// every call goes to this API with it, like a venue key.
"use strict";

(function () {
  const STORE = "popup-webhooks-session";
  const app = document.getElementById("app");
  let session = null; // {token, venue}
  let catalog = [];

  // ---- DOM ----------------------------------------------------------------------------------
  // h("button", {class: "primary", onclick: f}, "Create"): elements from data, never from HTML
  // strings, so nothing a receiver or an API answer says can become markup.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "class") el.className = value;
      else if (value === true) el.setAttribute(key, "");
      else el.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function show(...nodes) {
    app.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
    const heading = app.querySelector("h1, h2");
    if (heading) heading.setAttribute("tabindex", "-1");
  }

  // While a screen loads, the one before it is gone: nothing on it can be clicked meanwhile.
  function loading() {
    app.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  }

  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }

  // ---- session ------------------------------------------------------------------------------
  function readSession() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    if (params.get("token") && params.get("venue")) {
      const s = { token: params.get("token"), venue: params.get("venue") };
      sessionStorage.setItem(STORE, JSON.stringify(s));
      // The token leaves the address bar (and the history) at once.
      history.replaceState(null, "", location.pathname + location.search);
      return s;
    }
    try {
      return JSON.parse(sessionStorage.getItem(STORE) || "null");
    } catch (_) {
      return null;
    }
  }

  function expired() {
    sessionStorage.removeItem(STORE);
    session = null;
    show(
      h("section", { class: "expired" },
        h("h1", {}, "This link has expired"),
        h("p", {}, "Open Webhooks from your dashboard again."))
    );
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error && body.error.message) || `the server answered ${status}`);
      this.status = status;
      this.code = body && body.error && body.error.code;
      this.field = body && body.error && body.error.field;
    }
  }

  async function api(method, path, body) {
    const response = await fetch(path.replace("{venue}", encodeURIComponent(session.venue)), {
      method,
      headers: Object.assign(
        { authorization: "Bearer " + session.token },
        body === undefined ? {} : { "content-type": "application/json" }
      ),
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
    });
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (response.status === 401) {
      expired();
      throw new ApiError(401, data);
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  // ---- endpoints ----------------------------------------------------------------------------
  async function home(notice) {
    loading();
    const list = await api("GET", "/venues/{venue}/endpoints?limit=100");
    const rows = list.data.map((ep) =>
      h("tr", {},
        h("td", {}, h("a", { href: "#", onclick: (e) => { e.preventDefault(); endpoint(ep.id); } }, ep.url)),
        h("td", {}, ep.description || ""),
        h("td", {}, ep.event_types.join(", ")),
        h("td", {}, ep.enabled ? "Enabled" : "Disabled"))
    );
    show(
      h("h1", {}, "Webhooks"),
      h("p", { class: "muted" }, "Send your venue's events (orders, registrations, subscribers) to the tools you use."),
      notice || null,
      h("div", { class: "bar" }, h("button", { class: "primary", onclick: addEndpoint }, "Add endpoint")),
      list.data.length
        ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Destination URL"), h("th", {}, "Description"), h("th", {}, "Events"), h("th", {}, "Status"))), h("tbody", {}, rows))
        : h("p", { class: "muted" }, "No endpoints yet.")
    );
  }

  function fieldError(form, field, message) {
    const target = form.querySelector(`[data-field="${field}"]`) || form.querySelector("[data-field=form]");
    if (target.tagName === "DETAILS") target.open = true;
    const p = h("p", { class: "field-error", role: "alert" }, message);
    target.append(p);
    const input = target.querySelector("input, textarea, select");
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.focus();
    }
  }

  function clearErrors(form) {
    form.querySelectorAll(".field-error").forEach((e) => e.remove());
    form.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
  }

  // "Name: value" lines → {name: value}; a line that is not one is the field's error.
  function headerLines(text) {
    const out = {};
    for (const raw of text.split("\n")) {
      const line = raw.trim();
      if (!line) continue;
      const colon = line.indexOf(":");
      if (colon < 1) throw { field: "headers", message: `"${line}" is not a header: write it as Name: value` };
      out[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
    }
    return out;
  }

  function eventChoices(selected) {
    const chosen = new Set(selected || []);
    const box = h("fieldset", { "data-field": "event_types" },
      h("legend", {}, "Events"),
      h("label", { class: "inline" }, h("input", { type: "checkbox", name: "event", value: "*", checked: chosen.has("*") }), "All events"));
    const prefixes = [...new Set(catalog.map((t) => t.type.split(".")[0]))];
    const wild = h("div", { class: "bar" }, prefixes.map((p) =>
      h("label", { class: "inline" }, h("input", { type: "checkbox", name: "event", value: p + ".*", checked: chosen.has(p + ".*") }), p + ".*")));
    const grid = h("div", { class: "events" }, catalog.map((t) =>
      h("div", { class: "event" },
        h("label", { class: "inline", title: t.description },
          h("input", { type: "checkbox", name: "event", value: t.type, checked: chosen.has(t.type) }), t.type),
        h("small", {}, t.description),
        h("details", {}, h("summary", {}, "Example payload"), h("pre", {}, JSON.stringify(t.example, null, 2))))));
    box.append(wild, grid);
    return box;
  }

  async function addEndpoint() {
    const form = h("form", { method: "dialog" });
    const bearerOwn = h("input", { type: "text", name: "own_token", "aria-label": "Your token", autocomplete: "off" });
    form.append(
      h("h2", {}, "Add endpoint"),
      h("div", { "data-field": "url" },
        h("label", { for: "url" }, "Destination URL"),
        h("input", { id: "url", type: "url", name: "url", required: true, placeholder: "https://", autocomplete: "off" })),
      h("div", { "data-field": "description" },
        h("label", { for: "description" }, "Description"),
        h("input", { id: "description", type: "text", name: "description" })),
      eventChoices(["*"]),
      h("fieldset", { "data-field": "auth" },
        h("legend", {}, "Authentication"),
        h("label", { class: "inline" }, h("input", { type: "radio", name: "mode", value: "signed_secret", checked: true }), "Signed secret (recommended)"),
        h("label", { class: "inline" }, h("input", { type: "radio", name: "mode", value: "bearer_token" }), "Bearer token"),
        h("div", { class: "bearer", hidden: true },
          h("label", { class: "inline" }, h("input", { type: "radio", name: "token_source", value: "generate", checked: true }), "Generate a token for me"),
          h("label", { class: "inline" }, h("input", { type: "radio", name: "token_source", value: "own" }), "Paste my own token"),
          bearerOwn)),
      h("details", { "data-field": "headers" },
        h("summary", {}, "Custom headers (optional)"),
        h("label", { for: "headers" }, "Custom headers"),
        h("p", { class: "muted", id: "headers_help" }, "Sent with every request, one per line as Name: value (for example X-Api-Key: …). Shown only as hints afterwards."),
        h("textarea", { id: "headers", name: "headers", rows: 2, "aria-describedby": "headers_help", autocomplete: "off", spellcheck: "false" })),
      h("div", { "data-field": "form" }),
      h("div", { class: "bar" },
        h("button", { type: "submit", class: "primary" }, "Create"),
        h("button", { type: "button", onclick: () => dialog.close() }, "Cancel")));
    const bearer = form.querySelector(".bearer");
    form.addEventListener("change", () => {
      bearer.hidden = form.mode.value !== "bearer_token";
    });
    const dialog = h("dialog", { "aria-label": "Add endpoint" }, form);
    dialog.addEventListener("close", () => dialog.remove());
    document.body.append(dialog);
    dialog.showModal();
    form.url.focus();
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      clearErrors(form);
      const events = [...form.querySelectorAll("input[name=event]:checked")].map((i) => i.value);
      const auth = { mode: form.mode.value };
      if (auth.mode === "bearer_token" && form.token_source.value === "own") auth.token = bearerOwn.value;
      const body = { url: form.url.value.trim(), event_types: events, auth };
      if (form.description.value.trim()) body.description = form.description.value.trim();
      try {
        const headers = headerLines(form.headers.value);
        if (Object.keys(headers).length) body.headers = headers;
        const created = await api("POST", "/venues/{venue}/endpoints", body);
        dialog.close();
        shownOnce(created);
      } catch (err) {
        if (err.status === 401) return;
        fieldError(form, err.field || "form", err.message);
      }
    });
  }

  // The secret or token, shown once: closing forgets it.
  function shownOnce(created, title = "Endpoint created") {
    const value = created.secret || created.token;
    const what = created.secret ? "signing secret" : "token";
    const copied = h("span", { class: "muted", role: "status" });
    const dialog = h("dialog", { "aria-label": title },
      h("h2", {}, title),
      h("p", {}, `Copy the ${what} now and give it to the tool that receives the webhooks.`),
      h("div", { class: "secret" }, h("code", { id: "once" }, value),
        h("button", { type: "button", onclick: async () => {
          try { await navigator.clipboard.writeText(value); copied.textContent = "Copied"; }
          catch (_) { copied.textContent = "Select the text and copy it"; }
        } }, "Copy"), copied),
      h("p", { class: "warning" }, `It will not be shown again. Afterwards only its hint shows.`),
      h("div", { class: "bar" }, h("button", { class: "primary", onclick: () => dialog.close() }, "Done")));
    dialog.addEventListener("close", () => {
      dialog.remove();
      endpoint(created.id);
    });
    document.body.append(dialog);
    dialog.showModal();
  }

  function plural(n, one, many) {
    return `${n} ${n === 1 ? one : many}`;
  }

  // The endpoint's last 24 hours, in a sentence a person reads at a glance.
  function health(stats) {
    if (!stats) return null;
    const a = stats.attempts;
    if (!a.total) return h("p", { class: "muted", "aria-label": "Last 24 hours" }, "Last 24 hours: no deliveries.");
    const failures = Object.entries(a.by_outcome).filter(([k]) => k !== "succeeded")
      .map(([k, n]) => `${k} ${n}`).join(", ");
    const rate = Math.round(stats.success_rate * 1000) / 10;
    return h("div", { class: rate >= 95 ? "ok-box" : "warning", "aria-label": "Last 24 hours" },
      h("strong", {}, "Last 24 hours: "),
      `${plural(stats.deliveries.total, "delivery", "deliveries")}, ${plural(a.total, "attempt", "attempts")}, ${rate}% succeeded`,
      stats.duration_ms ? ` · response time p50 ${stats.duration_ms.p50} ms, p95 ${stats.duration_ms.p95} ms` : "",
      failures ? h("div", {}, `Failed attempts: ${failures}`) : null,
      stats.complete ? null : h("div", { class: "muted" }, `(only since ${when(stats.since)}: more history than one look reads)`));
  }

  async function endpoint(id, notice) {
    loading();
    const [ep, stats] = await Promise.all([
      api("GET", `/venues/{venue}/endpoints/${encodeURIComponent(id)}`),
      api("GET", `/venues/{venue}/endpoints/${encodeURIComponent(id)}/stats?window=24h`).catch(() => null),
    ]);
    const path = `/venues/{venue}/endpoints/${encodeURIComponent(id)}`;
    const outcome = h("div", { role: "status" }, notice || null);
    const bearer = ep.auth && ep.auth.mode === "bearer_token";
    const setEnabled = async (enabled) => {
      await api("PATCH", path, { enabled });
      endpoint(id, h("p", { class: "ok-box" }, enabled ? "Enabled." : "Disabled."));
    };
    show(
      h("p", {}, h("a", { href: "#", onclick: (e) => { e.preventDefault(); home(); } }, "← All endpoints")),
      h("h1", {}, ep.url),
      h("p", { class: "muted" }, ep.description || ""),
      ep.enabled ? null : h("div", { class: "warning" },
        ep.disabled_reason ? `Disabled: ${ep.disabled_reason}. ` : "Disabled. ",
        "It receives nothing until it is enabled again. Events sent meanwhile are kept for it " +
          "(in its delivery history, as held) and delivered, oldest first, when you enable it. ",
        h("button", { onclick: () => setEnabled(true) }, "Enable")),
      ep.enabled && ep.disables_at ? h("div", { class: "warning", role: "note" },
        `Every delivery has failed since ${when(ep.failing_since)}. If none gets through, ` +
          `this endpoint is disabled automatically on ${when(ep.disables_at)} (its events are kept for it). ` +
          "Check the receiving app, then use Send test.") : null,
      health(stats),
      h("table", {}, h("tbody", {},
        h("tr", {}, h("th", {}, "Status"), h("td", {}, ep.enabled ? "Enabled" : "Disabled")),
        h("tr", {}, h("th", {}, "Events"), h("td", {}, ep.event_types.join(", "))),
        h("tr", {}, h("th", {}, "Payload format"), h("td", {}, ep.payload_format || "envelope")),
        h("tr", {}, h("th", {}, "Rate limit"), h("td", {},
          ep.rate_limit ? `${ep.rate_limit} requests a second` : h("span", { class: "muted" }, "None"))),
        h("tr", {}, h("th", {}, "Authentication"), h("td", {}, bearer ? "Bearer token" : "Signed secret")),
        h("tr", {}, h("th", {}, bearer ? "Token" : "Secret"), h("td", { class: "mono" }, (ep.auth && (ep.auth.secret_hint || ep.auth.token_hint)) || "")),
        h("tr", {}, h("th", {}, "Custom headers"), h("td", { class: "mono" },
          Object.keys(ep.headers || {}).length
            ? Object.entries(ep.headers).map(([n, hint]) => h("div", {}, `${n}: ${hint}`))
            : h("span", { class: "muted" }, "None"))),
        ep.circuit && ep.circuit.state !== "closed"
          ? h("tr", {}, h("th", {}, "Circuit"), h("td", {},
              `${ep.circuit.state}: the receiver kept failing, so deliveries are held (in the history as pending) ` +
                `until a probe at ${when(ep.circuit.open_until)} gets through; then they go, oldest first`))
          : null,
        ep.host_not_answering
          ? h("tr", {}, h("th", {}, "Receiving server"), h("td", {},
              `not answering (${ep.host_not_answering.host}, for this and other endpoints): deliveries are held ` +
                `(in the history as pending) until it answers a try at ${when(ep.host_not_answering.next_look)}; then they go, oldest first`))
          : null)),
      h("div", { class: "bar" },
        h("button", { class: "primary", onclick: () => sendTest(ep.id, outcome) }, "Send test"),
        h("button", { onclick: () => history_(ep.id) }, "View delivery history"),
        h("button", { onclick: () => editEndpoint(ep) }, "Edit"),
        h("button", { onclick: () => rotate(ep) }, bearer ? "Rotate token" : "Rotate secret"),
        ep.enabled ? h("button", { onclick: () => setEnabled(false) }, "Disable") : null,
        h("span", { class: "spacer" }),
        h("button", { class: "danger", onclick: () => remove(ep) }, "Delete")),
      outcome
    );
  }

  // A dialog holding `form`; `submit` runs on Save and closes it unless it throws.
  function formDialog(title, form, submit) {
    const dialog = h("dialog", { "aria-label": title }, form);
    dialog.addEventListener("close", () => dialog.remove());
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      clearErrors(form);
      try {
        await submit();
        dialog.close();
      } catch (err) {
        if (err.status !== 401) fieldError(form, err.field || "form", err.message);
      }
    });
    document.body.append(dialog);
    dialog.showModal();
    const first = form.querySelector("input, textarea, select, button");
    if (first) first.focus();
    return dialog;
  }

  function editEndpoint(ep) {
    // Focusable, so that a keyboard can scroll a long body.
    const preview = h("pre", { "aria-label": "Preview", tabindex: "0" });
    const templateBox = h("div", { "data-field": "template", hidden: ep.payload_format !== "template" },
      h("label", { for: "template" }, "Template"),
      h("textarea", { id: "template", name: "template", rows: 3 }, ep.template || ""));
    const form = h("form", {},
      h("h2", {}, "Edit endpoint"),
      h("div", { "data-field": "url" },
        h("label", { for: "url" }, "Destination URL"),
        h("input", { id: "url", type: "url", name: "url", value: ep.url, required: true })),
      h("div", { "data-field": "description" },
        h("label", { for: "description" }, "Description"),
        h("input", { id: "description", type: "text", name: "description", value: ep.description || "" })),
      eventChoices(ep.event_types),
      h("fieldset", { "data-field": "headers" },
        h("legend", {}, "Custom headers"),
        Object.keys(ep.headers || {}).map((n) =>
          h("label", { class: "inline" }, h("input", { type: "checkbox", name: "remove_header", value: n }), `Remove ${n} (${ep.headers[n]})`)),
        h("label", { for: "headers" }, "Add or replace headers"),
        h("p", { class: "muted", id: "headers_help" }, "One per line as Name: value. Headers not named here keep their values."),
        h("textarea", { id: "headers", name: "headers", rows: 2, "aria-describedby": "headers_help", autocomplete: "off", spellcheck: "false" })),
      h("div", { "data-field": "payload_format" },
        h("label", { for: "payload_format" }, "Payload format"),
        h("select", { id: "payload_format", name: "payload_format" },
          ["envelope", "data", "template"].map((f) => h("option", { value: f, selected: (ep.payload_format || "envelope") === f },
            { envelope: "Envelope (id, type, timestamp, data)", data: "Data only", template: "Custom template" }[f])))),
      templateBox,
      h("div", { "data-field": "rate_limit" },
        h("label", { for: "rate_limit" }, "Rate limit (requests a second)"),
        h("p", { class: "muted", id: "rate_limit_help" }, "Leave empty for no limit. Deliveries beyond it wait their turn."),
        // No min or max here: the API explains a value it refuses, at this field.
        h("input", { id: "rate_limit", type: "number", name: "rate_limit", inputmode: "numeric",
          "aria-describedby": "rate_limit_help", value: ep.rate_limit == null ? "" : String(ep.rate_limit) })),
      h("div", { "data-field": "preview" },
        h("label", { for: "preview_type" }, "Preview for"),
        h("select", { id: "preview_type", name: "preview_type" }, catalog.map((t) => h("option", { value: t.type }, t.type))),
        preview),
      h("div", { "data-field": "form" }),
      h("div", { class: "bar" },
        h("button", { type: "submit", class: "primary" }, "Save"),
        h("button", { type: "button", onclick: () => dialog.close() }, "Cancel")));
    const refresh = () => {
      templateBox.hidden = form.payload_format.value !== "template";
      showPreview(form, preview);
    };
    form.addEventListener("change", refresh);
    let typing = null;
    form.template.addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(refresh, 300);
    });
    const dialog = formDialog("Edit endpoint", form, async () => {
      const body = {
        url: form.url.value.trim(),
        description: form.description.value.trim() || null,
        event_types: [...form.querySelectorAll("input[name=event]:checked")].map((i) => i.value),
        payload_format: form.payload_format.value,
        // Checked by the API (a whole number from 1 to 10,000), which says so at the field.
        rate_limit: form.rate_limit.value.trim() === "" ? null : Number(form.rate_limit.value),
      };
      if (body.payload_format === "template") body.template = form.template.value;
      // A merge patch: removed ones are null, added or replaced ones their values.
      const headers = headerLines(form.headers.value);
      form.querySelectorAll("input[name=remove_header]:checked").forEach((i) => { headers[i.value] = null; });
      if (Object.keys(headers).length) body.headers = headers;
      await api("PATCH", `/venues/{venue}/endpoints/${encodeURIComponent(ep.id)}`, body);
      endpoint(ep.id, h("p", { class: "ok-box" }, "Saved."));
    });
    refresh();
  }

  // The exact body the receiver gets for the catalog example of the chosen type, rendered by
  // the API as deliveries are; a template that does not apply shows why, next to it.
  let previewRun = 0;
  async function showPreview(form, preview) {
    const run = ++previewRun;
    const templateBox = form.querySelector("[data-field=template]");
    templateBox.querySelectorAll(".field-error").forEach((e) => e.remove());
    const body = { event_type: form.preview_type.value, payload_format: form.payload_format.value };
    if (body.payload_format === "template") body.template = form.template.value;
    try {
      const rendered = await api("POST", "/venues/{venue}/payload-preview", body);
      if (run === previewRun) preview.textContent = rendered.body;
    } catch (err) {
      if (run !== previewRun || err.status === 401) return;
      preview.textContent = "";
      const where = err.field === "template" ? templateBox : form.querySelector("[data-field=preview]");
      where.append(h("p", { class: "field-error", role: "alert" }, err.message));
    }
  }

  function rotate(ep) {
    const bearer = ep.auth && ep.auth.mode === "bearer_token";
    // A signing secret can overlap with the old one (receivers accept either meanwhile); a
    // bearer token is replaced at once, by one the venue pastes or one generated.
    const choice = bearer
      ? h("div", { "data-field": "token" },
          h("p", {}, "The old token stops working as soon as you rotate. Update the receiving tool right after."),
          h("label", { for: "new_token" }, "Your new token (leave empty to have one generated)"),
          h("input", { id: "new_token", name: "new_token", autocomplete: "off" }))
      : h("div", { "data-field": "grace_period_seconds" },
          h("label", { for: "grace" }, "Keep the old one working for"),
          h("select", { id: "grace", name: "grace" },
            [[0, "No time: stop it now"], [3600, "1 hour"], [86400, "24 hours"], [604800, "7 days"]].map(([v, t]) =>
              h("option", { value: v, selected: v === 86400 }, t))));
    const form = h("form", {},
      h("h2", {}, bearer ? "Rotate token" : "Rotate secret"),
      choice,
      h("div", { "data-field": "form" }),
      h("div", { class: "bar" },
        h("button", { type: "submit", class: "primary" }, "Rotate"),
        h("button", { type: "button", onclick: () => dialog.close() }, "Cancel")));
    const dialog = formDialog("Rotate", form, async () => {
      const body = bearer
        ? (form.new_token.value ? { token: form.new_token.value } : {})
        : { grace_period_seconds: Number(form.grace.value) };
      const rotated = await api("POST", `/venues/{venue}/endpoints/${encodeURIComponent(ep.id)}/rotate`, body);
      setTimeout(() => shownOnce(rotated, bearer ? "Token rotated" : "Secret rotated"), 0);
    });
  }

  function remove(ep) {
    const form = h("form", {},
      h("h2", {}, "Delete endpoint"),
      h("p", {}, `Delete ${ep.url}? It stops receiving events at once; this cannot be undone.`),
      h("div", { "data-field": "form" }),
      h("div", { class: "bar" },
        h("button", { type: "submit", class: "danger" }, "Delete endpoint"),
        h("button", { type: "button", onclick: () => dialog.close() }, "Cancel")));
    const dialog = formDialog("Delete endpoint", form, async () => {
      await api("DELETE", `/venues/{venue}/endpoints/${encodeURIComponent(ep.id)}`);
      home(h("p", { class: "ok-box", role: "status" }, `Deleted ${ep.url}.`));
    });
  }

  function attemptOutcome(attempt) {
    const ok = attempt.succeeded !== undefined ? attempt.succeeded
      : attempt.status_code >= 200 && attempt.status_code < 300 && !attempt.error;
    return h("div", { class: ok ? "ok-box" : "error-box" },
      h("strong", {}, ok ? "Delivered" : "Failed"),
      ` — status ${attempt.status_code ?? "none"}, ${attempt.duration_ms} ms`,
      attempt.error_class ? h("div", {}, `${attempt.error_class}: ${attempt.error || ""}`) : null,
      attempt.hint ? h("div", {}, attempt.hint) : null);
  }

  async function sendTest(id, outcome) {
    outcome.replaceChildren(h("p", { class: "muted" }, "Sending…"));
    try {
      // The attempt itself, with `succeeded`.
      const attempt = await api("POST", `/venues/{venue}/endpoints/${encodeURIComponent(id)}/test`, {});
      outcome.replaceChildren(attemptOutcome(attempt));
    } catch (err) {
      if (err.status !== 401) outcome.replaceChildren(h("div", { class: "error-box" }, err.message));
    }
  }

  // `before` holds the cursors of the pages before this one (the first page's is null), so that
  // "Previous page" goes back the way "Next page" came.
  async function history_(id, filters, cursor, before) {
    filters = filters || {};
    before = before || [];
    loading();
    const query = new URLSearchParams({ limit: "20" });
    if (filters.status) query.set("status", filters.status);
    if (filters.event_type) query.set("event_type", filters.event_type);
    if (cursor) query.set("cursor", cursor);
    const page = await api("GET", `/venues/{venue}/endpoints/${encodeURIComponent(id)}/deliveries?${query}`);
    const status = h("select", { id: "f_status", "aria-label": "Status" },
      [["", "Any status"], ["succeeded", "Succeeded"], ["failed", "Failed"], ["pending", "Pending"]].map(([v, t]) =>
        h("option", { value: v, selected: (filters.status || "") === v }, t)));
    const type = h("select", { id: "f_type", "aria-label": "Event type" },
      h("option", { value: "" }, "Any event type"),
      catalog.map((t) => h("option", { value: t.type, selected: filters.event_type === t.type }, t.type)));
    const apply = () => history_(id, { status: status.value, event_type: type.value });
    status.addEventListener("change", apply);
    type.addEventListener("change", apply);
    const replayOutcome = h("div", { role: "status" });
    // "Replay failed" since a time (a day ago unless chosen), in the viewer's time zone.
    const dayAgo = new Date(Date.now() - 24 * 3600 * 1000);
    const local = new Date(dayAgo.getTime() - dayAgo.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
    const since = h("input", { id: "replay_since", type: "datetime-local", value: local, "aria-label": "Replay failed since" });
    show(
      h("p", {}, h("a", { href: "#", onclick: (e) => { e.preventDefault(); endpoint(id); } }, "← Endpoint")),
      h("h1", {}, "Delivery history"),
      h("div", { class: "bar" }, status, type, h("span", { class: "spacer" }),
        since,
        h("button", { onclick: () => replay(id, new Date(since.value), replayOutcome) }, "Replay failed")),
      replayOutcome,
      page.data.length
        ? h("table", {},
            h("thead", {}, h("tr", {}, h("th", {}, "Status"), h("th", {}, "Event type"), h("th", {}, "Time"), h("th", {}, "Attempts"))),
            h("tbody", {}, page.data.map((d) => h("tr", {},
              h("td", { class: "status-" + d.status }, h("a", { href: "#", onclick: (e) => { e.preventDefault(); delivery(id, d.id); } }, d.status),
                d.held ? h("div", { class: "muted held" }, heldNote(d.held)) : null),
              h("td", {}, d.event_type),
              h("td", {}, when(d.created_at)),
              h("td", {}, String(d.attempt_count))))))
        : h("p", { class: "muted" }, "No deliveries."),
      before.length || page.next_cursor
        ? h("nav", { class: "bar", "aria-label": "Pages" },
            before.length
              ? h("button", { onclick: () => history_(id, filters, before[before.length - 1], before.slice(0, -1)) }, "Previous page")
              : null,
            h("span", { class: "muted" }, `Page ${before.length + 1}`),
            page.next_cursor
              ? h("button", { onclick: () => history_(id, filters, page.next_cursor, before.concat([cursor || null])) }, "Next page")
              : null)
        : null
    );
  }

  // Why a pending delivery waits without being attempted, in a few words.
  function heldNote(held) {
    if (held.reason === "endpoint_disabled") return "Held: kept until the endpoint is enabled";
    if (held.reason === "host_not_answering")
      return `Held: the receiving server is not answering; next look ${when(held.next_look)}`;
    return `Held: the receiver kept failing; next look ${when(held.next_look)}`;
  }

  async function delivery(endpointId, id) {
    loading();
    const d = await api("GET", `/venues/{venue}/deliveries/${encodeURIComponent(id)}`);
    const outcome = h("div", { role: "status" });
    show(
      h("p", {}, h("a", { href: "#", onclick: (e) => { e.preventDefault(); history_(endpointId); } }, "← Delivery history")),
      h("h1", {}, `${d.event_type}: ${d.status}`),
      h("p", { class: "muted" }, `Event ${d.event_id}, delivery ${d.id}`),
      d.held ? h("div", { class: "warning", role: "note" },
        `${d.held.message.charAt(0).toUpperCase()}${d.held.message.slice(1)}.`,
        d.held.next_look ? ` Next look: ${when(d.held.next_look)}.` : "") : null,
      h("div", { class: "bar" }, h("button", { class: "primary", onclick: async () => {
        outcome.replaceChildren(h("p", { class: "muted" }, "Sending…"));
        try {
          const attempt = await api("POST", `/venues/{venue}/deliveries/${encodeURIComponent(id)}/retry`, {});
          outcome.replaceChildren(attemptOutcome(attempt));
        } catch (err) {
          if (err.status !== 401) outcome.replaceChildren(h("div", { class: "error-box" }, err.message));
        }
      } }, "Retry")),
      outcome,
      h("h2", {}, "Attempts"),
      h("table", {},
        h("thead", {}, h("tr", {}, ["Time", "Trigger", "Status code", "Duration", "Answer", "Error", "What to check"].map((t) => h("th", {}, t)))),
        h("tbody", {}, (d.attempts || []).slice().reverse().map((a) => h("tr", {},
          h("td", {}, when(a.at)),
          h("td", {}, a.trigger),
          h("td", {}, a.status_code ?? "none"),
          h("td", {}, `${a.duration_ms} ms`),
          h("td", { class: "mono" }, (a.response_body || "").slice(0, 200)),
          h("td", {}, a.error_class ? `${a.error_class}: ${a.error || ""}` : ""),
          h("td", {}, a.hint || ""))))));
  }

  async function replay(id, since, outcome) {
    if (isNaN(since)) {
      outcome.replaceChildren(h("p", { class: "error-box" }, "Choose when the replay starts."));
      return;
    }
    try {
      let r = await api("POST", `/venues/{venue}/endpoints/${encodeURIComponent(id)}/replay`, { since: since.toISOString() });
      const progress = () => outcome.replaceChildren(h("p", { class: "ok-box" },
        `Replaying the failed deliveries since ${when(r.since)}: ${r.queued} of ${r.replaying} queued (${r.state}).`));
      progress();
      for (let i = 0; i < 30 && r.state === "running"; i++) {
        await new Promise((done) => setTimeout(done, 1000));
        r = await api("GET", `/venues/{venue}/endpoints/${encodeURIComponent(id)}/replays/${encodeURIComponent(r.replay_id)}`);
        progress();
      }
    } catch (err) {
      if (err.status !== 401) outcome.replaceChildren(h("div", { class: "error-box" }, err.message));
    }
  }

  // ---- start --------------------------------------------------------------------------------
  async function start() {
    session = readSession();
    if (!session) return expired();
    try {
      // The venue's event types (operational ones are the platform's).
      catalog = ((await api("GET", "/event-types")).event_types || []).filter((t) => !t.operational);
      await home();
    } catch (err) {
      if (err.status !== 401) show(h("h1", {}, "Webhooks"), h("p", { class: "error-box" }, err.message));
    }
  }

  start();
})();
