from __future__ import annotations

from pathlib import Path

import pytest

from jobs.config import Config, ConfigError, load_config

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
    from jobs.spark import delta_jars

    monkeypatch.setenv("SHOPSEQ_DELTA_JARS", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^Delta Lake JARs missing in .* \(delta-spark_2.12-3.2.1.jar, delta-storage-3.2.1.jar\): run `make delta-jars`"):
        delta_jars()
    for name in ("delta-spark_2.12-3.2.1.jar", "delta-storage-3.2.1.jar"):
        (tmp_path / name).write_bytes(b"")
    assert delta_jars() == [str(tmp_path / "delta-spark_2.12-3.2.1.jar"), str(tmp_path / "delta-storage-3.2.1.jar")]


def test_the_delta_jars_the_makefile_fetches_match_the_pinned_python_package():
    import re

    from jobs.spark import delta_version

    make = re.search(r"^DELTA_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    pin = re.search(r"^delta-spark==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert make and pin and make[1] == pin[1] == delta_version() == "3.2.1"
