// The dashboard's entry point: takes the API key (from the URL fragment or the key field), switches
// between the panels, and loads the models every panel needs.

import { ApiError, call, keyFromFragment, storeKey, storedKey } from "./api.js";
import { mountGlyphs } from "./glyphs.js";
import { mountJobs } from "./jobs.js";
import { mountModels } from "./models.js";
import { mountSessions } from "./sessions.js";
import { mountSinusoid } from "./sinusoid.js";
import { dismiss, report } from "./ui.js";

const NEEDS_KEY =
  "This service needs an API key: paste one above, or open the link its first start logged (/#key=…); " +
  "`metaserve keys create NAME` makes more.";

const byId = (id) => document.getElementById(id);
const sinusoid = mountSinusoid(byId("playground"));
const glyphs = mountGlyphs(byId("playground"));
const models = mountModels(byId("models"), loadModels);
const jobs = mountJobs(byId("jobs"), loadModels);
const sessions = mountSessions(byId("sessions"));
const refreshers = {
  models: loadModels,
  jobs: jobs.refresh,
  sessions: sessions.refresh,
  playground: loadModels,
};

/** GET /models, handed to every panel that lists models. */
async function loadModels() {
  const loaded = await call("GET", "/models");
  sinusoid.setModels(loaded);
  glyphs.setModels(loaded);
  await models.show(loaded);
}

function setKeyStatus(text, kind) {
  const status = byId("key-status");
  status.textContent = text;
  status.className = `key-status ${kind}`;
}

/** Show the panel `name` and reload what it shows. */
async function show(name) {
  for (const tab of document.querySelectorAll("[data-tab]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
  }
  for (const panel of document.querySelectorAll("[data-panel]")) panel.hidden = panel.dataset.panel !== name;
  try {
    await refreshers[name]();
    setKeyStatus(storedKey() ? "key accepted" : "no key needed", "ok");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      setKeyStatus("key needed", "bad");
      report(new Error(`${error.message}. ${NEEDS_KEY}`));
    } else {
      report(error);
    }
  }
}

function current() {
  return document.querySelector('[data-tab][aria-selected="true"]')?.dataset.tab || "playground";
}

for (const tab of document.querySelectorAll("[data-tab]")) {
  tab.addEventListener("click", () => show(tab.dataset.tab));
}
byId("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  storeKey(byId("key").value.trim());
  dismiss();
  show(current());
});
byId("key-forget").addEventListener("click", () => {
  storeKey("");
  byId("key").value = "";
  setKeyStatus("no key", "bad");
});

keyFromFragment();
byId("key").value = storedKey();
show("playground");
