"""What every process runs on: settings, the embedded services, database connections, the
broker and its ledger of work in flight, worker processes, answer streams and API keys."""
