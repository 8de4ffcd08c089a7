"""moto as the local stack runs it: with IAM enforced, as strict as AWS where the tests need it.

Usage: moto_server.py HOST PORT CREDENTIALS_OUT ACCESS_LOG

- Every request is authenticated (INITIAL_NO_AUTH_ACTION_COUNT=0): signed with the keys of an
  IAM user and allowed only by that user's policies. Unknown keys are refused.
- Before serving, one user is made by hand, `operator` (allowed everything); its keys are written
  to CREDENTIALS_OUT as an AWS shared-credentials profile. Provisioning and the people at the
  keyboard use it; each function gets a user of its own from the provisioning (local/src/iam.rs).
- What moto leaves out and AWS does, added here:
  * DynamoDB and KMS requests are checked against the table (or index) and the key they name,
    not only the action (moto checks SQS queues itself);
  * an authorisation failure of a JSON protocol's request is answered in JSON, as AWS does;
  * SQS's batch operations need the permission of the single one, as on AWS
    (SendMessageBatch -> sqs:SendMessage, DeleteMessageBatch -> sqs:DeleteMessage,
    ChangeMessageVisibilityBatch -> sqs:ChangeMessageVisibility).
- DynamoDB's writes are atomic per item, as on AWS: moto's UpdateItem reads, changes and (for an
  item not there yet) creates the item in steps, so two at once could lose one's change (two
  deliveries failed for good at once, tallied in one new item, were counted once). Every write
  runs under one lock here.
- Every distinct (user, action, resource, allowed) is appended to ACCESS_LOG as a JSON line, for
  the least-privilege audit (`popup-local iam-audit`).
- Faster, same answers (profiled with py-spy under the scale tests; moto was the bottleneck):
  * moto finds a request's service by listing its own package directory (about 150 `isdir`
    calls) under one global lock, for every request; the list is read once here;
  * SQS reads the clock through two datetime conversions for every message it looks at, and
    checks each received message's retention through GetQueueAttributes, which counts every
    message of the queue (quadratic in the queue's length); both read plain `time.time()`
    here.
"""

import json
import os
import sys
import threading
import time

os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"

from moto import settings  # noqa: E402
from moto.core import DEFAULT_ACCOUNT_ID  # noqa: E402
from moto.core.exceptions import JsonRESTError, _RESTError  # noqa: E402
from moto.core.responses import BaseResponse  # noqa: E402
from moto.dynamodb.models import DynamoDBBackend  # noqa: E402
from moto.dynamodb.responses import DynamoHandler  # noqa: E402
from moto.iam import access_control  # noqa: E402
from moto.iam.models import iam_backends  # noqa: E402
from moto.kms.models import kms_backends  # noqa: E402
from moto.kms.responses import KmsResponse  # noqa: E402
from moto.server import main  # noqa: E402
from moto import backends  # noqa: E402
from moto.core import utils as core_utils  # noqa: E402
from moto.sqs import models as sqs_models  # noqa: E402

settings.INITIAL_NO_AUTH_ACTION_COUNT = 0

# IAM's names for SQS's batch operations.
SINGLE_ACTION = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}


def dynamodb_resource(self):
    try:
        body = json.loads(self.raw_body or b"{}")
    except ValueError:
        return "*"
    table = body.get("TableName")
    if table is None:
        # BatchGetItem / BatchWriteItem: the first table named (the functions name one).
        items = body.get("RequestItems") or {}
        table = next(iter(items), None)
    if table is None:
        return "*"
    arn = f"arn:aws:dynamodb:{self.region}:{self.current_account}:table/{table}"
    if body.get("IndexName"):
        arn += f"/index/{body['IndexName']}"
    return arn


def kms_resource(self):
    try:
        key_id = json.loads(self.body or "{}").get("KeyId")
    except ValueError:
        return "*"
    if not key_id:
        return "*"
    try:
        backend = kms_backends[self.current_account][self.region]
        return backend.describe_key(key_id).arn
    except Exception:  # an unknown key: the call itself will say so
        return "*"


