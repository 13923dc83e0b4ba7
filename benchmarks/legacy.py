"""The approach this project replaces, for comparison: an ORM paging through activities 100
at a time (``OFFSET`` paging), one lookup per activity for an existing result, the per-row
calculation, and a commit per page. Same methodology and tables; only the shape differs.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.automap import automap_base
from sqlalchemy.orm import Session

from pipeline.methodology import FactorBook
from pipeline.methodology.batch import calculate_one
from pipeline.model import ACTIVITY_CLASSES, ACTIVITY_TYPES, EmissionResult, activity_fields
from pipeline.store import connections, queries, tables, writes

PAGE = 100


def run_legacy(url: str, page: int = PAGE) -> dict[str, int]:
    """Computes every activity without a result, the old way; returns counts per outcome."""
    engine = connections.make_engine(url)
    base: Any = automap_base()
    base.prepare(autoload_with=engine, schema=tables.DEFAULT_SCHEMA)
    results_cls = base.classes.emission_results
    errors_cls = base.classes.emission_errors
    conn = connections.connect(url)
    try:
        book = FactorBook.from_rows(queries.read_factor_rows(conn))
    finally:
        conn.close()
    run_id = str(uuid.uuid4())
    counts = {"computed": 0, "errors": 0, "skipped": 0}
    with Session(engine) as session:
        for activity_type in ACTIVITY_TYPES:
            model = getattr(base.classes, tables.ACTIVITY_TABLES[activity_type])
            fields = activity_fields(activity_type)
            offset = 0
            while True:
                rows = session.scalars(
                    sa.select(model).order_by(model.id).offset(offset).limit(page)
                ).all()
                if not rows:
                    break
                for row in rows:
                    if session.get(results_cls, (activity_type, row.id)) is not None:
                        counts["skipped"] += 1
                        continue
                    refused = sa.select(errors_cls.id).filter_by(
                        activity_type=activity_type, activity_id=row.id
                    )
                    if session.scalars(refused).first() is not None:
                        counts["skipped"] += 1
                        continue
                    values = {f: getattr(row, f) for f in fields}
                    if isinstance(values["activity_date"], datetime.datetime):
                        values["activity_date"] = values["activity_date"].date()
                    activity = ACTIVITY_CLASSES[activity_type](**values)
                    outcome = calculate_one(activity, activity_type, book, True)
                    if isinstance(outcome, EmissionResult):
                        stored = {c: getattr(outcome, c) for c in tables.RESULT_COLUMNS}
                        session.add(results_cls(**stored, run_id=run_id))
                        counts["computed"] += 1
                    else:
                        session.add(
                            errors_cls(
                                activity_type=activity_type,
                                activity_id=row.id,
                                reason_code=outcome.reason_code,
                                reason=outcome.reason,
                                input_repr=outcome.input_repr,
                                input_hash=writes.error_hash(outcome),
                                run_id=run_id,
                            )
                        )
                        counts["errors"] += 1
                session.commit()
                offset += page
    engine.dispose()
    return counts
