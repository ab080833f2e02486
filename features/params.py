"""The features layer's parameter objects: what its transforms take, validated by :mod:`jobs.config`.

They live here, with the transforms, so that ``features/`` never imports
``jobs/`` (imports point down only). :func:`jobs.config.load_config` builds
them from the YAML layers (their defaults are documented in ``conf/base.yaml``
and ``conf/README.md``); a test or a notebook can also build one directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


class ConfigError(ValueError):
    """A config problem, phrased as one line naming the key and the file."""


@dataclass(frozen=True)
class SourceConfig:
    """Raw input of ``shopseq ingest``: a named preset (jobs/sources.py) or a ``generic`` description.

    Named formats take every key but ``path`` from their preset; ``generic``
    reads them from here. Presets are instances of this class.
    """

    format: str = "generated"  # generated | taobao | rees46 | retailrocket | diginetica | generic (--format)
    path: str | None = None  # input file, folder or glob (--input); generated defaults to <app.data_root>/raw/generated/events
    # Generic sources: how to read them and the mapping to canonical columns.
    reader: Literal["csv", "parquet", "json"] = "csv"  # csv and json (JSON lines) are read line by line as text
    options: dict[str, str] = field(default_factory=dict)  # csv: sep, quote, escape, header ("true" skips header lines)
    columns: list[str] = field(default_factory=list)  # source columns in file order (default: the CSV header / all Parquet columns)
    mapping: dict[str, str] = field(default_factory=dict)  # canonical -> source column; user_id, item_id, event_time, event_type required
    event_types: dict[str, str] = field(default_factory=dict)  # source value -> canonical event type ({} = already canonical)
    time_format: Literal["unix_s", "unix_ms", "timestamp", "string"] = "timestamp"
    time_pattern: str | None = None  # Spark datetime pattern when time_format is string (naive times are UTC)
    time_offset_column: str | None = None  # source column of milliseconds added to event_time (Diginetica timeframe)
    null_values: list[str] = field(default_factory=lambda: [""])  # source values (after trimming) that mean missing
    constants: dict[str, str] = field(default_factory=dict)  # canonical column -> fixed source value, for columns the source lacks
    user_fallback_column: str | None = None  # when user_id is missing, user_fallback_prefix + this source column stands in
    user_fallback_prefix: str = ""


@dataclass(frozen=True)
class GenerateConfig:
    """The synthetic dataset (``shopseq generate``); what each key plants is documented in features/generate.py."""

    users: int = 1000  # user ids u0..u{users-1}; --users sets it, --events scales it
    items: int = 1000  # item i belongs to category i mod categories (must be >= categories)
    categories: int = 20
    days: int = 112  # window length, from start_date 00:00 UTC
    start_date: str = "2024-01-01"
    seed: int = 7  # all randomness is a hash of (seed, ids): same config, same rows
    partitions: int = 4  # Spark partitions of users and of the output (files); never changes the rows
    # activity: sessions start as a Bernoulli trial per user-hour
    sessions_per_user_per_week: float = 5.0  # mean over users, before churn and the session-gap rule
    activity_sigma: float = 0.6  # per-user activity multiplier ~ log-normal, mean 1
    hour_weights: list[float] = field(
        default_factory=lambda: [0.55, 0.35, 0.22, 0.15, 0.12, 0.14, 0.25, 0.45, 0.65, 0.75, 0.8, 0.85,
                                 0.95, 0.9, 0.85, 0.85, 0.9, 1.0, 1.2, 1.45, 1.6, 1.6, 1.35, 0.9]
    )  # relative session-start rate per UTC hour 0..23 (normalized to mean 1)
    weekend_boost: float = 1.3  # Saturday/Sunday rate relative to a weekday
    min_session_gap_minutes: float = 60.0  # a session starting sooner after an earlier one's end is dropped
    # sessions
    views_per_session: float = 10.0  # mean of the geometric number of views per session
    max_views_per_session: int = 60
    view_gap_median_s: float = 40.0  # seconds between views ~ log-normal(median, sigma), clipped to [1, max]
    view_gap_sigma: float = 1.0
    view_gap_max_s: int = 1200
    action_delay_max_s: int = 60  # fav / cart come 1..this many seconds after their view
    checkout_delay_max_s: int = 300  # checkout (purchases) comes 1..this many seconds after the last cart could be
    # interests and catalogue
    interest_categories: int = 3  # categories each user prefers, weights 1, 1/2, 1/3, ...
    interest_strength: float = 0.8  # probability a category draw comes from the user's interests (else uniform)
    session_focus: float = 0.7  # probability a view stays in the session's focus category (else a fresh draw)
    category_zipf_exponent: float = 0.5  # popularity skew of categories when picking interests (0 = uniform)
    zipf_exponent: float = 1.1  # item popularity within a category ~ rank^-s
    price_median_range: list[float] = field(default_factory=lambda: [5.0, 300.0])  # category median prices, log-uniform
    price_sigma: float = 0.5  # item price ~ log-normal around its category median
    brands_per_category: int = 8
    brand_missing_rate: float = 0.1  # share of items with a null brand
    # funnel (per view / per cart)
    fav_rate: float = 0.04  # P(fav | view)
    cart_rate: float = 0.12  # P(cart | view), mean over users
    buyer_sigma: float = 0.5  # per-user multiplier of cart_rate ~ log-normal, mean 1
    purchase_rate: float = 0.35  # P(purchase | cart)
    return_rate: float = 0.6  # P(a cart not bought in its session is bought at the start of the user's next session)
    # churn
    churn_rate: float = 0.4  # share of users who stop all activity at churn_time
    churn_earliest: float = 0.25  # churn_time ~ uniform in [earliest, latest] x window
    churn_latest: float = 0.95
    churn_decline_days: float = 14.0  # churners' session rate falls linearly to 0 over these days (0 = abrupt)
    churn_engagement_fade: float = 0.8  # how much of the rate's fall churners' views per session and carts per view follow (0 = none)


@dataclass(frozen=True)
class IngestConfig:
    """Validation window of ``shopseq ingest`` (rules and reason codes in features/ingest.py)."""

    min_event_time: str = "2000-01-01T00:00:00"  # ISO-8601 (naive = UTC): earlier events are quarantined as before_min_time
    max_future_skew_hours: float = 24.0  # events after now + this are quarantined as future_time
    now: str | None = None  # fixed "now" (ISO-8601, naive = UTC) for reproducible runs; None = wall clock at the start of the run


@dataclass(frozen=True)
class SessionizeConfig:
    gap_minutes: float = 30.0  # new session when the gap to the user's previous event is strictly greater
    use_source_session: bool = False  # split on changes of source_session_id instead (gap rule where it is null)
    drop_consecutive_repeats: bool = False  # drop same item + event type as the previous event of the session (counted)
    max_events_per_user_day: int = 5000  # more events than this on one UTC day flags the user-day is_bot_suspect


@dataclass(frozen=True)
class FeaturesConfig:
    """Sequence features, labels, vocabularies, splits and gold layout (issue 4; see features/*.py)."""

    protocol: str = "cutoff"  # name of the evaluation protocol (conf/protocols/<name>.yaml, --protocol); recorded in the schema artifact
    entity: Literal["user", "session"] = "user"  # whose sequences examples follow: session = each session is its own user (user_id := session_id)
    filter_min_user_events: int = 1  # iterative k-core: drop entities (users or sessions) with fewer events, 1 = no filter
    filter_min_item_events: int = 1  # iterative k-core: drop items with fewer events, 1 = no filter
    max_len: int = 50  # L: events per sequence example (left-padded)
    cutoff: Literal["session_end", "stride", "daily"] = "session_end"  # where examples are cut
    stride: int = 5  # cutoff=stride: a cutoff after every k-th event of a user
    collapse_ties: bool = True  # a cutoff never separates equal timestamps; false = one cutoff per chosen event, ties ordered by position
    purchase_horizon_days: float = 7.0  # H_p: purchase label looks (cutoff, cutoff + H_p]
    churn_horizon_days: float = 14.0  # H_c: churn = no event in (cutoff, cutoff + H_c]
    min_item_count: int = 2  # items seen fewer times in the train range map to OOV
    min_category_count: int = 1  # same for categories
    min_event_type_count: int = 1  # same for event types
    time_buckets: int = 28  # dt bucket ids: 0 pad, 1 first event, 2 + floor(log2(1 + gap_s)), capped at time_buckets - 1
    drop_bot_suspects: bool = True  # leave out events of user-days flagged is_bot_suspect
    split: Literal["temporal", "leave_last_out", "last_days"] = "temporal"
    train_fraction: float = 0.6  # temporal: train boundary at this fraction of the data's time range
    val_fraction: float = 0.2  # temporal: validation boundary at train_fraction + val_fraction
    train_end: str | None = None  # temporal: explicit UTC boundary (date or timestamp), overrides train_fraction
    val_end: str | None = None  # temporal: explicit UTC boundary, overrides val_fraction
    gap_days: float | None = None  # temporal gap before each boundary; None = max(horizons); smaller is refused
    test_days: float = 1.0  # last_days: entities whose first event is in the last test_days of the data are test
    val_days: float = 1.0  # last_days: those starting in the val_days before that are validation
    train_ranks: int = 2  # training processes that shard each gold table
    row_groups_per_rank: int = 4  # each split is written as at least train_ranks * this many files
    rows_per_file: int = 200000  # more files when a split has more rows than files * this

    def __post_init__(self) -> None:
        minimum = {"max_len": 1, "stride": 1, "min_item_count": 1, "min_category_count": 1, "min_event_type_count": 1,
                   "time_buckets": 3, "train_ranks": 1, "row_groups_per_rank": 1, "rows_per_file": 1,
                   "filter_min_user_events": 1, "filter_min_item_events": 1}  # fmt: skip
        for key, low in minimum.items():
            if getattr(self, key) < low:
                raise ConfigError(f"features.{key}: must be >= {low}, got {getattr(self, key)!r}")
        if not self.protocol or not all(c.isalnum() or c in "_-" for c in self.protocol):
            raise ConfigError(f"features.protocol: letters, digits, '_' and '-' only, got {self.protocol!r}")
        for key in ("purchase_horizon_days", "churn_horizon_days", "test_days", "val_days"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"features.{key}: must be > 0, got {getattr(self, key)!r}")
