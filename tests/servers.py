"""Session fixtures that start real servers for integration tests."""
