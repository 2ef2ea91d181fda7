"""`make bench`: the benchmark suite, one module per section. `python -m tools.bench` runs every section,
prints one table and writes docs/benchmarks.md (and docs/benchmarks-spread.md).

Every number comes from the run (nothing here is a recorded result):
- `ingest_http`: ingest throughput over HTTP against the real local stack (a subprocess), next to
  the emulator's raw rate of conditional PutItem calls;
- `pipeline`: AWS cost per event, counted from the calls the code really makes (botocore hooks),
  for single and batch ingestion, each including the aggregation; the floor beside it; the
  DynamoDB and SQS calls one single-event request makes in sequence;
- `queries`: the DynamoDB items read and the latency of a 30-day usage summary at 1,000 and
  100,000 events;
- `cold_start`: `import app` against `import boto3` in fresh interpreters (`-X importtime`);
- `package_size`: the Lambda package as `make package` builds it;
- `spread`: real-shaped usage over 90 days through the local stack;
- `scale`: the partition arithmetic from 10,000 to 1,000,000 events/s on AWS, on the units measured.
"""
