"""The quarantine layout every stage writes rows it cannot use to: (id, stage, reason, raw), raw being
the row as JSON. One place, so the negatives job, the cache and `style-data` quarantine alike."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from tpo_ray.data import schema

QUARANTINE_SCHEMA = pa.schema([(schema.ID, pa.string()), (schema.STAGE, pa.string()), (schema.REASON, pa.string()),
                               (schema.RAW, pa.string())])


def quarantine_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)


def raw_json(row: dict[str, Any]) -> str:
    """A quarantine `raw` field: the row as JSON with binary values summarised, not embedded."""
    def summarise(v: Any) -> Any:
        if isinstance(v, (bytes, bytearray)):
            return f"<{len(v)} bytes>"
        return v
    return json.dumps({k: summarise(v) for k, v in row.items()}, default=repr, ensure_ascii=False)
