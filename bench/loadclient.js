// Node.js load clients for bench.fanout (run by bench/fanout.py, `ws` installed into bench/node_modules).
// argv: url n offset symbols(comma) secret-token-file [subscribe requests (JSON list, symbol filled in)] ; stdin: start | stop | quit ; stdout: JSON lines.
"use strict";
const WebSocket = require("ws");
const readline = require("readline");
const [url, nStr, offStr, symStr, tokFile, subsJson] = process.argv.slice(2);
const subs = subsJson ? JSON.parse(subsJson) : ["best_touch", "trades"].map(
  (stream) => ({ action: "subscribe", stream, exchange: "all" }));
const tokens = require("fs").readFileSync(tokFile, "utf8").trim().split("\n");
const n = parseInt(nStr, 10), offset = parseInt(offStr, 10), symbols = symStr.split(",");
const KEY = Buffer.from('"ts_recv_us":');
const st = { on: false, count: 0, lat: [], closed: 0 };
let t0 = 0, cpu0 = null;
const conns = [];

function nowUs() { return Number(process.hrtime.bigint() / 1000n) + epochOffsetUs; }
const epochOffsetUs = Date.now() * 1000 - Number(process.hrtime.bigint() / 1000n);

function onMessage(data) {
  if (!st.on) return;
  st.count++;
  if (st.count % 4 !== 0) return;
  const p = data.lastIndexOf(KEY);
  if (p < 0) return;
  let q = p + KEY.length, e = q, ts = 0;
  while (e < data.length && data[e] >= 48 && data[e] <= 57) { ts = ts * 10 + (data[e] - 48); e++; }
  if (ts > 0) st.lat.push(nowUs() - ts);
}

let pending = n, active = 0, next = 0;
function open() {
  while (active < 50 && next < n) {
    const i = next++;
    active++;
    const sym = symbols[(offset + i) % symbols.length];
    const ws = new WebSocket(`${url}?token=${tokens[i]}`, { perMessageDeflate: false, maxPayload: 1 << 20 });
    let settled = false;
    const settle = () => { if (!settled) { settled = true; active--; done(); open(); } };
    ws.on("open", () => {
      for (const sub of subs) ws.send(JSON.stringify({ ...sub, symbol: sym }));
      conns.push(ws);
      settle();
    });
    ws.on("message", onMessage);  // data is a Buffer: never decoded unless sampled
    ws.on("error", () => {});
    ws.on("close", () => { st.closed++; settle(); });
  }
}
function done() { if (--pending === 0) out({ type: "ready" }); }
function out(o) { process.stdout.write(JSON.stringify(o) + "\n"); }

readline.createInterface({ input: process.stdin }).on("line", (cmd) => {
  if (cmd === "start") {
    st.on = true; st.count = 0; st.lat = []; t0 = process.hrtime.bigint(); cpu0 = process.cpuUsage();
  } else if (cmd === "stop") {
    st.on = false;
    const c = process.cpuUsage(cpu0);
    out({ type: "stats", count: st.count, lat: st.lat, secs: Number(process.hrtime.bigint() - t0) / 1e9,
          cpu: (c.user + c.system) / 1e6, closed: st.closed });
  } else {
    for (const ws of conns) ws.terminate();
    process.exit(0);
  }
});
open();
