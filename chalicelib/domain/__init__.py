"""The pure domain: models, rules and arithmetic. Imports neither boto3 nor chalice."""
