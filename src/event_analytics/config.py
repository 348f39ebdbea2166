"""One typed settings object, read from the environment (``EA_*``) and CLI flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Shards on a cluster unless EA_SHARDS says otherwise: 16 hash tags land 6/6/4 on three
# masters (no master below 25% of the keys), and a read sums 16 keys per bucket.
CLUSTER_SHARDS = 16
# The processes that ``serve`` starts (uvicorn workers, the archiver) receive its resolved
# Settings whole, in this one variable, rather than flags re-encoded as EA_* variables.
SETTINGS_ENV = "EA_SETTINGS_JSON"
_CLUSTER_URL_NAMES = ("redis_cluster_url", "REDIS_CLUSTER_URL", "EA_REDIS_CLUSTER_URL")


class Settings(BaseSettings):
    """Everything configurable. Invalid values fail loudly at start."""

    # No JSON decoding of list settings: they are comma-separated ("a,b,c"), see _comma_list.
    # Fields by name too: the hand-off (SETTINGS_ENV) is a dump by field name.
    model_config = SettingsConfigDict(
        env_prefix="EA_",
        extra="ignore",
        frozen=True,
        enable_decoding=False,
        populate_by_name=True,
    )

    # Storage. REDIS_URL (the seed's name) or EA_REDIS_URL; empty = embedded Valkey.
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "EA_REDIS_URL")
    )
    # Redis Cluster: one or more seed nodes, "redis://host:port,host:port" (the scheme and
    # credentials of the first apply to all). Exclusive with REDIS_URL.
    redis_cluster_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_CLUSTER_URL", "EA_REDIS_CLUSTER_URL"),
    )
    data_dir: Path = Path("data")
    # Each may live on a filesystem of its own (defaults: under DATA_DIR): the embedded
    # engine's files (DATA_DIR/valkey), the archive (DATA_DIR/persistent_events), the
    # workers' metrics files (DATA_DIR/metrics, preallocated: see telemetry.py).
    archive_dir: Path | None = None
    engine_dir: Path | None = None
    metrics_dir: Path | None = None
    # Below this much free space on the embedded engine's filesystem, ingest refuses
    # (503 storage-full) before the engine's AOF write fails (it exits on that error).
    min_free_disk_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    # Events waiting in the streams for the archiver (XLEN, read every second): past
    # this, ingest refuses (503 archive-backlog-full) instead of filling the engine's
    # memory while the archive is blocked. 0 = no bound.
    max_archive_backlog: int = Field(default=1_000_000, ge=0)
    key_prefix: str = Field(default="ea:", pattern=r"^[A-Za-z0-9_.:-]{1,32}$")
    # User shards (one hash tag each). Default: 1 on a single node, CLUSTER_SHARDS on a cluster.
    shards: int = Field(default=1, ge=1, le=1024)
    redis_timeout_s: float = Field(default=2.0, gt=0, le=60)
    redis_connect_timeout_s: float = Field(default=0.5, gt=0, le=30)
    redis_max_connections: int = Field(default=256, ge=1)
    # Set by ``serve`` when it started the private engine (what readiness reports).
    embedded_engine: bool = False
    # The embedded engine's maxmemory ("512mb", "2gb", bytes); empty = a quarter of the
    # machine's memory (or of the cgroup's limit, if lower): see store/embedded.py.
    engine_maxmemory: str = Field(default="", pattern=r"^(|[0-9]+([kmg]b?)?)$")
    # An engine whose maxmemory-policy may evict keys loses counters and dedup ids
    # silently: readiness is red and ingest refuses, unless this says the risk is accepted.
    allow_evicting_engine: bool = False

    # HTTP server.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    # Query processes (api/forward.py): the heavy read routes run there, at a lower CPU
    # priority, and the workers above only pass them on; 0 = in the workers themselves.
    query_workers: int = Field(default=1, ge=0, le=16)
    # Time slice serve asks the kernel for, in microseconds, for what acknowledges events
    # (its workers, the embedded engine, the archiver): on Linux 6.12+ a shorter one takes
    # a core from a query's DuckDB thread at each wake-up (supervisor.set_slice). 0 = the
    # kernel's default; the kernel bounds it to 100-100,000.
    ingest_slice_us: int = Field(default=100, ge=0, le=100_000)
    # Set by ``serve``: the query processes' unix socket (None = no query processes), and,
    # in those processes only, that they are one (they answer what the workers forward).
    query_socket: Path | None = None
    query_role: bool = False

    # Slow or greedy clients: whole request head within this time (from the connection's
    # start, or the request's first byte) and size, whole body within its own time. Per
    # worker: requests handled at once (idle sockets do not count), open connections (at
    # the cap the oldest idle one is closed), connections per client address (0 = any).
    header_timeout_s: float = Field(default=5.0, gt=0, le=300)
    max_header_bytes: int = Field(default=64 * 1024, ge=4096, le=1024 * 1024)
    body_timeout_s: float = Field(default=30.0, gt=0, le=600)
    max_concurrency: int = Field(default=1024, ge=1)
    max_connections: int = Field(default=4096, ge=1)
    max_connections_per_address: int = Field(default=256, ge=0)
    # Clients whose X-Forwarded-For is believed (the client address of rate limits).
    forwarded_allow_ips: str = "127.0.0.1"
    access_log: bool = False

    # API keys: when a list is set, its scope requires one of its keys. Empty = open.
    write_keys: tuple[str, ...] = ()
    read_keys: tuple[str, ...] = ()
    # The admin scope (erasing people: POST /api/v1/admin/forget), apart from reading and
    # writing. Empty = the admin routes are closed to everyone (never open).
    admin_keys: tuple[str, ...] = ()
    # Read keys limited to some sites: "key@site1|site2,key2@site3" (docs/deploy.md, "Keys
    # per site"). Such a key reads only those sites, and only through the site-scoped
    # routes; setting one closes reads to keyless callers as EA_READ_KEYS does.
    site_keys: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Requests per window (0 = no limit), per API key and per client address, counted
    # in Redis so all workers share them.
    rate_limit_per_key: int = Field(default=0, ge=0)
    rate_limit_per_address: int = Field(default=0, ge=0)
    rate_limit_window_s: int = Field(default=60, ge=1, le=3600)
    # Events per window (0 = no limit), per API key and per client address, on the ingest
    # routes: a batch counts its events, so a request limit cannot be beaten by batching.
    event_limit_per_key: int = Field(default=0, ge=0)
    event_limit_per_address: int = Field(default=0, ge=0)
    # Browser origins allowed to send events (CORS, sendBeacon); "*" = any. Reads: none.
    cors_origins: tuple[str, ...] = ()
    cors_read_origins: tuple[str, ...] = ()
    # Origins whose pages may frame a shared link opened with ?embed=true ("*" = any).
    # Empty (the default): shared links refuse to be framed, as if embed were not asked.
    share_embed_origins: tuple[str, ...] = ()

    # Ingest rules.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_batch_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_batch_events: int = Field(default=1000, ge=1, le=10_000)
    # POST /api/import: the largest body (spooled to a temporary file as it arrives, not
    # held in memory) and the time it may take to arrive.
    import_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    import_body_timeout_s: float = Field(default=600.0, gt=0, le=3600)
    # Imports (importing.py): worker processes that read, validate and encode an NDJSON
    # file's blocks while the import process appends and counts (0: all in the import
    # process). One on a 2-core machine: the engine, counting, needs the other core.
    import_workers: int = Field(default=1, ge=0, le=64)
    # The bytes of a file one worker takes at a time (a block: ~10,000 of our records at
    # the default); a few blocks per worker are in flight.
    import_block_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    future_skew_s: int = Field(default=5 * 60, ge=0)
    max_age_s: int = Field(default=7 * 24 * 3600, ge=60)
    # Cardinality caps, enforced by the ingest script atomically with the write. Event
    # types per shard, for good (a type taken keeps working; a new one past the cap is
    # refused, 422 too_many_event_types). Pages per minute and hour bucket: a page new to
    # a full bucket counts into "(other)" (totals stay exact; top pages say pages_capped).
    max_event_types: int = Field(default=1000, ge=1)
    max_pages_per_bucket: int = Field(default=10_000, ge=1)
    # How long an event id is remembered after it was first stored, whatever timestamp
    # or user a resend carries (kept up to 1.5 x this: see store/prepared.py).
    dedup_window_s: int = Field(default=7 * 24 * 3600, ge=60)

    # Drop-in ingest (Segment's /v1/*, Plausible's /api/event): enrichment of each path
    # (referrer/source, utm, browser/os/device, country; the raw IP is never kept). The
    # Segment path enriches only from what a message's context says of its end user.
    enrich_segment: bool = True
    enrich_browser: bool = True
    # A MaxMind-format country database (.mmdb) instead of geoip2fast's bundled data.
    geoip_db: Path | None = None
    # POST /api/event and /js/script.js: browsers hold no secret, so this path takes no
    # key (EA_CORS_ORIGINS and the address rate limit still apply); False = not served.
    browser_ingest: bool = True

    # Retention of aggregates (seconds after the bucket ends).
    minute_retention_s: int = Field(default=7 * 24 * 3600, ge=60)
    hour_retention_s: int = Field(default=90 * 24 * 3600, ge=3600)
    day_retention_s: int = Field(default=2 * 365 * 24 * 3600, ge=24 * 3600)

    # Archive.
    archiver_lease_s: float = Field(default=10.0, ge=1, le=300)
    archiver_batch: int = Field(default=1000, ge=1, le=100_000)
    archiver_max_deliveries: int = Field(default=5, ge=1)
    # A backup pauses the archivers with a key of this TTL, renewed every third of it while
    # the backup runs: the pause lasts as long as the backup, and ends by itself this long
    # after a backup that died (archive lag grows meanwhile; nothing is lost).
    backup_pause_ttl_s: float = Field(default=60.0, ge=5, le=3600)
    # The archiver writes a Parquet copy of each hour file (archive/compact.py) once
    # the hour has been closed this long: late events go on landing in the JSONL, and
    # a copy is written once, so wait past the common delays; 0 = at once.
    compact: bool = True
    compact_after_s: float = Field(default=300.0, ge=0, le=7 * 24 * 3600)
    # Whole UTC days of hours older than this many days leave the archive (JSONL and
    # Parquet), PostgreSQL and the counters (expiry.py, run by ``serve``); None = forever.
    # Longer than EA_MAX_AGE_S: no event the service still accepts may fall in them.
    archive_retention_days: int | None = Field(default=None, ge=1, le=36_500)
    # How often the expiry job looks for days past the limit (a listing of the archive).
    archive_retention_every_s: float = Field(default=600.0, ge=1, le=24 * 3600)

    # PostgreSQL destination (destinations/): a libpq URL (postgresql://user:pw@host/db,
    # sslmode etc. as libpq reads them); empty = none. Every archived event is written
    # there exactly once by the delivery process that ``serve`` then starts.
    postgres_url: str | None = None
    # Bytes of an hour file sent per transaction (whole lines; at least one line).
    postgres_batch_bytes: int = Field(default=4 * 1024 * 1024, ge=1, le=256 * 1024 * 1024)
    # Fault injection for the crash tests only: SIGKILL the delivery process at this point.
    postgres_crash_at: Literal["", "mid_copy", "before_commit", "after_commit"] = ""

    # Unique users of hour and day buckets: exact sets, or HyperLogLogs (0.81% standard
    # error, 12 KiB at most per bucket). Minute buckets and page figures are always exact.
    uniques: Literal["exact", "approx"] = "approx"

    # Queries: the most buckets one query reads (timeseries points, top-pages buckets).
    max_query_points: int = Field(default=1440, ge=1, le=5000)
    # Top pages: the most (bucket, page) entries one query may merge (ZCARDs summed before
    # it runs; the writer chooses pages x buckets): past it, 422 query_too_costly.
    max_query_cost: int = Field(default=500_000, ge=1)
    # ... merged in engine calls of at most this many entries each, one after another,
    # so ingest's calls run in between. A plain ZUNION or SMEMBERS costs ~0.05-0.3 us
    # an entry (benchmarks/read_merge.py: 10,000 entries a call, 0.5-2.7 ms on a loaded
    # 2-core machine); fewer entries a call cost rounds (2,000: ~2.7 x the time).
    read_chunk_entries: int = Field(default=10_000, ge=1)
    # Heavy reads (top pages, time series) in progress per worker; past it a read waits
    # up to EA_HEAVY_READ_WAIT_S, then 503 reads-busy. Ingest has its own limit.
    max_heavy_reads: int = Field(default=4, ge=1)
    heavy_read_wait_s: float = Field(default=1.0, ge=0, le=60)
    # ... and their estimated cost (entries merged + buckets read, sized before the read)
    # running at once per process: a read over what is left waits as above; one costing
    # more than the whole budget runs alone.
    counter_read_budget: int = Field(default=1_000_000, ge=1)
    # A counter read costing at most this (the live figures: the dashboard's hour of minute
    # buckets, not a day of them) runs in a lane of its own (EA_MAX_HEAVY_READS slots),
    # never behind long ranges.
    cheap_read_cost: int = Field(default=240, ge=0)
    # Analytics reads from another engine, e.g. a replica of REDIS_URL (single node only).
    redis_read_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_READ_URL", "EA_REDIS_READ_URL")
    )
    # On a cluster: analytics reads from the masters' replicas (round robin over them;
    # a slot without a replica is read from its master); ingest stays on the masters.
    read_from_replicas: bool = False

    # Analytics over the archive (DuckDB): queries at once per worker (more: 503), each
    # stopped after this long (504), DuckDB's memory and threads per worker.
    analytics_max_concurrent: int = Field(default=2, ge=1, le=64)
    analytics_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    analytics_memory_limit: str = Field(default="1GB", pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B$")
    analytics_threads: int = Field(default=2, ge=1, le=64)
    # Archive queries are admitted by the bytes of archive files their range holds (the
    # listing's sizes; Parquet where compacted), estimated before they start: at most this
    # much scanned at once per process (more waits EA_HEAVY_READ_WAIT_S, then 503; one
    # query over it runs alone), and a query over the second bound is refused, 422.
    analytics_scan_budget_bytes: int = Field(default=2 * 1024**3, ge=1)
    analytics_max_scan_bytes: int = Field(default=256 * 1024**3, ge=1)
    # Web analytics (Stats API): a gap of more than this since a visitor's previous
    # event on a site starts a new visit (Plausible's 30 minutes).
    session_timeout_s: int = Field(default=1800, ge=1, le=86400)
    # Sessionized visits kept in memory per query process (analytics/visit_cache.py), so
    # the site page's queries of one range cut its events into visits once: at most this
    # many bytes (DuckDB's measure of the compressed tables; least recently used evicted);
    # 0 turns the cache off. Counted within EA_ANALYTICS_MEMORY_LIMIT: keep it well below.
    visit_cache_bytes: int = Field(default=384 * 1024**2, ge=0)

    @field_validator("engine_maxmemory", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("redis_url", "redis_cluster_url", "redis_read_url", "postgres_url")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="before")
    @classmethod
    def _cluster_shards(cls, data: Any) -> Any:
        # One shard would put every write of a minute on one master: on a cluster the
        # default is CLUSTER_SHARDS. Decided before validation, so the model stays frozen.
        cluster = isinstance(data, dict) and any(data.get(n) for n in _CLUSTER_URL_NAMES)
        if cluster and "shards" not in data:
            return {**data, "shards": CLUSTER_SHARDS}
        return data

    @model_validator(mode="after")
    def _one_engine(self) -> Settings:
        if self.redis_url and self.redis_cluster_url:
            raise ValueError("set REDIS_URL or REDIS_CLUSTER_URL, not both")
        return self

    @model_validator(mode="after")
    def _retention_past_max_age(self) -> Settings:
        days = self.archive_retention_days
        if days is not None and days * 86400 <= self.max_age_s:
            raise ValueError(
                f"EA_ARCHIVE_RETENTION_DAYS={days} must be longer than EA_MAX_AGE_S="
                f"{self.max_age_s} s ({self.max_age_s / 86400:g} days): events that old "
                "are still accepted, and would land in hours already deleted"
            )
        return self

    @property
    def engine_kind(self) -> Literal["cluster", "redis", "embedded"]:
        """The one place the backend is chosen: a cluster, one external server, or ours."""
        if self.redis_cluster_url:
            return "cluster"
        return "redis" if self.redis_url else "embedded"

    def handoff(self) -> dict[str, str]:
        """Environment for a child process that must run with exactly these settings."""
        return {SETTINGS_ENV: self.model_dump_json()}

    @property
    def archive_path(self) -> Path:
        """Where the hourly JSONL archive lives (default ``DATA_DIR/persistent_events``)."""
        return self.archive_dir or self.data_dir / "persistent_events"

    @property
    def engine_path(self) -> Path:
        """The embedded engine's directory (AOF, config, socket)."""
        return self.engine_dir or self.data_dir / "valkey"

    @property
    def spill_path(self) -> Path:
        """Where DuckDB spills past EA_ANALYTICS_MEMORY_LIMIT: a directory per query
        engine under it, removed when the engine closes (analytics/pool.py)."""
        return self.data_dir / "spill"

    @property
    def metrics_path(self) -> Path:
        """Root of the per-run directories of the workers' Prometheus files."""
        return self.metrics_dir or self.data_dir / "metrics"

    @field_validator(
        "write_keys",
        "read_keys",
        "admin_keys",
        "cors_origins",
        "cors_read_origins",
        "share_embed_origins",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("write_keys", "read_keys", "admin_keys")
    @classmethod
    def _long_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _checked_keys(value)

    @field_validator("site_keys", mode="before")
    @classmethod
    def _site_keys(cls, value: object) -> object:
        if not isinstance(value, str):
            return value  # the JSON hand-off of a parent serve: already parsed
        parsed: list[tuple[str, tuple[str, ...]]] = []
        for entry in (part.strip() for part in value.split(",")):
            if not entry:
                continue
            key, at, sites = entry.rpartition("@")
            names = tuple(s.strip().lower() for s in sites.split("|") if s.strip())
            if not at or not key or not names:
                raise ValueError("each site key is key@site or key@site1|site2 (sites: domains)")
            for name in names:
                if len(name) > 253 or any(c.isspace() or c in "/@," for c in name):
                    raise ValueError(f"a site of a site key is a domain, not {name!r}")
            parsed.append((key, names))
        return tuple(parsed)

    @field_validator("site_keys")
    @classmethod
    def _long_site_keys(
        cls, value: tuple[tuple[str, tuple[str, ...]], ...]
    ) -> tuple[tuple[str, tuple[str, ...]], ...]:
        _checked_keys(tuple(key for key, _ in value))
        return value

    @field_validator("cors_origins", "cors_read_origins", "share_embed_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin != "*" and not (
                origin.startswith(("http://", "https://")) and origin.count("/") == 2
            ):
                raise ValueError(f"an origin is scheme://host[:port] or *, not {origin!r}")
        return tuple(o.rstrip("/") for o in value)


def _checked_keys(keys: tuple[str, ...]) -> tuple[str, ...]:
    # A short key can be guessed, whatever the rate limit; say so at start.
    for key in keys:
        if len(key) < 16 or any(c.isspace() or not c.isprintable() for c in key):
            raise ValueError("each API key needs 16 or more printable characters, no spaces")
    return keys


def client_headers() -> dict[str, str]:
    """Headers of our own HTTP clients (loadtest, status): ``EA_API_KEY`` as a bearer key.

    One key with both scopes serves both tools (a key may be in both lists).
    """
    key = os.environ.get("EA_API_KEY", "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


def load_settings(flags: Mapping[str, Any] | None = None) -> Settings:
    """Settings from the environment (or the hand-off of a parent ``serve``), then flags.

    Flags (CLI options; None = not given) win over the environment. Raises pydantic's
    ValidationError on an invalid value.
    """
    given = {name: value for name, value in (flags or {}).items() if value is not None}
    handed = os.environ.get(SETTINGS_ENV)
    if handed is None:
        return Settings(**given)
    if not given:
        return Settings.model_validate_json(handed)
    return Settings.model_validate({**Settings.model_validate_json(handed).model_dump(), **given})
