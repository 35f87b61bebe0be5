"""Settings, database, Label Studio client, the FastAPI app and the CLI."""
