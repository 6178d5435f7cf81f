// Server-Sent Events client for job / teacher streams. EventSource resends Last-Event-ID on reconnect,
// and the server replays from there, so a dropped connection loses no points and duplicates none.

import { authUrl } from "./api.js";

const TYPES = ["metric", "status", "log", "end"];

/** handlers: {metric, status, log, end, error, open}; returns a function that closes the stream. */
export function subscribe(path, handlers) {
  const source = new EventSource(authUrl(path));
  let closed = false;
  for (const type of TYPES) {
    source.addEventListener(type, (ev) => {
      let data = null;
      try {
        data = JSON.parse(ev.data);
      } catch {
        data = ev.data;
      }
      if (handlers[type]) handlers[type](data, ev);
      // The job is finished and the server closes the stream: do not let EventSource reconnect.
      if (type === "end") close();
    });
  }
  source.onopen = () => handlers.open && handlers.open();
  source.onerror = (ev) => {
    if (!closed && handlers.error) handlers.error(ev, source.readyState);
  };
  function close() {
    closed = true;
    source.close();
  }
  return close;
}
