// Server-Sent Events client for job / teacher streams. EventSource resends Last-Event-ID on reconnect,
// and the server replays from there, so a dropped connection loses no points and duplicates none.

import { api, authUrl } from "./api.js";

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

/**
 * Follow one job's stream: `show(j)` with each newer state of the job (`current()`: the job as the page
 * holds it); `handlers`: the stream's other events (metric, log). Returns a function that closes it.
 *
 * The stream replays the job's past status events first, so a page opened on a finished job would flick
 * back through queued and running. A status event that would move the job (another status or attempt)
 * is checked against the job as it is now (one read, again if more came meanwhile); one that only updates
 * its progress or message is shown as it comes.
 */
export function followJob(current, show, handlers = {}) {
  const id = current().id;
  let reading = false;
  let again = false;
  let closed = false;
  async function showAsItIs() {
    if (reading) {
      again = true;
      return;
    }
    reading = true;
    try {
      do {
        again = false;
        const job = await api.get(`/jobs/${id}`);
        if (!closed) show(job);
      } while (again && !closed);
    } catch {
      // the next event, or a reload, shows it
    } finally {
      reading = false;
    }
  }
  const close = subscribe(`/jobs/${id}/events`, {
    ...handlers,
    status: (j) => {
      const held = current();
      if (reading || j.status !== held.status || j.attempts !== held.attempts) showAsItIs();
      else show(j);
    },
  });
  return () => {
    closed = true;
    close();
  };
}
