"""task-webhooks: one POST per message of the webhook queue to the task's notify_url, signed, to exactly the
address that was checked; its outcome (DELIVERED, a delayed retry, FAILED) on the task item."""
