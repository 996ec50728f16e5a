// Feeds @observertc/observer-js 0.40.32 the ClientSamples of a workload file, in-process, and prints
// what it measured as one JSON line: samples, seconds, cpuSeconds (process.cpuUsage: every thread of
// the process), reports and byType (reports per ObserveRTC report type, named as the collector names
// them, so both sides are counted alike). Usage: node run.mjs workload.json
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { createObserver } from "@observertc/observer-js";

// observer-js's report lists (the "reports" event's context) -> the report type of the 2.x schema.
const TYPES = {
  observerEventReports: "OBSERVER_EVENT",
  callEventReports: "CALL_EVENT",
  callMetaReports: "CALL_META_DATA",
  clientExtensionReports: "CLIENT_EXTENSION_DATA",
  peerConnectionTransportReports: "PEER_CONNECTION_TRANSPORT",
  iceCandidatePairReports: "ICE_CANDIDATE_PAIR",
  clientDataChannelReports: "PEER_CONNECTION_DATA_CHANNEL",
  inboundAudioTrackReports: "INBOUND_AUDIO_TRACK",
  inboundVideoTrackReports: "INBOUND_VIDEO_TRACK",
  outboundAudioTrackReports: "OUTBOUND_AUDIO_TRACK",
  outboundVideoTrackReports: "OUTBOUND_VIDEO_TRACK",
  sfuEventReports: "SFU_EVENT",
  sfuMetaReports: "SFU_META_DATA",
  sfuExtensionReports: "SFU_EXTENSION_DATA",
  sfuTransportReports: "SFU_TRANSPORT",
  sfuInboundRtpPadReports: "SFU_INBOUND_RTP_PAD",
  sfuOutboundRtpPadReports: "SFU_OUTBOUND_RTP_PAD",
  sfuSctpStreamReports: "SFU_SCTP_STREAM",
};

const workload = JSON.parse(readFileSync(process.argv[2], "utf8"));
const observer = createObserver({ defaultServiceId: "bench", defaultMediaUnitId: "bench" });
let reports = 0;
const byType = {};
observer.on("reports", (ctx) => {
  for (const [key, list] of Object.entries(ctx)) {
    if (!Array.isArray(list) || list.length === 0) continue;
    const type = TYPES[key] ?? key;
    byType[type] = (byType[type] ?? 0) + list.length;
    reports += list.length;
  }
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
console.log(
  JSON.stringify({
    samples: workload.samples.length,
    seconds,
    cpuSeconds,
    samplesPerSecond: workload.samples.length / seconds,
    reports,
    byType,
    rssBytes: process.memoryUsage().rss,
  }),
);
