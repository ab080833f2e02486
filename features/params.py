"""The features layer's config sections: what its transforms take, validated by :mod:`shopseq.jobs.config`.

They live here, with the transforms, so that ``features/`` never imports
``jobs/`` (imports point down only). :func:`shopseq.jobs.config.load_config` builds
them from the YAML layers; a test or a notebook can also build one directly.

Every key is declared with :func:`shopseq.features.settings.setting` (the
declaration machinery, shared with the jobs layer's sections in
:mod:`shopseq.jobs.config.schema`): its default (``conf/base.yaml`` holds the
same values, tests/test_config.py checks), its meaning and its valid values,
so the loader can refuse a bad value with one line naming the key and the
layer that set it, and ``docs/configuration.md`` is rendered from the
declarations (``shopseq config --reference``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

# ConfigError is re-exported: features modules (ingest, splits, generate) raise it from here.
from shopseq.features.settings import (  # noqa: F401
    ISO_DATE,
    ISO_TIME,
    NAME,
    NON_EMPTY,
    PROBABILITY,
    Check,
    ConfigError,
    Validated,
    above,
    at_least,
    setting,
)


@dataclass(frozen=True)
class SourceConfig(Validated):
    """Raw input of ``shopseq ingest`` (``--input``/``--format`` override ``path``/``format``): a named preset or a ``generic`` description.

    Named formats (``taobao``, ``rees46``, ``retailrocket``, ``diginetica``,
    ``yoochoose_clicks``, ``yoochoose_buys``, ``otto``, ``generated``) are presets in ``jobs/sources.py`` expressed with these same
    keys (presets are instances of this class); with a named format only
    ``source.path`` is taken from config (a warning names any other
    ``source.*`` key that is set). ``generic`` reads every key from here.
    """

    SECTION: ClassVar[str] = "source"

    format: Literal["generated", "taobao", "rees46", "retailrocket", "diginetica", "yoochoose_clicks", "yoochoose_buys", "otto", "generic"] = setting(
        "generated", "the input format: a preset of `jobs/sources.py`, or `generic` (the keys below) (`--format`)")
    path: str | None = setting(None, "input file, folder or glob (`--input`); null for `generated`: `<app.data_root>/raw/generated/events`", NON_EMPTY)
    # Generic sources: how to read them and the mapping to canonical columns.
    reader: Literal["csv", "parquet", "json"] = setting("csv", "generic: the reader; `csv` and `json` (JSON lines) are read line by line as text")
    options: dict[str, str] = setting({}, "generic csv: `sep`, `quote`, `escape`, `header` (`\"true\"`: header lines are recognised and skipped)")
    columns: list[str] = setting([], "generic: source column names in file order (default: the CSV header / all Parquet columns)")
    mapping: dict[str, str] = setting({}, "generic: canonical -> source column; `user_id`, `item_id`, `event_time`, `event_type` required (or set in `constants`)")
    event_types: dict[str, str] = setting({}, "generic: source value -> `view`, `fav`, `cart`, `remove_from_cart` or `purchase` (`{}`: already canonical)")
    time_format: Literal["unix_s", "unix_ms", "timestamp", "string"] = setting(
        "timestamp", "generic: how `event_time` is encoded (`timestamp`: Spark's default parser; `string`: with `time_pattern`)")
    time_pattern: str | None = setting(None, "generic: Spark datetime pattern when `time_format` is `string`; naive times are UTC", NON_EMPTY)
    time_offset_column: str | None = setting(None, "generic: a source column of milliseconds added to the parsed time (Diginetica's `timeframe`)", NON_EMPTY)
    null_values: list[str] = setting([""], "generic: source values (after trimming) read as null (e.g. `NA`, empty)")
    constants: dict[str, str] = setting({}, "generic: canonical column -> fixed source value, for columns the source lacks (e.g. Diginetica's `event_type: view`)")
    user_fallback_column: str | None = setting(
        None, "generic: when `user_id` is missing, `user_fallback_prefix` + this source column stands in (Diginetica: `s<session_id>`)", NON_EMPTY)
    user_fallback_prefix: str = setting("", "generic: prefix of the stand-in `user_id` (see `user_fallback_column`)")
    explode: str | None = setting(
        None, "generic json: an array column whose elements (objects) are the events; each gets the line's other columns (OTTO's `events`)", NON_EMPTY)


@dataclass(frozen=True)
class GenerateConfig(Validated):
    """The synthetic dataset of ``shopseq generate``; the structure each key plants is documented in ``features/generate.py``.

    Besides each key's own range, ``items >= categories`` and
    ``churn_earliest <= churn_latest`` (checked by the generator). The defaults
    are consistent with the rest of the config: the temporal split needs each
    validation window to be longer than max(purchase, churn horizon), which is
    why the generated dataset spans 16 weeks.
    """

    SECTION: ClassVar[str] = "generate"

    users: int = setting(1000, "user ids `u0`..`u{users-1}` (`--users`; `--events N` scales it to about N events)", at_least(1))
    items: int = setting(1000, "item i is in category i mod `categories` (at least `categories`)", at_least(1))
    categories: int = setting(20, "number of item categories", at_least(1))
    days: int = setting(112, "window length: [`start_date` 00:00 UTC, + days) (`--days`)", at_least(1))
    start_date: str = setting("2024-01-01", "first day of the window (UTC)", ISO_DATE)
    seed: int = setting(7, "every random draw is a hash of (seed, ids): same config, same rows")
    partitions: int = setting(4, "Spark partitions of users and output files; never changes the rows", at_least(1))
    # activity: sessions start as a Bernoulli trial per user-hour
    sessions_per_user_per_week: float = setting(5.0, "mean session starts per user-week (before churn and the session-gap rule)", at_least(0))
    activity_sigma: float = setting(0.6, "per-user activity multiplier ~ log-normal with mean 1", at_least(0))
    hour_weights: list[float] = setting(
        [0.55, 0.35, 0.22, 0.15, 0.12, 0.14, 0.25, 0.45, 0.65, 0.75, 0.8, 0.85,
         0.95, 0.9, 0.85, 0.85, 0.9, 1.0, 1.2, 1.45, 1.6, 1.6, 1.35, 0.9],
        "relative session-start rate per UTC hour 0..23 (normalized to mean 1)",
        Check("24 numbers, each >= 0, not all 0", lambda v: len(v) == 24 and min(v) >= 0 and sum(v) > 0),
    )  # fmt: skip
    weekend_boost: float = setting(1.3, "Saturday/Sunday session rate relative to a weekday", at_least(0))
    min_session_gap_minutes: float = setting(
        60.0, "a session starting sooner after the previous one's end is dropped (keep it > `sessionize.gap_minutes`)", at_least(0))
    # sessions
    views_per_session: float = setting(10.0, "mean of the geometric number of views in a session", at_least(1))
    max_views_per_session: int = setting(60, "cap on the views of one session", at_least(1))
    view_gap_median_s: float = setting(40.0, "seconds between views ~ log-normal(median, sigma), clipped to [1, `view_gap_max_s`]", at_least(0))
    view_gap_sigma: float = setting(1.0, "sigma of the log-normal gap between views", at_least(0))
    view_gap_max_s: int = setting(1200, "longest gap between views, so also inside a session (keep it < `sessionize.gap_minutes`)", at_least(1))
    action_delay_max_s: int = setting(60, "fav and cart come 1..this many seconds after their view", at_least(1))
    checkout_delay_max_s: int = setting(300, "purchases (checkout) come 1..this many seconds after the last possible cart of the session", at_least(1))
    # interests and catalogue
    interest_categories: int = setting(3, "categories each user prefers, weights 1, 1/2, 1/3, ...", at_least(1))
    interest_strength: float = setting(0.8, "P(a category draw comes from the user's interests), else uniform over all categories", PROBABILITY)
    session_focus: float = setting(0.7, "P(a view stays in the session's focus category), else a fresh draw", PROBABILITY)
    category_zipf_exponent: float = setting(0.5, "skew of category popularity when interests are picked (0 = uniform)", at_least(0))
    zipf_exponent: float = setting(1.1, "item popularity within a category ~ rank^-s", at_least(0))
    price_median_range: list[float] = setting(
        [5.0, 300.0], "category median prices, log-uniform in this range",
        Check("[low, high] with 0 < low <= high", lambda v: len(v) == 2 and 0 < v[0] <= v[1]),
    )
    price_sigma: float = setting(0.5, "item price ~ log-normal around its category median (fixed per item)", at_least(0))
    brands_per_category: int = setting(8, "distinct brands in each category", at_least(1))
    brand_missing_rate: float = setting(0.1, "share of items whose brand is null", PROBABILITY)
    # funnel (per view / per cart)
    fav_rate: float = setting(0.04, "P(fav | view)", PROBABILITY)
    cart_rate: float = setting(0.12, "P(cart | view), averaged over users", PROBABILITY)
    buyer_sigma: float = setting(0.5, "per-user multiplier of `cart_rate` ~ log-normal with mean 1", at_least(0))
    purchase_rate: float = setting(0.35, "P(purchase | cart)", PROBABILITY)
    return_rate: float = setting(0.6, "P(a cart not bought in its session is bought at the start of the user's next session)", PROBABILITY)
    # churn
    churn_rate: float = setting(0.4, "share of users with no activity after their churn time", PROBABILITY)
    churn_earliest: float = setting(0.25, "churn time ~ uniform in [earliest, latest] fractions of the window", PROBABILITY)
    churn_latest: float = setting(0.95, "late enough that churners also fall in the test split's labeled window", PROBABILITY)
    churn_decline_days: float = setting(14.0, "churners' session rate falls linearly to 0 over the days before churn time (0 = abrupt)", at_least(0))
    churn_engagement_fade: float = setting(
        0.8, "churners' views per session and carts per view fall with it: x (1 - fade x (1 - rate factor)) (0 = unchanged)", PROBABILITY)


@dataclass(frozen=True)
class IngestConfig(Validated):
    """The validation window of ``shopseq ingest``; the rules and reason codes are in ``features/ingest.py``."""

    SECTION: ClassVar[str] = "ingest"

    min_event_time: str = setting("2000-01-01T00:00:00", "earlier events are quarantined (`before_min_time`)", ISO_TIME)
    max_future_skew_hours: float = setting(24.0, "events after now + this are quarantined (`future_time`)", at_least(0))
    now: str | None = setting(None, "a fixed \"now\" for reproducible runs; null = wall clock at the run's start", ISO_TIME)


@dataclass(frozen=True)
class SessionizeConfig(Validated):
    """Session rules of ``shopseq sessionize`` (``features/sessionize.py``)."""

    SECTION: ClassVar[str] = "sessionize"

    gap_minutes: float = setting(30.0, "new session when the gap to the user's previous event is STRICTLY greater (equal stays)", above(0))
    use_source_session: bool = setting(False, "true: split where `source_session_id` changes instead (the gap rule where it is null)")
    drop_consecutive_repeats: bool = setting(False, "true: drop events repeating the previous one's item + event type in the session (counted)")
    max_events_per_user_day: int = setting(5000, "more events than this on one UTC day flag the user-day `is_bot_suspect` (never dropped here)", at_least(1))


@dataclass(frozen=True)
class FeaturesConfig(Validated):
    """Sequence examples, labels, vocabularies, splits and the gold layout of ``shopseq features``.

    The behaviour is in ``features/sequences.py``, ``labels.py``,
    ``splits.py``, ``vocab.py`` and ``protocols.py``. The protocol presets
    (``--protocol``, ``conf/protocols/*.yaml``) are layers of these keys:
    see [conf/README.md](../conf/README.md#protocols---protocol-confprotocolsyaml-featuresprotocolspy).
    Besides each key's own range, ``train_fraction + val_fraction <= 1`` and
    ``gap_days >= max(horizons)`` (checked when the split is computed).
    """

    SECTION: ClassVar[str] = "features"

    protocol: str = setting(
        "cutoff", "name of the evaluation protocol (`--protocol NAME` applies `conf/protocols/NAME.yaml`); recorded in `gold/schema.json` and the features lineage", NAME)
    entity: Literal["user", "session"] = setting(
        "user", "whose sequences examples follow: `session` = every session is its own anonymous user (`user_id := session_id`) before filtering, examples, splits and evaluation")
    filter_min_user_events: int = setting(
        1, "iterative k-core: drop entities (users, or sessions) with fewer events; rounds repeat (users and items at once, as RecBole) until one removes nothing; 1 = off", at_least(1))
    filter_min_item_events: int = setting(1, "iterative k-core: drop items with fewer events (same loop); 1 = off", at_least(1))
    max_len: int = setting(50, "L: events per sequence example, left-padded with 0 (most recent event last)", at_least(1))
    cutoff: Literal["session_end", "stride", "daily"] = setting("session_end", "where examples are cut (`features/sequences.py`)")
    stride: int = setting(5, "`cutoff: stride`: a cutoff after every k-th event of a user", at_least(1))
    collapse_ties: bool = setting(
        True, "true: a cutoff never separates equal timestamps (tied cutoffs collapse into one, at the last tied event); false: every chosen event is its own cutoff, ties in the sessionizer's order")
    purchase_horizon_days: float = setting(7.0, "H_p: purchase label = a purchase in (cutoff, cutoff + H_p]", above(0))
    churn_horizon_days: float = setting(14.0, "H_c: churn label = no event in (cutoff, cutoff + H_c]", above(0))
    min_item_count: int = setting(2, "items seen fewer times in the train range map to OOV (index 1)", at_least(1))
    min_category_count: int = setting(1, "the same for categories", at_least(1))
    min_event_type_count: int = setting(1, "the same for event types", at_least(1))
    time_buckets: int = setting(28, "time-since-previous-event ids: 0 pad, 1 first event, 2 + floor(log2(1 + gap_s)), capped at time_buckets - 1", at_least(3))
    drop_bot_suspects: bool = setting(True, "leave out events of user-days flagged `is_bot_suspect`")
    split: Literal["temporal", "leave_last_out", "last_days"] = setting(
        "temporal", "how examples are split (`features/splits.py`); `last_days`: an entity belongs to the split of its first event (no gap, no masking)")
    train_fraction: float = setting(0.6, "temporal: train boundary at this fraction of the data's time range", PROBABILITY)
    val_fraction: float = setting(0.2, "temporal: validation boundary at `train_fraction + val_fraction`", PROBABILITY)
    train_end: str | None = setting(None, "temporal: explicit UTC boundary (`2024-01-20` or an ISO timestamp), overrides `train_fraction`", ISO_TIME)
    val_end: str | None = setting(None, "temporal: explicit UTC boundary, overrides `val_fraction`", ISO_TIME)
    gap_days: float | None = setting(None, "temporal: gap before each boundary; null = max(horizons); a smaller value is refused", at_least(0))
    test_days: float = setting(1.0, "`last_days`: entities whose first event is within this many days of the data's last event are test", above(0))
    val_days: float = setting(1.0, "`last_days`: those starting in the `val_days` before that are validation; earlier ones train", above(0))
    train_ranks: int | None = setting(
        None, "training processes that shard each gold table (Petastorm `cur_shard`/`shard_count`); null = `train.num_proc` (resolved when the config is loaded)", at_least(1))
    row_groups_per_rank: int = setting(4, "each gold split is written as at least `train_ranks` x this many files", at_least(1))
    rows_per_file: int = setting(200000, "more files when a split has more rows than files x this", at_least(1))
