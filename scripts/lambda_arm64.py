"""`make lambda-arm64`: the artifacts `sam build` made (`.aws-sam/build/<Function>/bootstrap`,
Linux arm64) started under qemu-aarch64 against a stand-in of Lambda's runtime API, each
answering one event of each kind it takes, against the moto that scripts/lambda-arm64.sh
started (a stack provisioned on it with `popup-local env`).

Usage: lambda_arm64.py ENV_FILE. Exits non-zero if a function does not start, does not
answer, or answers wrongly.
"""

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API = "/2018-06-01/runtime"


def fixture(function, name):
    with open(os.path.join(ROOT, "functions", function, "fixtures", name)) as f:
        return json.load(f)


SCHEDULED = {
    "version": "0",
    "id": "lambda-arm64-schedule",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-12-05T00:00:00Z",
    "region": "us-east-1",
    "resources": [],
    "detail": {},
}


def no_failures(answer):
    return answer.get("batchItemFailures") == []


# (logical id, [(what, event, check of the answer)])
FUNCTIONS = [
    (
        "ApiFunction",
        [
            (
                "GET /venues/demo-venue/endpoints (API Gateway HTTP API, admin key)",
                fixture("api", "list-endpoints.json"),
                lambda a: a.get("statusCode") == 200 and "data" in json.loads(a["body"]),
            ),
            (
                "POST /venues/demo-venue/events",
                fixture("api", "publish-event.json"),
                lambda a: a.get("statusCode") == 202,
            ),
        ],
    ),
    (
        "IngestFunction",
        [
            (
                "an SQS batch of the ingest queue (an event, and a message for the DLQ)",
                fixture("ingest", "sqs-event.json"),
                no_failures,
            ),
            (
                "the scheduled sweep (EventBridge)",
                SCHEDULED,
                lambda a: "retries_queued" in a and "events_queued" in a,
            ),
        ],
    ),
    (
        "DeliverFunction",
        [
            (
                "an SQS batch of the delivery queue (a job)",
                fixture("deliver", "sqs-event.json"),
                no_failures,
            ),
        ],
    ),
]


class Runtime(http.server.ThreadingHTTPServer):
    """Lambda's runtime API for one function: hands out `events` in turn, keeps the answers."""

    daemon_threads = True

    def __init__(self, events):
        super().__init__(("127.0.0.1", 0), Handler)
        self.events = list(events)
        self.answers = {}
        self.pending = {}
        self.started = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.init_error = None


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", headers=()):
        try:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The function was stopped once it had answered: nobody reads this reply.
            pass

    def do_GET(self):
        srv = self.server
        if self.path != f"{API}/invocation/next":
            return self.reply(404)
        with srv.lock:
            event = srv.events.pop(0) if srv.events else None
        if event is None:
            # Idle, as Lambda is between invocations, until this run ends.
            srv.done.wait(600)
            return self.reply(500)
        request_id = str(uuid.uuid4())
        with srv.lock:
            srv.pending[request_id] = event
            srv.started[request_id] = time.monotonic()
        deadline = int(time.time() * 1000) + 120_000
        self.reply(
            200,
            json.dumps(event).encode(),
            [
                ("lambda-runtime-aws-request-id", request_id),
                ("lambda-runtime-deadline-ms", str(deadline)),
                (
                    "lambda-runtime-invoked-function-arn",
                    "arn:aws:lambda:us-east-1:123456789012:function:lambda-arm64",
                ),
                ("lambda-runtime-trace-id", "Root=1-00000000-000000000000000000000000"),
                ("content-type", "application/json"),
            ],
        )

    def do_POST(self):
        srv = self.server
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        if self.path == f"{API}/init/error":
            srv.init_error = body.decode(errors="replace")
            srv.done.set()
            return self.reply(202)
        parts = self.path[len(API) :].split("/")
        # /invocation/{id}/response or /invocation/{id}/error
        if len(parts) == 4 and parts[1] == "invocation":
            request_id, kind = parts[2], parts[3]
            with srv.lock:
                took = time.monotonic() - srv.started.get(request_id, time.monotonic())
                srv.answers[request_id] = (kind, body.decode(errors="replace"), took)
                if len(srv.answers) == len(srv.pending) and not srv.events:
                    srv.done.set()
            return self.reply(202)
        self.reply(404)


def run(logical, cases, env):
    binary = os.path.join(ROOT, ".aws-sam", "build", logical, "bootstrap")
    if not os.path.exists(binary):
        print(f"{logical}: {binary} is missing: run `make sam-build` first")
        return False
    runtime = Runtime([event for _, event, _ in cases])
    threading.Thread(target=runtime.serve_forever, daemon=True).start()
    port = runtime.server_address[1]
    proc_env = dict(env)
    proc_env.update(
        {
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
            "AWS_LAMBDA_FUNCTION_NAME": logical,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{logical}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "lambda-arm64",
            "AWS_LAMBDA_LOG_FORMAT": "JSON",
            "_HANDLER": "bootstrap",
        }
    )
    sysroot = os.environ.get("QEMU_SYSROOT", "/usr/aarch64-linux-gnu")
    log_path = os.path.join(ROOT, ".dev", f"lambda-arm64-{logical}.log")
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["qemu-aarch64", "-L", sysroot, binary],
            env=proc_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        finished = runtime.done.wait(180)
        proc.kill()
        proc.wait()
    runtime.shutdown()
    ok = True
    if runtime.init_error:
        print(f"{logical}: init error: {runtime.init_error}")
        return False
    if not finished:
        print(f"{logical}: did not answer within 180 s (see {log_path})")
        ok = False
    by_event = {json.dumps(e): rid for rid, e in runtime.pending.items()}
    for what, event, check in cases:
        rid = by_event.get(json.dumps(event))
        answer = runtime.answers.get(rid) if rid else None
        if answer is None:
            print(f"{logical}: {what}: no answer")
            ok = False
            continue
        kind, body, took = answer
        try:
            good = kind == "response" and check(json.loads(body))
        except (ValueError, KeyError, TypeError):
            good = False
        mark = "ok" if good else "WRONG"
        print(f"{logical}: {what}: {mark} in {took:.2f} s -> {body[:200]}")
        ok = ok and good
    print(f"{logical}: started and answered in {time.monotonic() - started:.1f} s under qemu-aarch64")
    return ok


def main():
    env = {}
    with open(sys.argv[1]) as f:
        for line in f:
            line = line.strip()
            if line and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    env["PATH"] = os.environ.get("PATH", "")
    ok = all([run(logical, cases, env) for logical, cases in FUNCTIONS])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
