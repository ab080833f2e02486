"""The synthetic event generator (``shopseq generate``): pure DataFrame transforms.

The job hands in ``spark.range(users)``; :func:`synth_users` turns the ids into
users with latent traits, :func:`synth_events` into raw events, and
:func:`user_truth` keeps what a model is supposed to recover. There is no
driver-side loop over users or events, no UDF and no action: everything is
native Spark expressions (``sequence``/``explode``, ``xxhash64``, higher-order
array functions over a session's few views, one window over each user's
sessions), so it scales with the cluster.

Determinism
    Every random draw is ``xxhash64(seed, tag, ids...)`` mapped to (0, 1)
    (:func:`unit`), never ``rand()``: a draw depends only on the seed, the
    draw's name and the ids it belongs to (user, session hour, view index,
    item, category), not on partitioning or execution order. The same config
    therefore gives exactly the same rows; ``generate.partitions`` only sets
    the number of tasks and output files, and the first N users' events do not
    depend on ``generate.users``.

Below, ``W = days * 24 h`` is the window ``[start_date 00:00 UTC, + days)``;
keys in ``code`` are ``generate.*`` config keys (defaults in
``conf/base.yaml``). All times are UTC; users have no time zone of their own.

Catalogue
    * ``items`` items in ``categories`` categories: item ``i`` (``item_id``
      ``"i<i>"``) is in category ``i mod categories`` (``category_id``
      ``"c<c>"``) and is that category's popularity rank ``i div categories``
      (rank 0 = most popular), so category sizes differ by at most one.
    * Price, fixed per item: the category's median price is log-uniform in
      ``price_median_range``; the item's price is that median times
      ``exp(price_sigma * z)``, ``z ~ N(0, 1)`` per item, rounded to cents
      (at least 0.01): log-normal per category.
    * Brand, fixed per item: null for a ``brand_missing_rate`` share of items,
      else ``"b<c>_<k>"`` with ``k = floor(brands_per_category * u^2)``, so
      low ``k`` brands are more common.

Users (:func:`synth_users`)
    * ``user_id`` ``"u<id>"``. Activity multiplier ``a ~ exp(activity_sigma *
      z - activity_sigma^2 / 2)`` and buyer multiplier ``b`` (same form with
      ``buyer_sigma``): log-normal, mean 1.
    * Interests: ``interest_categories`` distinct categories drawn without
      replacement with weight ``(c + 1)^-category_zipf_exponent`` (low
      category numbers are more popular), in draw order; interest ``j`` has
      weight ``1 / (j + 1)``. ``top_category`` is interest 0.
    * A category draw for a user picks from the interests (by those weights)
      with probability ``interest_strength``, else uniformly from all
      categories. With the defaults (3 interests, strength 0.8, 20
      categories) an event's category is the user's ``top_category`` with
      probability 0.8 * 6/11 + 0.2/20 = 0.446 and one of the three interests
      with probability 0.8 + 0.2 * 3/20 = 0.83.
    * Churn: a ``churn_rate`` share of users churn; their ``churn_time`` is
      uniform in ``[churn_earliest, churn_latest] * W`` after the start
      (whole seconds). They have no event at or after ``churn_time``, and
      their session rate falls linearly from 1x to 0 over the
      ``churn_decline_days`` before it (a fading user, as real churners are).
      Their sessions also shrink as they fade: a session's engagement is
      ``1 - churn_engagement_fade * (1 - decline(h))``, where ``decline(h)``
      is that rate factor, and it scales the mean views per session and the
      cart probability per view (defaults: a 14-day decline and fade 0.8, so
      a session two days before churn_time has about 3.1 views on average
      instead of 10, and carts at about 0.31x the usual rate). The recent
      sessions' cadence and shape, not lifetime totals, tell a fading user
      from a quiet one: what a sequence model can read and a logistic
      regression on profile aggregates cannot.
      Everyone else stays active to the end of the window (``churned`` false,
      ``churn_time`` null).

Sessions
    * Session starts are one Bernoulli trial per user and window hour ``h``,
      with probability ``sessions_per_user_per_week / 168 * a * hour(h) *
      day(h) * decline(h)`` (capped at 1), at a uniform second of that hour:
      ``hour`` is ``hour_weights[UTC hour]`` normalized to mean 1 (defaults:
      19-22 h about 1.9x the mean, 3-5 h about 0.17x, so the evening is
      about 11x busier than the early morning); ``day`` is
      ``weekend_boost`` on Saturday and Sunday and 1 on weekdays, normalized
      so a week averages 1 (defaults: weekend days 1.3x a weekday).
    * A candidate session that starts less than ``min_session_gap_minutes``
      after the end of any earlier candidate of the same user is dropped, so
      gaps between sessions are at least that (hours to days in practice).
    * ``session_hint`` is ``"<user_id>-s<h>"``: the generator's own session id.
    * Views per session: geometric with mean ``views_per_session`` (less
      for a fading churner, above), at most
      ``max_views_per_session``. The first view is at the session start; each
      next one ``clip(round(view_gap_median_s * exp(view_gap_sigma * z)), 1,
      view_gap_max_s)`` seconds later (log-normal: seconds to minutes).
    * Each session has a focus category (one category draw); each view stays
      in it with probability ``session_focus``, else makes a fresh category
      draw, so the marginal per view is still the user's category
      distribution. Within the category, the item's popularity rank ``r`` is
      Zipf-like: ``r = floor(x) - 1`` for ``x`` with density
      ``~ x^-zipf_exponent`` on ``[1, n + 1)`` (n = items in the category),
      about ``P(r) ~ (r + 1.5)^-zipf_exponent``.

Funnel (per view, independent draws)
    * ``fav`` with probability ``fav_rate``, 1..``action_delay_max_s`` s after
      the view.
    * ``cart`` with probability ``min(1, cart_rate * b * engagement)``,
      1..``action_delay_max_s`` s after the view: a cart always follows a view
      of the same item in the same session (``engagement`` is 1 outside
      a churner's fade, above). Over all views cart/view is about
      ``cart_rate`` (``b`` has mean 1 and is independent of
      activity).
    * ``purchase`` of a carted item with probability ``purchase_rate``, at the
      session's checkout: ``action_delay_max_s`` plus 1..``checkout_delay_max_s``
      seconds after the last view (defaults: 61..360 s), plus the view index
      in seconds (purchases of one checkout are a second apart). So in-session
      purchase/cart is ``purchase_rate`` in expectation and every such purchase
      comes after the cart of the same item in the same session.
    * Returning checkout: a cart not bought in its session is bought at the
      start of the user's next session with probability ``return_rate``: a
      ``purchase`` ``n_views - view`` seconds before that session's first view
      (so at most ``max_views_per_session`` s before it, in that session's
      ``session_hint``). After a session that abandoned carts the next event
      is then often a purchase rather than a view: what a next-action model
      can learn from the sequence and a transition table of event types
      cannot.
    * Events at or after the user's ``churn_time`` or the window end are cut.
      Cutting only removes later events, so the funnel order still holds.

Gaps, precisely: inside a session consecutive events are at most
``max(view_gap_max_s, action_delay_max_s + checkout_delay_max_s +
max_views_per_session)`` seconds apart (defaults: 20 minutes); between
sessions at least ``min_session_gap_minutes`` minus ``max_views_per_session``
seconds (a returning checkout; defaults: 59 minutes). With the
defaults, gap-based sessionization at 30 minutes recovers ``session_hint``
exactly.

Volume: about ``users * days/7 * sessions_per_user_per_week * 0.79
* views_per_session * (1 + fav_rate + cart_rate * (1 + purchase_rate +
(1 - purchase_rate) * return_rate))`` events (0.79: churn and the churners'
fading sessions, the session-gap rule and the views cap); the defaults give
785,007 events (629,296 views, 25,082 favs, 75,320 carts, 55,309 purchases)
in 63,426 sessions of 1,000 users (372 churned).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from shopseq.features.params import ConfigError, GenerateConfig

EVENT_TYPES: tuple[str, ...] = ("view", "fav", "cart", "purchase")
EVENT_COLUMNS: list[str] = ["user_id", "item_id", "category_id", "event_type", "event_time", "price", "brand", "session_hint"]
TRUTH_COLUMNS: list[str] = ["user_id", "churned", "churn_time", "top_category"]
# Latent per-user columns synth_users adds besides TRUTH_COLUMNS (used by synth_events).
USER_COLUMNS: list[str] = ["user_key", *TRUTH_COLUMNS, "interests", "activity", "buyer", "active_until_s"]

_HOUR_S = 3600
_DAY_S = 86400
_WEEK_H = 168


# --------------------------------------------------------------------------- random draws


def unit(cfg: GenerateConfig, tag: str, *keys: Column | str) -> Column:
    """A uniform draw in (0, 1) named ``tag`` for ``keys``: the same on any partitioning.

    The top 53 bits of ``xxhash64(seed, tag, keys...)``, centred in their bin,
    so the value is never 0 or 1 (safe under ``log``).
    """
    h = F.xxhash64(F.lit(cfg.seed).cast("long"), F.lit(tag), *keys)
    return (F.shiftrightunsigned(h, 11).cast("double") + 0.5) / float(1 << 53)


def normal(cfg: GenerateConfig, tag: str, *keys: Column | str) -> Column:
    """A standard normal draw (Box-Muller over two named uniform draws)."""
    return F.sqrt(-2.0 * F.log(unit(cfg, tag + ".r", *keys))) * F.cos(2.0 * math.pi * unit(cfg, tag + ".t", *keys))


def _lognormal_mean1(z: Column, sigma: float) -> Column:
    return F.exp(z * sigma - sigma * sigma / 2.0)


def _pick(u: Column, weights: list[float]) -> Column:
    """Index ``i`` with probability ``weights[i] / sum(weights)`` for a uniform ``u`` (inverse CDF)."""
    total, acc = float(sum(weights)), 0.0
    expr = None
    for i, w in enumerate(weights[:-1]):
        acc += w / total
        expr = F.when(u < acc, F.lit(i)) if expr is None else expr.when(u < acc, F.lit(i))
    last = F.lit(len(weights) - 1)
    return last if expr is None else expr.otherwise(last)


def _zipf_rank(u: Column, n: Column, s: float) -> Column:
    """Rank in [0, n) with P(r) ~ (r + 1.5)^-s: inverse CDF of the density x^-s on [1, n + 1)."""
    if abs(s - 1.0) < 1e-9:
        x = F.pow(n + 1.0, u)
    else:
        x = F.pow(F.lit(1.0) + u * (F.pow(n + 1.0, 1.0 - s) - 1.0), 1.0 / (1.0 - s))
    return F.least(F.floor(x).cast("long") - 1, n.cast("long") - 1)


# --------------------------------------------------------------------------- config


def window_seconds(cfg: GenerateConfig) -> tuple[int, int]:
    """``(start, end)`` of the generated window as epoch seconds (start_date taken as UTC)."""
    start = datetime.fromisoformat(cfg.start_date)
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    begin = int(start.timestamp())
    return begin, begin + cfg.days * _DAY_S


def validate(cfg: GenerateConfig) -> None:
    """Raise :class:`ConfigError` (one line naming the key) for a config the generator cannot use."""
    checks = [
        (cfg.users >= 1, "users", "must be >= 1"),
        (cfg.categories >= 1, "categories", "must be >= 1"),
        (cfg.items >= cfg.categories, "items", f"must be >= generate.categories ({cfg.categories})"),
        (cfg.days >= 1, "days", "must be >= 1"),
        (cfg.partitions >= 1, "partitions", "must be >= 1"),
        (len(cfg.hour_weights) == 24 and min(cfg.hour_weights) >= 0 and sum(cfg.hour_weights) > 0, "hour_weights", "must be 24 non-negative numbers, not all 0"),
        (len(cfg.price_median_range) == 2 and 0 < cfg.price_median_range[0] <= cfg.price_median_range[1], "price_median_range", "must be [low, high] with 0 < low <= high"),
        (0 <= cfg.churn_earliest <= cfg.churn_latest <= 1, "churn_earliest", "and churn_latest must satisfy 0 <= earliest <= latest <= 1"),
        (cfg.views_per_session >= 1 and cfg.max_views_per_session >= 1, "views_per_session", "and max_views_per_session must be >= 1"),
        (cfg.view_gap_max_s >= 1 and cfg.action_delay_max_s >= 1 and cfg.checkout_delay_max_s >= 1, "view_gap_max_s", "action_delay_max_s and checkout_delay_max_s must be >= 1"),
        (cfg.interest_categories >= 1, "interest_categories", "must be >= 1"),
        (cfg.brands_per_category >= 1, "brands_per_category", "must be >= 1"),
    ]
    for name in ("sessions_per_user_per_week", "activity_sigma", "weekend_boost", "min_session_gap_minutes", "view_gap_median_s", "view_gap_sigma",
                 "category_zipf_exponent", "zipf_exponent", "price_sigma", "buyer_sigma", "churn_decline_days"):
        checks.append((getattr(cfg, name) >= 0, name, "must be >= 0"))
    for name in ("churn_rate", "churn_engagement_fade", "interest_strength", "session_focus", "fav_rate", "cart_rate", "purchase_rate", "return_rate", "brand_missing_rate"):
        checks.append((0 <= getattr(cfg, name) <= 1, name, "must be in [0, 1]"))
    try:
        window_seconds(cfg)
    except ValueError:
        checks.append((False, "start_date", f"must be an ISO date, got {cfg.start_date!r}"))
    for ok, key, message in checks:
        if not ok:
            raise ConfigError(f"generate.{key} {message}")


# --------------------------------------------------------------------------- users


def synth_users(ids: DataFrame, cfg: GenerateConfig) -> DataFrame:
    """Users with latent traits, one per id.

    Needs: ``id`` (bigint, e.g. ``spark.range(users)``). Returns
    :data:`USER_COLUMNS`: ``user_key`` (the id), ``user_id``, ``churned``,
    ``churn_time``, ``top_category``, ``interests`` (array<int> of category
    numbers, most preferred first), ``activity``, ``buyer`` (multipliers) and
    ``active_until_s`` (churn time or window end, epoch seconds).
    """
    validate(cfg)
    start_s, end_s = window_seconds(cfg)
    uk = F.col("id")
    k = min(cfg.interest_categories, cfg.categories)
    # Weighted sampling without replacement: the k smallest Exp(1) / weight keys.
    race = F.transform(
        F.sequence(F.lit(0), F.lit(cfg.categories - 1)),
        lambda c: F.struct(
            (-F.log(unit(cfg, "user.interest", uk, c)) * F.pow(c + 1.0, cfg.category_zipf_exponent)).alias("key"),
            c.alias("category"),
        ),
    )
    interests = F.transform(F.slice(F.sort_array(race), 1, k), lambda x: x["category"])
    churned = unit(cfg, "user.churn", uk) < cfg.churn_rate
    churn_frac = cfg.churn_earliest + unit(cfg, "user.churn_time", uk) * (cfg.churn_latest - cfg.churn_earliest)
    churn_s = F.floor(F.lit(start_s) + churn_frac * (end_s - start_s)).cast("long")
    return ids.select(
        uk.cast("long").alias("user_key"),
        F.concat(F.lit("u"), uk.cast("string")).alias("user_id"),
        churned.alias("churned"),
        F.when(churned, F.timestamp_seconds(churn_s)).alias("churn_time"),
        interests.alias("interests"),
        _lognormal_mean1(normal(cfg, "user.activity", uk), cfg.activity_sigma).alias("activity"),
        _lognormal_mean1(normal(cfg, "user.buyer", uk), cfg.buyer_sigma).alias("buyer"),
        F.when(churned, churn_s).otherwise(F.lit(end_s)).alias("active_until_s"),
    ).withColumn("top_category", F.concat(F.lit("c"), F.col("interests")[0].cast("string"))).select(*USER_COLUMNS)


def user_truth(users: DataFrame) -> DataFrame:
    """What a model should recover. Needs: :func:`synth_users` output. Returns :data:`TRUTH_COLUMNS`."""
    return users.select(*TRUTH_COLUMNS)


# --------------------------------------------------------------------------- events


def synth_events(users: DataFrame, cfg: GenerateConfig) -> DataFrame:
    """Raw events of ``users``, in :data:`EVENT_COLUMNS`.

    Needs: :func:`synth_users` output (bare ``spark.range`` ids are passed
    through :func:`synth_users` first). One shuffle: sessions are hash
    partitioned by user into ``generate.partitions`` partitions (the output's
    partitions) for the session-gap rule. Row order within a partition is
    deterministic, but not time order.
    """
    validate(cfg)
    if "user_key" not in users.columns:
        users = synth_users(users, cfg)
    return (
        users.transform(candidate_sessions, cfg)
        .transform(spaced_sessions, cfg)
        .transform(with_next_session)
        .transform(session_views, cfg)
        .transform(view_events, cfg)
    )


def candidate_sessions(users: DataFrame, cfg: GenerateConfig) -> DataFrame:
    """One row per session start: a Bernoulli trial per user and window hour, with the daily and weekly rhythm.

    Needs: :func:`synth_users` output. Adds: ``hour`` (window hour index,
    the session's id within the user), ``start_s`` (epoch seconds),
    ``n_views``, ``focus`` (category), ``offsets`` (array<bigint>, seconds
    from the start of each view), ``checkout_s`` (offset of the checkout) and
    ``end_s`` (epoch seconds no event of the session is later than).
    """
    start_s, _ = window_seconds(cfg)
    weights = [w * 24.0 / sum(cfg.hour_weights) for w in cfg.hour_weights]
    week_mean = (5.0 + 2.0 * cfg.weekend_boost) / 7.0
    per_hour = cfg.sessions_per_user_per_week / _WEEK_H / week_mean
    uk, h, hour_s = F.col("user_key"), F.col("hour"), F.col("hour_s")
    hours_active = F.greatest(F.lit(1), F.ceil((F.col("active_until_s") - start_s) / _HOUR_S).cast("int"))
    hour_of_day = F.pmod(F.floor(hour_s / _HOUR_S), 24).cast("int")
    weekday = F.pmod(F.floor(hour_s / _DAY_S) + 3, 7)  # 1970-01-01 was a Thursday: Monday = 0 ... Sunday = 6
    decline = F.lit(1.0)
    if cfg.churn_decline_days > 0:
        decline = F.when(
            F.col("churned"),
            F.least(F.lit(1.0), F.greatest(F.lit(0.0), (F.col("active_until_s") - hour_s) / (cfg.churn_decline_days * _DAY_S))),
        ).otherwise(1.0)
    rate = (
        F.lit(per_hour)
        * F.col("activity")
        * F.element_at(F.array(*[F.lit(w) for w in weights]), hour_of_day + 1)
        * F.when(weekday >= 5, cfg.weekend_boost).otherwise(1.0)
        * decline
    )
    return (
        users.withColumn("hour", F.explode(F.sequence(F.lit(0), F.least(hours_active, F.lit(cfg.days * 24)) - 1)))
        .withColumn("hour_s", F.lit(start_s) + h.cast("long") * _HOUR_S)
        .where((hour_s < F.col("active_until_s")) & (unit(cfg, "session.start", uk, h) < rate))
        .withColumns(
            {
                "start_s": hour_s + F.floor(unit(cfg, "session.second", uk, h) * _HOUR_S).cast("long"),
                "engagement": 1.0 - cfg.churn_engagement_fade * (1.0 - decline),
                "focus": draw_category(cfg, "session.focus", uk, h),
                "checkout_delay": cfg.action_delay_max_s + 1 + F.floor(unit(cfg, "session.checkout", uk, h) * cfg.checkout_delay_max_s).cast("long"),
            }
        )
        .withColumn("n_views", _n_views(cfg, unit(cfg, "session.views", uk, h), F.col("engagement")))
        .withColumn("_gaps", _gap_sums(cfg, uk, h))
        .withColumns({"offsets": F.col("_gaps.offsets"), "checkout_s": F.col("_gaps.total") + F.col("checkout_delay")})
        .withColumn("end_s", F.col("start_s") + F.col("checkout_s") + F.col("n_views") - 1)
        .drop("hour_s", "_gaps", "checkout_delay")
    )


def _n_views(cfg: GenerateConfig, u: Column, scale: Column | float = 1.0) -> Column:
    """Geometric on {1, 2, ...} with mean ``views_per_session * scale`` (1 when that is <= 1), capped at ``max_views_per_session``."""
    mean = F.lit(cfg.views_per_session) * scale
    geometric = F.floor(F.log(u) / F.log(1.0 - 1.0 / mean)).cast("int") + 1
    return F.when(mean <= 1.0, F.lit(1)).otherwise(F.least(geometric, F.lit(cfg.max_views_per_session)))


def _gap_sums(cfg: GenerateConfig, uk: Column, h: Column) -> Column:
    """struct(offsets: array<bigint>, total): running sum of log-normal gaps, 0 for the first view."""
    def gap(j: Column) -> Column:
        seconds = F.round(cfg.view_gap_median_s * F.exp(cfg.view_gap_sigma * normal(cfg, "view.gap", uk, h, j)))
        clipped = F.least(F.greatest(seconds, F.lit(1.0)), F.lit(float(cfg.view_gap_max_s))).cast("long")
        return F.when(j == 0, F.lit(0).cast("long")).otherwise(clipped)

    gaps = F.transform(F.sequence(F.lit(0), F.col("n_views") - 1), gap)
    start = F.struct(F.array().cast("array<bigint>").alias("offsets"), F.lit(0).cast("long").alias("total"))
    return F.aggregate(
        gaps,
        start,
        lambda acc, g: F.struct(F.concat(acc["offsets"], F.array(acc["total"] + g)).alias("offsets"), (acc["total"] + g).alias("total")),
    )


def draw_category(cfg: GenerateConfig, tag: str, *keys: Column) -> Column:
    """One category draw from the user's distribution: an interest (weights 1/(j+1)) or, with 1 - strength, uniform.

    Needs the ``interests`` column in scope.
    """
    k = min(cfg.interest_categories, cfg.categories)
    interest = F.element_at(F.col("interests"), _pick(unit(cfg, tag + ".interest", *keys), [1.0 / (j + 1) for j in range(k)]) + 1)
    anywhere = F.floor(unit(cfg, tag + ".uniform", *keys) * cfg.categories).cast("int")
    return F.when(unit(cfg, tag + ".source", *keys) < cfg.interest_strength, interest).otherwise(anywhere)


def spaced_sessions(sessions: DataFrame, cfg: GenerateConfig) -> DataFrame:
    """Drop sessions starting less than ``min_session_gap_minutes`` after an earlier candidate's ``end_s``.

    Needs: ``user_key``, ``start_s``, ``end_s``. Hash partitions by user into
    ``generate.partitions`` partitions (the window reuses that partitioning).
    """
    earlier = Window.partitionBy("user_key").orderBy("start_s").rowsBetween(Window.unboundedPreceding, -1)
    prev_end = F.max("end_s").over(earlier)
    return (
        sessions.repartition(cfg.partitions, "user_key")
        .withColumn("_prev_end", prev_end)
        .where(F.col("_prev_end").isNull() | (F.col("start_s") >= F.col("_prev_end") + int(round(cfg.min_session_gap_minutes * 60))))
        .drop("_prev_end")
    )


def with_next_session(sessions: DataFrame) -> DataFrame:
    """The start and id of the user's next session (null for the last one), for returning checkouts.

    Needs: ``user_key``, ``start_s``, ``hour``. Adds: ``next_start_s``, ``next_hour``.
    """
    following = Window.partitionBy("user_key").orderBy("start_s")
    return sessions.withColumns({"next_start_s": F.lead("start_s").over(following), "next_hour": F.lead("hour").over(following)})


def session_views(sessions: DataFrame, cfg: GenerateConfig) -> DataFrame:
    """One row per view: its category (session focus or a fresh draw), Zipf item, price and brand.

    Needs: :func:`candidate_sessions` columns. Adds: ``view`` (index in the
    session), ``offset``, ``category``, ``item``, ``price``, ``brand``.
    """
    uk, h, j = F.col("user_key"), F.col("hour"), F.col("view")
    c = F.col("category")
    per_category, extra = divmod(cfg.items, cfg.categories)
    n_items = F.lit(per_category) + F.when(c < extra, 1).otherwise(0)
    rank = _zipf_rank(unit(cfg, "view.rank", uk, h, j), n_items, cfg.zipf_exponent)
    low, high = (math.log(x) for x in cfg.price_median_range)
    median = F.exp(low + unit(cfg, "category.price", c) * (high - low))
    item = F.col("item")
    price = F.greatest(F.round(median * F.exp(cfg.price_sigma * normal(cfg, "item.price", item)), 2), F.lit(0.01))
    brand_k = F.floor(unit(cfg, "item.brand", item) ** 2 * cfg.brands_per_category).cast("int")
    brand = F.when(unit(cfg, "item.brand_missing", item) >= cfg.brand_missing_rate, F.concat(F.lit("b"), c.cast("string"), F.lit("_"), brand_k.cast("string")))
    return (
        sessions.select("*", F.posexplode("offsets").alias("view", "offset"))
        .withColumn("category", F.when(unit(cfg, "view.stay", uk, h, j) < cfg.session_focus, F.col("focus")).otherwise(draw_category(cfg, "view.category", uk, h, j)))
        .withColumn("item", rank * cfg.categories + c)
        .withColumns({"price": price.cast("double"), "brand": brand})
    )


def view_events(views: DataFrame, cfg: GenerateConfig) -> DataFrame:
    """Each view, plus its fav, cart, purchase and returning purchase where drawn; cut at the user's ``active_until_s``.

    Needs: :func:`session_views` and :func:`with_next_session` columns. Returns :data:`EVENT_COLUMNS`.
    """
    uk, h, j, off = F.col("user_key"), F.col("hour"), F.col("view"), F.col("offset")

    def delay(tag: str) -> Column:
        return 1 + F.floor(unit(cfg, tag, uk, h, j) * cfg.action_delay_max_s).cast("long")

    def event(kind: str, at: Column, on: Column, session: Column = h) -> Column:
        return F.struct(F.lit(kind).alias("type"), at.alias("at"), on.alias("on"), session.alias("session"))

    carted = unit(cfg, "view.cart", uk, h, j) < F.least(F.lit(1.0), cfg.cart_rate * F.col("buyer") * F.col("engagement"))
    bought = carted & (unit(cfg, "view.purchase", uk, h, j) < cfg.purchase_rate)
    returned = carted & ~bought & F.col("next_start_s").isNotNull() & (unit(cfg, "view.return", uk, h, j) < cfg.return_rate)
    candidates = F.array(
        event("view", off, F.lit(True)),
        event("fav", off + delay("view.fav_delay"), unit(cfg, "view.fav", uk, h, j) < cfg.fav_rate),
        event("cart", off + delay("view.cart_delay"), carted),
        event("purchase", F.col("checkout_s") + j, bought),
        # Returning checkout: just before the next session's first view, in that session.
        event("purchase", F.col("next_start_s") - F.col("start_s") - F.col("n_views") + j, returned, F.col("next_hour")),
    )
    at = F.col("start_s") + F.col("e.at")
    return (
        views.select("*", F.explode(candidates).alias("e"))
        .where(F.col("e.on") & (at < F.col("active_until_s")))
        .select(
            "user_id",
            F.concat(F.lit("i"), F.col("item").cast("string")).alias("item_id"),
            F.concat(F.lit("c"), F.col("category").cast("string")).alias("category_id"),
            F.col("e.type").alias("event_type"),
            F.timestamp_seconds(at).alias("event_time"),
            "price",
            "brand",
            F.concat(F.col("user_id"), F.lit("-s"), F.col("e.session").cast("string")).alias("session_hint"),
        )
    )
