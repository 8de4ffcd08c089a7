"""Verifies captured webhook requests with the PyPI `standardwebhooks` library.

stdin: a JSON array of {"secret","headers","body"}; stdout: one line per request,
"ok" or "fail <reason>". With --sign, prints the library's own signature of each request
instead (for independent test vectors).

A request whose headers carry `x-received-at` (unix seconds, added by a test receiver that
keeps what it got for minutes) is verified as its receiver would have verified it: with the
library's clock at that moment, so its 5-minute timestamp tolerance is measured from there.
"""

import json
import sys
from datetime import datetime, timezone

import standardwebhooks.webhooks as library
from standardwebhooks.webhooks import Webhook


class _ClockAt(datetime):
    """`datetime` whose `now` is a moment set beforehand (the library reads `datetime.now`)."""

    moment = None

    @classmethod
    def now(cls, tz=None):
        if cls.moment is None:
            return datetime.now(tz)
        return datetime.fromtimestamp(cls.moment, tz=tz)


def main() -> None:
    requests = json.load(sys.stdin)
    for req in requests:
        wh = Webhook(req["secret"])
        if "--sign" in sys.argv:
            ts = datetime.fromtimestamp(int(req["timestamp"]), tz=timezone.utc)
            print(wh.sign(req["id"], ts, req["body"]))
            continue
        headers = dict(req["headers"])
        received = headers.pop("x-received-at", None)
        _ClockAt.moment = float(received) if received is not None else None
        library.datetime = _ClockAt
        try:
            wh.verify(req["body"], headers)
            print("ok")
        except Exception as e:  # the library raises its own WebhookVerificationError
            print(f"fail {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
