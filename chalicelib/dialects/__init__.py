"""The other vendors' API dialects over the same use cases and store."""
