// The sessions panel: the current key's live sessions (every key's for an admin key), newest first, each
// with a delete button.

import { call } from "./api.js";
import { busy, el, figure, when } from "./ui.js";

const PAGE_SIZE = 100;

/** Wire the panel inside `root`; `refresh()` reloads it. */
export function mountSessions(root) {
  const body = root.querySelector("#sessions-body");
  const panel = {
    async refresh() {
      const page = await call("GET", `/sessions?size=${PAGE_SIZE}`);
      body.replaceChildren(...page.sessions.map(row));
      const count = page.sessions.length;
      root.querySelector("#sessions-count").textContent =
        count < PAGE_SIZE ? `(${count})` : `(the newest ${count})`;
      if (!page.sessions.length) {
        body.append(el("tr", {}, [el("td", { colspan: 7, class: "hint", text: "No live session." })]));
      }
    },
  };

  const refresh = root.querySelector("#sessions-refresh");
  refresh.addEventListener("click", () => busy(refresh, panel.refresh));

  function row(session) {
    const remove = el("button", { class: "small danger", type: "button", text: "delete" });
    remove.addEventListener("click", () =>
      busy(remove, async () => {
        await call("DELETE", `/sessions/${session.session_id}`);
        await panel.refresh();
      }),
    );
    const labels = session.labels ? `labels ${session.labels.join(", ")}` : "regression";
    return el("tr", { "data-session": session.session_id }, [
      el("td", { class: "mono", text: session.session_id }),
      el("td", { text: session.model }),
      el("td", { text: `${session.support_size} examples · ${labels}` }),
      el("td", { text: `${session.steps} × ${figure(session.lr)}` }),
      el("td", { text: `${figure(session.loss_before)} → ${figure(session.loss_after)}` }),
      el("td", { text: `${when(session.last_used)} (expires ${when(session.expires)})` }),
      el("td", {}, [remove]),
    ]);
  }

  return panel;
}
