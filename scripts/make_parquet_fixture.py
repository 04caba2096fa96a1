#!/usr/bin/env python3
"""Writes crates/data/tests/fixtures/pyarrow_rowgroups.parquet: the pyarrow-written file the data tests read.

Three row groups, snappy compression, a `text` column (string) with nulls and a `body` column
(large_string), plus an integer `id`. Run with pyarrow installed: python3 scripts/make_parquet_fixture.py
"""
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq

ROWS = 30
texts = []
for i in range(ROWS):
    if i % 7 == 3:
        texts.append(None)
    else:
        texts.append(f"Row {i}: ferry {i * 13} from Elmford{i} to Kastholm{i * 7} leaves at {6 + i % 12} o'clock, weather{i} permitting.")
bodies = [f"Body {i} with ümlauts, 日本語 and a number {i * 37}." for i in range(ROWS)]
table = pa.table({
    "id": pa.array(range(ROWS), type=pa.int64()),
    "text": pa.array(texts, type=pa.string()),
    "body": pa.array(bodies, type=pa.large_string()),
})
out = pathlib.Path(__file__).resolve().parent.parent / "crates/data/tests/fixtures/pyarrow_rowgroups.parquet"
pq.write_table(table, out, row_group_size=10, compression="snappy")
meta = pq.ParquetFile(out).metadata
print(f"wrote {out.name}: {meta.num_rows} rows in {meta.num_row_groups} row groups")
