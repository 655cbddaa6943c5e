// The models panel: every loaded initialization by name, each version with its inner-loop defaults, its
// recorded meta-test figures, and a button to promote it (admin keys only).

import { call } from "./api.js";
import { busy, el, figure, inform, percent } from "./ui.js";

/** Wire the panel inside `root`; `onChange()` runs after a promotion, to reload the model lists. */
export function mountModels(root, onChange) {
  const body = root.querySelector("#models-body");

  return {
    /** Draw `models` (GET /models), with each name's cards and metrics (GET /models/{name}). */
    async show(models) {
      const names = [...new Set(models.map((m) => m.name))];
      const details = await Promise.all(
        names.map((name) => call("GET", `/models/${encodeURIComponent(name)}`)),
      );
      body.replaceChildren(...details.flatMap((detail) => detail.versions.map((v) => row(v, onChange))));
      if (!models.length) {
        body.append(el("tr", {}, [el("td", { colspan: 6, class: "hint", text: "No model is loaded." })]));
      }
    },
  };
}

function row(version, onChange) {
  const promote = el("button", {
    class: "small",
    type: "button",
    text: "promote",
    title: `serve ${version.ref} for bare ${version.name}`,
  });
  promote.addEventListener("click", () =>
    busy(promote, async () => {
      await call("POST", `/models/${encodeURIComponent(version.name)}/promote`, { version: version.version });
      inform(`${version.name} now serves ${version.ref}.`);
      await onChange();
    }),
  );
  const lr = Array.isArray(version.inner.lr)
    ? version.inner.lr.map((r) => figure(r)).join(", ")
    : version.inner.lr;
  return el("tr", { "data-model": version.ref }, [
    el("td", {}, [
      el("strong", { text: version.ref }),
      version.default ? el("span", { class: "badge", text: "default" }) : "",
    ]),
    el("td", { text: `${version.algorithm} · ${version.family}` }),
    el("td", { text: version.kind === "classification" ? `${version.ways}-way classifier` : "regressor" }),
    el("td", { text: `${version.inner.steps} × ${lr} (${version.inner.adapts})` }),
    el("td", {}, metrics(version.metrics)),
    el("td", {}, [version.default ? "" : promote]),
  ]);
}

/** One line per recorded protocol: metaserve's figure ± its 95% interval, beside the baselines'. */
function metrics(recorded) {
  const lines = Object.entries(recorded).map(([protocol, figures]) => {
    const ours = figures.metaserve || {};
    const baselines = Object.entries(figures)
      .filter(([name]) => name !== "metaserve" && name !== "protocol")
      .map(([name, f]) => `${name} ${headline(f)}`);
    return el("div", { class: "metric" }, [
      el("span", { class: "protocol", text: protocol }),
      el("strong", { text: headline(ours) }),
      baselines.length ? el("span", { class: "hint", text: ` (${baselines.join("; ")})` }) : "",
    ]);
  });
  return lines.length ? lines : [el("span", { class: "hint", text: "none recorded" })];
}

/** Accuracy when there is one, else loss: mean ± 95% interval. */
function headline(figures) {
  if (figures.accuracy) return `${percent(figures.accuracy.mean)} ± ${percent(figures.accuracy.ci95)}`;
  if (figures.loss) return `loss ${figure(figures.loss.mean)} ± ${figure(figures.loss.ci95, 2)}`;
  return "–";
}
