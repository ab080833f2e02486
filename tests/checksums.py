"""Order-independent checksums of tables, for tests that compare two runs' rows (reliability, cluster)."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

DIGITS = 6  # floats are hashed rounded: Spark's float sums and batched matmuls may differ in the last bits between runs


def _hashable(c, dtype):
    """A column as hashed: floats rounded to DIGITS places (in arrays and map values too), maps as sorted entries."""
    if isinstance(dtype, (T.FloatType, T.DoubleType)):
        return F.round(c, DIGITS)
    if isinstance(dtype, T.ArrayType):
        return F.transform(c, lambda x: _hashable(x, dtype.elementType))
    if isinstance(dtype, T.MapType):
        return F.transform(F.array_sort(F.map_entries(c)), lambda e: F.struct(e["key"].alias("k"), _hashable(e["value"], dtype.valueType).alias("v")))
    return c


def checksum(df: DataFrame) -> tuple[int, str]:
    """(rows, order-independent checksum): the sum of a 64-bit hash of every row."""
    cols = [_hashable(F.col(f.name), f.dataType) for f in df.schema.fields]
    row = df.select(F.xxhash64(*cols).cast("decimal(38,0)").alias("h")).agg(F.count(F.lit(1)).alias("n"), F.sum("h").alias("s")).head()
    return int(row["n"]), str(row["s"])
