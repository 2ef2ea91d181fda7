"""Use cases: one function per operation, taking the repositories it needs."""
