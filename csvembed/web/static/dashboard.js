// The csvembed dashboard: draws the snapshots of GET /events (one JSON object a second).
// Rows, ids and failure reasons are user data: they reach the page through textContent only.
"use strict";

(function () {
  const RETRY_MS = 3000;
  const FINISHED = new Set(["done", "partial", "failed", "interrupted"]);

  // EventSource cannot send headers, so a token in the page's URL goes on as ?token= (the server accepts it).
  const token = new URLSearchParams(window.location.search).get("token");
  const eventsUrl = "events" + (token ? "?token=" + encodeURIComponent(token) : "");

  const cards = new Map(); // submission id -> its card's elements, reused from one snapshot to the next

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    const total = Math.max(0, Math.round(seconds));
    const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
    const ss = String(s).padStart(2, "0");
    return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
  }

  function rate(rowsPerSecond) {
    if (rowsPerSecond === null || rowsPerSecond === undefined) return "–";
    return (rowsPerSecond < 10 ? rowsPerSecond.toFixed(1) : Math.round(rowsPerSecond).toLocaleString()) + " rows/s";
  }

  function count(n) {
    return Number(n || 0).toLocaleString();
  }

  // Done and failed rows over the rows there are to do (skipped ones are not work): 100 only when all are through.
  function progress(status) {
    const work = Math.max(status.total - status.skipped, 0);
    if (work === 0) return { work, percent: FINISHED.has(status.state) ? 100 : 0, done: 0, failed: 0 };
    const share = (n) => Math.min(100, (100 * n) / work);
    const through = status.done + status.failed;
    return {
      work,
      percent: Math.min(100, Math.floor((100 * through) / work)),
      done: share(status.done),
      failed: share(status.failed),
    };
  }

  function figure(label) {
    const item = el("div", "figure");
    item.append(el("dt", null, label));
    const value = el("dd");
    item.append(value);
    return { item, value };
  }

  function newCard(id) {
    const card = el("article", "card");
    card.dataset.submission = id;
    const head = el("div", "card-head");
    const state = el("span", "state");
    const title = el("span", "id", id);
    const source = el("span", "source");
    const percent = el("span", "percent");
    head.append(state, title, source, percent);

    const bar = el("div", "bar");
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-label", "progress of " + id);
    bar.dataset.submission = id;
    const doneSegment = el("span", "segment done");
    const failedSegment = el("span", "segment failed");
    bar.append(doneSegment, failedSegment);

    const figures = el("dl", "figures");
    const names = ["done", "failed", "in progress", "pending", "skipped", "rate", "ETA", "elapsed", "workers"];
    const values = {};
    for (const name of names) {
      const { item, value } = figure(name);
      item.dataset.figure = name;
      figures.append(item);
      values[name] = value;
    }
    card.append(head, bar, figures);
    return { card, state, source, percent, bar, doneSegment, failedSegment, values };
  }

  function updateCard(parts, status) {
    const p = progress(status);
    parts.card.dataset.state = status.state;
    parts.state.textContent = status.state;
    parts.state.dataset.state = status.state;
    parts.source.textContent = `${status.collection} · ${status.file}`;
    parts.source.title = status.file;
    parts.percent.textContent = p.percent + "%";
    parts.bar.dataset.percent = String(p.percent);
    parts.bar.setAttribute("aria-valuenow", String(p.percent));
    parts.bar.setAttribute("aria-valuetext", `${p.percent}%: ${status.done} done, ${status.failed} failed of ${p.work}`);
    parts.doneSegment.style.width = p.done + "%";
    parts.failedSegment.style.width = p.failed + "%";
    const finished = FINISHED.has(status.state);
    const v = parts.values;
    v["done"].textContent = `${count(status.done)} / ${count(p.work)}`;
    v["failed"].textContent = count(status.failed);
    v["failed"].parentElement.classList.toggle("bad", status.failed > 0);
    v["in progress"].textContent = count(status.in_progress);
    v["pending"].textContent = count(status.pending);
    v["skipped"].textContent = count(status.skipped);
    v["rate"].textContent = rate(status.rate);
    v["ETA"].textContent = finished ? "finished" : duration(status.eta);
    v["elapsed"].textContent = duration(status.elapsed);
    v["workers"].textContent = finished ? "–" : count(status.workers); // the queue's workers: not this one's once finished
  }

  function renderSubmissions(submissions) {
    const box = document.getElementById("submissions");
    const seen = new Set();
    const ordered = [];
    for (const status of submissions) {
      seen.add(status.id);
      let parts = cards.get(status.id);
      if (!parts) {
        parts = newCard(status.id);
        cards.set(status.id, parts);
      }
      updateCard(parts, status);
      ordered.push(parts.card);
    }
    for (const [id, parts] of cards) {
      if (!seen.has(id)) {
        parts.card.remove();
        cards.delete(id);
      }
    }
    if (ordered.length === 0) {
      box.replaceChildren(el("p", "empty", "No submissions yet: csvembed submit FILE.csv starts one."));
    } else {
      box.replaceChildren(...ordered); // moves the existing cards: the bars keep their transitions
    }
  }

  function fillTable(id, rows, emptyText, columns) {
    const body = document.querySelector(`#${id} tbody`);
    if (rows.length === 0) {
      const cell = el("td", "empty", emptyText);
      cell.colSpan = columns;
      const tr = el("tr");
      tr.append(cell);
      body.replaceChildren(tr);
      return;
    }
    body.replaceChildren(...rows);
  }

  function row(cells) {
    const tr = el("tr");
    for (const [text, className, title] of cells) {
      const td = el("td", className || null, text);
      if (title) td.title = title;
      tr.append(td);
    }
    return tr;
  }

  // A worker's name is host.pid.suffix (the host itself may hold dots): shown as "host · pid".
  function hostOf(name) {
    const parts = String(name).split(".");
    return parts.length >= 3 ? `${parts.slice(0, -2).join(".")} · ${parts[parts.length - 2]}` : String(name);
  }

  function ago(iso, at) {
    if (!iso) return "–";
    // RQ writes UTC without an offset; read it as UTC.
    const stamp = Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : iso + "Z");
    if (isNaN(stamp)) return iso;
    const seconds = Math.max(0, at - stamp / 1000);
    if (seconds >= 86400) return new Date(stamp).toLocaleString();
    return (seconds < 60 ? Math.round(seconds) + " s" : duration(seconds)) + " ago";
  }

  function renderQueues(queues) {
    const rows = queues.map((q) => row([
      [q.name, "mono"], [count(q.waiting), "num"], [count(q.in_progress), "num"], [count(q.workers), "num"],
    ]));
    fillTable("queues", rows, "No queues yet.", 4);
  }

  function renderWorkers(workers, at) {
    const rows = workers.map((w) => row([
      [hostOf(w.name), "mono", w.name],
      [(w.queues || []).join(", "), "mono"],
      [w.state, "worker-state"],
      [w.batch_size === null || w.batch_size === undefined ? "–" : count(w.batch_size), "num"],
      [count(w.rows_done), "num"],
      [count(w.rows_failed), w.rows_failed > 0 ? "num bad" : "num"],
      [ago(w.last_heartbeat, at), null, w.last_heartbeat || ""],
    ]));
    fillTable("workers", rows, "No workers running: start one with csvembed worker.", 7);
  }

  function renderFailures(failures, submissions) {
    // In the order of the submissions (newest first), then any others the snapshot names.
    const ids = submissions.map((s) => s.id).filter((id) => id in failures);
    for (const id of Object.keys(failures)) if (!ids.includes(id)) ids.push(id);
    const rows = [];
    for (const id of ids) {
      for (const f of failures[id] || []) {
        const tr = row([
          [id, "mono"], [f.row_number, "num"], [f.id === null || f.id === undefined ? "–" : f.id, "mono"],
          [f.reason, "reason"],
          f.permanent ? ["permanent", "bad"] : ["transient: csvembed retry requeues it", null],
        ]);
        tr.dataset.submission = id;
        rows.push(tr);
      }
    }
    fillTable("failures", rows, "No failed rows.", 5);
  }

  function render(snapshot) {
    const submissions = snapshot.submissions || [];
    renderSubmissions(submissions);
    renderQueues(snapshot.queues || []);
    renderWorkers(snapshot.workers || [], snapshot.at || Date.now() / 1000);
    renderFailures(snapshot.failures || {}, submissions);
    const when = snapshot.at ? new Date(snapshot.at * 1000) : new Date();
    document.getElementById("updated").textContent = "updated " + when.toLocaleTimeString();
  }

  function setConnection(state, text) {
    const note = document.getElementById("connection");
    note.dataset.state = state;
    note.textContent = text;
  }

  // EventSource retries a dropped stream by itself, but gives up on an HTTP error (401 included):
  // ask the server why, say so, and start a new one a little later.
  async function whyClosed() {
    const controller = new AbortController();
    try {
      const response = await fetch(eventsUrl, { signal: controller.signal, cache: "no-store" });
      return response.status;
    } catch (error) {
      return null;
    } finally {
      controller.abort();
    }
  }

  function connect() {
    const source = new EventSource(eventsUrl);
    source.addEventListener("open", () => setConnection("live", "live"));
    source.addEventListener("snapshot", (event) => {
      setConnection("live", "live");
      render(JSON.parse(event.data));
    });
    source.addEventListener("error", async () => {
      if (source.readyState !== EventSource.CLOSED) {
        setConnection("retrying", "disconnected, retrying…");
        return;
      }
      source.close();
      const status = await whyClosed();
      if (status === 401 || status === 403) {
        setConnection("unauthorized", `disconnected, retrying: the server refused the stream (${status}); ` +
          "open this page with ?token=YOUR_TOKEN");
      } else {
        setConnection("retrying", "disconnected, retrying…");
      }
      window.setTimeout(connect, RETRY_MS);
    });
  }

  connect();
})();
