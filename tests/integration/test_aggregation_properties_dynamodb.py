"""The aggregation property of tests/unit/test_aggregation_properties.py on the emulator's rollup store:
seeded event sets, redelivery, crashes between the join and marker steps, two concurrent aggregators."""

from __future__ import annotations

import random

import pytest

from chalicelib.config import Settings
from chalicelib.storage.rollups_repo import DynamoRollupStore
from tests.unit.test_aggregation_properties import GROUP_BOUND, check_exact, deliver, fixed_usage, ingest


@pytest.mark.parametrize("seed", [1, 2])
def test_every_aggregation_in_dynamodb_rollups_equals_the_raw_events(aws: Settings, seed: int) -> None:
    """The same property on the emulator's rollup store (fewer, seeded examples: it is slower)."""
    rng = random.Random(seed)
    events = fixed_usage(rng)
    store = DynamoRollupStore(aws.rollups_table)
    store.max_group_values = GROUP_BOUND
    pipeline, stored = ingest(events, [5, 9], store)
    deliver(pipeline, rng, 2)
    check_exact(store, stored)
