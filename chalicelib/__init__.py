"""The usage-metering service: domain, services, storage and HTTP surfaces."""
