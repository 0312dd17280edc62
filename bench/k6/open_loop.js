// What both k6 scripts share: the constant-arrival-rate scenario at RATE per second for
// DURATION, with enough virtual users to keep the rate up when responses slow down, and
// the percentiles the driver records.
export function openLoop(rate) {
  return {
    executor: "constant-arrival-rate",
    rate: rate,
    timeUnit: "1s",
    duration: __ENV.DURATION || "20s",
    preAllocatedVUs: Math.max(10, Math.ceil(rate / 50)),
    maxVUs: Math.max(100, Math.ceil(rate / 5)),
  };
}

export const summaryTrendStats = ["avg", "med", "p(90)", "p(95)", "p(99)", "p(99.9)", "max"];
