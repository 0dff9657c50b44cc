"""Seed data written directly in SQL with SayPI's own schema, and the tokens to use it.

- users: random bigint ids (as SayPI makes them), tokens signed with
  app.http.tokens.TokenSigner and the secret SayPI is started with;
- conversations: spread round-robin over the users, `lines` lines each;
  line texts come from a fixed set of phrases, animals from a few bundled
  cows and moods from the built-ins, so the distinct render inputs stay
  below RENDER_CACHE_SIZE (the count is reported);
- the first half of the users are readers, the second half writers: writes
  never change what the read scenarios read;
- one reader owns an extra conversation at the line cap;
- `grow_conversations` adds line-less conversations to the readers until the
  table holds the large case's total (generate_series, one statement).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field

import psycopg

from app.domain import ids
from app.http.tokens import TokenSigner

ANIMALS = ("default", "cat", "turtle")
MOODS = ("default", "borg", "dead", "greedy", "stoned", "tired", "wired", "young")
WORDS = ("moo", "grass", "is", "greener", "on", "the", "other", "side", "of", "fence",
         "cows", "never", "sleep", "during", "a", "benchmark", "latency", "matters", "more",
         "than", "you", "think", "hello", "world", "keyset", "pagination", "keeps", "every",
         "page", "cheap", "supercalifragilisticexpialidocious-and-then-some")
POSITIVE_63 = 9223372036854775807


def phrases(count: int) -> list[str]:
    """Deterministic line texts of 1 to 30 words (some wrap over several balloon lines)."""
    out = []
    for i in range(count):
        n = 1 + (i * 7) % 30
        out.append(" ".join(WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(n)))
    return out


@dataclass
class Seeded:
    secret: str
    readers: list[tuple[int, str]]  # (user id, token)
    writers: list[tuple[int, str]]
    read_conversations: list[tuple[str, str]]  # (token, public conversation id)
    write_conversations: list[tuple[str, str]]
    list_cursors: list[tuple[str, str]]  # (token, a public id among that user's first ones)
    cap_conversation: tuple[str, str]
    texts: list[str]
    stats: dict = field(default_factory=dict)


def seed(dsn: str, users: int, conversations: int, lines: int, cap_lines: int,
         phrase_count: int, secret: str) -> Seeded:
    started = time.monotonic()
    signer = TokenSigner((secret,))
    rng = random.Random(20240601)
    user_ids = []
    seen = set()
    while len(user_ids) < users:
        number = rng.getrandbits(63) or 1
        if number not in seen:
            seen.add(number)
            user_ids.append(number)
    texts = phrases(phrase_count)
    per_user = conversations // users
    total = per_user * users
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            with conn.cursor().copy("COPY users (id, name, email, conversation_count) "
                                    "FROM STDIN") as copy:
                for i, uid in enumerate(user_ids):
                    copy.write_row((uid, f"bench user {i}", f"bench{i}@example.com", per_user))
            conn.execute(
                "INSERT INTO conversations (rid, user_id, heading, line_count, created_at) "
                "SELECT greatest(1, hashtextextended('cv:' || g, 7) & %(mask)s), "
                "       (%(users)s::bigint[])[1 + g %% %(n_users)s], "
                "       'Bench conversation ' || g, %(lines)s, "
                "       now() - make_interval(secs => %(total)s - g) "
                "FROM generate_series(0, %(total)s - 1) g ORDER BY g",
                {"mask": POSITIVE_63, "users": user_ids, "n_users": users, "lines": lines,
                 "total": total})
            _insert_lines(conn, "TRUE", lines, texts)
            # One reader's extra conversation at the line cap.
            cap_owner = user_ids[0]
            cap_rid = conn.execute(
                "INSERT INTO conversations (rid, user_id, heading, line_count) "
                "VALUES (greatest(1, hashtextextended('cv:cap', 7) & %s), %s, "
                "'At the line cap', %s) RETURNING rid",
                (POSITIVE_63, cap_owner, cap_lines)).fetchone()[0]
            conn.execute("UPDATE users SET conversation_count = conversation_count + 1 "
                         "WHERE id = %s", (cap_owner,))
            _insert_lines(conn, f"c.rid = {int(cap_rid)}", cap_lines, texts)
        conn.execute("VACUUM ANALYZE")
        try:
            conn.execute("CHECKPOINT")
        except psycopg.Error:
            pass
        rows = conn.execute("SELECT user_id, rid FROM conversations WHERE rid <> %s ORDER BY id",
                            (cap_rid,)).fetchall()
        distinct = conn.execute(
            "SELECT count(DISTINCT (l.animal, m.eyes, m.tongue, l.think, l.text)) "
            "FROM lines l JOIN moods m ON m.id = l.mood_id").fetchone()[0]
    by_user: dict[int, list[int]] = {}
    for uid, rid in rows:
        by_user.setdefault(uid, []).append(rid)
    half = users // 2
    readers = [(uid, signer.sign(uid)) for uid in user_ids[:half]]
    writers = [(uid, signer.sign(uid)) for uid in user_ids[half:]]
    read_convs = [(tok, ids.encode(ids.CONVERSATION, rid))
                  for uid, tok in readers for rid in by_user[uid]]
    write_convs = [(tok, ids.encode(ids.CONVERSATION, rid))
                   for uid, tok in writers for rid in by_user[uid]]
    # Cursors among each reader's oldest conversations: valid, and followed by a full
    # page, both at the base size and after grow_conversations.
    cursors = [(tok, ids.encode(ids.CONVERSATION, rid))
               for uid, tok in readers for rid in by_user[uid][: max(1, per_user - 11)]]
    rng.shuffle(read_convs)
    rng.shuffle(write_convs)
    rng.shuffle(cursors)
    return Seeded(
        secret=secret, readers=readers, writers=writers, read_conversations=read_convs,
        write_conversations=write_convs, list_cursors=cursors,
        cap_conversation=(readers[0][1], ids.encode(ids.CONVERSATION, cap_rid)), texts=texts,
        stats={"users": users, "conversations": total + 1, "lines_per_conversation": lines,
               "lines": total * lines + cap_lines, "cap_lines": cap_lines,
               "distinct_render_inputs": distinct, "phrases": len(texts),
               "seconds": round(time.monotonic() - started, 1)})


def _insert_lines(conn, where: str, lines: int, texts: list[str]) -> None:
    conn.execute(
        "INSERT INTO lines (rid, conversation_id, mood_id, animal, think, text, created_at) "
        "SELECT greatest(1, hashtextextended('ln:' || c.rid || ':' || i, 7) & %(mask)s), "
        "       c.id, 1 + (c.id + i) %% 8, "
        "       (%(animals)s::text[])[1 + (c.id * 3 + i) %% %(n_animals)s], "
        "       (c.id + i) %% 3 = 0, "
        "       (%(texts)s::text[])[1 + (c.id * 7 + i * 11) %% %(n_texts)s], "
        "       c.created_at + make_interval(secs => i) "
        f"FROM conversations c CROSS JOIN generate_series(1, %(lines)s) i WHERE {where} "
        "ORDER BY c.id, i",
        {"mask": POSITIVE_63, "animals": list(ANIMALS), "n_animals": len(ANIMALS),
         "texts": texts, "n_texts": len(texts), "lines": lines})


def grow_conversations(dsn: str, total: int, readers: list[tuple[int, str]]) -> dict:
    """Add line-less conversations to the readers until the table holds `total` rows."""
    started = time.monotonic()
    reader_ids = [uid for uid, _ in readers]
    with psycopg.connect(dsn, autocommit=True) as conn:
        have = conn.execute("SELECT count(*) FROM conversations").fetchone()[0]
        extra = max(0, total - have)
        if extra:
            conn.execute(
                "INSERT INTO conversations (rid, user_id, heading, created_at) "
                "SELECT greatest(1, hashtextextended('cv:big:' || g, 7) & %(mask)s), "
                "       (%(users)s::bigint[])[1 + g %% %(n_users)s], "
                "       'Grown conversation ' || g, now() "
                "FROM generate_series(0, %(extra)s - 1) g ORDER BY g",
                {"mask": POSITIVE_63, "users": reader_ids, "n_users": len(reader_ids),
                 "extra": extra})
        # Quiet the database before measuring: statistics and visibility current (no
        # autovacuum during the runs, also for the lines the write scenarios added),
        # and the inserted pages flushed (no checkpoint during the runs).
        conn.execute("VACUUM ANALYZE")
        try:
            conn.execute("CHECKPOINT")
        except psycopg.Error:
            pass  # not allowed for this role: the checkpointer may run during the runs
        rows = conn.execute("SELECT count(*) FROM conversations").fetchone()[0]
        per_reader = conn.execute("SELECT count(*) FROM conversations WHERE user_id = %s",
                                  (reader_ids[0],)).fetchone()[0]
    return {"conversations": rows, "added": extra, "per_reader_user": per_reader,
            "seconds": round(time.monotonic() - started, 1)}


def line_params(i: int, texts: list[str]) -> dict:
    """The parameters of the i-th line the benchmark creates."""
    return {"animal": ANIMALS[i % len(ANIMALS)], "mood": MOODS[(i * 3) % len(MOODS)],
            "think": i % 4 == 0, "text": texts[(i * 13) % len(texts)]}


def line_body(i: int, texts: list[str]) -> str:
    """The JSON body of the i-th POST /conversations/{id}/lines the benchmark sends."""
    return json.dumps(line_params(i, texts), separators=(",", ":"))


def batch_body(i: int, texts: list[str], size: int) -> str:
    """The JSON body of the i-th POST /conversations/{id}/lines/batch: `size` lines."""
    return json.dumps({"lines": [line_params(i * size + j, texts) for j in range(size)]},
                      separators=(",", ":"))
