"""The ingest script's contract: one ``IngestCall`` is one call of ``store/ingest.lua``.

The header fields, in their order here, ARE the script's header: the ``key`` fields are
KEYS[1..5] and the ``arg`` fields ARGV[1..13], read one per line at the top of
ingest.lua under the same names. The stripes follow them (per bucket, per page, per
event: ingest.lua documents their layout). tests/test_store.py holds the two sides
together: renaming, adding or reordering a header value on one side fails it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from event_analytics.store.scripts import Call


def _key() -> dict[str, str]:
    return {"header": "key"}


def _arg() -> dict[str, str]:
    return {"header": "arg"}


@dataclass(frozen=True, slots=True)
class IngestCall:
    """The keys and arguments of one ingest.lua call, for the events of one shard."""

    # KEYS[1..5]
    stream: str = field(metadata=_key())  # the shard's event stream
    dedup_stem: str = field(metadata=_key())  # live: keys.seen_stem; replay: replayed_stem
    stream_extra: str = field(metadata=_key())  # records beyond one per stream entry
    event_types: str = field(metadata=_key())  # the shard's set of event types
    erased: str = field(metadata=_key())  # the shard's erased users (refused: keys.erased)
    # ARGV[1..13]
    events: int = field(metadata=_arg())
    buckets: int = field(metadata=_arg())
    pages: int = field(metadata=_arg())  # distinct pages of the call
    live: bool = field(metadata=_arg())  # dedup, count, stream; False: replay (count only)
    exact: bool = field(metadata=_arg())  # EA_UNIQUES=exact
    aggregate: bool = field(metadata=_arg())  # write per distinct key, not per event
    generation_s: int = field(metadata=_arg())  # seconds per dedup generation
    generations: int = field(metadata=_arg())  # older generations still checked
    token: bytes = field(metadata=_arg())  # this call's own (a resend of it is no duplicate)
    max_event_types: int = field(metadata=_arg())  # Caps.event_types
    max_pages: int = field(metadata=_arg())  # Caps.pages_per_bucket
    other_page: str = field(metadata=_arg())  # keys.OTHER_PAGE
    other_page_digest: str = field(metadata=_arg())
    # The stripes: KEYS from 6 on, 3 per bucket; ARGV from 14 on: 4 per bucket, then 2
    # per page, then 5 per event.
    bucket_stems: list[str] = field(default_factory=list)
    bucket_args: list[str | int] = field(default_factory=list)
    page_args: list[str] = field(default_factory=list)
    event_args: list[str | bytes | int] = field(default_factory=list)

    def call(self) -> Call:
        """(keys, args) as the script reads them (flags as 1 or 0)."""
        keys: list[str | bytes | int] = [getattr(self, name) for name in KEY_HEADER]
        keys += self.bucket_stems
        args: list[str | bytes | int] = [_flag(getattr(self, name)) for name in ARG_HEADER]
        args += self.bucket_args
        args += self.page_args
        args += self.event_args
        return keys, args


def _flag(value: str | bytes | int) -> str | bytes | int:
    if value is True or value is False:
        return 1 if value else 0
    return value


KEY_HEADER = tuple(f.name for f in fields(IngestCall) if f.metadata.get("header") == "key")
ARG_HEADER = tuple(f.name for f in fields(IngestCall) if f.metadata.get("header") == "arg")
