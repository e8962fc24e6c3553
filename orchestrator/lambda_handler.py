"""The service as a Lambda function (behind a function URL): `orchestrator.lambda_handler.handler`.

The app is built once per execution environment, at import (the cold start), from the same environment settings
the container reads; with ORCHESTRATOR_AUTH=iam the caller is the ARN the function URL puts in each event
(orchestrator/identity.py), and a request through the `admin` alias's URL is an admin's. Lifespan is off: Lambda
gives no shutdown hook to run it in, and the app needs none: nothing of it outlives a request (a frozen environment
runs no background thread). A submit's only GPU work is one asynchronous invoke of the controller Lambda
(orchestrator/gpu.py), which starts and stops the GPUs.
"""

from __future__ import annotations

from mangum import Mangum

from .app import app_from_env

# The Lambda runtime owns the root logger (its handler ships lines to CloudWatch): only the service's are set up.
handler = Mangum(app_from_env(loggers=("orchestrator",)), lifespan="off")
