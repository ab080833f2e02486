from __future__ import annotations

from pathlib import Path

import pytest

from shopseq.jobs.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def _conf(tmp_path: Path, base: str, local: str = "") -> Path:
    (tmp_path / "base.yaml").write_text(base)
    (tmp_path / "local.yaml").write_text(local)
    return tmp_path


def test_shipped_config_validates_for_every_environment():
    for env in ("local", "cluster", "databricks"):
        cfg = load_config(env, REPO / "conf")
        assert isinstance(cfg, Config) and cfg.env == env
    assert load_config("local", REPO / "conf").spark.master == "local[2]"
    assert load_config("cluster", REPO / "conf").spark.master is None
    dbx = load_config("databricks", REPO / "conf")
    assert (dbx.tables.catalog, dbx.tables.schema) == ("main", "shopseq")


def test_layers_deep_merge_base_env_then_set(tmp_path):
    conf = _conf(tmp_path, "spark:\n  shuffle_partitions: 8\n  conf: {a: '1'}\nsessionize:\n  gap_minutes: 30\n", "spark:\n  conf: {b: '2'}\n")
    cfg = load_config("local", conf, ["sessionize.gap_minutes=20", "spark.conf.c=3"])
    assert cfg.spark.shuffle_partitions == 8  # base survives the env layer
    assert cfg.spark.conf == {"a": "1", "b": "2", "c": "3"}  # maps merge key by key
    assert cfg.sessionize.gap_minutes == 20.0 and isinstance(cfg.sessionize.gap_minutes, float)
    assert cfg.sessionize.max_events_per_user_day == 5000  # dataclass default for unset keys


def test_config_is_frozen():
    cfg = load_config("local", REPO / "conf")
    with pytest.raises(AttributeError):
        cfg.spark.master = "yarn"  # type: ignore[misc]


