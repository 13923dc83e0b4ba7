"""Mass retirement is a decision: how many results a run would retire, against how many each
activity type has, known before the first is retired.

A run retires the results of activities that are gone from their source
(``writes.retire_deleted``). A wrong sources mapping, or one forgotten, makes every activity
look gone; so a run that would retire more than a set share of a type's results refuses
before retiring anything, unless told (``--max-retire-share``, ``--allow-retire``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psycopg2.extensions
from psycopg2 import sql

from pipeline.store.tables import DEFAULT_SCHEMA, RESULTS_TABLE, qualified


@dataclass(frozen=True)
class Retirement:
    """What a run would retire of one activity type."""

    activity_type: str
    retiring: int  # results whose activity is gone
    stored: int  # results of the type

    @property
    def share(self) -> float:
        return self.retiring / self.stored if self.stored else 0.0

    def __str__(self) -> str:
        of = f"{self.retiring:,} of {self.stored:,} {self.activity_type} results"
        return f"{of} ({self.share:.1%})"


def stored_results(
    conn: psycopg2.extensions.connection,
    activity_types: Sequence[str],
    schema: str = DEFAULT_SCHEMA,
) -> dict[str, int]:
    """Results stored per activity type (0 for a type with none); one read-only statement."""
    found = dict.fromkeys(activity_types, 0)
    if not activity_types:
        return found
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION READ ONLY")
        cur.execute(
            sql.SQL(
                "SELECT activity_type, count(*) FROM {r} WHERE activity_type = ANY(%s) "
                "GROUP BY activity_type"
            ).format(r=qualified(RESULTS_TABLE, schema)),
            (list(activity_types),),
        )
        found.update({t: int(n) for t, n in cur.fetchall()})
    conn.commit()
    return found


def over_share(
    retiring: Mapping[str, int], stored: Mapping[str, int], max_share: float
) -> list[Retirement]:
    """The types whose retirement would take more than ``max_share`` of their results."""
    found = [Retirement(t, n, stored.get(t, 0)) for t, n in retiring.items() if n]
    return [r for r in found if r.share > max_share]
