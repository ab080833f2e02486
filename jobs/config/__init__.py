"""The typed, validated config: one schema per layer, one loader, the reference renderer and ``shopseq config``.

=====================================  ==========================================================
module                                 holds
=====================================  ==========================================================
:mod:`shopseq.features.settings`       how a key is declared and judged: :func:`setting`,
                                       :class:`Check` and the checks, :class:`Validated`,
                                       :class:`ConfigError` (lowest layer: both schemas use it)
:mod:`shopseq.features.params`         the features layer's sections (source, generate, ingest,
                                       sessionize, features)
:mod:`shopseq.jobs.config.schema`      the jobs layer's sections (app, spark, tables, train,
                                       evaluate, predict) and :class:`Config`, the whole config
:mod:`shopseq.jobs.config.loader`      :func:`load_config`: YAML layers base -> environment ->
                                       ``--conf-file`` -> ``--set``, validated into :class:`Config`
:mod:`shopseq.jobs.config.reference`   ``docs/configuration.md`` rendered from the declarations
                                       (the loader never imports it)
:mod:`shopseq.jobs.config.cli`         the config flags every stage takes, the help formatter,
                                       ``shopseq config`` (also ``python -m shopseq.jobs.config``)
=====================================  ==========================================================

An unknown key, a wrong type or a value outside the key's declared range or
choices fails with one line naming the key and the layer that set it::

    conf/local.yaml: unknown key 'spark.shufle_partitions'
    --set: 'sessionize.gap_minutes' expects float, got str 'soon'
    --set: 'train.num_proc' must be >= 1, got 0
    --set: 'train.lr' must be a finite number, got inf

The names below are re-exported so that ``from shopseq.jobs.config import
load_config, Config, ConfigError, SparkConfig, ...`` works wherever it is used.
"""

from __future__ import annotations

from shopseq.features.params import FeaturesConfig, GenerateConfig, IngestConfig, SessionizeConfig, SourceConfig
from shopseq.features.settings import (
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
    choices,
    default_of,
    each,
    matching,
    problem,
    setting,
    type_hints,
    within,
)
from shopseq.jobs.config.cli import DefaultsHelpFormatter, add_config_flags, build_parser, main
from shopseq.jobs.config.loader import default_conf_dir, load_config, packaged_conf_dir, to_dict
from shopseq.jobs.config.reference import KeyDoc, key_docs, reference_markdown, type_name, yaml_value
from shopseq.jobs.config.schema import (
    ARTIFACT_LOCATION,
    ENVIRONMENTS,
    LOSS_TASKS,
    AppConfig,
    Config,
    EvaluateConfig,
    PredictConfig,
    SparkConfig,
    TablesConfig,
    TrainConfig,
    sections,
)

__all__ = [
    "ARTIFACT_LOCATION", "ENVIRONMENTS", "ISO_DATE", "ISO_TIME", "LOSS_TASKS", "NAME", "NON_EMPTY", "PROBABILITY",
    "AppConfig", "Check", "Config", "ConfigError", "DefaultsHelpFormatter", "EvaluateConfig", "FeaturesConfig",
    "GenerateConfig", "IngestConfig", "KeyDoc", "PredictConfig", "SessionizeConfig", "SourceConfig", "SparkConfig",
    "TablesConfig", "TrainConfig", "Validated",
    "above", "add_config_flags", "at_least", "build_parser", "choices", "default_conf_dir", "default_of", "each",
    "key_docs", "load_config", "main", "matching", "packaged_conf_dir", "problem", "reference_markdown", "sections",
    "setting", "to_dict", "type_hints", "type_name", "within", "yaml_value",
]  # fmt: skip
