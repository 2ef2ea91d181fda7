"""The native HTTP API: one Blueprint per resource over the use cases."""
