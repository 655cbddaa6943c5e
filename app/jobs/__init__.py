"""Meta-training jobs: specs submitted over HTTP, the table that queues them, the worker process that
trains one, and the runner in the service that starts workers and serves what they publish."""
