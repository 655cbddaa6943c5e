"""The HTTP layer: request and response schemas, dependencies, error handling and one router per resource."""
