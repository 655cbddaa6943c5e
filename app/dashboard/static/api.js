// The JSON API from the browser: the API key kept in localStorage, errors turned into the API's own
// words (a problem's `detail`, or each invalid field of a 422), and Server-Sent Events read with fetch(),
// since EventSource cannot send the X-API-Key header.

const KEY_STORAGE = "metaserve.key";

/** An HTTP error answer, its message taken from the body's `detail`. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The API key the user gave, or "". */
export function storedKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

/** Keep `key` for the next visits too; an empty key forgets it. */
export function storeKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

/** Store a key given in the URL fragment (`/#key=ms_...`, which browsers never send to the server) and
 * take it out of the address bar and the history; whether there was one. */
export function keyFromFragment() {
  const key = new URLSearchParams(location.hash.slice(1)).get("key");
  if (!key) return false;
  storeKey(key);
  history.replaceState(null, "", location.pathname + location.search);
  return true;
}

/** `method path` with the key and `body` as JSON; the parsed answer (null for a 204). */
export async function call(method, path, body) {
  const headers = { "X-API-Key": storedKey() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await apiError(response);
  return response.status === 204 ? null : response.json();
}

/** Read the event stream at `path`, calling `onEvent(name, data)` with each event's parsed JSON, until the
 * server closes it or `signal` aborts. */
export async function streamEvents(path, onEvent, signal) {
  const response = await fetch(path, {
    headers: { "X-API-Key": storedKey(), Accept: "text/event-stream" },
    signal,
  });
  if (!response.ok) throw await apiError(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    // An event ends at a blank line; sse-starlette ends lines with \r\n.
    for (let end = buffer.search(/\r\n\r\n|\n\n|\r\r/); end >= 0; end = buffer.search(/\r\n\r\n|\n\n|\r\r/)) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 4 : 2));
      const event = parseEvent(block);
      if (event) onEvent(event.name, JSON.parse(event.data));
    }
  }
}

/** One SSE block's event name and data; null for a block of comments only (sse-starlette's pings). */
function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split(/\r\n|\r|\n/)) {
    const colon = line.indexOf(":");
    if (colon === 0) continue;
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { name, data: data.join("\n") } : null;
}

async function apiError(response) {
  let detail = null;
  try {
    detail = (await response.json()).detail;
  } catch {
    // Not JSON (a proxy's page): the status line says what there is to say.
  }
  return new ApiError(response.status, `${response.status} ${describe(detail) || response.statusText}`);
}

/** A problem's `detail` as one line: a string as it is, a 422's list as "field: message; ...". */
function describe(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((p) => `${(p.loc || []).filter((part) => part !== "body").join(".")}: ${p.msg}`)
      .join("; ");
  }
  return "";
}
