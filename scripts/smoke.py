"""The Guide's steps against a running API: `make smoke API_URL=… ADMIN_KEY=…`.

Against a deployed stack, give RECEIVER_URL: an https URL of yours that answers 2xx (the
functions must reach it; the SSRF guard refuses private addresses). Against a local stack
(`make dev`, an API on loopback) the script starts its own receiver on loopback and also checks,
with the `standardwebhooks` library, that every request it got verifies with the secret.

Steps: the event catalog; a venue key (admin); an endpoint (venue key) with a custom header;
Send test; an event published and delivered (history shows it succeeded); rotate the secret
and Send test again; a portal link whose page loads; then the smoke venue is removed
(DELETE /venues/{venue_id}), leaving nothing behind. Prints a line per step; exits 1 at the
first step that fails, saying what it got. Bounded: every wait stops by itself.
"""

import http.server
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

API_URL = os.environ.get("API_URL", "").rstrip("/")
ADMIN_KEY = os.environ.get("ADMIN_KEY", "")
RECEIVER_URL = os.environ.get("RECEIVER_URL", "")
WAIT_SECONDS = float(os.environ.get("SMOKE_WAIT_SECONDS", "60"))


class Failed(Exception):
    pass


def call(method, path, key, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(API_URL + path, data=data, method=method)
    request.add_header("authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
            return response.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, text


def expect(step, status, answer, want):
    if status != want:
        raise Failed(f"{step}: expected {want}, got {status}: {answer}")


class Receiver(http.server.BaseHTTPRequestHandler):
    got = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        Receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_):
        pass


def eventually(what, check):
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise Failed(f"{what}: not within {WAIT_SECONDS:.0f} s")


def main():
    if not API_URL or not ADMIN_KEY:
        print("usage: make smoke API_URL=https://… ADMIN_KEY=… [RECEIVER_URL=https://…]", file=sys.stderr)
        return 2
    local = urllib.parse.urlparse(API_URL).hostname in ("127.0.0.1", "localhost", "::1")
    server = None
    receiver = RECEIVER_URL
    if not receiver:
        if not local:
            print("a deployed API cannot reach this machine: give RECEIVER_URL=https://… (answers 2xx)", file=sys.stderr)
            return 2
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        receiver = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    venue = f"smoke-{int(time.time())}"
    steps = []

    def step(name, fn):
        started = time.monotonic()
        result = fn()
        steps.append(name)
        print(f"ok  {name} ({(time.monotonic() - started) * 1000:.0f} ms)", flush=True)
        return result

    def catalog():
        status, types = call("GET", "/event-types", ADMIN_KEY)
        expect("GET /event-types", status, types, 200)
        if not any(t.get("type") == "order.created" for t in types.get("event_types", [])):
            raise Failed(f"the catalog has no order.created: {str(types)[:200]}")

    def venue_key():
        status, key = call("POST", f"/venues/{venue}/api-keys", ADMIN_KEY, {"description": "smoke"})
        expect("issue a venue key", status, key, 201)
        return key["key"]

    try:
        step("event catalog", catalog)
        key = step(f"venue key for {venue}", venue_key)

        def add_endpoint():
            status, ep = call("POST", f"/venues/{venue}/endpoints", key, {
                "url": receiver, "event_types": ["order.*", "webhook.test"],
                "description": "smoke test", "headers": {"X-Smoke": "popup-webhooks-smoke"}})
            expect("add endpoint", status, ep, 201)
            return ep

        endpoint = step("add endpoint (signed secret, a custom header)", add_endpoint)
        path = f"/venues/{venue}/endpoints/{endpoint['id']}"
        secrets = [endpoint["secret"]]

        def send_test():
            status, attempt = call("POST", f"{path}/test", key, {})
            expect("send test", status, attempt, 200)
            if not attempt.get("succeeded"):
                raise Failed(f"send test: the receiver did not take it: {attempt}")

        step("send test", send_test)

        def publish():
            status, accepted = call("POST", f"/venues/{venue}/events", key,
                                    {"type": "order.created", "data": {"order_id": "smoke-1", "total_cents": 100}})
            expect("publish", status, accepted, 202)

            def delivered():
                status, page = call("GET", f"{path}/deliveries?status=succeeded", key)
                return status == 200 and any(d["event_type"] == "order.created" for d in page["data"])

            eventually("the published event in the endpoint's history as succeeded", delivered)

        step("publish an event; history shows it delivered", publish)

        def rotate():
            status, rotated = call("POST", f"{path}/rotate", key, {"grace_period_seconds": 0})
            expect("rotate secret", status, rotated, 200)
            secrets.append(rotated["secret"])
            send_test()

        step("rotate secret, send test again", rotate)

        def portal():
            status, session = call("POST", f"/venues/{venue}/portal-sessions", ADMIN_KEY, {"ttl_seconds": 300})
            expect("portal link", status, session, 201)
            page = session["url"].split("#", 1)[0]
            with urllib.request.urlopen(page, timeout=30) as response:
                html = response.read().decode()
                if response.status != 200 or "<html" not in html.lower():
                    raise Failed(f"the portal page: {response.status}")

        step("portal link; the page loads", portal)

        if server is not None:
            def verify():
                from standardwebhooks import Webhook

                eventually("the receiver's three requests", lambda: len(Receiver.got) >= 3)
                for i, (headers, body) in enumerate(Receiver.got):
                    # The first two before the rotation, the last after it.
                    secret = secrets[0] if i < 2 else secrets[1]
                    Webhook(secret).verify(body, headers)
                    if headers.get("x-smoke") != "popup-webhooks-smoke":
                        raise Failed(f"request {i} lacks the custom header")

            step("the receiver's requests verify (standardwebhooks) and carry the header", verify)

        def remove():
            status, removed = call("DELETE", f"/venues/{venue}", ADMIN_KEY)
            expect("remove the smoke venue", status, removed, 200)
            status, answer = call("GET", f"/venues/{venue}/endpoints", key)
            expect("the venue key after removal", status, answer, 401)

        step("remove the smoke venue (nothing left behind)", remove)
    except Failed as failure:
        print(f"FAIL {failure}", file=sys.stderr)
        # Leave nothing behind: the smoke venue goes (whatever it got to).
        call("DELETE", f"/venues/{venue}", ADMIN_KEY)
        return 1
    finally:
        if server is not None:
            server.shutdown()
    print(f"smoke: {len(steps)} steps passed against {API_URL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
