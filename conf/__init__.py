"""The config layers (YAML), installed as ``shopseq.conf``: the loader's fallback when no conf folder is given (a wheel, the --py-files zip)."""
