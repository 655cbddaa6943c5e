// The jobs panel: submit a meta-training job, list the key's jobs with cancel and promote buttons, and
// watch one job's loss and accuracy curves grow live from its event stream (GET /jobs/{id}/events).

import { call, streamEvents } from "./api.js";
import { Chart, extent } from "./plot.js";
import { busy, el, figure, inform, percent, report, when } from "./ui.js";

const PAGE_SIZE = 50;
const LIVE = new Set(["queued", "running"]);
const COLORS = { train: "#2f6feb", val: "#e8590c", accuracy: "#2b8a3e" };

/** Wire the panel inside `root`; `onPublished()` runs after a promotion, to reload the model lists. */
export function mountJobs(root, onPublished) {
  const $ = (id) => root.querySelector(`#${id}`);
  const watch = $("job-watch");
  const lossChart = new Chart($("job-loss"), { xLabel: "iteration", yLabel: "loss" });
  const accuracyChart = new Chart($("job-accuracy"), { xLabel: "iteration", yLabel: "val accuracy" });
  const state = { rows: new Map(), watched: null, points: [], stream: null };

  function row(job) {
    const actions = [];
    if (LIVE.has(job.state)) actions.push(button("cancel", "danger", () => cancel(job)));
    if (job.state === "succeeded" && job.model) {
      actions.push(button(`promote ${job.model}`, "", () => promote(job.model)));
    }
    actions.push(button("watch", "", () => follow(job)));
    const tr = el(
      "tr",
      {
        "data-job": job.job_id,
        "data-state": job.state,
        class: job.job_id === state.watched?.job_id ? "selected" : "",
      },
      [
        el("td", {}, [
          el("strong", { text: job.spec.name }),
          el("div", { class: "hint mono", text: job.job_id }),
        ]),
        el("td", { text: `${job.spec.algorithm} · ${job.spec.family || "dataset"}` }),
        el("td", {}, [
          el("span", { class: `badge state-${job.state}`, text: job.state }),
          job.error ? el("div", { class: "hint", text: job.error }) : "",
        ]),
        el("td", {}, [progress(job)]),
        el("td", { text: job.model || "–" }),
        el("td", { text: when(job.created) }),
        el("td", { class: "actions" }, actions),
      ],
    );
    state.rows.set(job.job_id, tr);
    return tr;
  }

  function update(job) {
    const old = state.rows.get(job.job_id);
    if (old) old.replaceWith(row(job));
    if (state.watched?.job_id === job.job_id) {
      state.watched = job;
      watch.dataset.state = job.state;
      const published = job.model ? ` · published ${job.model}` : "";
      $("job-title").textContent = `${job.spec.name} · ${job.state} · iteration ${done(job)}${published}`;
    }
  }

  async function cancel(job) {
    update(await call("POST", `/jobs/${job.job_id}/cancel`));
  }

  async function promote(ref) {
    const [name, version] = ref.split("@");
    await call("POST", `/models/${encodeURIComponent(name)}/promote`, { version: Number(version) });
    inform(`${name} now serves ${ref}.`);
    await onPublished();
  }

  /** Watch `job`: its curves from the first point, live until it ends or another job is watched. */
  async function follow(job) {
    state.stream?.abort();
    const stream = (state.stream = new AbortController());
    state.points = [];
    watch.hidden = false;
    watch.dataset.job = job.job_id;
    for (const tr of state.rows.values()) tr.classList.toggle("selected", tr.dataset.job === job.job_id);
    state.watched = job;
    update(job);
    draw();
    try {
      await streamEvents(
        `/jobs/${job.job_id}/events`,
        (name, data) => {
          if (name === "metric") {
            state.points.push(data);
            draw();
          } else {
            update(data);
          }
        },
        stream.signal,
      );
    } catch (error) {
      if (error.name !== "AbortError") report(error);
    }
  }

  function draw() {
    const points = state.points;
    const train = {
      points: points.filter((p) => p.train_loss !== null).map((p) => [p.iteration, p.train_loss]),
      color: COLORS.train,
      label: "train loss",
    };
    const val = {
      points: points.map((p) => [p.iteration, p.val_loss]),
      color: COLORS.val,
      label: "validation loss",
    };
    // The axis grows with the run, so that a long job's first points are not squeezed against zero.
    const iterations = [0, Math.max(state.watched?.iteration || 0, ...points.map((p) => p.iteration), 1)];
    const [, top] = extent([train, val], 1, [0, 1]);
    lossChart.draw({ x: iterations, y: [0, top], series: [train, val] });
    const accuracy = points.filter((p) => p.val_accuracy !== null);
    $("job-accuracy").hidden = !accuracy.length;
    if (accuracy.length) {
      accuracyChart.draw({
        x: iterations,
        y: [0, 1],
        series: [
          {
            points: accuracy.map((p) => [p.iteration, p.val_accuracy]),
            color: COLORS.accuracy,
            label: "validation accuracy",
          },
        ],
      });
    }
    watch.dataset.points = points.length;
    $("job-last").textContent = latest(points[points.length - 1]);
  }

  const panel = {
    async refresh() {
      const page = await call("GET", `/jobs?size=${PAGE_SIZE}`);
      state.rows.clear();
      $("jobs-body").replaceChildren(...page.jobs.map(row));
      if (!page.jobs.length) {
        const empty = el("td", { colspan: 7, class: "hint", text: "No job yet: submit one above." });
        $("jobs-body").append(el("tr", {}, [empty]));
      }
    },
  };

  $("job-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    const spec = { name: form.get("name"), family: form.get("family"), algorithm: form.get("algorithm") };
    for (const field of ["iterations", "val_every", "meta_batch"]) {
      if (form.get(field)) spec[field] = Number(form.get(field));
    }
    busy(event.submitter || $("job-submit"), async () => {
      const job = await call("POST", "/jobs", spec);
      await panel.refresh();
      follow(job);
    });
  });

  return panel;
}

function button(text, kind, action) {
  const node = el("button", { class: `small ${kind}`, type: "button", text });
  node.addEventListener("click", () => busy(node, action));
  return node;
}

function progress(job) {
  return el("div", { class: "progress" }, [
    el("span", { class: "progress-fill", style: `width: ${(job.progress * 100).toFixed(1)}%` }),
    el("span", { class: "progress-text", text: done(job) }),
  ]);
}

/** The latest validation point in words. */
function latest(point) {
  if (!point) return "No validation point yet.";
  const losses = `train loss ${figure(point.train_loss)}, validation loss ${figure(point.val_loss)}`;
  const accuracy = point.val_accuracy === null ? "" : `, accuracy ${percent(point.val_accuracy)}`;
  return `iteration ${point.iteration}: ${losses}${accuracy}`;
}

/** "iteration of iterations", thousands separated. */
function done(job) {
  return `${job.iteration.toLocaleString()} of ${job.spec.iterations.toLocaleString()}`;
}
