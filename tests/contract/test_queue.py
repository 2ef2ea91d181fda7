"""The message queue's contract: SQS (on the emulator) and the in-memory queue keep what is sent alike."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from chalicelib.domain.store import StoreError, StoreUnavailable
from chalicelib.storage.queue import SqsQueue
from tests.contract.conftest import QueueUnderTest


def test_what_is_sent_is_received_whole_with_its_attributes(message_queue: QueueUnderTest) -> None:
    bodies = ['{"v": 1, "n": ' + str(n) + ', "text": "é ✓"}' for n in range(15)]
    for n, text in enumerate(bodies):
        message_queue.queue.send(text, {"reason": f"r{n}"} if n % 2 else None)
    received = message_queue.received()
    assert sorted(received) == sorted((text, {"reason": f"r{n}"} if n % 2 else {}) for n, text in enumerate(bodies))
    assert message_queue.received() == []


class Refusing:
    def __init__(self, code: str) -> None:
        self.code = code

    def __getattr__(self, name: str) -> Any:
        def call(**kwargs: Any) -> Any:
            raise ClientError({"Error": {"Code": self.code, "Message": "injected"}}, "SendMessage")

        return call


@pytest.mark.parametrize(("code", "kind"), [("ServiceUnavailable", StoreUnavailable), ("AccessDenied", StoreError)])
def test_the_sqs_queue_raises_the_stores_own_exceptions(code: str, kind: type[StoreError]) -> None:
    queue = SqsQueue("usage", client=Refusing(code))  # type: ignore[arg-type]
    with pytest.raises(kind) as raised:
        queue.send("{}")
    assert type(raised.value) is kind and raised.value.code == code
    assert isinstance(raised.value.__cause__, ClientError)
