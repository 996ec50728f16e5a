// Page 1: @observertc/client-monitor-js 4.0.3 (schema 3.x ClientSample), one monitor per peer
// connection, every `sample-created` sample sent as a JSON text frame over a WebSocket.
import { ClientMonitor } from "cm4";
import { connect, drain, hangUp, openSocket, shapeOf, sleep, startCall } from "./call.js";

const PEOPLE = ["alice", "bob"];

async function run({
  collector,
  serviceId = "e2e",
  mediaUnitId = "web",
  callId,
  durationMs = 5000,
  lingerMs = 1500,
  collectingPeriodInMs = 500,
  samplingPeriodInMs = 1000,
}) {
  const report = {
    library: "@observertc/client-monitor-js@4.0.3",
    schemaVersion: ClientMonitor.samplingSchemaVersion,
    sent: { alice: 0, bob: 0 },
    sentBytes: { alice: 0, bob: 0 },
    answers: {},
    closes: {},
    clientEventTypes: { alice: [], bob: [] },
    eventArgKeys: null,
    stringifyEventArg: null,
    shape: null,
    firstSample: null,
    counters: [],
    lastSampleEventTypes: {},
  };
  const call = await startCall();
  const sockets = {};
  const monitors = {};
  const base = collector.replace(/^http/, "ws");
  for (const who of PEOPLE) {
    sockets[who] = await openSocket(`${base}/samples/${serviceId}/${mediaUnitId}`);
    const monitor = new ClientMonitor({
      clientId: who,
      callId,
      collectingPeriodInMs,
      samplingPeriodInMs,
      integrateNavigatorMediaDevices: false, // two monitors in one page: don't patch getUserMedia twice
    });
    monitor.on("sample-created", (event) => {
      if (report.eventArgKeys === null) {
        // 4.0.3 emits { clientMonitor, sample }, not the sample itself.
        report.eventArgKeys = Object.keys(event).sort();
        try {
          JSON.stringify(event);
          report.stringifyEventArg = "ok";
        } catch (err) {
          report.stringifyEventArg = `${err.name}: ${err.message}`;
        }
      }
      const sample = event.sample;
      const text = JSON.stringify(sample);
      sockets[who].ws.send(text);
      report.sent[who] += 1;
      report.sentBytes[who] += text.length;
      const types = (sample.clientEvents ?? []).map((e) => e.type);
      report.clientEventTypes[who].push(...types);
      if (monitor.closed || types.includes("CLIENT_LEFT")) report.lastSampleEventTypes[who] = types;
      if (who === "alice") {
        if (!report.firstSample && sample.peerConnections?.[0]?.inboundRtps?.length) {
          report.firstSample = sample;
          report.shape = shapeOf(sample);
          report.peerConnectionShape = shapeOf(sample.peerConnections[0]);
        }
        const rtp = sample.peerConnections?.[0]?.inboundRtps?.find((r) => r.kind === "video");
        if (rtp) report.counters.push({ timestamp: sample.timestamp, ssrc: rtp.ssrc, packetsReceived: rtp.packetsReceived, bytesReceived: rtp.bytesReceived });
      }
    });
    monitor.addSource(call.pcs[who]);
    monitors[who] = monitor;
  }
  await connect(call);
  await sleep(durationMs);
  // Bob hangs up: closing the monitor adds CLIENT_LEFT and emits one last sample (synchronously).
  for (const who of PEOPLE) {
    monitors[who].close();
    hangUp(call, who);
    await drain(sockets[who].ws);
    await sleep(200); // let the collector answer an error for the last frame, if any
    sockets[who].ws.close(1000, "done");
    report.closes[who] = await sockets[who].closed;
    report.answers[who] = sockets[who].answers;
    if (who === "bob") await sleep(lingerMs); // Alice stays alone in the call for a while
  }
  return report;
}

window.e2e = { run };
