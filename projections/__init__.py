"""Everything built from the store's ordered log: the views, their queries and rebuild, the NATS relay and KV."""
