/** The retry rules shared by the room client and the gateway client (Python: sender/options.py). */

/** Attempts after the first one, for failures that may pass. */
export const DEFAULT_RETRIES = 2;
/** First delay between attempts; it doubles each time (with jitter), up to MAX_BACKOFF_MS. */
export const DEFAULT_BACKOFF_MS = 250;
export const MAX_BACKOFF_MS = 5_000;
/** The longest `retry_after` / `Retry-After` (seconds) honoured before retrying. */
export const MAX_RETRY_AFTER_S = 30;

/** The pause before attempt `attempt + 1`: doubling, jittered, at least the server's retry-after. */
export function retryDelayMs(attempt: number, backoffMs: number, retryAfterS?: number | null): number {
  let delay = Math.min(MAX_BACKOFF_MS, backoffMs * 2 ** attempt) * (0.5 + Math.random() / 2);
  if (retryAfterS) delay = Math.max(delay, Math.min(retryAfterS, MAX_RETRY_AFTER_S) * 1000);
  return delay;
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", abort, { once: true });
    function done(): void {
      signal?.removeEventListener("abort", abort);
      resolve();
    }
    function abort(): void {
      clearTimeout(timer);
      reject(signal?.reason);
    }
  });
}

/** A request id: 32 random hex digits, as the Python client makes them. */
export function newRequestId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** `promise`'s value, or `null` once `ms` have passed first (the timer never outlives the race). */
export async function within<T>(promise: Promise<T>, ms: number): Promise<T | null> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([promise, new Promise<null>((resolve) => (timer = setTimeout(resolve, ms, null)))]);
  } finally {
    clearTimeout(timer);
  }
}
