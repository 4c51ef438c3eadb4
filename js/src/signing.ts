/**
 * Signed envelopes (Python: security.sign_request), with WebCrypto's HMAC-SHA256, so the same
 * code signs in a browser and in Node. The envelope text is byte for byte the Python one.
 *
 *   v1:   message = `${timestamp}.${body}`
 *   v1.2: message = `imaginex-sender-v1.${timestamp}.${n}.${sender}.${body}`   (n: sender's UTF-8 bytes)
 *   signature = lowercase hex HMAC-SHA256(key = secret, message as UTF-8)
 */

export const SENDER_SIGNATURE_PREFIX = "imaginex-sender-v1";

export interface SignOptions {
  /** Unix seconds; the current time when omitted. */
  timestamp?: number;
  /** v1.2: who the message comes from, vouched for by the secret (1 to 128 visible characters). */
  sender?: string;
}

const encoder = new TextEncoder();
const keys = new Map<string, Promise<CryptoKey>>();

function hmacKey(secret: string | Uint8Array): Promise<CryptoKey> {
  const raw = typeof secret === "string" ? encoder.encode(secret) : secret;
  const cacheKey = typeof secret === "string" ? secret : null;
  const cached = cacheKey === null ? undefined : keys.get(cacheKey);
  if (cached) return cached;
  const key = crypto.subtle.importKey("raw", raw as BufferSource, { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
  if (cacheKey !== null) {
    if (keys.size >= 16) keys.clear(); // a handful of secrets at most in practice
    keys.set(cacheKey, key);
  }
  return key;
}

/** The exact text an envelope's HMAC covers. */
export function signedMessage(body: string, timestamp: number, sender?: string): string {
  if (sender === undefined) return `${timestamp}.${body}`;
  return `${SENDER_SIGNATURE_PREFIX}.${timestamp}.${utf8(sender)}.${sender}.${body}`;
}

/** Lowercase hex HMAC-SHA256 of the signed message. */
export async function computeSignature(
  body: string,
  secret: string | Uint8Array,
  options: SignOptions & { timestamp: number },
): Promise<string> {
  const message = signedMessage(body, options.timestamp, options.sender);
  const mac = await crypto.subtle.sign("HMAC", await hmacKey(secret), encoder.encode(message));
  return Array.from(new Uint8Array(mac), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Wraps request JSON in a signed envelope, ready to send: the agent trusts it whoever relays it
 * (`ContextPlugin(secret=...)`). Each attempt must be signed anew (a replayed envelope is
 * refused), which {@link Signer} does for the client.
 */
export async function signRequest(
  body: string,
  secret: string | Uint8Array,
  options: SignOptions = {},
): Promise<string> {
  const timestamp = options.timestamp ?? Math.floor(Date.now() / 1000);
  const signature = await computeSignature(body, secret, { ...options, timestamp });
  const envelope: Record<string, unknown> = { type: "signed", body, timestamp, signature };
  if (options.sender !== undefined) envelope.sender = options.sender;
  return asciiJson(envelope);
}

/** JSON with every non-ASCII character escaped, as Python's json.dumps writes it. */
function asciiJson(value: unknown): string {
  return JSON.stringify(value).replace(
    /[\u0080-\uffff]/g,
    (char) => "\\u" + char.charCodeAt(0).toString(16).padStart(4, "0"),
  );
}

/** cyrb53: a fast 53-bit string hash (not cryptographic; collisions are harmless here). */
function hash(text: string): string {
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 2654435761);
    h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return (4294967296 * (2097151 & h2) + (h1 >>> 0)).toString(36);
}

function utf8(text: string): number {
  return encoder.encode(text).length;
}

/**
 * Signs each attempt with a timestamp later than any before for the same body: a retry within
 * the same second must not produce the very same envelope, which the agent refuses as a replay.
 */
export class Signer {
  private readonly lastSigned = new Map<string, number>();

  constructor(
    private readonly secret: string | Uint8Array,
    private readonly sender?: string,
  ) {}

  async sign(body: string): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    // keyed by a hash, not the body (up to 15 KiB each): a collision only moves a timestamp on
    const key = hash(body);
    const last = this.lastSigned.get(key);
    const timestamp = last === undefined || now > last ? now : last + 1;
    this.lastSigned.delete(key);
    this.lastSigned.set(key, timestamp);
    if (this.lastSigned.size > 4_096) {
      // the oldest first (insertion order); an old body re-signed after 10 minutes is fine
      this.lastSigned.delete(this.lastSigned.keys().next().value as string);
    }
    return signRequest(body, this.secret, { timestamp, sender: this.sender });
  }
}
