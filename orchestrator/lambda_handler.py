"""The service as a Lambda function (behind a function URL): `orchestrator.lambda_handler.handler`.

The app is built once per execution environment, at import (the cold start), from the same environment settings
the container reads; with ORCHESTRATOR_AUTH=iam the caller is the ARN the function URL puts in each event
(orchestrator/identity.py). Lifespan is off: Lambda gives no shutdown hook to run it in, and a frozen environment
runs no background thread, so the GPU starter's retry of a `stopping` instance may not finish here; the shutdown
Lambda's schedule stays the backstop for that, as it is for the container.
"""

from __future__ import annotations

from mangum import Mangum

from .app import app_from_env

# The Lambda runtime owns the root logger (its handler ships lines to CloudWatch): only the service's are set up.
handler = Mangum(app_from_env(loggers=("orchestrator",)), lifespan="off")
