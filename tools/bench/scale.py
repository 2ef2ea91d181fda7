"""On paper: the partition arithmetic on AWS at 10,000 and 1,000,000 events/s, on the units measured in this run.

Nothing here is measured on AWS. The inputs are the write units, item sizes, SQS requests and Lambda
invocations per event counted by the pipeline section, the key design of chalicelib/storage/keys.py
and schema.py, the limits and prices of /work/shared/AWS-FACTS.md, and a few AWS quotas and prices
that file does not list (marked "not in AWS-FACTS.md" where used: check them before relying on them).
The assumed AWS latencies are assumptions, stated once below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tools.bench.common import BATCH_SIZE, PRICE_LAMBDA, PRICE_RRU, PRICE_SQS, PRICE_WRU, SQS_BATCH, fmt
from tools.bench.pipeline import PhaseCost

PARTITION_WCU = 1_000  # per partition per second (AWS-FACTS.md)
HEADROOM = 0.7  # plan partitions and shards at 70% of their limit
PENDING_SHARDS = 8  # chalicelib/storage/events_repo.PENDING_SHARDS
DEPLOYED_SQS_BATCH = 100  # workers/pipeline.py: on_sqs_message(batch_size=100, window 5 s)
LAMBDA_GB = 0.5  # .chalice/config.json lambda_memory_size 512

# Not in AWS-FACTS.md: AWS's published defaults and list prices (US East), to check before relying on them.
QUOTA_LAMBDA_CONCURRENCY = 1_000  # concurrent executions per region, adjustable
LAMBDA_SCALE_PER_10S = 1_000  # each function adds up to 1,000 concurrent executions every 10 s
QUOTA_APIGW_RPS = 10_000  # REST API requests/s per account and region (burst 5,000), adjustable
QUOTA_TABLE_WRU = 40_000  # on-demand write request units/s per table (and per index), adjustable
QUOTA_SQS_INFLIGHT = 120_000  # in-flight messages per standard queue
QUOTA_SQS_POLLERS = 1_250  # concurrent Lambda invocations an SQS event source scales to (standard queue)
PRICE_LAMBDA_GB_S = 0.0000166667  # $ per GB-second, x86
PRICE_APIGW_REST = 3.50  # $ per million REST API requests (first 333 million a month)

# Assumed on AWS (not measured): a DynamoDB or SQS call in the same region takes about 8 ms.
CALL_MS = 8.0
SINGLE_REQUEST_S = 0.040  # a single-event request: 4 calls in sequence + the handler's own work
BATCH_REQUEST_S = 0.150  # a 100-event request: 100 conditional puts from 16 threads, pending, send
AGGREGATOR_S = 1.0  # an aggregator invocation of up to 100 messages: reads, then transactions of <= 100 actions
TRANSACTION_S = 0.025  # one TransactWriteItems call, from send to answer
HOT_SHARE = 0.10  # the busiest service line's share of the traffic, for the arithmetic

RATES = (10_000, 1_000_000)


@dataclass(frozen=True)
class Mix:
    """Traffic all on one path: its events per request and the units per event measured for it."""

    name: str
    phase: PhaseCost
    events_per_request: int
    request_s: float

    def per_event(self, *needles: str) -> float:
        return sum(u for c, u in self.phase.tally.wru.items() if any(n in c for n in needles)) / self.phase.events

    @property
    def event_table_wru(self) -> float:
        """Write units per event on the events table itself: the event and the pending record."""
        return self.per_event("event put", "pending record")

    @property
    def index_wru(self) -> float:
        return self.per_event("event by_line index")

    @property
    def pending_wru(self) -> float:
        return self.per_event("pending record")

    @property
    def rollups_table_wru(self) -> float:
        return self.per_event("applied marker", "rollup")

    def requests_per_s(self, rate: float) -> float:
        return rate / self.events_per_request

    def aggregator_invocations_per_s(self, rate: float) -> float:
        return self.requests_per_s(rate) / DEPLOYED_SQS_BATCH  # one message per request, 100 per invocation

    def concurrency(self, rate: float) -> tuple[float, float]:
        """Lambda concurrency: (ingest, aggregator) = requests/s x duration."""
        return self.requests_per_s(rate) * self.request_s, self.aggregator_invocations_per_s(rate) * AGGREGATOR_S

    def dollars_per_hour(self, rate: float) -> dict[str, float]:
        per_hour = rate * 3600 / 1e6  # million events an hour
        api, aggregator = self.concurrency(rate)
        return {
            "DynamoDB writes": per_hour * self.phase.wru * PRICE_WRU,
            "DynamoDB reads": per_hour * self.phase.rru * PRICE_RRU,
            "SQS": per_hour * self.phase.sqs_billed * PRICE_SQS,
            "Lambda requests": per_hour * self.phase.lambdas * PRICE_LAMBDA,
            "Lambda GB-s": (api + aggregator) * LAMBDA_GB * 3600 * PRICE_LAMBDA_GB_S,
            "API Gateway": self.requests_per_s(rate) * 3600 / 1e6 * PRICE_APIGW_REST,
        }

    def limits(self) -> list[tuple[str, float]]:
        """Each limit with the total events/s at which this mix reaches it (a line's limits: that line's events/s)."""
        api, aggregator = self.concurrency(1.0)
        return sorted(
            [
                ("API Gateway's 10,000 requests/s account quota", QUOTA_APIGW_RPS * self.events_per_request),
                ("Lambda's 1,000 concurrent executions", QUOTA_LAMBDA_CONCURRENCY / (api + aggregator)),
                ("the events table's 40,000 WRU/s quota", QUOTA_TABLE_WRU / self.event_table_wru),
                ("the by_line index's 40,000 WRU/s quota", QUOTA_TABLE_WRU / self.index_wru),
                (
                    f"{PENDING_SHARDS} pending-record shards at 1,000 WRU/s each",
                    PENDING_SHARDS * PARTITION_WCU / self.pending_wru if self.pending_wru else math.inf,
                ),
                (
                    f"the queue's 120,000 in-flight messages ({AGGREGATOR_S:.0f} s each, the batches filling at once)",
                    QUOTA_SQS_INFLIGHT / AGGREGATOR_S * self.events_per_request,
                ),
                (
                    f"the busiest line's by_line index partition (that line at {HOT_SHARE:.0%} of the traffic)",
                    PARTITION_WCU / self.index_wru / HOT_SHARE,
                ),
            ],
            key=lambda kv: kv[1],
        )


def shards(units_per_s: float) -> int:
    """Partitions (or key shards) to carry `units_per_s` writes at HEADROOM of 1,000 WRU/s each."""
    return max(1, math.ceil(units_per_s / (PARTITION_WCU * HEADROOM)))


def section(single: PhaseCost, batch: PhaseCost) -> str:
    """The "Partition keys on AWS" part of docs/benchmarks.md."""
    b = Mix("batch", batch, BATCH_SIZE, BATCH_REQUEST_S)
    s = Mix("single", single, 1, SINGLE_REQUEST_S)
    event_bytes = batch.mean_size("event put")
    pending_bytes = batch.mean_size("pending record put")
    pending_per_batch = b.pending_wru * BATCH_SIZE
    lo, hi = RATES
    hot_share = HOT_SHARE

    def usd(rate: float, mix: Mix) -> tuple[str, float]:
        parts = mix.dollars_per_hour(rate)
        text = "; ".join(f"{k} ${v:,.0f}" for k, v in parts.items())
        return text, sum(parts.values())

    rows = [
        "| at | mix | requests/s | events table WRU/s | by_line WRU/s | pending WRU/s | rollups table WRU/s "
        "| Lambda concurrency (ingest + aggregator) | SQS requests/s | $ per hour |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for rate in RATES:
        for mix in (b, s):
            api, agg = mix.concurrency(rate)
            rows.append(
                f"| {rate:,} ev/s | {mix.name} | {mix.requests_per_s(rate):,.0f} | {rate * mix.event_table_wru:,.0f} "
                f"| {rate * mix.index_wru:,.0f} | {rate * mix.pending_wru:,.0f} | {rate * mix.rollups_table_wru:,.0f} "
                f"| {api:,.0f} + {agg:,.0f} | {rate * mix.phase.sqs_billed:,.0f} | ${usd(rate, mix)[1]:,.0f} |"
            )
    table = "\n".join(rows)
    hot = hi * hot_share
    hot_index_shards = shards(hot * b.index_wru)
    pending_hi = hi * b.pending_wru
    pending_shards_hi = shards(pending_hi)
    messages_hot = hot / BATCH_SIZE  # the hot line's messages per second
    invocations_hi = b.aggregator_invocations_per_s(hi)
    # A transactional update of a rollup item under 1 KB costs 2 units; one item takes 1,000 units/s at most.
    rollup_updates_cap = PARTITION_WCU / 2
    hot_transactions = min(messages_hot, invocations_hi)  # transactions/s that update one hot rollup item
    rollup_shards = max(
        math.ceil(hot_transactions * TRANSACTION_S),  # at most one transaction in flight per shard, on average
        math.ceil(hot_transactions / (rollup_updates_cap * HEADROOM)),
    )
    dollars_b_text, dollars_b = usd(hi, b)
    dollars_s_text, dollars_s = usd(hi, s)
    limit_lines = "\n".join(
        f"  {n}. {name}: **{at:,.0f} events/s** on the batch path"
        + (f", {single_at:,.0f} on the single path" if single_at != at else "")
        for n, ((name, at), single_at) in enumerate(
            zip(b.limits(), [dict(s.limits())[name] for name, _ in b.limits()], strict=True), start=1
        )
    )
    api_b, agg_b = b.concurrency(hi)
    api_s, agg_s = s.concurrency(hi)
    return f"""## Partition keys on AWS, at 10,000 and 1,000,000 events/s

