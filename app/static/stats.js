// The statistics page (app/templates/stats.html): asks /urls/<id>/stats with the key typed
// into the form (an Authorization header, never in the URL) and draws the answer. Text goes
// in with textContent only, so nothing from the answer can become markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function setText(id, value) {
  $(id).textContent = String(value);
}

function drawChart(series) {
  const chart = $("chart");
  chart.replaceChildren();
  const max = Math.max(1, ...series.map((b) => b.clicks));
  const width = 800 / Math.max(1, series.length);
  series.forEach((bucket, i) => {
    const humans = (bucket.humans / max) * 200;
    const bots = (bucket.bots / max) * 200;
    for (const [height, base, colour] of [[humans, 0, "#1f5fbf"], [bots, humans, "#d08b2b"]]) {
      if (height <= 0) continue;
      const bar = document.createElementNS(SVG, "rect");
      bar.setAttribute("x", String(i * width + width * 0.1));
      bar.setAttribute("width", String(width * 0.8));
      bar.setAttribute("y", String(210 - base - height));
      bar.setAttribute("height", String(height));
      bar.setAttribute("fill", colour);
      const tip = document.createElementNS(SVG, "title");
      tip.textContent = `${bucket.time}: ${bucket.clicks} clicks (${bucket.bots} bots)`;
      bar.appendChild(tip);
      chart.appendChild(bar);
    }
  });
}

function fillTable(id, rows) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    const name = document.createElement("td");
    name.textContent = row.value;
    const count = document.createElement("td");
    count.className = "n";
    count.textContent = String(row.clicks);
    tr.append(name, count);
    return tr;
  }));
}

async function show(event) {
  event.preventDefault();
  const id = encodeURIComponent($("url_id").value.trim());
  const key = $("key").value.trim();
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const params = new URLSearchParams({ granularity: $("granularity").value });
  for (const name of ["from", "to"]) {
    if ($(name).value) params.set(name, $(name).value);
  }
  const response = await fetch(`/urls/${id}/stats?${params}`, { headers });
  const body = await response.json();
  if (!response.ok) {
    $("result").hidden = true;
    setText("error", body.error || `Error ${response.status}`);
    $("error").hidden = false;
    return;
  }
  $("error").hidden = true;
  setText("title", `/${body.short_code}: ${body.from.slice(0, 10)} to ${body.to.slice(0, 10)}`);
  for (const name of ["total_clicks", "humans", "bots", "unique_visitors"]) setText(name, body[name]);
  drawChart(body.series);
  for (const name of ["referrers", "browsers", "operating_systems", "devices"]) fillTable(name, body[name]);
  $("result").hidden = false;
  const qr = await fetch(`/urls/${id}/qr.svg`, { headers });
  if (qr.ok) $("qr").src = URL.createObjectURL(await qr.blob());
}

$("stats-form").addEventListener("submit", show);
