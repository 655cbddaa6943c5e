// The sinusoid playground: points clicked on a plot are the support set; the page adapts the chosen
// regressor to them with 1…K inner steps (one /adapt each, batched by the server), draws the curve after
// every step beside the initialization's, and deletes the sessions once their curves are drawn.

import { call } from "./api.js";
import { Chart } from "./plot.js";
import { figure, fillModels, report } from "./ui.js";

const GRID = Array.from({ length: 101 }, (_, i) => Number((-5 + i * 0.1).toFixed(1)));
const X_RANGE = [-5, 5];
const Y_RANGE = [-6, 6];
const DEBOUNCE_MS = 150;
const PICK_PIXELS = 9;
const STYLES = {
  truth: { color: "#2b8a3e", dash: [6, 4], label: "true function" },
  init: { color: "#8a90a0", dash: [4, 3], label: "initialization (0 steps)" },
  step: { color: "rgba(47, 111, 235, 0.22)", width: 1.5 },
  shown: { color: "#e8590c", width: 2.5 },
};
const POINT_COLOR = "#1c2030";

/** Wire the playground inside `root`; its `setModels(models)` fills the model list from GET /models. */
export function mountSinusoid(root) {
  const $ = (id) => root.querySelector(`#${id}`);
  const canvas = $("sine-plot");
  const chart = new Chart(canvas, { xLabel: "x", yLabel: "y" });
  const state = { points: [], truth: null, curves: [], sessions: [], generation: 0, timer: 0 };

  function draw() {
    const shown = Math.min(Number($("sine-shown").value), state.curves.length - 1);
    $("sine-steps-value").textContent = $("sine-steps").value;
    $("sine-shown-value").textContent = shown < 0 ? "–" : shown;
    const series = [];
    if (state.truth) series.push(line(GRID.map(state.truth), STYLES.truth));
    if (state.curves.length) series.push(line(state.curves[0], STYLES.init));
    const others = state.curves.map((_, k) => k).filter((k) => k > 0 && k !== shown);
    others.forEach((k, i) =>
      series.push(line(state.curves[k], { ...STYLES.step, label: i ? "" : "other steps" })),
    );
    if (shown > 0) {
      const label = `after ${shown} step${shown > 1 ? "s" : ""}`;
      series.push(line(state.curves[shown], { ...STYLES.shown, label }));
    }
    chart.draw({
      x: X_RANGE,
      y: Y_RANGE,
      series,
      markers: state.points.map(([x, y]) => ({ x, y, color: POINT_COLOR })),
    });
    canvas.dataset.points = state.points.length;
    canvas.dataset.support = JSON.stringify(supportSet(state.points));
    canvas.dataset.shown = shown;
    canvas.dataset.curve = shown < 0 ? "" : JSON.stringify({ steps: shown, x: GRID, y: state.curves[shown] });
    $("sine-stats").textContent = stats(state.sessions[shown], state.sessions[state.sessions.length - 1]);
  }

  function schedule() {
    canvas.dataset.status = "adapting";
    clearTimeout(state.timer);
    state.timer = setTimeout(refresh, DEBOUNCE_MS);
  }

  async function refresh() {
    const generation = ++state.generation;
    const model = $("sine-model").value;
    if (!model) {
      canvas.dataset.status = "idle";
      return;
    }
    const steps = Number($("sine-steps").value);
    const lr = Number($("sine-lr").value) || undefined;
    const support = supportSet(state.points);
    try {
      const initial = call("POST", "/predict", { model, x: GRID }).then((answer) => ({
        ys: answer.predictions,
        session: null,
      }));
      const adapted = support.x.length
        ? Array.from({ length: steps }, (_, i) => adaptedCurve(model, support, i + 1, lr))
        : [];
      const results = await Promise.all([initial, ...adapted]);
      if (generation !== state.generation) return;
      state.curves = results.map((r) => r.ys);
      state.sessions = results.map((r) => r.session);
      const shown = $("sine-shown");
      const followsLast = Number(shown.value) >= Number(shown.max);
      shown.max = state.curves.length - 1;
      if (followsLast || Number(shown.value) > Number(shown.max)) shown.value = shown.max;
      canvas.dataset.status = "ready";
      draw();
    } catch (error) {
      if (generation === state.generation) canvas.dataset.status = "error";
      report(error);
    }
  }

  canvas.addEventListener("click", (event) => {
    const [x, y] = chart.toData(event);
    const near = state.points.findIndex(
      ([px, py]) => Math.hypot(chart.px(px) - chart.px(x), chart.py(py) - chart.py(y)) < PICK_PIXELS,
    );
    if (near >= 0) {
      state.points.splice(near, 1);
    } else if (x >= X_RANGE[0] && x <= X_RANGE[1] && y >= Y_RANGE[0] && y <= Y_RANGE[1]) {
      state.points.push([round(x), round(y)]);
    } else {
      return;
    }
    draw();
    schedule();
  });
  $("sine-random").addEventListener("click", () => {
    const amplitude = 0.1 + Math.random() * 4.9;
    const phase = Math.random() * Math.PI;
    state.truth = (x) => amplitude * Math.sin(x - phase);
    state.points = Array.from({ length: 5 }, () => {
      const x = round(-5 + Math.random() * 10);
      return [x, round(state.truth(x))];
    });
    draw();
    schedule();
  });
  $("sine-undo").addEventListener("click", () => {
    state.points.pop();
    draw();
    schedule();
  });
  $("sine-clear").addEventListener("click", () => {
    state.points = [];
    state.truth = null;
    draw();
    schedule();
  });
  for (const id of ["sine-model", "sine-steps", "sine-lr"]) $(id).addEventListener("change", schedule);
  for (const id of ["sine-steps", "sine-shown"]) $(id).addEventListener("input", draw);
  new ResizeObserver(draw).observe(canvas);

  return {
    setModels(models) {
      const regressors = models.filter(
        (m) => m.kind === "regression" && m.ways === 1 && m.input_shape.join() === "1",
      );
      const before = $("sine-model").value;
      fillModels($("sine-model"), regressors);
      const chosen = regressors.find((m) => m.ref === $("sine-model").value);
      $("sine-lr").placeholder = chosen ? String(chosen.inner.lr) : "";
      if (!chosen || chosen.ref !== before) schedule();
    },
  };
}

