// Live logs of a session: the NDJSON follow stream of GET /v1/sessions/{id}/logs, read with
// fetch so the bearer header (or the login cookie) authenticates it. Shown as text only.

import { request } from "./api.js";

/** Keep at most this many characters on screen (the stream can run for hours). */
const KEEP = 200_000;

export function followLogs(id, pre, status) {
  const controller = new AbortController();
  (async () => {
    try {
      const response = await request(
        `/v1/sessions/${encodeURIComponent(id)}/logs?follow=true&tail=200`,
        { signal: controller.signal },
      );
      status.textContent = "following";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let pending = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += value;
        const lines = pending.split("\n");
        pending = lines.pop();
        for (const line of lines) show(pre, line);
      }
      status.textContent = "the log stream ended";
    } catch (err) {
      if (err.name !== "AbortError") status.textContent = `logs: ${err.message}`;
    }
  })();
  return () => controller.abort();
}

function show(pre, line) {
  if (!line.trim()) return; // keepalive
  let entry;
  try {
    entry = JSON.parse(line);
  } catch {
    return;
  }
  let text;
  if (typeof entry.text === "string") text = entry.text;
  else if (entry.error) text = `error: ${entry.error.message ?? entry.error.code}`;
  else return;
  pre.append(document.createTextNode(text.endsWith("\n") ? text : text + "\n"));
  if (pre.textContent.length > KEEP) pre.textContent = pre.textContent.slice(-KEEP / 2);
  pre.scrollTop = pre.scrollHeight;
}