A DynamoDB partition serves about {PARTITION_WCU:,} write units and 3,000 read units per second,
and one item's writes serialize. The emulator has no partitions: this part is arithmetic on the
units, sizes and counts measured above (write units per event: {fmt(batch.wru)} batch,
{fmt(single.wru)} single; an event is {event_bytes:,.0f} B, the pending record of a
{BATCH_SIZE}-event batch {pending_bytes:,.0f} B), on the key design of
`chalicelib/storage/keys.py` and `schema.py`, and on AWS's limits and prices in
`AWS-FACTS.md`. Quotas and prices that file does not list are marked (*): AWS's published
defaults, to check before relying on them. Durations on AWS are assumptions, not measurements:
a DynamoDB or SQS call about {CALL_MS:.0f} ms, a single-event request {SINGLE_REQUEST_S * 1000:.0f} ms,
a {BATCH_SIZE}-event request {BATCH_REQUEST_S * 1000:.0f} ms, an aggregator invocation of
{DEPLOYED_SQS_BATCH} messages {AGGREGATOR_S * 1000:.0f} ms, one transaction {TRANSACTION_S * 1000:.0f} ms.
"Batch" means every event arrives in
requests of {BATCH_SIZE} (what the Python client sends), "single" one event per request.
Partitions and shards are planned at {HEADROOM:.0%} of their limit.

