"""Bearer tokens: signed ids, verified without the database, valid ones remembered."""

from __future__ import annotations

from app.http.tokens import TokenSigner


def test_valid_tokens_verify_and_altered_ones_do_not_even_after_the_original():
    signer = TokenSigner(("first-secret",))
    token = signer.sign(0x1234)
    assert signer.verify(token) == 0x1234
    assert signer.verify(token) == 0x1234  # now from memory
    public_id, _, mac = token.partition(".")
    altered = {public_id + "." + mac[:-1] + ("A" if mac[-1] != "A" else "B"),
               public_id + "." + mac[:-1], public_id[:-1] + "0." + mac, token + "x", ""}
    for wrong in altered - {token}:
        assert signer.verify(wrong) is None, wrong


def test_rotation_every_secret_verifies_only_the_first_signs():
    old = TokenSigner(("old-secret",)).sign(7)
    rotated = TokenSigner(("new-secret", "old-secret"))
    assert rotated.verify(old) == 7
    assert rotated.sign(7) != old
    assert TokenSigner(("new-secret",)).verify(old) is None


def test_memory_is_bounded_and_forgets_the_oldest_without_losing_validity():
    signer = TokenSigner(("a-secret",), remember=3)
    tokens = [signer.sign(n) for n in range(1, 6)]
    for n, token in enumerate(tokens, start=1):
        assert signer.verify(token) == n
    assert len(signer._valid) == 3
    assert tokens[0] not in signer._valid
    assert signer.verify(tokens[0]) == 1  # forgotten, still valid: verified again
    for n in range(100):
        assert signer.verify(f"usr_{n:016x}.forged") is None
    assert len(signer._valid) == 3  # invalid guesses are never kept
