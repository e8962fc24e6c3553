"""task-events: the task table's DynamoDB stream -> EventBridge task state-change events (core/events.py), and the
webhook deliveries of tasks that end with a notify_url queued for functions/webhooks."""
