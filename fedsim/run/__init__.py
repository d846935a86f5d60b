"""One run: its parts built from the config, its directory and run.json, and its steps on every runtime."""
