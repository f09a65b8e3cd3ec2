"""The HTTP edge: webhooks in, the log and the views out, and the operational endpoints."""
