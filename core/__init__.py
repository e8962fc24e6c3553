"""The domain and the runtime contract shared by the orchestrator, the adapter and the shutdown Lambda.

- tasks:      TaskStatus, the typed TaskRecord, ids, the idempotency-marker rule, the status index name
- store:      TaskStore, the conditional transitions over the task table
- message:    the task queue's message (encode/parse, versioned)
- contract:   every environment variable a program reads: type, default, meaning
- idle:       the idle rule (Observation -> Decision); observe: the direct reads that build an Observation
- instances:  InstanceState and the one start/stop helper
- task_types: the task type registry and its JSON
- logs:       one structured-log `event()` for every program

Stdlib and boto3/botocore only: this package ships in the Lambda zip and the adapter bundle as it is.
"""
