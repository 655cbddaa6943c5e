// The glyph playground: N classes × K drawings on small pads are the support set of a classifier that
// takes one-channel images; once adapted, each stroke on the query pad is classified, with the
// probability of every label. The page keeps one session, deleting the one it replaces.

import { call } from "./api.js";
import { Pad } from "./pad.js";
import { el, figure, fillModels, percent, report } from "./ui.js";

const MAX_SHOTS = 5;
// What "Sample characters" draws: none like another, even turned (no N and Z, no 6 and 9, no E and Σ).
const CHARACTERS = [..."ABDFGHJKMPRTY2347#&?@ΔΘΛΦΨΩбджлфщя"];

/** Wire the playground inside `root`; its `setModels(models)` fills the model list from GET /models. */
export function mountGlyphs(root) {
  const $ = (id) => root.querySelector(`#${id}`);
  const state = { models: [], rows: [], session: null, asked: 0 };
  const query = new Pad({ size: 112, label: "query drawing", onStroke: () => predict() });
  $("glyph-query").prepend(query.canvas);

  function chosenModel() {
    return state.models.find((m) => m.ref === $("glyph-model").value);
  }

  /** Lay out fresh pads for the chosen model, classes and shots; the old session is of no use now. */
  function build() {
    const model = chosenModel();
    const ways = model ? model.ways : 2;
    const classes = $("glyph-classes");
    classes.max = ways;
    classes.value = Math.min(Math.max(Number(classes.value) || 2, 2), ways);
    const shots = $("glyph-shots");
    shots.value = Math.min(Math.max(Number(shots.value) || 1, 1), MAX_SHOTS);
    state.rows = Array.from({ length: Number(classes.value) }, (_, c) => classRow(c, Number(shots.value)));
    $("glyph-grid").replaceChildren(...state.rows.map((row) => row.node));
    forget().catch(report);
  }

  /** Class `c`: its label field and `shots` pads in a row, with a button that clears them. */
  function classRow(c, shots) {
    const label = el("input", {
      class: "label",
      value: c < 26 ? String.fromCharCode(65 + c) : String(c + 1),
      "aria-label": `label of class ${c + 1}`,
      maxlength: 24,
    });
    const pads = Array.from(
      { length: shots },
      (_, k) => new Pad({ label: `class ${c + 1}, drawing ${k + 1}`, onStroke: stale }),
    );
    const clear = el("button", { class: "small", type: "button", text: "clear" });
    clear.addEventListener("click", () => {
      pads.forEach((pad) => pad.clear());
      stale();
    });
    return {
      label,
      pads,
      node: el("div", { class: "glyph-row" }, [label, ...pads.map((p) => p.canvas), clear]),
    };
  }

  /** Give each class a character of its own, drawn anew on every one of its pads. */
  function sample() {
    const pool = [...CHARACTERS];
    for (const row of state.rows) {
      const [character] = pool.splice(Math.floor(Math.random() * pool.length), 1);
      row.label.value = character;
      row.pads.forEach((pad) => pad.scribble(character));
    }
    stale();
  }

  /** Draw the label of a random class on the query pad, and classify it. */
  function sampleQuery() {
    const characters = state.rows.map((row) => row.label.value.trim()).filter((l) => [...l].length === 1);
    if (!characters.length) {
      report(new Error("The sample query draws a class's label: give the classes one-character labels."));
      return;
    }
    query.scribble(characters[Math.floor(Math.random() * characters.length)]);
    predict();
  }

  function stale() {
    if (state.session) setStatus("The drawings changed: adapt again to use them.", "stale");
  }

  function setStatus(text, status) {
    $("glyph-session").textContent = text;
    $("glyph-session").dataset.status = status;
  }

  async function forget() {
    const session = state.session;
    state.session = null;
    showResult(null);
    setStatus("Draw every example, then adapt.", "empty");
    if (session) await call("DELETE", `/sessions/${session.session_id}`);
  }

  async function adapt() {
    const labels = state.rows.map((row) => row.label.value.trim());
    const missing = state.rows
      .flatMap((row, c) => row.pads.map((pad, k) => (pad.inked ? null : `${labels[c] || c + 1} #${k + 1}`)))
      .filter(Boolean);
    if (missing.length) throw new Error(`Draw every example first; empty: ${missing.join(", ")}`);
    if (labels.some((l) => !l) || new Set(labels).size !== labels.length) {
      throw new Error("Give every class a label of its own.");
    }
    const x = state.rows.flatMap((row) => row.pads.map((pad) => pad.png()));
    const y = state.rows.flatMap((row, c) => row.pads.map(() => labels[c]));
    const session = await call("POST", "/adapt", { model: $("glyph-model").value, support: { x, y } });
    const replaced = state.session;
    state.session = session;
    showResult(null);
    const loss = `cross-entropy ${figure(session.loss_before)} → ${figure(session.loss_after)}`;
    const took = `${session.steps} steps (${figure(session.adapt_ms, 2)} ms)`;
    setStatus(
      `Adapted ${session.model}: ${session.support_size} drawings, ${loss} after ${took}. Draw a query.`,
      "adapted",
    );
    if (replaced) await call("DELETE", `/sessions/${replaced.session_id}`);
    if (query.inked) await predict();
  }

  async function predict() {
    if (!state.session || !query.inked) return;
    const asked = ++state.asked;
    try {
      const answer = await call("POST", "/predict", {
        session_id: state.session.session_id,
        x: [query.png()],
      });
      if (asked === state.asked) showResult(answer.predictions[0]);
    } catch (error) {
      report(error);
    }
  }

  /** The predicted label in large and a bar per label, most probable first. */
  function showResult(prediction) {
    const result = $("glyph-result");
    result.dataset.label = prediction ? prediction.label : "";
    result.dataset.probabilities = prediction ? JSON.stringify(prediction.probabilities) : "";
    if (!prediction) {
      result.replaceChildren(el("p", { class: "hint", text: "The prediction appears here." }));
      return;
    }
    const ranked = Object.entries(prediction.probabilities).sort((a, b) => b[1] - a[1]);
    result.replaceChildren(
      el("div", { class: "verdict" }, [
        el("span", { class: "hint", text: "looks like" }),
        el("strong", { text: String(prediction.label) }),
      ]),
      ...ranked.map(([label, p]) =>
        el("div", { class: "bar" }, [
          el("span", { class: "bar-label", text: label }),
          el("span", { class: "bar-track" }, [
            el("span", { class: "bar-fill", style: `width: ${(p * 100).toFixed(1)}%` }),
          ]),
          el("span", { class: "bar-value", text: percent(p) }),
        ]),
      ),
    );
  }

  $("glyph-adapt").addEventListener("click", async (event) => {
    const button = event.currentTarget;
    button.disabled = true;
    setStatus("Adapting…", "adapting");
    try {
      await adapt();
    } catch (error) {
      setStatus(error.message, "error");
    } finally {
      button.disabled = false;
    }
  });
  $("glyph-sample").addEventListener("click", sample);
  $("glyph-query-sample").addEventListener("click", sampleQuery);
  $("glyph-query-clear").addEventListener("click", () => {
    query.clear();
    showResult(null);
  });
  for (const id of ["glyph-model", "glyph-classes", "glyph-shots"]) $(id).addEventListener("change", build);

  return {
    setModels(models) {
      state.models = models.filter((m) => m.kind === "classification" && isImage(m.input_shape));
      const before = $("glyph-model").value;
      fillModels($("glyph-model"), state.models);
      if ($("glyph-model").value !== before || !state.rows.length) build();
    },
  };
}

/** Whether a model's input is a one-channel square image, which /adapt also takes as a PNG. */
function isImage(shape) {
  return shape.length === 3 && shape[0] === 1 && shape[1] === shape[2];
}
