"""The only boto3 code: table and queue definitions, codec and repositories."""
