// Browser speak -> ack next to a bare performRpc echo, in the same page and run, against the
// same agent participant (the worker's `test.echo` method answers the payload back). Run by
// benchmarks/bench_browser.py, which starts the server and the worker and prints the figures;
// this prints one JSON line: {"echo_ms": [...], "speak_ms": [...]}.
//
// One request at a time, echo and speak alternating (the order flipped every other round so
// neither always goes first), each speech played out before the next round: both are measured
// against an agent in the same state. The echo's payload is the speak request's own JSON, so
// both carry the same bytes.
import { openBrowserPage } from "./harness.mjs";

const { LIVEKIT_URL, BROWSER_TOKEN, REQUESTS = "200", WARMUP = "20" } = process.env;
const browser = await openBrowserPage();
try {
  const result = await browser.page.evaluate(
    async ({ url, token, requests, warmup }) => {
      const room = new LK.Room();
      await room.connect(url, token);
      const client = new IMX.ContextClient(room, { agentCode: "A12345678", agentTimeoutMs: 30_000 });
      const agent = await client.findAgent();
      const echo_ms = [];
      const speak_ms = [];
      for (let round = 0; round < warmup + requests; round++) {
        const id = `bench-${round}`;
        const payload = JSON.stringify({ type: "speak", id, message: "Hi.", allow_interruptions: true, interrupt: false, agent_code: "A12345678" });
        const echo = async () => {
          const started = performance.now();
          const answer = await room.localParticipant.performRpc({ destinationIdentity: agent, method: "test.echo", payload });
          if (answer !== payload) throw new Error("the echo answered something else");
          return performance.now() - started;
        };
        const speak = async () => {
          const started = performance.now();
          const speech = await client.speak("Hi.", { id });
          const took = performance.now() - started;
          await speech.finished({ timeoutMs: 30_000 });
          return took;
        };
        let echoTook;
        let speakTook;
        if (round % 2) {
          echoTook = await echo();
          speakTook = await speak();
        } else {
          speakTook = await speak();
          echoTook = await echo();
        }
        if (round >= warmup) {
          echo_ms.push(echoTook);
          speak_ms.push(speakTook);
        }
      }
      await client.close();
      await room.disconnect();
      return { echo_ms, speak_ms };
    },
    { url: LIVEKIT_URL, token: BROWSER_TOKEN, requests: Number(REQUESTS), warmup: Number(WARMUP) },
  );
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