# moto answers an authorisation failure in XML whatever the protocol; AWS answers a JSON
# protocol's request (DynamoDB, KMS, SQS) in JSON, with these codes.
JSON_CODES = {
    "AccessDenied": "AccessDeniedException",
    "InvalidClientTokenId": "UnrecognizedClientException",
    "SignatureDoesNotMatch": "InvalidSignatureException",
}
_original_authorize = BaseResponse._authenticate_and_authorize_normal_action


def authorize(self, resource="*"):
    try:
        _original_authorize(self, resource)
    except _RESTError as e:
        if "json" not in (self.headers.get("Content-Type") or ""):
            raise
        code = JSON_CODES.get(e.error_type, e.error_type)
        raise JsonRESTError(code, e.message) from e


BaseResponse._authenticate_and_authorize_normal_action = authorize
DynamoHandler._determine_resource = dynamodb_resource
KmsResponse._determine_resource = kms_resource

_original_init = access_control.IAMRequestBase.__init__
_original_check = access_control.IAMRequestBase.check_action_permitted


def init(self, *args, **kwargs):
    _original_init(self, *args, **kwargs)
    self._action = SINGLE_ACTION.get(self._action, self._action)


seen = set()
seen_lock = threading.Lock()


def check(self, resource):
    allowed = False
    try:
        _original_check(self, resource)
        allowed = True
    finally:
        entry = (self._access_key.arn, self._action, resource, allowed)
        with seen_lock:
            if entry not in seen:
                seen.add(entry)
                with open(ACCESS_LOG, "a", encoding="utf-8") as log:
                    log.write(
                        json.dumps(
                            {
                                "principal": entry[0],
                                "action": entry[1],
                                "resource": entry[2],
                                "allowed": entry[3],
                            }
                        )
                        + "\n"
                    )


access_control.IAMRequestBase.__init__ = init
access_control.IAMRequestBase.check_action_permitted = check

# One write at a time (AWS applies each write to an item atomically; moto does it in steps).
# Reentrant: BatchWriteItem and TransactWriteItems write through put_item and delete_item.
write_lock = threading.RLock()


def serialized(method):
    def run(*args, **kwargs):
        with write_lock:
            return method(*args, **kwargs)

    return run


for name in (
    "put_item",
    "update_item",
    "delete_item",
    "batch_write_item",
    "transact_write_items",
):
    setattr(DynamoDBBackend, name, serialized(getattr(DynamoDBBackend, name)))

# The package's modules do not change while it runs.
MOTO_MODULES = frozenset(backends.list_of_moto_modules())
backends.list_of_moto_modules = lambda: MOTO_MODULES


def fast_unix_time(dt=None):
    return time.time() if dt is None else core_utils.unix_time(dt)


def fast_unix_time_millis(dt=None):
    return time.time() * 1000.0 if dt is None else core_utils.unix_time_millis(dt)


def retained(self, queue_name, message):
    period = int(self.get_queue(queue_name).message_retention_period)
    return period + message.sent_timestamp / 1000 > time.time()


sqs_models.unix_time = fast_unix_time
sqs_models.unix_time_millis = fast_unix_time_millis
sqs_models.SQSBackend.is_message_valid_based_on_retention_period = retained


def make_operator(credentials_out):
    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    iam.create_user("us-east-1", "operator")
    iam.put_user_policy(
        "operator",
        "everything",
        json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key("operator")
    tmp = credentials_out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(
            "[operator]\n"
            f"aws_access_key_id = {key.access_key_id}\n"
            f"aws_secret_access_key = {key.secret_access_key}\n"
        )
    os.replace(tmp, credentials_out)


if __name__ == "__main__":
    host, port, credentials_out, ACCESS_LOG = sys.argv[1:5]
    open(ACCESS_LOG, "w", encoding="utf-8").close()
    make_operator(credentials_out)
    main(["-H", host, "-p", port])
