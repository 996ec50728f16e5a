// Feeds @observertc/observer-js 0.40.32 the ClientSamples of a workload file, in-process, and prints
// what it measured as one JSON line. Usage: node run.mjs workload.json
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { createObserver } from "@observertc/observer-js";

const workload = JSON.parse(readFileSync(process.argv[2], "utf8"));
const observer = createObserver({ defaultServiceId: "bench", defaultMediaUnitId: "bench" });
let reports = 0;
observer.on("reports", (ctx) => {
  for (const list of Object.values(ctx)) if (Array.isArray(list)) reports += list.length;
});

const calls = new Map();
const clients = new Map();
const started = performance.now();
const cpuStarted = process.cpuUsage();
for (const { callId, roomId, clientId, sample } of workload.samples) {
  let call = calls.get(callId);
  if (!call) {
    call = observer.createObservedCall({ callId, roomId: roomId ?? callId, appData: {} });
    calls.set(callId, call);
  }
  let client = clients.get(clientId);
  if (!client) {
    client = call.createClient({ clientId, mediaUnitId: "bench", appData: {} });
    clients.set(clientId, client);
  }
  client.accept(sample);
}
// Reports are collected and emitted at the end, as the anchor measurement does.
for (const call of calls.values()) call.close();
observer.reports.emit();
observer.close();
const seconds = (performance.now() - started) / 1000;
const cpu = process.cpuUsage(cpuStarted);
const cpuSeconds = (cpu.user + cpu.system) / 1e6;
console.log(JSON.stringify({ samples: workload.samples.length, seconds, cpuSeconds, samplesPerSecond: workload.samples.length / seconds, reports, rssBytes: process.memoryUsage().rss }));
