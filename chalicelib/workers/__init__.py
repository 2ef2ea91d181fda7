"""Event handlers: the SQS aggregator and the scheduled jobs (Blueprints)."""
