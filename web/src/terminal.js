// The terminal of a session: xterm.js over the WebSocket GET /v1/sessions/{id}/terminal
// (subprotocol cubbi.tty.v1: binary frames carry bytes, text frames JSON controls). A lost
// connection reconnects and reattaches to the same PTY; the service replays its recent
// output, so the screen is cleared first and nothing shows twice.

import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { json, token } from "./api.js";

const PROTOCOL = "cubbi.tty.v1";
const KEEPALIVE_MS = 30_000;
/** The service keeps a detached terminal 5 minutes; stop trying a little after. */
const GIVE_UP_MS = 5 * 60_000;

export function openTerminal(id, host, status, { shell }) {
  const term = new Terminal({
    cursorBlink: true,
    fontFamily: "ui-monospace, Menlo, Consolas, 'DejaVu Sans Mono', monospace",
    fontSize: 14,
    scrollback: 5000,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(host);
  fit.fit();

  let socket = null;
  let closed = false;
  let lostSince = null;
  let retry = null;
  const encoder = new TextEncoder();

  const send = (data) => {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(data);
  };
  term.onData((data) => send(encoder.encode(data)));
  term.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0))));
  term.onResize(({ cols, rows }) => send(JSON.stringify({ type: "resize", cols, rows })));
  const keepalive = setInterval(() => send(JSON.stringify({ type: "ping" })), KEEPALIVE_MS);
  const refit = () => fit.fit();
  window.addEventListener("resize", refit);
  const observer = new ResizeObserver(refit);
  observer.observe(host);

  async function url() {
    const base = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}`;
    const query = new URLSearchParams({
      run: shell ? "shell" : "tool",
      cols: String(term.cols),
      rows: String(term.rows),
    });
    // A pasted token never goes into a URL: it buys a single-use ticket. The login cookie
    // goes along by itself (with this page's Origin).
    if (token()) {
      const answer = await json(`/v1/sessions/${encodeURIComponent(id)}/tickets`, {
        method: "POST",
        body: { purpose: "terminal" },
      });
      query.set("ticket", answer.ticket);
    }
    return `${base}/v1/sessions/${encodeURIComponent(id)}/terminal?${query}`;
  }

  async function connect() {
    retry = null;
    if (closed) return;
    status.textContent = lostSince ? "reconnecting…" : "connecting…";
    let target;
    try {
      target = await url();
    } catch (err) {
      return lost(`cannot open the terminal: ${err.message}`, err.status === 404);
    }
    if (closed) return;
    const ws = new WebSocket(target, PROTOCOL);
    ws.binaryType = "arraybuffer";
    socket = ws;
    let first = true;
    ws.onopen = () => {
      lostSince = null;
      status.textContent = "connected";
      term.focus();
    };
    ws.onmessage = (event) => {
      if (typeof event.data === "string") return control(event.data);
      if (first) {
        // The replay of a reattach starts the screen over.
        term.reset();
        first = false;
      }
      term.write(new Uint8Array(event.data));
    };
    ws.onclose = () => {
      if (socket === ws) socket = null;
      if (!closed && status.dataset.exited !== "yes") lost("connection lost", false);
    };
  }

  function control(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message.type === "exit") {
      status.dataset.exited = "yes";
      status.textContent = `the terminal ended (exit ${Number(message.code)})`;
    }
  }

  function lost(why, final) {
    lostSince ??= Date.now();
    if (final || Date.now() - lostSince > GIVE_UP_MS) {
      status.textContent = why;
      return;
    }
    status.textContent = `${why}; reconnecting…`;
    retry = setTimeout(connect, 1000);
  }

  connect();
  return () => {
    closed = true;
    clearInterval(keepalive);
    clearTimeout(retry);
    window.removeEventListener("resize", refit);
    observer.disconnect();
    if (socket) socket.close();
    term.dispose();
  };
}
