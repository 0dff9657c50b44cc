// The SayPI API from the page: same origin, relative URLs, the token only in a header.

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

// The session (user id and token) lives in this tab's sessionStorage only.
const SESSION_KEY = "saypi.playground.session";

export function loadSession() {
  try {
    const session = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    return session && session.id && session.token ? session : null;
  } catch {
    return null;
  }
}

export function saveSession(session) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

export function clearSession() {
  sessionStorage.removeItem(SESSION_KEY);
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const header = response.headers.get("Retry-After");
  const retryAfter = header !== null ? Number(header) : null;
  let message = body && typeof body.message === "string"
    ? body.message : `The API answered ${response.status}.`;
  if (response.status === 429 && retryAfter !== null) {
    message += ` Wait ${retryAfter} s before trying again.`;
  }
  return new ApiError(response.status, body && body.code, message, retryAfter);
}

// One call: JSON in, JSON out. Returns {status, body, etag}; throws ApiError on 4xx/5xx.
export async function call(method, path, {token, body, etag} = {}) {
  const headers = {Accept: "application/json"};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (etag) headers["If-None-Match"] = etag;
  let response;
  try {
    response = await fetch(path, {
      method, headers, cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, null, "SayPI could not be reached; check the connection.", null);
  }
  if (response.status === 304) return {status: 304, body: null, etag};
  if (!response.ok) throw await errorFrom(response);
  const text = response.status === 204 ? "" : await response.text();
  return {status: response.status, body: text ? JSON.parse(text) : null,
          etag: response.headers.get("ETag")};
}

// Every item of a list endpoint, oldest first, following starting_after.
export async function listAll(path, token, cursorOf) {
  const items = [];
  let after = null;
  for (;;) {
    const query = new URLSearchParams({limit: "100"});
    if (after !== null) query.set("starting_after", after);
    const {body} = await call("GET", `${path}?${query}`, {token});
    items.push(...body.data);
    if (!body.has_more || body.data.length === 0) return items;
    after = cursorOf(body.data[body.data.length - 1]);
  }
}

// The newest `limit` objects of a list, newest first, and whether older ones exist.
// The API lists oldest first, so the first call walks forward to the end.
export async function newestPage(path, token, limit) {
  let after = null;
  let last = [];
  for (;;) {
    const query = new URLSearchParams({limit: "100"});
    if (after !== null) query.set("starting_after", after);
    const {body} = await call("GET", `${path}?${query}`, {token});
    if (body.data.length) last = after === null ? body.data : last.concat(body.data).slice(-100);
    if (!body.has_more || body.data.length === 0) break;
    after = body.data[body.data.length - 1].id;
  }
  const page = last.slice(-limit);
  return {items: page.reverse(), hasOlder: last.length > limit || after !== null};
}

// The `limit` objects right before `beforeId`, newest first.
export async function olderPage(path, token, beforeId, limit) {
  const query = new URLSearchParams({limit: String(limit), ending_before: beforeId});
  const {body} = await call("GET", `${path}?${query}`, {token});
  return {items: body.data.slice().reverse(), hasOlder: body.has_more};
}

// GET /events/stream read with fetch (EventSource cannot send the bearer header): calls
// onOpen() once the stream answered, then onMessage({id, event, data, retry}) for each
// message, until the stream ends (resolves) or fails (throws ApiError). `signal` aborts it.
export async function followEvents(path, {token, lastId, signal, onOpen, onMessage}) {
  const headers = {Accept: "text/event-stream", Authorization: `Bearer ${token}`};
  if (lastId) headers["Last-Event-ID"] = lastId;
  let response;
  try {
    response = await fetch(path, {headers, cache: "no-store", credentials: "omit", signal});
  } catch (error) {
    if (signal && signal.aborted) return;
    throw new ApiError(0, null, "The event stream could not be reached.", null);
  }
  if (!response.ok) throw await errorFrom(response);
  if (!response.body) throw new ApiError(0, null, "This browser cannot read streams.", null);
  onOpen();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const message = {};
        const data = [];
        for (const line of block.split("\n")) {
          if (line === "" || line.startsWith(":")) continue; // a heartbeat
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? "" : line.slice(colon + 1);
          if (text.startsWith(" ")) text = text.slice(1);
          if (field === "data") data.push(text);
          else if (field === "id" || field === "event") message[field] = text;
          else if (field === "retry" && /^\d+$/.test(text)) message.retry = Number(text);
        }
        if (data.length) message.data = JSON.parse(data.join("\n"));
        if (Object.keys(message).length) onMessage(message);
      }
    }
  } catch (error) {
    if (signal && signal.aborted) return;
    throw new ApiError(0, null, "The event stream was cut.", null);
  }
}
