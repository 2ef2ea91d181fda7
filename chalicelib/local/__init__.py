"""The embedded local stack: the AWS emulation, pollers, scheduler and demo data."""