def test_unknown_key_names_key_and_file(tmp_path):
    conf = _conf(tmp_path, "spark:\n  master: local[1]\n", "spark:\n  shufle_partitions: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config("local", conf)
    assert str(err.value) == f"{conf / 'local.yaml'}: unknown key 'spark.shufle_partitions'"


def test_wrong_type_names_key_and_source(tmp_path):
    conf = _conf(tmp_path, "sessionize:\n  gap_minutes: 30\n")
    with pytest.raises(ConfigError) as err:
        load_config("local", conf, ["sessionize.max_events_per_user_day=lots"])
    assert str(err.value) == "--set: 'sessionize.max_events_per_user_day' expects int, got str 'lots'"
    with pytest.raises(ConfigError, match=r"base.yaml: 'train.encoder' must be one of 'transformer', 'gru', got 'hive'"):
        load_config("local", _conf(tmp_path, "train:\n  encoder: hive\n"))


def test_bool_is_not_an_int_and_unknown_env(tmp_path):
    with pytest.raises(ConfigError, match="'spark.shuffle_partitions' expects int, got bool True"):
        load_config("local", _conf(tmp_path, "spark:\n  shuffle_partitions: true\n"))
    with pytest.raises(ConfigError, match="unknown environment 'prod'"):
        load_config("prod", REPO / "conf")


def test_mixture_needs_the_full_softmax():
    with pytest.raises(ConfigError, match=r"^train.repeat: mixture needs the full softmax \(train.num_negatives: 0\)"):
        load_config("local", REPO / "conf", ["train.num_negatives=64"])
    assert load_config("local", REPO / "conf", ["train.num_negatives=64", "train.repeat=recency_type"]).train.num_negatives == 64


def test_missing_delta_jars_are_one_line_saying_how_to_fetch_them(tmp_path, monkeypatch):
    from shopseq.jobs.spark import delta_jars

    monkeypatch.setenv("SHOPSEQ_DELTA_JARS", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^Delta Lake JARs missing in .* \(delta-spark_2.12-3.2.1.jar, delta-storage-3.2.1.jar\): run `make delta-jars`"):
        delta_jars()
    for name in ("delta-spark_2.12-3.2.1.jar", "delta-storage-3.2.1.jar"):
        (tmp_path / name).write_bytes(b"")
    assert delta_jars() == [str(tmp_path / "delta-spark_2.12-3.2.1.jar"), str(tmp_path / "delta-storage-3.2.1.jar")]


def test_the_delta_jars_the_makefile_fetches_match_the_pinned_python_package():
    import re

    from shopseq.jobs.spark import delta_version

    make = re.search(r"^DELTA_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    pin = re.search(r"^delta-spark==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert make and pin and make[1] == pin[1] == delta_version() == "3.2.1"


# --------------------------------------------------------------------------- declared ranges and choices

BAD_VALUES = [
    ("sessionize.gap_minutes=-5", "'sessionize.gap_minutes' must be > 0, got -5.0"),
    ("sessionize.max_events_per_user_day=-1", "'sessionize.max_events_per_user_day' must be >= 1, got -1"),
    ("train.num_proc=0", "'train.num_proc' must be >= 1, got 0"),
    ("train.batch_size=0", "'train.batch_size' must be >= 1, got 0"),
    ("train.lr=-0.001", "'train.lr' must be > 0, got -0.001"),
    ("train.encoder=lstm", "'train.encoder' must be one of 'transformer', 'gru', got 'lstm'"),
    ("train.repeat=always", "'train.repeat' must be one of 'none', 'recency', 'recency_type', 'mixture', got 'always'"),
    ("train.lr_schedule=linear", "'train.lr_schedule' must be one of 'cosine', 'constant', got 'linear'"),
    ("train.next_item_positions=first", "'train.next_item_positions' must be one of 'all', 'last', got 'first'"),
    ("train.dropout=1.0", "'train.dropout' must be in [0, 1), got 1.0"),
    ("generate.fav_rate=1.5", "'generate.fav_rate' must be in [0, 1], got 1.5"),
    ("generate.churn_rate=-0.1", "'generate.churn_rate' must be in [0, 1], got -0.1"),
    ("features.train_fraction=2", "'features.train_fraction' must be in [0, 1], got 2.0"),
    ("evaluate.confidence=1", "'evaluate.confidence' must be in (0, 1), got 1.0"),
    ("evaluate.ks=[]", "'evaluate.ks' must be a non-empty list, each >= 1, got []"),
    ("evaluate.ks=[5, 0]", "'evaluate.ks' must be a non-empty list, each >= 1, got [5, 0]"),
    ("train.loss_weights.churn=-1", "'train.loss_weights' must be keys among next_item, next_action, purchase, churn, each >= 0, got "
     "{'next_item': 1.0, 'next_action': 1.0, 'purchase': 1.0, 'churn': -1.0}"),
    ("train.max_steps_per_epoch=0", "'train.max_steps_per_epoch' must be >= 1, got 0"),
    ("features.gap_days=-1", "'features.gap_days' must be >= 0, got -1.0"),
    ("features.protocol=my protocol", "'features.protocol' must be letters, digits, '_' and '-', got 'my protocol'"),
    ("ingest.now=yesterday", "'ingest.now' must be an ISO-8601 date or timestamp (naive = UTC), got 'yesterday'"),
    ("generate.start_date=2024-13-01", "'generate.start_date' must be an ISO-8601 date (YYYY-MM-DD), got '2024-13-01'"),
    ("spark.shuffle_partitions=0", "'spark.shuffle_partitions' must be >= 1, got 0"),
    ("spark.driver_memory=lots", "'spark.driver_memory' must be a JVM memory size such as 512m or 4g, got 'lots'"),
    ("app.log_level=LOUD", "'app.log_level' must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL', got 'LOUD'"),
    ("source.format=excel", "'source.format' must be one of "),
    ("predict.model_version=v 1", "'predict.model_version' must be letters, digits, '.', '_' and '-' (at most 128, starting with a letter or digit), got 'v 1'"),
    ("tables.max_file_mb=0", "'tables.max_file_mb' must be >= 1, got 0"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_a_value_outside_its_range_or_choices_names_key_and_layer(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("local", REPO / "conf", [override])
    text = str(err.value)
    assert "\n" not in text
    if message.endswith("one of "):  # the list of choices grows with the presets
        assert text.startswith("--set: " + message) and text.endswith(", got 'excel'")
    else:
        assert text == "--set: " + message


def test_a_bad_value_in_a_yaml_layer_names_that_file(tmp_path):
    layer = tmp_path / "mine.yaml"
    layer.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config("local", REPO / "conf", layers=[layer])
    assert str(err.value) == f"{layer}: 'train.epochs' must be >= 1, got 0"
    # null is allowed where the type says so, and is not range-checked
    assert load_config("local", REPO / "conf", ["train.max_steps_per_epoch=null", "features.gap_days=null"]).train.max_steps_per_epoch is None


def test_a_directly_built_section_is_checked_too():
    from shopseq.jobs.config import SessionizeConfig, TrainConfig

    with pytest.raises(ConfigError, match=r"^sessionize.gap_minutes: must be > 0, got -5$"):
        SessionizeConfig(gap_minutes=-5)
    with pytest.raises(ConfigError, match=r"^train.encoder: must be one of 'transformer', 'gru', got 'lstm'$"):
        TrainConfig(encoder="lstm")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^train.heads: must divide train.dim \(64\) for the transformer encoder, got 5$"):
        TrainConfig(heads=5)
    assert TrainConfig(encoder="gru", heads=5).heads == 5  # the GRU has no heads


def _sections():
    import dataclasses

    from shopseq.jobs.config import sections

    return [(name, f, cls) for name, cls in sections() for f in dataclasses.fields(cls)]


NO_RANGE = {"generate.seed", "train.seed", "evaluate.seed"}  # any int is a seed


def test_every_key_declares_its_meaning_and_every_number_its_range():
    from shopseq.jobs.config import type_hints

    missing_doc, missing_range = [], []
    for name, f, cls in _sections():
        key = f"{name}.{f.name}"
        if not f.metadata.get("doc"):
            missing_doc.append(key)
        tp = type_hints(cls)[f.name]
        numeric = tp in (int, float) or tp in (int | None, float | None)
        if numeric and f.metadata.get("check") is None and key not in NO_RANGE:
            missing_range.append(key)
    assert (missing_doc, missing_range) == ([], [])


def _flatten(data, prefix=""):
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in MAP_KEYS:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


MAP_KEYS = {"spark.conf", "tables.locations", "source.options", "source.mapping", "source.event_types", "source.constants", "train.loss_weights"}


def test_typed_defaults_equal_base_yaml_for_every_key():
    import yaml

    from shopseq.jobs.config import default_of, type_hints

    maps = {f"{name}.{f.name}" for name, f, cls in _sections() if str(type_hints(cls)[f.name]).startswith("dict")}
    assert maps == MAP_KEYS  # map-valued keys are leaves, not sections
    typed = {f"{name}.{f.name}": default_of(f) for name, f, _ in _sections()}
    base = _flatten(yaml.safe_load((REPO / "conf" / "base.yaml").read_text()))
    assert sorted(set(typed) - set(base)) == [], "keys missing from conf/base.yaml"
    assert sorted(set(base) - set(typed)) == [], "conf/base.yaml keys the typed config does not have"
    differ = {key: (base[key], typed[key]) for key in typed if base[key] != typed[key]}
    assert differ == {}, "conf/base.yaml value vs typed default"


def test_every_shipped_layer_validates():
    layers = sorted((REPO / "conf" / "datasets").glob("*.yaml")) + sorted((REPO / "conf" / "protocols").glob("*.yaml"))
    assert len(layers) >= 6
    for layer in layers:
        for env in ("local", "cluster", "databricks"):
            load_config(env, REPO / "conf", layers=[layer])


def test_source_format_choices_are_the_presets():
    from shopseq.jobs.config import SourceConfig, choices, type_hints
    from shopseq.jobs.sources import FORMATS

    assert sorted(choices(type_hints(SourceConfig)["format"])) == sorted(FORMATS)


# --------------------------------------------------------------------------- TrainParams from config


def test_train_params_take_every_train_key_from_config_and_have_no_defaults_of_their_own():
    import dataclasses

    from shopseq.jobs.config import TrainConfig
    from shopseq.training.loop import TrainParams

    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    own = TrainParams.config_fields()
    assert set(own) <= train_keys and len(own) == 17
    for f in dataclasses.fields(TrainParams):
        if f.name in own or f.name == "model":
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f.name
    with pytest.raises(TypeError, match="missing 18 required keyword-only arguments"):
        TrainParams(schema={}, train_files=[], val_files=[], checkpoint_dir="c")  # type: ignore[call-arg]
    tc = load_config("local", REPO / "conf", ["train.epochs=3", "train.loss_weights.churn=4", "train.patience=1"]).train
    params = TrainParams.from_config(tc, schema={}, train_files=[], val_files=[], checkpoint_dir="c", model={}, resume=False)
    assert {name: getattr(params, name) for name in own} == {**{name: getattr(tc, name) for name in own}, "resume": False}
    assert (params.epochs, params.patience, params.loss_weights["churn"]) == (3, 1, 4.0)
    assert params.loss_weights is not tc.loss_weights  # a copy: ranks may not mutate the config


def test_jobs_build_train_params_only_through_the_one_builder():
    import ast

    calls = []
    for path in sorted((REPO / "jobs").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "TrainParams":
                calls.append(str(path.relative_to(REPO)))
    assert calls == []  # shopseq.jobs.stages.train.train_params -> TrainParams.from_config


# --------------------------------------------------------------------------- Spark settings


def test_sql_settings_apply_to_every_session_jvm_settings_only_to_local_builds():
    from shopseq.jobs.config import SparkConfig
    from shopseq.jobs.spark import build_settings, sql_settings

    cluster = SparkConfig(master=None, shuffle_partitions=200, conf={"spark.sql.adaptive.enabled": "false", "spark.executor.memory": "8g"})
    assert sql_settings(cluster) == {
        "spark.sql.session.timeZone": "UTC", "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.shuffle.partitions": "200", "spark.sql.adaptive.enabled": "false",
    }  # fmt: skip
    built = build_settings(cluster)
    assert built["spark.sql.shuffle.partitions"] == "200" and built["spark.executor.memory"] == "8g"
    assert not {"spark.jars", "spark.driver.memory", "spark.ui.enabled"} & set(built)
    local = build_settings(SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="2g"), ["/j/a.jar", "/j/b.jar"])
    assert (local["spark.jars"], local["spark.driver.memory"], local["spark.sql.shuffle.partitions"], local["spark.ui.enabled"]) == ("/j/a.jar,/j/b.jar", "2g", "4", "false")


# --------------------------------------------------------------------------- shopseq config


def test_shopseq_config_prints_the_validated_config_or_one_line(capsys):
    import yaml

    from shopseq.jobs.config import main

    assert main(["--env", "cluster", "--set", "train.epochs=2", "--conf-dir", str(REPO / "conf")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["env"], printed["spark"]["shuffle_partitions"], printed["train"]["epochs"]) == ("cluster", 200, 2)
    assert main(["--set", "train.num_proc=0", "--conf-dir", str(REPO / "conf")]) == 2
    assert capsys.readouterr().err == "shopseq config: error: --set: 'train.num_proc' must be >= 1, got 0\n"


def test_get_spark_sets_the_sql_settings_on_the_running_session(spark):
    from shopseq.jobs.config import SparkConfig
    from shopseq.jobs.spark import get_spark

    before = {k: spark.conf.get(k) for k in ("spark.sql.shuffle.partitions", "spark.sql.adaptive.enabled", "spark.sql.warehouse.dir")}
    try:
        cfg = SparkConfig(master=None, shuffle_partitions=7, conf={"spark.sql.adaptive.enabled": "false", "spark.sql.warehouse.dir": "/elsewhere"})
        assert get_spark(cfg) is spark  # reused, not rebuilt
        assert spark.conf.get("spark.sql.shuffle.partitions") == "7" and spark.conf.get("spark.sql.adaptive.enabled") == "false"
        assert spark.conf.get("spark.sql.warehouse.dir") == before["spark.sql.warehouse.dir"]  # static: fixed when the session started
        assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    finally:
        for key in ("spark.sql.shuffle.partitions", "spark.sql.adaptive.enabled"):
            spark.conf.set(key, before[key])


# --------------------------------------------------------------------------- finite floats


NON_FINITE = [
    ("train.lr=.inf", "--set: 'train.lr' must be a finite number, got inf"),
    ("train.weight_decay=.nan", "--set: 'train.weight_decay' must be a finite number, got nan"),
    ("sessionize.gap_minutes=.inf", "--set: 'sessionize.gap_minutes' must be a finite number, got inf"),
    ("ingest.max_future_skew_hours=.inf", "--set: 'ingest.max_future_skew_hours' must be a finite number, got inf"),
    ("features.purchase_horizon_days=-.inf", "--set: 'features.purchase_horizon_days' must be a finite number, got -inf"),
]


@pytest.mark.parametrize("override, message", NON_FINITE, ids=[o for o, _ in NON_FINITE])
def test_a_float_key_refuses_inf_and_nan(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("local", REPO / "conf", [override])
    assert str(err.value) == message


def _float_keys():
    """``(key, section, field, class, shape)`` of every float key, and every list or map of floats (shape ``elements``)."""
    from shopseq.features.settings import float_shape
    from shopseq.jobs.config import type_hints

    return [(f"{name}.{f.name}", name, f, cls, float_shape(type_hints(cls)[f.name])) for name, f, cls in _sections() if float_shape(type_hints(cls)[f.name])]


def test_every_float_key_of_every_section_refuses_inf_and_nan(tmp_path):
    from shopseq.jobs.config import default_of, yaml_value

    keys = _float_keys()
    assert {k for k, *_ in keys} >= {"train.lr", "train.weight_decay", "sessionize.gap_minutes", "ingest.max_future_skew_hours", "features.purchase_horizon_days"}
    assert {k for k, *_, shape in keys if shape == "elements"} == {"generate.hour_weights", "generate.price_median_range", "train.loss_weights"}
    checked = 0
    for key, name, f, cls, shape in keys:
        for bad, shown in ((float("inf"), "inf"), (float("-inf"), "-inf"), (float("nan"), "nan")):
            if shape == "scalar":
                override, message = f"{key}={yaml_value(bad)}", f"'{key}' must be a finite number, got {shown}"
                with pytest.raises(ConfigError) as built:
                    cls(**{f.name: bad})  # a directly built section is refused too
                assert str(built.value) == f"{name}.{f.name}: must be a finite number, got {shown}"
            else:
                default = default_of(f)
                value = {next(iter(default)): bad} if isinstance(default, dict) else [bad, *default[1:]]
                override, message = f"{key}={yaml_value(value)}", f"'{key}' must hold finite numbers only, got "
            with pytest.raises(ConfigError) as loaded:
                load_config("local", REPO / "conf", [override])
            assert str(loaded.value).startswith(f"--set: {message}") and shown in str(loaded.value), str(loaded.value)
            checked += 1
    assert checked == 3 * len(keys)
    # A YAML layer is named like --set; an int beyond float's range is not turned into inf.
    layer = tmp_path / "mine.yaml"
    layer.write_text("sessionize:\n  gap_minutes: .nan\n")
    with pytest.raises(ConfigError) as err:
        load_config("local", REPO / "conf", layers=[layer])
    assert str(err.value) == f"{layer}: 'sessionize.gap_minutes' must be a finite number, got nan"
    with pytest.raises(ConfigError, match=r"^--set: 'train.lr' must be a finite number, got 1000+$"):
        load_config("local", REPO / "conf", ["train.lr=1" + "0" * 400])
    assert load_config("local", REPO / "conf", ["train.lr=1.0e-300", "features.gap_days=null"]).train.lr == 1e-300


# --------------------------------------------------------------------------- where the config code lives


def _imported_modules(path: Path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_one_schema_per_layer_and_the_loader_does_not_render_the_reference():
    settings, params = REPO / "features" / "settings.py", REPO / "features" / "params.py"
    config = REPO / "jobs" / "config"
    assert {m for m in _imported_modules(settings) if m.startswith("shopseq.")} == set()  # the declaration machinery stands alone
    assert {m for m in _imported_modules(params) if m.startswith("shopseq.")} == {"shopseq.features.settings"}
    schema_imports = {m for m in _imported_modules(config / "schema.py") if m.startswith("shopseq.")}
    assert schema_imports == {"shopseq.features.params", "shopseq.features.settings", "shopseq.training.storage"}  # storage: app.artifact_root's check
    loader = {m for m in _imported_modules(config / "loader.py") if m.startswith("shopseq.")}
    assert loader == {"shopseq.features.settings", "shopseq.jobs.config.schema"}  # neither the reference nor the command line
    assert "shopseq.jobs.config.loader" not in _imported_modules(config / "reference.py")
    import shopseq.features.params as p
    import shopseq.features.settings as s
    from shopseq.jobs import cli
    from shopseq.jobs.config import schema

    assert not [n for n in ("setting", "Check", "Validated", "problem", "within", "each", "type_hints") if n in vars(p) and vars(p)[n] is not getattr(s, n, None)]
    assert {c.__module__ for c in (schema.AppConfig, schema.Config)} == {"shopseq.jobs.config.schema"}
    assert cli.STAGES["config"][0] == "shopseq.jobs.config.cli"
