"""The durable archive: stream -> hourly JSONL files, and counters rebuilt from them."""
