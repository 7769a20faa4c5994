// MailHarbor's web interface: live updates over Server-Sent Events.
// Hand-written, no build step; rows are built with textContent only.
"use strict";
(function () {
  function cell(className, text) {
    var td = document.createElement("td");
    td.className = className;
    td.textContent = text;
    return td;
  }
  function size(n) {
    if (n < 1024) { return n + " B"; }
    if (n < 1048576) { return (n / 1024).toFixed(1) + " KiB"; }
    return (n / 1048576).toFixed(1) + " MiB";
  }
  function row(s) {
    var tr = document.createElement("tr");
    tr.className = s.seen ? "message" : "message unread";
    tr.dataset.id = s.id;
    tr.dataset.mailbox = s.mailbox;
    tr.appendChild(cell("date", s.delivered.replace("T", " ").slice(0, 16)));
    tr.appendChild(cell("from", s.from || s.sender || ""));
    tr.appendChild(cell("to", s.recipient || s.to || ""));
    var subject = cell("subject", "");
    var a = document.createElement("a");
    a.className = "subject";
    a.href = "/m/" + encodeURIComponent(s.id);
    a.textContent = s.subject || "(no subject)";
    subject.appendChild(a);
    tr.appendChild(subject);
    tr.appendChild(cell("size", size(s.size)));
    var attach = cell("attach", "");
    if (s.hasAttachment) {
      var mark = document.createElement("span");
      mark.className = "attachment";
      mark.textContent = "attachment";
      attach.appendChild(mark);
    }
    tr.appendChild(attach);
    return tr;
  }
  function shown(table, mailbox) {
    var wanted = table.dataset.mailbox || "";
    return !wanted || mailbox === wanted || mailbox.indexOf(wanted + "/") === 0;
  }
  function bump(key, field, by) {
    var links = document.querySelectorAll("a.folder");
    for (var i = 0; i < links.length; i++) {
      if (links[i].dataset.key === key) {
        var span = links[i].querySelector("span." + field);
        if (span) { span.textContent = String(Math.max(0, parseInt(span.textContent, 10) + by)); }
      }
    }
  }
  function added(change) {
    bump(change.mailbox, "total", 1);
    if (!change.seen) { bump(change.mailbox, "unread", 1); bump(change.mailbox, "new", 1); }
    var table = document.getElementById("messages");
    if (!table || !shown(table, change.mailbox)) { return; }
    if (table.querySelector("tr.message[data-id=\"" + CSS.escape(change.id) + "\"]")) { return; }
    fetch("/api/v1/messages/" + encodeURIComponent(change.id), { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (found) {
        if (!found) { return; }
        if (table.querySelector("tr.message[data-id=\"" + CSS.escape(change.id) + "\"]")) { return; }
        prepend(table, [found.summary]);
      });
  }
  function prepend(table, summaries) {
    // Newest first, as the list is: put them above the rows there are.
    var body = table.tBodies[0] || table.appendChild(document.createElement("tbody"));
    var first = body.firstChild;
    for (var i = 0; i < summaries.length; i++) { body.insertBefore(row(summaries[i]), first); }
  }
  function caughtUp() {
    // The poll has looked since this page was made: fetch what came in
    // between, above the newest row shown, on the first page of a list.
    var table = document.getElementById("messages");
    var query = new URLSearchParams(window.location.search);
    if (!table || query.get("q") || query.get("cursor")) { return; }
    var wanted = table.dataset.mailbox || "";
    var url = "/api/v1/messages?limit=50" + (wanted ? "&mailbox=" + encodeURIComponent(wanted) : "");
    fetch(url, { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (page) {
        if (!page) { return; }
        var fresh = [];
        for (var i = 0; i < page.messages.length; i++) {
          var s = page.messages[i];
          if (table.querySelector("tr.message[data-id=\"" + CSS.escape(s.id) + "\"]")) { break; }
          fresh.push(s);
        }
        prepend(table, fresh);
      });
  }
  function start() {
    if (!window.EventSource) { return; }
    var source = new EventSource("/api/v1/events");
    source.onopen = function () { document.body.dataset.live = "open"; };
    source.onerror = function () { document.body.dataset.live = "closed"; };
    source.addEventListener("change", function (event) {
      var change = JSON.parse(event.data);
      if (change.kind === "new") { added(change); }
    });
    source.addEventListener("ready", caughtUp);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
