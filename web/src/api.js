// Calls to the service's /v1 API as the signed-in caller: a pasted API token (kept in
// sessionStorage, sent as a bearer header) or the OpenID Connect login's HttpOnly cookie
// (changes then repeat the readable cubbi_csrf cookie in X-CSRF-Token).

const TOKEN_KEY = "cubbi.token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function cookie(name) {
  for (const pair of document.cookie.split(";")) {
    const [key, ...rest] = pair.trim().split("=");
    if (key === name) return rest.join("=");
  }
  return null;
}

/** Headers that authenticate a request of `method`. */
export function authHeaders(method = "GET") {
  const headers = {};
  const bearer = token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  else if (method !== "GET") {
    const csrf = cookie("cubbi_csrf");
    if (csrf) headers["X-CSRF-Token"] = csrf;
  }
  return headers;
}

/** The service's error as an ApiError (its JSON body's code and message when it has one). */
async function failure(response) {
  let code = "http_" + response.status;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = String(body.error.code ?? code);
      message = String(body.error.message ?? message);
    }
  } catch {
    // Not JSON: keep the status line.
  }
  return new ApiError(response.status, code, message);
}

/** A request; the raw Response when ok, else throws an ApiError. */
export async function request(path, { method = "GET", body, signal } = {}) {
  const headers = authHeaders(method);
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "unreachable", `the service did not answer: ${err.message}`);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

export async function json(path, options) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}
