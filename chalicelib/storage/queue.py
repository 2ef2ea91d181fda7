"""SQS queues: the usage queue and its dead-letter queue."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chalicelib.storage import clients
from chalicelib.storage.failures import translated

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


class SqsQueue:
    """A queue by name (the MessageQueue port); its URL is looked up once, on first use.

    botocore errors come out as the store's own (chalicelib/domain/store.py).
    """

    def __init__(self, queue_name: str, client: SQSClient | None = None) -> None:
        self.queue_name = queue_name
        self._client = client
        self._url: str | None = None

    @property
    def client(self) -> SQSClient:
        return self._client or clients.sqs()

    @property
    def url(self) -> str:
        if self._url is None:
            self._url = self.client.get_queue_url(QueueName=self.queue_name)["QueueUrl"]
        return self._url

    @translated
    def send(self, body: str, attributes: dict[str, str] | None = None) -> None:
        kwargs = {}
        if attributes:
            kwargs["MessageAttributes"] = {k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()}
        self.client.send_message(QueueUrl=self.url, MessageBody=body, **kwargs)  # type: ignore[arg-type]
