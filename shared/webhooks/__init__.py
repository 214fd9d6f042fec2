"""What the gateway's webhook faces and the notifier share about webhooks.

- `catalogue`: the event types a subscription can ask for, and which events it receives;
- `envelope`: the body every delivery POSTs, and delivery ids (the `webhook-id` header);
- `subscriptions`: new subscriptions and their ids;
- `secrets`: signing secrets, and how they are kept sealed at rest;
- `store`: typed access to the subscription and delivery buckets.

Sending (the signed HTTP attempt, retries) is the notifier's alone: `services/notifier/`.
"""
