// medseg dashboard: re-renders the tables from /api/ every refresh_seconds (no reload).
// Mirrors medseg/server/web/pages.py; every value is inserted as text, never as HTML.
"use strict";
(function () {
  const config = JSON.parse(document.body.dataset.config || "{}");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const child of children || []) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const td = (...children) => el("td", {}, children);
  const clock = (t) => (t ? new Date(t * 1000).toLocaleString("sv-SE") : "");
  const counts = (c) => Object.entries(c || {}).map(([k, v]) => k + " " + v).join(", ") || "none";

  function form(action, label, extra) {
    const f = el("form", { method: "post", action: action }, [
      el("input", { type: "hidden", name: "csrf", value: csrf }),
    ]);
    for (const [k, v] of Object.entries(extra || {})) {
      f.append(el("input", { type: "hidden", name: k, value: v }));
    }
    f.append(el("button", { type: "submit" }, [label]));
    return f;
  }

  function summary(status) {
    const rows = [
      ["queue depth", status.queue_depth],
      ["jobs", counts(status.jobs)],
      ["series", counts(status.series)],
      ["marks", counts((status.marks || {}).counts)],
    ];
    return rows.map(([k, v]) => el("tr", {}, [el("th", {}, [k]), td(v)]));
  }

  function destinations(status) {
    if (!status.destinations.length) {
      return [el("tr", {}, [el("td", { colspan: "6" }, ["no destinations used yet"])])];
    }
    return status.destinations.map((d) =>
      el("tr", {}, [
        td(d.destination), td(d.waiting),
        td(d.waiting ? "in " + Math.round(d.next_try_seconds) + " s" : ""),
        td(d.undeliverable), td(d.delivered), td(d.last_error || ""),
      ]));
  }

  function jobRow(job) {
    const timings = Object.entries(job.timings).filter(([, v]) => v)
      .map(([k, v]) => k + " " + v.toFixed(1)).join(", ");
    const result = td();
    const links = job.links;
    if (links["preview.png"]) {
      result.append(el("a", { href: links["preview.png"] }, [
        el("img", { class: "preview", alt: "preview of job " + job.id, src: links["preview.png"] }),
      ]));
    }
    if (job.volume_ml || job.seg_uid) {
      result.append(el("div", { class: "volume" }, [job.volume_ml.toFixed(1) + " ml"]));
    }
    for (const [name, label] of [["seg.dcm", "SEG"], ["report.sr.dcm", "report"]]) {
      if (links[name]) result.append(" ", el("a", { class: "download", href: links[name], download: "" }, [label]));
    }
    const actions = td();
    if (job.state === "failed") actions.append(form("/jobs/" + job.id + "/retry", "retry"));
    if (job.state === "queued") actions.append(form("/jobs/" + job.id + "/cancel", "cancel"));
    const deliveries = td();
    for (const d of job.deliveries) {
      const div = el("div", {}, [d.destination + " " + d.file + ": " + d.state]);
      if (d.error && d.state !== "delivered") {
        div.append(" (" + d.error + ")");
        div.append(form("/jobs/" + job.id + "/deliveries/" + d.destination + "/retry",
          "send again", { file: d.file }));
      }
      deliveries.append(div);
    }
    const cells = [td(clock(job.created))];
    if (config.showPatient) {
      const p = job.patient || {};
      cells.push(td(p.name || "", el("br"), p.id || ""));
    }
    cells.push(
      el("td", { class: "state" }, [job.state]),
      td(job.series_description, el("br"), el("small", {}, [job.series])),
      td(job.modality), td(job.slices || job.instances), td(job.rule), td(timings),
      el("td", { class: "error" }, [job.error]), deliveries, result, actions,
    );
    return el("tr", { class: "job state-" + job.state, "data-job": job.id }, cells);
  }

  function replace(selector, rows) {
    document.querySelector(selector).replaceChildren(...rows);
  }

  async function refresh() {
    try {
      const response = await fetch("/api/", { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      replace("#summary", summary(data.status));
      replace("#destinations tbody", destinations(data.status));
      replace("#jobs tbody", data.jobs.length ? data.jobs.map(jobRow)
        : [el("tr", {}, [el("td", { colspan: "12" }, ["no jobs yet"])])]);
      document.getElementById("updated").textContent = data.time;
      document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
    } catch (err) {
      document.getElementById("updated").textContent = "refresh failed: " + err.message;
    }
  }

  setInterval(refresh, Math.max(1, config.refresh || 5) * 1000);
})();
