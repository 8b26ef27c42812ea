"""Many rows inserted in one round trip, with what the store gave each (its sequence), in the
order given.

SQLAlchemy renders such an insert as one ``VALUES (…), (…)`` statement whose text changes
with the number of rows; on PostgreSQL psycopg then parses each new text anew (its cache is
keyed by the text), which cost 7 ms a batch in the profile. There the rows go instead through
psycopg's own ``executemany(…, returning=True)``: one statement text, prepared once,
pipelined. Elsewhere (SQLite) SQLAlchemy's form serves.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def insert_returning(conn: Connection, table: sa.Table, rows: list[dict[str, Any]],
                     returning: tuple[str, ...]) -> list[tuple[Any, ...]]:
    if not rows:
        return []
    if conn.dialect.name != "postgresql":
        statement = table.insert().returning(*(table.c[c] for c in returning),
                                             sort_by_parameter_order=True)
        return [tuple(row) for row in conn.execute(statement, rows)]
    columns = list(rows[0])
    sql = (f"INSERT INTO {table.name} ({', '.join(columns)}) "
           f"VALUES ({', '.join(['%s'] * len(columns))}) RETURNING {', '.join(returning)}")
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(sql, [tuple(row[c] for c in columns) for row in rows],
                           returning=True)
        out = []
        while True:
            out.append(tuple(cursor.fetchone()))
            if not cursor.nextset():
                break
        return out
    finally:
        cursor.close()