/** Adapt `model` to `support` with `steps` inner steps; the session and its predictions on the grid. The
 * session is deleted once predicted: the curve is all the page keeps of it. */
async function adaptedCurve(model, support, steps, lr) {
  const session = await call("POST", "/adapt", { model, support, steps, lr });
  try {
    const answer = await call("POST", "/predict", { session_id: session.session_id, x: GRID });
    return { ys: answer.predictions, session };
  } finally {
    await call("DELETE", `/sessions/${session.session_id}`);
  }
}

/** The support set of clicked `points` as /adapt takes it. */
function supportSet(points) {
  return { x: points.map((p) => p[0]), y: points.map((p) => p[1]) };
}

/** A curve over the grid with its drawing style, as `Chart.draw` takes it. */
function line(ys, style) {
  return { points: GRID.map((x, i) => [x, ys[i]]), ...style };
}

function round(value) {
  return Number(value.toFixed(3));
}

/** The support loss of the shown step's session and of the last one. */
function stats(shown, last) {
  if (!last) return "Click the plot to add support points (click a point again to remove it).";
  const at = shown && shown !== last ? ` · after ${shown.steps}: ${figure(shown.loss_after)}` : "";
  const loss = `initialization ${figure(last.loss_before)} → ${figure(last.loss_after)}`;
  const took = `${last.support_size} points · ${figure(last.adapt_ms, 2)} ms to adapt`;
  return `support MSE: ${loss} after ${last.steps} steps of lr ${last.lr}${at} · ${took}`;
}
