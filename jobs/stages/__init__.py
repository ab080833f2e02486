"""The pipeline stages: each module is one stage's ``main(argv)`` and its ``run_*`` recipe of calls into features and training."""
