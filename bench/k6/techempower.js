// Open-loop (constant arrival rate) runs of the TechEmpower test types against percore:
// k6 keeps offering RATE requests per second whatever the latency, so a slow server
// shows up as latency and dropped iterations, not as a politely lower request rate.
//   k6 run -e WORKLOAD=db -e RATE=5000 -e DURATION=20s bench/k6/techempower.js
// WORKLOAD: plaintext | json | db | queries | fortunes | updates | cached-queries
// ROWS (queries, updates, cached-queries, default 20); BASE (default http://127.0.0.1:8080);
// P95_MS / P99_MS: the thresholds (defaults 10 and 25) that fail the run when missed.
import http from "k6/http";
import { check } from "k6";
import { openLoop, summaryTrendStats } from "./open_loop.js";

const base = __ENV.BASE || "http://127.0.0.1:8080";
const workload = __ENV.WORKLOAD || "json";
const rows = __ENV.ROWS || "20";
const paths = {
  plaintext: "/plaintext",
  json: "/json",
  db: "/db",
  queries: `/queries?queries=${rows}`,
  fortunes: "/fortunes",
  updates: `/updates?queries=${rows}`,
  "cached-queries": `/cached-queries?count=${rows}`,
};
const types = {
  plaintext: "text/plain",
  fortunes: "text/html; charset=utf-8",
};
if (!(workload in paths)) {
  throw new Error(`unknown WORKLOAD ${workload}; one of ${Object.keys(paths).join(", ")}`);
}
const rate = Number(__ENV.RATE || 1000);

export const options = {
  discardResponseBodies: false,
  scenarios: { open_loop: openLoop(rate) },
  thresholds: {
    http_req_failed: ["rate<0.001"],
    http_req_duration: [`p(95)<${__ENV.P95_MS || 10}`, `p(99)<${__ENV.P99_MS || 25}`],
    dropped_iterations: [`count<${Math.ceil(rate)}`],
  },
  summaryTrendStats,
};

export default function () {
  const response = http.get(base + paths[workload]);
  check(response, {
    "status 200": (r) => r.status === 200,
    "content type": (r) => r.headers["Content-Type"] === (types[workload] || "application/json"),
  });
}
