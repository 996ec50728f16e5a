// A real WebRTC call inside one page: two RTCPeerConnections ("alice" and "bob") on loopback, each
// sending fake audio + video (Chromium's --use-fake-device-for-media-stream) to the other.

export async function startCall() {
  const media = await navigator.mediaDevices.getUserMedia({
    audio: true,
    video: { width: 320, height: 240, frameRate: 15 },
  });
  const streams = { alice: media, bob: media.clone() };
  const alice = new RTCPeerConnection();
  const bob = new RTCPeerConnection();
  const pcs = { alice, bob };
  alice.onicecandidate = (e) => e.candidate && bob.addIceCandidate(e.candidate).catch(() => {});
  bob.onicecandidate = (e) => e.candidate && alice.addIceCandidate(e.candidate).catch(() => {});
  return { pcs, streams };
}

/** Offer/answer with both sides sending audio and video; resolves once both are connected. */
export async function connect({ pcs, streams }, timeoutMs = 10000) {
  const { alice, bob } = pcs;
  for (const track of streams.alice.getTracks()) alice.addTrack(track, streams.alice);
  await alice.setLocalDescription(await alice.createOffer());
  await bob.setRemoteDescription(alice.localDescription);
  // addTrack after the remote offer reuses its transceivers: one sendrecv m-line per kind.
  for (const track of streams.bob.getTracks()) bob.addTrack(track, streams.bob);
  await bob.setLocalDescription(await bob.createAnswer());
  await alice.setRemoteDescription(bob.localDescription);
  await Promise.all([waitConnected(alice, timeoutMs), waitConnected(bob, timeoutMs)]);
}

function waitConnected(pc, timeoutMs) {
  return new Promise((resolve, reject) => {
    if (pc.connectionState === "connected") return resolve();
    const timer = setTimeout(() => reject(new Error(`peer connection not connected: ${pc.connectionState}`)), timeoutMs);
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "connected") {
        clearTimeout(timer);
        resolve();
      } else if (pc.connectionState === "failed") {
        clearTimeout(timer);
        reject(new Error("peer connection failed"));
      }
    });
  });
}

export function hangUp({ pcs, streams }, who) {
  pcs[who].close();
  for (const track of streams[who].getTracks()) track.stop();
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** What a message looks like, for the report: top-level keys and the keys of the first element of each array. */
export function shapeOf(obj) {
  const shape = {};
  for (const [key, value] of Object.entries(obj ?? {})) {
    if (Array.isArray(value)) shape[key] = value.length && typeof value[0] === "object" ? Object.keys(value[0]).sort() : `array(${value.length})`;
    else if (value && typeof value === "object") shape[key] = Object.keys(value).sort();
    else shape[key] = value === null ? "null" : typeof value;
  }
  return shape;
}

/** A WebSocket that is open, collecting what the collector answers (errors only; it answers nothing else). */
export function openSocket(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    const answers = [];
    ws.onmessage = (e) => answers.push(typeof e.data === "string" ? e.data : new TextDecoder().decode(e.data));
    ws.onopen = () => resolve({ ws, answers, closed: new Promise((r) => ws.addEventListener("close", (e) => r({ code: e.code, reason: e.reason }))) });
    ws.onerror = () => reject(new Error(`WebSocket ${url} failed to open`));
  });
}

/** Wait until everything queued on the socket went out. */
export async function drain(ws, timeoutMs = 3000) {
  const deadline = Date.now() + timeoutMs;
  while (ws.bufferedAmount > 0 && Date.now() < deadline) await sleep(20);
}
