"""Lambda's event-source side, locally: an SQS poller and a scheduler for the app's handlers.

`chalice local` serves HTTP routes only; these threads invoke the real
`on_sqs_message` and `schedule` handlers the way Lambda would, with
SQS partial batch responses (ReportBatchItemFailures) honoured.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chalicelib.storage import clients

log = logging.getLogger("usage-metering.local")

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class LambdaContext:
    """The parts of Lambda's context object handlers use."""

    function_name: str
    aws_request_id: str
    deadline: float
    memory_limit_in_mb: int = 512

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def make_context(name: str, timeout_s: float = 60.0) -> LambdaContext:
    return LambdaContext(name, str(uuid.uuid4()), time.monotonic() + timeout_s)


def sqs_event(messages: Sequence[Mapping[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """An SQS-triggered Lambda event from ReceiveMessage results."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": m.get("MessageAttributes", {}),
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for m in messages
        ]
    }


def scheduled_event(name: str, region: str) -> dict[str, Any]:
    """A scheduled (EventBridge) Lambda event."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:events:{region}:123456789012:rule/{name}"],
        "detail": {},
    }


class SqsPoller(threading.Thread):
    """Receives from one queue and invokes a handler per batch, like Lambda's event source mapping."""

    def __init__(
        self,
        name: str,
        queue_name: str,
        handler: Handler,
        region: str,
        batch_size: int = 10,
        retry_delay_s: int = 2,
    ) -> None:
        super().__init__(name=f"sqs-poller-{name}", daemon=True)
        self.function_name = name
        self.queue_name = queue_name
        self.handler = handler
        self.region = region
        self.batch_size = min(batch_size, 10)
        self.retry_delay_s = retry_delay_s
        self._stop_event = threading.Event()
        self.batches = 0
        self.failures = 0

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        sqs = clients.sqs()
        url = sqs.get_queue_url(QueueName=self.queue_name)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        while not self._stop_event.is_set():
            try:
                if not self.poll_once(sqs, url, arn):
                    self._stop_event.wait(0.1)
            except Exception:  # keep polling, like the event source mapping does
                log.exception("poller %s failed", self.function_name)
                self._stop_event.wait(1.0)

    def poll_once(self, sqs: Any, url: str, arn: str) -> int:
        """One receive and invoke; returns how many messages were handled."""
        messages = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=self.batch_size,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return 0
        self.batches += 1
        failed: set[str] = set()
        try:
            result = self.handler(sqs_event(messages, arn, self.region), make_context(self.function_name))
            if isinstance(result, dict):
                failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
        except Exception:
            log.exception("handler %s raised; the whole batch will be retried", self.function_name)
            failed = {m["MessageId"] for m in messages}
        self.failures += len(failed)
        done = [m for m in messages if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            chunk = done[start : start + 10]
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
            )
        for m in messages:
            if m["MessageId"] in failed:  # retry soon locally, rather than after the full visibility timeout
                sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=self.retry_delay_s
                )
        return len(messages)


_RATE = re.compile(r"rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def schedule_seconds(expression: Any) -> float:
    """The period of a Chalice schedule expression (a cron runs every minute locally)."""
    text = expression if isinstance(expression, str) else expression.to_string()
    match = _RATE.fullmatch(text.strip())
    if not match:
        return 60.0
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2).rstrip("s")]


class Scheduler(threading.Thread):
    """Runs each scheduled handler at its period (or a fixed local period)."""

    def __init__(self, jobs: list[tuple[str, Handler, float]], region: str) -> None:
        super().__init__(name="scheduler", daemon=True)
        self.jobs = jobs
        self.region = region
        self._stop_event = threading.Event()
        self.runs: dict[str, int] = {name: 0 for name, _, _ in jobs}

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        next_run = {name: time.monotonic() + period for name, _, period in self.jobs}
        while not self._stop_event.is_set():
            now = time.monotonic()
            for name, handler, period in self.jobs:
                if now >= next_run[name]:
                    next_run[name] = now + period
                    try:
                        handler(scheduled_event(name, self.region), make_context(name))
                        self.runs[name] += 1
                    except Exception:
                        log.exception("scheduled handler %s failed", name)
            self._stop_event.wait(0.2)
