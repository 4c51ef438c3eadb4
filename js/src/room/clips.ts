/**
 * v1.3 recorded clips (Python: sender/clips.py): a clip given as bytes, an ArrayBuffer or a Blob,
 * refused before anything is sent when the agent would refuse it, typed from its first bytes, and
 * streamed to the agent as a LiveKit byte stream on `imaginex.audio` for the `speak` that names it.
 */
import type { LocalParticipant } from "livekit-client";
import { ContextError } from "../errors.js";
import { AUDIO_STREAM_TOPIC, MAX_CLIP_BYTES } from "../protocol.js";

/** Bytes handed to the stream writer at a time (LiveKit splits them into packets itself). */
const CLIP_CHUNK_BYTES = 64 * 1024;

export interface Clip {
  data: Uint8Array;
  mimeType: string;
}

// the first bytes of the formats the agent's decoder reads, for a clip given as bytes
const MAGIC: readonly [number[], string][] = [
  [[0x52, 0x49, 0x46, 0x46], "audio/wav"],
  [[0x49, 0x44, 0x33], "audio/mpeg"],
  [[0xff, 0xfb], "audio/mpeg"],
  [[0xff, 0xf3], "audio/mpeg"],
  [[0x4f, 0x67, 0x67, 0x53], "audio/ogg"],
  [[0x66, 0x4c, 0x61, 0x43], "audio/flac"],
];

/** A clip's bytes and type, refused as the Python client refuses it (empty, over 4 MiB). */
export async function clipBytes(audio: Uint8Array | ArrayBuffer | Blob, mimeType?: string): Promise<Clip> {
  let data: Uint8Array;
  let type = mimeType;
  if (audio instanceof Uint8Array) data = audio;
  else if (audio instanceof ArrayBuffer) data = new Uint8Array(audio);
  else {
    data = new Uint8Array(await audio.arrayBuffer());
    type ??= audio.type || undefined;
  }
  if (data.byteLength === 0) throw new ContextError("VALIDATION_ERROR", "The audio clip is empty.", { retryable: false });
  if (data.byteLength > MAX_CLIP_BYTES) {
    throw new ContextError(
      "PAYLOAD_TOO_LARGE",
      `The audio clip is larger than ${MAX_CLIP_BYTES.toLocaleString("en-US")} bytes, the most an agent takes.`,
      { retryable: false },
    );
  }
  type ??= MAGIC.find(([magic]) => magic.every((byte, i) => data[i] === byte))?.[1];
  return { data, mimeType: type ?? "application/octet-stream" };
}

async function sha256Hex(data: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data as BufferSource));
  return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Streams `clip` to `agent`; returns the `audio` field of the `speak` that plays it. */
export async function streamClip(participant: LocalParticipant, agent: string, clip: Clip): Promise<{ stream_id: string; sha256: string }> {
  const streamId = `imaginex-clip-${crypto.randomUUID().replaceAll("-", "")}`;
  try {
    const writer = await participant.streamBytes({
      name: "clip",
      topic: AUDIO_STREAM_TOPIC,
      destinationIdentities: [agent],
      streamId,
      mimeType: clip.mimeType,
      totalSize: clip.data.byteLength,
    });
    for (let start = 0; start < clip.data.byteLength; start += CLIP_CHUNK_BYTES) {
      await writer.write(clip.data.subarray(start, start + CLIP_CHUNK_BYTES));
    }
    await writer.close();
  } catch (error) {
    throw new ContextError("LIVEKIT_UNAVAILABLE", "The audio clip could not be streamed to the agent.", {
      retryable: true,
      cause: error,
    });
  }
  return { stream_id: streamId, sha256: await sha256Hex(clip.data) };
}