{table}

(Requests/s x duration = concurrency; WRU/s = events/s x the units per event of that kind
measured above, the rollups' as coalesced by the bench's aggregator runs of {SQS_BATCH} messages,
about 10x what the deployed event source's {DEPLOYED_SQS_BATCH} would cost on the single path;
$ per hour = events/s x 3,600 x units per event x the price per million, plus
Lambda GB-seconds at {LAMBDA_GB} GB x ${PRICE_LAMBDA_GB_S}/GB-s (*) and API Gateway REST at
${PRICE_APIGW_REST:.2f} per million requests (*).)

- **Events** are keyed `EV#<organization>#K#<idempotency key>`: every event has its own
  partition key, so the table's writes spread over as many partitions as DynamoDB makes. At
  {hi:,} events/s the batch path writes {hi * b.event_table_wru:,.0f} units/s to the events table:
  at least {hi * b.event_table_wru / PARTITION_WCU:,.0f} partitions. On-demand tables double
  their previous peak at most every 30 minutes, so a table going from {lo:,} to {hi:,} events/s
  needs its warm throughput set beforehand (or hours of ramp). The per-table quota of
  {QUOTA_TABLE_WRU:,} WRU/s (*; counted here for the table and for each index) must be raised to about
  {hi * b.event_table_wru * 1.25:,.0f} for the table and {hi * b.index_wru * 1.25:,.0f} for the
  `by_line` index (each with 25% headroom).
