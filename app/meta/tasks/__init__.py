"""Task families: samplers that turn a seeded generator into a ``TaskBatch``."""
