"""The orchestrator: an HTTP service that queues GPU tasks and starts the GPU instance when work arrives."""