- **Hot lines and index shards.** The `by_line` index is keyed `<organization>#<line>`: a line's
  entries share one index partition, {fmt(b.index_wru)} write units per event, so one line tops
  out at about {PARTITION_WCU / b.index_wru:,.0f} events/s, and index throttling throttles the
  table writes behind it. If the busiest line carries {hot_share:.0%} of {hi:,} events/s
  ({hot:,.0f} events/s), its index needs {hot * b.index_wru:,.0f} units/s: the key becomes
  `<organization>#<line>#<N>` with N = hash(event id) mod S, S = {hot_index_shards} for that
  line ({hot * b.index_wru:,.0f} / ({PARTITION_WCU:,} x {HEADROOM})). S is a property of the line
  (1 for almost every line, raised for the few hot ones, never lowered while entries remain
  under the old S); a listing then runs S `Query` calls per page and merges them by
  (period_date, id), and the reconciler does the same. The summary reads rollups and is
  unaffected. Projecting less does not help the write side: an index entry costs at least 1
  unit.
- **Pending-record shards.** Pending records go to `PENDING#0` .. `PENDING#{PENDING_SHARDS - 1}` by a
  hash of the batch id; put and delete cost {fmt(pending_per_batch, 0)} units per
  {BATCH_SIZE}-event batch. At {lo:,} events/s: {lo * b.pending_wru:,.0f} units/s,
  {lo * b.pending_wru / PENDING_SHARDS:,.0f} per shard. At {hi:,} events/s: {pending_hi:,.0f}
  units/s, {pending_hi / PENDING_SHARDS:,.0f} per shard, {pending_hi / PENDING_SHARDS / PARTITION_WCU:.0f}x
  what a partition takes: {pending_shards_hi} shards are needed, and the sweeper's scan becomes
  {pending_shards_hi} `Query` calls. On the single path every event writes its own pending record
  ({fmt(s.pending_wru)} units per event): {PENDING_SHARDS} shards top out at
  {PENDING_SHARDS * PARTITION_WCU / s.pending_wru if s.pending_wru else math.inf:,.0f} single events/s,
  and {hi:,} would need {shards(hi * s.pending_wru):,} shards. At this scale the single event should
  not have a pending record at all (the floor above): the reconciler finds an event whose enqueue
  failed through the listing index.
- **Rollup keys under concurrent aggregators.** Rollups are keyed `R#<organization>#<line>` /
  `D#<day>#<meter>` and `H#<hour>#<meter>#<day>`: every event of a line, meter and day adds to
  one item. The aggregator coalesces: a transaction updates each distinct rollup key once,
  whatever the number of events in it (in the batch run above the busiest rollup item took
  {batch.max_updates_per_rollup} update(s) for {batch.events:,} events). The deployed event source
  delivers up to {DEPLOYED_SQS_BATCH} messages ({DEPLOYED_SQS_BATCH * BATCH_SIZE:,} events) per
  invocation. At {hi:,} events/s that is {invocations_hi:,.0f} invocations/s; the hot line's
  {messages_hot:,.0f} messages/s are spread over them, so up to
  {hot_transactions:,.0f} transactions/s update the same day and hour items.
  A transactional update of an item under 1 KB costs 2 units, so one item takes at most
  {rollup_updates_cap:,.0f} of them per second; before that, two transactions that touch the same
  item at the same time conflict (`TransactionConflict`), cancel and retry: at about
  {TRANSACTION_S * 1000:.0f} ms per transaction, {hot_transactions:,.0f} transactions/s keep
  {hot_transactions * TRANSACTION_S:.1f} in flight on the item on average, so most of them would
  meet another. At scale the hot rollup keys are sharded the same way as the index:
  `R#<organization>#<line>#<k>` with k = hash(batch id) mod K, K = {rollup_shards} for this line
  (one transaction in flight per shard on average), readers sum K items (a summary reads K x
  more rollups, still a few read units), and
  an exactly-once marker stays per batch. The other way is to give each rollup key a single
  writer: route messages by (organization, line) (Kinesis shards or SQS FIFO message groups)
  so each line's aggregator coalesces alone; that changes the queue and its scaling, not the
  tables.
