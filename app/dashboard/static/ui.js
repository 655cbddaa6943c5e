// Small DOM helpers shared by the dashboard's panels: building elements, formatting figures and showing
// what went wrong.

/** An element `tag` with `attributes` (`text` for its text, `class`, `data-*` and any other) and
 * `children` (elements or strings). */
export function el(tag, attributes = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

/** A number with `digits` significant digits, or "–" when there is none. */
export function figure(value, digits = 3) {
  return Number.isFinite(value) ? Number(value.toPrecision(digits)).toString() : "–";
}

/** A fraction as a percentage with one decimal. */
export function percent(value) {
  return Number.isFinite(value) ? `${(value * 100).toFixed(1)}%` : "–";
}

/** An ISO date as the user's local date and time. */
export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

/** Fill `select` with `models` (by ref), keeping the current choice, else the default version of the
 * first name. */
export function fillModels(select, models) {
  const previous = select.value;
  select.replaceChildren(...models.map((m) => new Option(`${m.ref}${m.default ? " (default)" : ""}`, m.ref)));
  const keep = models.find((m) => m.ref === previous) || models.find((m) => m.default) || models[0];
  select.value = keep ? keep.ref : "";
  select.disabled = !models.length;
}

/** Show `error` in the page's message bar (and the console, with its stack). */
export function report(error) {
  console.error(error);
  show(error instanceof Error ? error.message : String(error), "error");
}

/** Show a passing `message` in the page's message bar. */
export function inform(message) {
  show(message, "info");
}

/** Hide the message bar. */
export function dismiss() {
  document.getElementById("message").hidden = true;
}

function show(message, kind) {
  const bar = document.getElementById("message");
  bar.onclick = dismiss;
  bar.title = "click to dismiss";
  bar.textContent = message;
  bar.className = `message ${kind}`;
  bar.hidden = false;
  clearTimeout(show.timer);
  show.timer = setTimeout(dismiss, kind === "error" ? 12000 : 4000);
}

/** Run `work` (a promise-returning function) with `button` disabled meanwhile; errors are reported. */
export async function busy(button, work) {
  button.disabled = true;
  try {
    return await work();
  } catch (error) {
    report(error);
  } finally {
    button.disabled = false;
  }
}
