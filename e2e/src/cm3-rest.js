// Page 2: @observertc/client-monitor-js 3.11.1 (schema 2.x ClientSample), one monitor per peer
// connection; samples wrapped in a `Samples` object and POSTed cross-origin as JSON (a CORS
// preflight); a copy as protobuf from @observertc/samples-encoder goes to a second service id.
import { createClientMonitor } from "cm3";
import { SamplesEncoder } from "samples-encoder";
import { connect, hangUp, shapeOf, sleep, startCall } from "./call.js";

const PEOPLE = ["alice", "bob"];

async function run({
  collector,
  serviceId = "e2e",
  mediaUnitId = "web",
  callId,
  durationMs = 5000,
  lingerMs = 1500,
  collectingPeriodInMs = 500,
  samplingTick = 2,
  protobufService = "e2e-pb",
  protobufFor = ["bob"],
}) {
  const report = {
    library: "@observertc/client-monitor-js@3.11.1",
    posts: { alice: [], bob: [] },
    protobufPosts: { alice: [], bob: [] },
    rejected: [],
    placeholders: null,
    eventArgKeys: null,
    shape: null,
    firstSample: null,
    customCallEvents: { alice: [], bob: [] },
    lastSampleAfterLeave: null,
    fetchErrors: [],
  };
  const queues = { alice: Promise.resolve(), bob: Promise.resolve() };

  async function send(who, into, url, contentType, body, sample) {
    try {
      const response = await fetch(url, { method: "POST", mode: "cors", headers: { "Content-Type": contentType }, body });
      const answer = await response.text();
      into.push({ status: response.status, body: answer, bytes: body.length ?? body.byteLength });
      if (response.status !== 202 && report.rejected.length < 10) report.rejected.push({ who, contentType, status: response.status, answer, sample });
    } catch (err) {
      report.fetchErrors.push(`${who}: ${err.name}: ${err.message}`);
    }
  }

  // One POST at a time per client, in order: a late sample must not arrive after the closing one.
  function post(who, clientSample, { close = false } = {}) {
    if (!report.placeholders) {
      report.placeholders = { clientId: clientSample.clientId, callId: clientSample.callId, roomId: clientSample.roomId };
    }
    // 3.11.1 fills clientId/callId/roomId with the string "NULL" ("deprecated fields"): the app sets them.
    const sample = { ...clientSample, clientId: who, callId, roomId: undefined };
    report.customCallEvents[who].push(...(sample.customCallEvents ?? []).map((e) => e.name));
    if (who === "alice" && !report.firstSample && sample.inboundVideoTracks?.length) {
      report.firstSample = sample;
      report.shape = shapeOf(sample);
    }
    const samples = { clientSamples: [sample] };
    if (close) samples.controls = { close: true };
    const json = JSON.stringify(samples);
    // The same sample as protobuf, to its own service id. A fresh encoder per message: an encoder
    // sends only what changed since its previous message (callId, peerConnectionId and unchanged
    // counters are left out), while the collector reads each message on its own. It also drops
    // `controls` (and `sfuSamples`).
    const protobuf = protobufFor.includes(who) ? new SamplesEncoder().encodeToBytes(samples) : null;
    queues[who] = queues[who].then(async () => {
      await send(who, report.posts[who], `${collector}/rest/samples/${serviceId}/${mediaUnitId}`, "application/json", json, sample);
      if (protobuf) {
        const url = `${collector}/rest/samples/${protobufService}/${mediaUnitId}`;
        await send(who, report.protobufPosts[who], url, "application/x-protobuf", protobuf, sample);
      }
    });
    return queues[who];
  }

  const call = await startCall();
  const monitors = {};
  for (const who of PEOPLE) {
    const monitor = createClientMonitor({
      collectingPeriodInMs,
      samplingTick,
      integrateNavigatorMediaDevices: false,
      createClientJoinedEvent: true,
    });
    monitor.on("sample-created", (event) => {
      if (report.eventArgKeys === null) report.eventArgKeys = Object.keys(event).sort();
      post(who, event.clientSample);
    });
    monitor.collectors.addRTCPeerConnection(call.pcs[who]);
    monitors[who] = monitor;
  }
  await connect(call);
  await sleep(durationMs);

  // Bob leaves first. 3.11.1's leave() adds nothing (it returns early unless already left), so the
  // CLIENT_LEFT call event is added by hand; close() hands back one last sample in its 'close' event.
  const lastSample = (monitor) =>
    new Promise((resolve) => {
      monitor.once("close", ({ lastSample }) => resolve(lastSample));
      monitor.close();
    });
  monitors.bob.addCustomCallEvent({ name: "CLIENT_LEFT", message: "Client left", timestamp: Date.now() });
  const bobLast = await lastSample(monitors.bob);
  hangUp(call, "bob");
  if (bobLast) await post("bob", bobLast);
  await sleep(lingerMs);

  // Alice: leave() as documented, then the last sample with `controls.close` (the wrapper's way to say goodbye).
  monitors.alice.leave();
  const aliceLast = await lastSample(monitors.alice);
  report.lastSampleAfterLeave = (aliceLast?.customCallEvents ?? []).map((e) => e.name);
  hangUp(call, "alice");
  if (aliceLast) await post("alice", aliceLast, { close: true });
  await Promise.all(Object.values(queues));
  return report;
}

/** A POST the page's origin may or may not make; "blocked" when the browser's CORS check refused it. */
async function probe({ collector, serviceId = "e2e", mediaUnitId = "web" }) {
  try {
    const response = await fetch(`${collector}/rest/samples/${serviceId}/${mediaUnitId}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ clientSamples: [] }),
    });
    return `status ${response.status}`;
  } catch (err) {
    return `blocked: ${err.name}`;
  }
}

window.e2e = { run, probe };
