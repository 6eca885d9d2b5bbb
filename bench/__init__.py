"""foundry-proxy benchmark harness: `python -m bench --help`."""
