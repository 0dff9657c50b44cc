"""A regression black-box testing found that needs no server: the token memo stays bounded
and consistent under concurrent inserts.
"""

from __future__ import annotations

import threading

from app.http.tokens import TokenSigner
from tests.conftest import run_threads


# --- 4. the remembered-token memo under concurrency ---------------------------------------
def test_token_memo_stays_bounded_and_consistent_under_concurrent_inserts():
    signer = TokenSigner(("s" * 32,), remember=8)
    tokens = [signer.sign(n) for n in range(1, 200)]
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def verify_all(offset: int) -> None:
        start.wait()
        try:
            for _ in range(40):  # 8 threads x 8,000 verifications, evicting all along
                for n, token in enumerate(tokens[offset:] + tokens[:offset]):
                    assert signer.verify(token) == (n + offset) % len(tokens) + 1
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    run_threads(verify_all, [(i * 7,) for i in range(8)])
    assert errors == []
    assert signer.remembered() <= 8
