"""Checks the AWS shared-credentials file that `popup-local dev` writes, as a person would use
it: the `event-source` profile may send to the ingest queue and nothing else; `operator` may do
anything. Usage: check_credentials.py CREDENTIALS_FILE STACK_PREFIX (AWS_ENDPOINT_URL set)."""

import json
import os
import sys

import boto3
from botocore.exceptions import ClientError

path, prefix = sys.argv[1:3]
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = path
for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
    os.environ.pop(name, None)
endpoint = os.environ["AWS_ENDPOINT_URL"]


def sqs(profile):
    session = boto3.Session(profile_name=profile, region_name="us-east-1")
    return session.client("sqs", endpoint_url=endpoint)


operator = sqs("operator")
queue = operator.get_queue_url(QueueName=f"{prefix}-IngestQueue")["QueueUrl"]
source = sqs("event-source")
body = {"venue_id": "credentials-check", "type": "order.created", "data": {}}
source.send_message(QueueUrl=queue, MessageBody=json.dumps(body))
print("event-source: send to the ingest queue: allowed")
for what, call in [
    ("receive from the ingest queue", lambda: source.receive_message(QueueUrl=queue)),
    ("list the queues", lambda: source.list_queues()),
]:
    try:
        call()
    except ClientError as e:
        code = e.response["Error"]["Code"]
        assert "AccessDenied" in code, code
        print(f"event-source: {what}: refused ({code})")
    else:
        sys.exit(f"event-source may {what}: its profile allows too much")
print("credentials file: as documented")
