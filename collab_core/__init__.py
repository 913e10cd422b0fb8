"""Framework-free token-routing core."""
