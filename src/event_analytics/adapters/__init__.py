"""Payloads of other trackers (Segment, Plausible) mapped to the one event model.

Pure: a parsed dict in, event dicts and per-message results out. No HTTP, no I/O.
"""
