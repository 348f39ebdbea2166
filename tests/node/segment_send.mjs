// Sends the calls read as JSON from stdin with Segment's own Node SDK, then flushes.
// {"host": "http://...", "writeKey": "...", "calls": [{"type": "track", "params": {...}}]}
// Prints {"delivered": n, "failed": n} once every call's callback has run.
import { Analytics } from '@segment/analytics-node'

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const { host, writeKey, calls } = JSON.parse(Buffer.concat(chunks).toString())
const analytics = new Analytics({
  writeKey, host, maxEventsInBatch: 20, flushInterval: 200, maxRetries: 6,
  httpRequestTimeout: 10000,
})
let delivered = 0
let failed = 0
const errors = []
for (const call of calls) {
  analytics[call.type](call.params, (err) => {
    if (err) { failed++; errors.push(String(err)) } else delivered++
  })
}
await analytics.closeAndFlush({ timeout: 60000 })
console.log(JSON.stringify({ delivered, failed, errors: errors.slice(0, 3) }))