- **Applied markers** are keyed by batch id, so they spread like the events.
- **Lambda concurrency.** At {hi:,} events/s in batches: {b.requests_per_s(hi):,.0f} ingest
  requests/s x {BATCH_REQUEST_S} s = {api_b:,.0f} concurrent, plus {invocations_hi:,.0f} aggregator
  invocations/s x {AGGREGATOR_S} s = {agg_b:,.0f}. The regional default is
  {QUOTA_LAMBDA_CONCURRENCY:,} (*): raise it to about {(api_b + agg_b) * 1.5:,.0f}. A function adds at
  most {LAMBDA_SCALE_PER_10S:,} executions every 10 s (*), fine for the batch path. Single events:
  {s.requests_per_s(hi):,.0f} requests/s x {SINGLE_REQUEST_S} s = {api_s:,.0f} concurrent (plus
  {agg_s:,.0f} aggregating), {api_s / LAMBDA_SCALE_PER_10S * 10:,.0f} s of scaling from cold, and
  a quota raise of that size is a negotiation with AWS, not a form.
- **SQS throughput.** A standard queue has no practical request-rate limit; the batch path sends
  one message per request ({b.requests_per_s(hi):,.0f}/s, each well under the 64 KB billing chunk)
  and the event source receives and deletes them {DEPLOYED_SQS_BATCH} at a time. What binds is
  the in-flight count: a message is in flight from receive to delete (at these rates the
  event source's batches of {DEPLOYED_SQS_BATCH} fill long before the 5 s window), so about
  {b.requests_per_s(hi) * AGGREGATOR_S:,.0f} messages against the {QUOTA_SQS_INFLIGHT:,} in-flight
  limit per queue (*) on the batch path, and {s.requests_per_s(hi) * AGGREGATOR_S:,.0f} on the
  single path (over the limit: the queue has to be split, or single events batched before
  the queue). The SQS event source scales to about
  {QUOTA_SQS_POLLERS:,} concurrent invocations per queue (*), above the
  {agg_b:,.0f} the batch path needs.
- **Account quotas to raise** (*): API Gateway requests/s ({QUOTA_APIGW_RPS:,} default;
  {b.requests_per_s(hi):,.0f} needed in batches, {s.requests_per_s(hi):,.0f} for single events);
  Lambda concurrent executions ({QUOTA_LAMBDA_CONCURRENCY:,}; about {(api_b + agg_b) * 1.5:,.0f});
  DynamoDB per-table write throughput ({QUOTA_TABLE_WRU:,} WRU/s; about
  {hi * b.event_table_wru * 1.25:,.0f} for the events table and as much for its index) and the
  account's regional throughput; the table's warm throughput set before the traffic arrives.
- **Dollars per hour** at {hi:,} events/s, on-demand: batch path **${dollars_b:,.0f}/h**
  ({dollars_b_text}); single path **${dollars_s:,.0f}/h** ({dollars_s_text}). Storage comes on top:
  each event and its index entry keep about {2 * event_bytes / 1e3:.1f} KB, {hi * 3600 * 2 * event_bytes / 1e12:,.1f}
  TB an hour, so at this rate the events table needs a retention (TTL and an archive) before it
  needs anything else.
- **What breaks first** as the rate grows, each limit with the total events/s at which this
  design reaches it (a hot line reaches its own limits sooner: its index partition at
  {PARTITION_WCU / b.index_wru:,.0f} events/s of that line, its rollup items at a few concurrent
  aggregators):
{limit_lines}
- **What the design changes at that scale:** batches are the only ingestion path that scales
  (the client batches by default; single events cost {fmt(single.wru / batch.wru)}x the write
  units and 100x the requests); the single event loses its pending record; pending records get
  {pending_shards_hi} shards (or go, if the reconciler's listing-index repair is fast enough);
  hot lines get index shards and rollup shards, decided per line; the tables' warm throughput and
  the account quotas are raised ahead of traffic; and the aggregator either shards its hot keys
  or gets one writer per line through a partitioned stream.
"""
