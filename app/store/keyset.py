"""Keyset pagination in one statement: the page, whether the cursor exists, whether the user does.

Every list has the same frame: a LATERAL page of `limit + 1` rows after (or before) the
cursor's row id, joined to a row saying whether the cursor and the user exist. Each
repository supplies its own item and cursor queries.
"""

from __future__ import annotations

from typing import Any

from app.domain.pages import KeysetResult, Page

USER_EXISTS = "EXISTS (SELECT 1 FROM users WHERE id = %(user_id)s)"


def keyset_sql(items: str, cursor: str | None, page: Page, key: str = "id",
               scope_exists: str = USER_EXISTS) -> str:
    """`items` selects the list's rows with `{bound}` where the cursor condition goes.

    It must end without ORDER BY/LIMIT; those are added here. `cursor` selects
    the cursor row's `id` (or None when the page has no cursor); `scope_exists`
    is a boolean expression telling whether the list's owner exists.
    """
    direction = "DESC" if page.backward else "ASC"
    if cursor is None:
        bound, cursor_join = "", "LEFT JOIN (SELECT NULL::bigint AS id) cur ON true"
    else:
        op = "<" if page.backward else ">"
        bound = f"AND {key} {op} cur.id"
        cursor_join = f"LEFT JOIN ({cursor}) cur ON true"
    return (
        f"SELECT {scope_exists}, cur.id IS NOT NULL, page.* "
        "FROM (SELECT 1) one "
        f"{cursor_join} "
        f"LEFT JOIN LATERAL ({items.format(bound=bound)} ORDER BY {key} {direction} "
        "LIMIT %(limit_plus_one)s) page ON true"
    )


def run_keyset(conn: Any, sql: str, params: dict[str, Any], page: Page) -> KeysetResult:
    params = {**params, "limit_plus_one": page.limit + 1}
    rows = conn.execute(sql, params).fetchall()
    scope_exists, cursor_found = rows[0][0], rows[0][1]
    items = [row[2:] for row in rows if row[2] is not None]
    has_more = len(items) > page.limit
    items = items[: page.limit]
    if page.backward:
        items.reverse()
    return KeysetResult(scope_exists, cursor_found, items, has_more)
