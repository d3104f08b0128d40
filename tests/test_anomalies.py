"""The anomaly builders: seeded and deterministic, of the promised lengths, a splice offset at the boundary, and
shuffled tokens a permutation of the paragraph's."""
from collections import Counter

import pytest

from lagrangian_lens.data.anomalies import (
    PHRASE_WORDS,
    PRINTABLE,
    SENTENCE_END,
    first_tokens_text,
    other_domain,
    random_characters,
    repeated_phrase,
    shuffled_tokens,
    splice,
    token_at,
)
from lagrangian_lens.errors import DataError

A = ("The castle was built in the twelfth century by the counts of the region , who held it until the war . "
     "Its walls were raised twice , first in stone and later in brick , and the keep was rebuilt after a fire "
     "destroyed the eastern tower in the spring of that year .")
B = ("Rainfall in the valley varies widely from year to year . The wettest months are in late autumn , when storms "
     "from the west bring most of the annual total , and the driest are in midsummer , when the river runs low .")


def test_shuffled_tokens_are_a_seeded_permutation_of_the_paragraphs_tokens(tokenizer):
    ids = tokenizer(A, add_special_tokens=True)["input_ids"]
    first = shuffled_tokens(A, tokenizer, seed=(0, 1))
    assert first == shuffled_tokens(A, tokenizer, seed=(0, 1))  # deterministic under a seed
    assert Counter(first) == Counter(ids) and len(first) == len(ids)
    assert first != ids  # 50+ tokens: the identity permutation has probability ~1/50!
    assert shuffled_tokens(A, tokenizer, seed=(0, 2)) != first
    cut = shuffled_tokens(A, tokenizer, seed=3, max_tokens=10)
    assert Counter(cut) == Counter(ids[:10])  # the cut comes before the shuffle


def test_special_tokens_keep_their_places(tokenizer):
    class WithBos:
        all_special_ids = [1]

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [1, *tokenizer(text)["input_ids"]]}

    out = shuffled_tokens(A, WithBos(), seed=0)
    assert out[0] == 1 and Counter(out[1:]) == Counter(tokenizer(A)["input_ids"])


def test_random_characters_are_printable_of_the_asked_length():
    text = random_characters(500, seed=4)
    assert len(text) == 500 and set(text) <= set(PRINTABLE)
    assert text == random_characters(500, seed=4) and text != random_characters(500, seed=5)
    assert len(set(text)) > 60  # 500 uniform draws over 95 characters
    with pytest.raises(DataError, match="n_chars >= 1"):
        random_characters(0, seed=0)


def test_repeated_phrase_loops_consecutive_words_to_the_paragraphs_length():
    out = repeated_phrase(A, seed=7)
    assert out == repeated_phrase(A, seed=7) and len(out) == len(A)
    words = A.split()
    # Some run of 3-6 consecutive words of A, looped with single spaces, is exactly the output.
    loops = {(" ".join(words[i:i + k]) + " ") * 100 for k in range(PHRASE_WORDS[0], PHRASE_WORDS[1] + 1)
             for i in range(len(words) - k + 1)}
    assert out in {loop[:len(A)] for loop in loops}
    assert {repeated_phrase(A, seed=s) for s in range(10)} != {out}  # the phrase depends on the seed


def test_splice_offset_points_at_the_boundary():
    for seed in range(20):
        text, offset = splice(A, B, seed=seed)
        assert (text, offset) == splice(A, B, seed=seed)
        head, tail = text[:offset - 1], text[offset:]
        assert text[offset - 1] == " " and A.startswith(head) and B.endswith(tail)
        assert head[-1] not in SENTENCE_END and head.rstrip()[-1] not in SENTENCE_END  # cut mid-sentence
        assert 0.35 * len(A) <= len(head) <= 0.65 * len(A)
        assert 0.25 * len(B) < len(B) - len(tail) <= 0.5 * len(B) + 1  # pasted from b's middle
        assert B[len(B) - len(tail) - 1] == " "  # from a word start
    with pytest.raises(DataError, match="no mid-sentence word boundary"):
        splice("short", B, seed=0)


def test_token_at_finds_the_first_token_of_the_pasted_text(tokenizer):
    text, offset = splice(A, B, seed=1)
    k = token_at(tokenizer, text, offset)
    ids = tokenizer(text)["input_ids"]
    # The tokens before k spell the head exactly; token k starts the tail (with its leading space).
    assert tokenizer.decode(ids[:k]) == text[:offset - 1]
    assert tokenizer.decode(ids[k:]).lstrip() == text[offset:]
    assert token_at(tokenizer, "Hello world", 0) == 0
    with pytest.raises(DataError, match="past the end"):
        token_at(tokenizer, "Hello world", 11)


def test_first_tokens_text_covers_exactly_the_first_tokens(tokenizer):
    window = first_tokens_text(tokenizer, A, 12)
    assert A.startswith(window)
    assert tokenizer(window)["input_ids"] == tokenizer(A)["input_ids"][:12]
    assert first_tokens_text(tokenizer, "Hi", 50) == "Hi"


def test_other_domain_passages_are_seeded_and_filtered():
    long_ones = other_domain("tiny-shakespeare", 5, seed=0, accept=lambda p: len(p) >= 600)
    assert long_ones == other_domain("tiny-shakespeare", 5, seed=0, accept=lambda p: len(p) >= 600)
    assert len(long_ones) == 5 and all(len(p) >= 600 for p in long_ones) and len(set(long_ones)) == 5
    assert other_domain("tiny-shakespeare", 5, seed=1) != other_domain("tiny-shakespeare", 5, seed=0)
    stories = other_domain("tinystories", 3, seed=0)
    assert len(stories) == 3 and all("<|endoftext|>" not in s for s in stories)
    with pytest.raises(DataError, match="holds only 0 passages"):
        other_domain("tinystories", 2, seed=0, accept=lambda p: False)
    with pytest.raises(DataError, match="unknown corpus"):
        other_domain("wikitext-2-test", 2, seed=0)
