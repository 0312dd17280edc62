// The seed-mix (issue 3's mix) open loop: RATE requests per second, each by a random
// seeded session, whatever the latency.
//   k6 run -e RATE=8000 -e DURATION=20s -e TOKENS=bench/results/seed-tokens.txt bench/k6/seed-mix.js
// 60% GET /v1/me, 15% GET /v1/users?ids= (20 ids), 15% GET /v1/me/events?limit=20,
// 5% POST /v1/events, 4.9% PUT /v1/me/prefs, 0.1% POST /v1/auth/login (Argon2, on purpose).
// Thresholds: p99 of every request but logins under P99_MS (default 10; logins are bound
// by Argon2 and are reported on their own, tagged route=login).
import http from "k6/http";
import { check } from "k6";
import { openLoop, summaryTrendStats } from "./open_loop.js";

const base = __ENV.BASE || "http://127.0.0.1:8080";
const lines = open(__ENV.TOKENS || "../results/seed-tokens.txt").split("\n");
const [first, last, domain, password] = lines[0].split(" ");
const tokens = lines.slice(1).filter((l) => l.length > 0).map((l) => l.split(" ")[0]);
const rate = Number(__ENV.RATE || 1000);
const themes = ["light", "dark", "system"];

export const options = {
  scenarios: { open_loop: openLoop(rate) },
  thresholds: {
    "http_req_failed{login:no}": ["rate<0.001"],
    "http_req_duration{login:no}": [`p(99)<${__ENV.P99_MS || 10}`],
    "http_req_duration{login:yes}": ["p(99)<1000"],
  },
  summaryTrendStats,
};

function pick(list) {
  return list[Math.floor(Math.random() * list.length)];
}

function between(low, high) {
  return low + Math.floor(Math.random() * (high - low + 1));
}

export default function () {
  const auth = { headers: { Authorization: `Bearer ${pick(tokens)}`, "Content-Type": "application/json" }, tags: { login: "no" } };
  const r = Math.random();
  let response;
  if (r < 0.6) {
    response = http.get(`${base}/v1/me`, auth);
  } else if (r < 0.75) {
    const ids = Array.from({ length: 20 }, () => between(Number(first), Number(last)));
    response = http.get(`${base}/v1/users?ids=${ids.join(",")}`, auth);
  } else if (r < 0.9) {
    response = http.get(`${base}/v1/me/events?limit=20`, auth);
  } else if (r < 0.95) {
    response = http.post(`${base}/v1/events`, JSON.stringify({ kind: "bench.click", payload: { x: between(1, 1000) } }), auth);
  } else if (r < 0.999) {
    const prefs = { locale: "en", timezone: "UTC", theme: pick(themes), email_opt_in: Math.random() < 0.5 };
    response = http.put(`${base}/v1/me/prefs`, JSON.stringify(prefs), auth);
  } else {
    const n = between(1, Number(last) - Number(first) + 1);
    response = http.post(`${base}/v1/auth/login`, JSON.stringify({ email: `seed-${n}@${domain}`, password: password }), {
      headers: { "Content-Type": "application/json" },
      tags: { login: "yes" },
    });
  }
  check(response, { "2xx": (res) => res.status >= 200 && res.status < 300 });
}
