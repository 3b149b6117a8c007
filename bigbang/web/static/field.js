/* bigbang field app: small answers to small actions, and nothing lost without a network.

   Every form with data-queue (a tick, a serial scan, a problem, a sign-off) is sent with fetch instead
   of reloading the page. Each submission goes into a queue on the phone (localStorage) first, with its
   own request key, and leaves it only when the server has answered: offline taps stay queued, are shown
   as "not sent yet (N)" and are sent when the connection returns. The server de-duplicates by request
   key, so sending twice never counts twice. Without JavaScript the same forms post and redirect. */
(function () {
  "use strict";
  var QUEUE = "bigbang.queue.v1", SENT = "bigbang.sent.v1", MAX_SENT = 300;
  var flushing = false;

  function read(name) { try { return JSON.parse(localStorage.getItem(name) || "[]"); } catch (e) { return []; } }
  function write(name, value) { localStorage.setItem(name, JSON.stringify(value)); }
  function newKey() {
    var a = new Uint8Array(12);
    (self.crypto || window.crypto).getRandomValues(a);
    return "q" + Array.prototype.map.call(a, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }
  function pageInfo() { return document.getElementById("field-page"); }
  function byId(id) { return document.getElementById(id); }

  function showQueue() {
    var el = byId("queue");
    if (!el) return;
    var mine = read(QUEUE);
    el.hidden = mine.length === 0;
    el.textContent = (el.getAttribute("data-label") || "Not sent yet") + " (" + mine.length + ")";
    document.body.classList.toggle("has-queue", mine.length > 0);
  }

  function showError(entry, message) {
    var box = byId("send-errors"), info = pageInfo();
    if (!box) { window.alert(message); return; }
    var p = document.createElement("p");
    p.className = "err";
    p.textContent = (info ? info.getAttribute("data-error") : "Not saved") + ": " + (entry.label || entry.kind) + " – " + message;
    box.appendChild(p);
  }

  /* What a queued action looks like on the page before the server has it. */
  function showPending(entry) {
    var info = pageInfo(), label = info ? info.getAttribute("data-queued") : "not sent yet";
    if (entry.kind === "check") {
      var row = byId(entry.fields.item);
      if (!row) return;
      var mark = row.querySelector(".queued");
      if (!mark) {
        mark = document.createElement("span");
        mark.className = "queued";
        row.querySelector(".item-text").prepend(mark);
      }
      var checking = entry.fields.action === "check";
      mark.textContent = (checking ? "✓ " : "↺ ") + label + " ";
      var done = row.querySelector(".done");
      if (done) done.hidden = !checking;
      var form = row.querySelector("form");
      if (form) {  // the next tap on this row undoes this one
        form.querySelector("input[name=action]").value = checking ? "uncheck" : "check";
        var value = form.querySelector("input[name=value]");
        if (value) { value.required = !checking; value.hidden = checking; }
      }
    } else if (entry.kind === "problem") {
      var list = byId("problem-list");
      if (!list || byId("pending-" + entry.fields.request_key)) return;
      var p = document.createElement("p");
      p.className = "problem queued";
      p.id = "pending-" + entry.fields.request_key;
      p.textContent = "⏳ " + label + ": " + entry.fields.text;
      var form2 = byId("problem-form");
      list.insertBefore(p, form2 || null);
      if (byId("no-problems")) byId("no-problems").hidden = true;
    } else if (entry.kind === "signoff") {
      var f = byId("signoff-form");
      if (f && !byId("pending-signoff")) {
        var s = document.createElement("p");
        s.id = "pending-signoff";
        s.className = "queued";
        s.textContent = "⏳ " + label;
        f.parentNode.insertBefore(s, f);
        f.hidden = true;
      }
    }
  }

  /* The server's answer: swap in the changed item's HTML (or the problem's). */
  function applyAnswer(entry, answer) {
    if (entry.kind === "check" && answer.html) {
      var row = byId(entry.fields.item);
      if (row) row.outerHTML = answer.html;
      if (answer.checked && byId("checked-count")) byId("checked-count").textContent = answer.checked;
    } else if (entry.kind === "problem") {
      var pending = byId("pending-" + entry.fields.request_key);
      if (answer.html && !byId("problem-" + entry.fields.request_key)) {
        var list = byId("problem-list"), tmp = document.createElement("div");
        tmp.innerHTML = answer.html;
        if (pending) pending.replaceWith(tmp.firstElementChild);
        else if (list) list.insertBefore(tmp.firstElementChild, byId("problem-form") || null);
      } else if (pending) pending.remove();
    }
  }

  function remember(entry, answer) {
    if (!answer.html) return;
    var sent = read(SENT);
    sent.push({page: entry.page, kind: entry.kind, item: entry.fields.item, key: entry.fields.request_key,
               html: answer.html, at: answer.at, checked: answer.checked});
    write(SENT, sent.slice(-MAX_SENT));
  }

  /* A page served from the phone's cache is older than what was sent since: replay the answers. */
  function replay() {
    var info = pageInfo();
    if (!info) return;
    var rendered = parseFloat(info.getAttribute("data-rendered") || "0"), path = info.getAttribute("data-path");
    read(SENT).forEach(function (s) {
      if (s.page === path && s.at > rendered) applyAnswer({kind: s.kind, fields: {item: s.item, request_key: s.key}}, s);
    });
    read(QUEUE).forEach(function (e) { if (e.page === path) showPending(e); });
  }

  function freshToken(entry) {
    return fetch(entry.page, {credentials: "same-origin", cache: "no-store"}).then(function (r) {
      if (r.redirected) return null;
      return r.text().then(function (html) {
        var m = /name="csrf_token" value="([^"]+)"/.exec(html);
        return m ? m[1] : null;
      });
    }).catch(function () { return null; });
  }

  function send(entry) {
    var body = new URLSearchParams();
    Object.keys(entry.fields).forEach(function (k) { body.append(k, entry.fields[k]); });
    return fetch(entry.url, {method: "POST", body: body, credentials: "same-origin",
                             headers: {"X-Bigbang-Fetch": "1", "Accept": "application/json"}});
  }

  function flush() {
    if (flushing) return Promise.resolve();
    flushing = true;
    var reload = false;
    function next() {
      var queue = read(QUEUE);
      if (!queue.length) return Promise.resolve();
      var entry = queue[0];
      return send(entry).then(function (resp) {
        if (resp.status === 403 && !entry.retried) {  // the session's form token changed (signed in again)
          return freshToken(entry).then(function (token) {
            var q = read(QUEUE);
            if (q.length && q[0].fields.request_key === entry.fields.request_key) {
              q[0].retried = true;
              if (token) q[0].fields.csrf_token = token;
              write(QUEUE, q);
            }
            return next();
          });
        }
        if (resp.status === 401) {  // signed out: keep everything, ask to sign in
          var info = pageInfo(), el = byId("queue");
          if (el && info) el.textContent += " – " + info.getAttribute("data-relogin");
          return "stop";
        }
        if (resp.status === 502 || resp.status === 503 || resp.status === 504) return "stop";  // a proxy: later
        return resp.json().catch(function () { return {ok: false, error: "HTTP " + resp.status}; }).then(function (answer) {
          var q = read(QUEUE).filter(function (e) { return e.fields.request_key !== entry.fields.request_key; });
          write(QUEUE, q);
          if (answer.ok) {
            applyAnswer(entry, answer);
            remember(entry, answer);
            if (answer.reload) reload = true;
          } else {
            showError(entry, (answer.error || "") + (answer.detail ? " (" + answer.detail + ")" : ""));
            var pending = byId("pending-" + entry.fields.request_key);
            if (pending) pending.remove();
            if (entry.kind === "signoff" && byId("signoff-form")) byId("signoff-form").hidden = false;
            if (byId("pending-signoff") && entry.kind === "signoff") byId("pending-signoff").remove();
          }
          showQueue();
          return next();
        });
      }, function () { return "stop"; });  // no connection: everything stays queued
    }
    return next().then(function () {
      flushing = false;
      showQueue();
      if (reload && navigator.onLine !== false) window.location.reload();
    }, function () { flushing = false; showQueue(); });
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.matches || !form.matches("form[data-queue]") || !window.fetch || !window.localStorage) return;
    event.preventDefault();
    var fields = {};
    new FormData(form).forEach(function (v, k) { fields[k] = String(v); });
    var info = pageInfo();
    var row = form.closest(".item");
    var entry = {kind: form.getAttribute("data-queue"), url: form.getAttribute("action"), fields: fields,
                 page: info ? info.getAttribute("data-path") : window.location.pathname, at: Date.now(),
                 label: row ? row.querySelector(".item-text").textContent.trim().split("\n")[0] : ""};
    var queue = read(QUEUE);
    queue.push(entry);
    write(QUEUE, queue);
    form.querySelector("input[name=request_key]").value = newKey();  // the next submission is a new request
    showPending(entry);
    if (entry.kind === "problem") form.reset();
    showQueue();
    flush();
  });

  document.addEventListener("submit", function (event) {  // signing out forgets the cached pages on this phone
    if (event.target.matches && event.target.matches("form[action='/logout']") && navigator.serviceWorker &&
        navigator.serviceWorker.controller) navigator.serviceWorker.controller.postMessage("forget");
  }, true);

  window.addEventListener("online", flush);
  window.addEventListener("focus", flush);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) flush(); });
  setInterval(flush, 10000);

  function start() {
    // A page from the phone's cache carries request keys that may have been used already: new ones.
    Array.prototype.forEach.call(document.querySelectorAll("form[data-queue] input[name=request_key]"),
                                 function (input) { input.value = newKey(); });
    replay();
    showQueue();
    flush();
    if ("serviceWorker" in navigator && window.isSecureContext) {
      navigator.serviceWorker.register("/sw.js", {scope: "/"}).then(function () {
        return navigator.serviceWorker.ready;
      }).then(function () {
        // The page in front of the technician came from the network before the worker was there: keep a copy.
        if (!navigator.serviceWorker.controller && pageInfo() && window.caches) {
          var path = window.location.pathname;
          fetch(path, {credentials: "same-origin"}).then(function (resp) {
            if (resp.ok && !resp.redirected) return caches.open("bigbang-pages-v1").then(function (c) {
              return c.put(window.location.origin + path, resp);
            });
          }).catch(function () {});
        }
      }).catch(function () {});
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
}());
