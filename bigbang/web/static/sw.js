/* bigbang field app service worker: the pages a technician opened keep working without a network.
   Network first (the newest state when there is a connection), the cached copy when there is none.
   Only GETs of the technician's pages and the app's own script; POSTs are queued by field.js. */
"use strict";
const CACHE = "bigbang-pages-v1";

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(["/static/field.js"])).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k.startsWith("bigbang-") && k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

function cacheable(url) {
  if (url.origin !== self.location.origin) return false;
  const p = url.pathname;
  if (p.endsWith(".pdf")) return false;
  return p === "/" || p.startsWith("/l/") || p === "/board" || p.startsWith("/static/");
}

self.addEventListener("fetch", (event) => {
  const req = event.request;
  if (req.method !== "GET") return;
  const url = new URL(req.url);
  if (!cacheable(url)) return;
  const key = url.origin + url.pathname;  // ?msg=saved and the like are the same page
  event.respondWith(fetch(req).then((resp) => {
    if (resp.ok && !resp.redirected && resp.type === "basic") {
      const copy = resp.clone();
      caches.open(CACHE).then((c) => c.put(key, copy));
    }
    return resp;
  }).catch(() => caches.open(CACHE).then((c) => c.match(key)).then((hit) => hit || new Response(
    "<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>" +
    "<title>Offline</title><p style='font:18px system-ui;padding:1em'>No connection, and this page was not opened " +
    "on this phone before. Go back to a location you opened.</p>",
    {status: 503, headers: {"Content-Type": "text/html; charset=utf-8"}}))));
});

self.addEventListener("message", (event) => {
  if (event.data === "forget") event.waitUntil(caches.delete(CACHE));
});
