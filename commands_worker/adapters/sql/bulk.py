"""Many rows inserted at once, with the id the store gave each, in the order given.

SQLAlchemy renders an insert with RETURNING for many rows as one ``VALUES (…), (…)``
statement whose text changes with the number of rows (on PostgreSQL psycopg then parses each
new text anew: 7 ms a batch in the profile), or, on SQLite, as one statement per row. Here:

- PostgreSQL: psycopg's own ``executemany(…, returning=True)``: one statement text, prepared
  once, pipelined.
- SQLite: one ``executemany`` and ``last_insert_rowid()``. The ids of the rows are
  consecutive: the id is the rowid, and a write transaction here holds the database alone
  (``BEGIN IMMEDIATE``), so no other writer inserts between them.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def insert_ids(conn: Connection, table: sa.Table, rows: list[dict[str, Any]],
               id_column: str) -> list[int]:
    if not rows:
        return []
    if conn.dialect.name == "sqlite":
        conn.execute(table.insert(), rows)
        last = int(conn.exec_driver_sql("SELECT last_insert_rowid()").scalar_one())
        return list(range(last - len(rows) + 1, last + 1))
    if conn.dialect.name != "postgresql":  # pragma: no cover - the two stores we run on
        statement = table.insert().returning(table.c[id_column], sort_by_parameter_order=True)
        return [int(i) for i in conn.execute(statement, rows).scalars()]
    columns = list(rows[0])
    sql = (f"INSERT INTO {table.name} ({', '.join(columns)}) "
           f"VALUES ({', '.join(['%s'] * len(columns))}) RETURNING {id_column}")
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(sql, [tuple(row[c] for c in columns) for row in rows],
                           returning=True)
        ids = []
        while True:
            ids.append(int(cursor.fetchone()[0]))
            if not cursor.nextset():
                break
        return ids
    finally:
        cursor.close()
