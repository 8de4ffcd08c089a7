"""Verifies captured webhook requests with the PyPI `standardwebhooks` library.

stdin: a JSON array of {"secret","headers","body"}; stdout: one line per request,
"ok" or "fail <reason>". With --sign, prints the library's own signature of each request
instead (for independent test vectors).
"""

import json
import sys
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook


def main() -> None:
    requests = json.load(sys.stdin)
    for req in requests:
        wh = Webhook(req["secret"])
        if "--sign" in sys.argv:
            ts = datetime.fromtimestamp(int(req["timestamp"]), tz=timezone.utc)
            print(wh.sign(req["id"], ts, req["body"]))
            continue
        try:
            wh.verify(req["body"], req["headers"])
            print("ok")
        except Exception as e:  # the library raises its own WebhookVerificationError
            print(f"fail {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
