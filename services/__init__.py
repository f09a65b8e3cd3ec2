"""reciprocity-ledger: the service (domain, store, ingest, HTTP edge and command line)."""
