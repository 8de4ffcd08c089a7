// Verifies captured webhook requests with the npm `standardwebhooks` and `svix` libraries.
// stdin: a JSON array of {"secret","headers","body"}; stdout: one line per request,
// "ok" or "fail <library>: <reason>".
import { Webhook as StandardWebhook } from "standardwebhooks";
import { Webhook as SvixWebhook } from "svix";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const requests = JSON.parse(Buffer.concat(chunks).toString("utf8"));

for (const { secret, headers, body } of requests) {
  const problems = [];
  try {
    new StandardWebhook(secret).verify(body, headers);
  } catch (e) {
    problems.push(`standardwebhooks: ${e.message}`);
  }
  // svix reads the same scheme under its own header names.
  const svixHeaders = {
    "svix-id": headers["webhook-id"],
    "svix-timestamp": headers["webhook-timestamp"],
    "svix-signature": headers["webhook-signature"],
  };
  try {
    new SvixWebhook(secret).verify(body, svixHeaders);
  } catch (e) {
    problems.push(`svix: ${e.message}`);
  }
  console.log(problems.length === 0 ? "ok" : `fail ${problems.join("; ")}`);
}
