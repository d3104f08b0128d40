"""Corpora and prompt sources: local files, the data directory, downloads, and the errors."""
import hashlib

import pytest

from lagrangian_lens.data import corpora, load_prompts
from lagrangian_lens.data.prompts import wikitext_openings
from lagrangian_lens.errors import DataError


def test_default_prompts_span_many_domains():
    prompts = load_prompts("default")
    assert 25 <= len(prompts) <= 40
    assert len(set(prompts)) == len(prompts)


def test_prompt_file_one_per_line_and_empty_file_errors(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("first prompt\n\n  second prompt  \n")
    assert load_prompts(str(f)) == ["first prompt", "second prompt"]
    f.write_text("\n \n")
    with pytest.raises(DataError, match="no non-empty line"):
        load_prompts(str(f))
    f.write_text("a\nb\n")
    with pytest.raises(DataError, match="has only 2"):
        load_prompts(str(f), n=5)


def test_unknown_prompt_source_is_explained():
    with pytest.raises(DataError, match="neither 'default', a corpus"):
        load_prompts("no/such/file.txt")


def test_wikitext_article_openings_come_before_section_openings():
    text = "\n".join([" = A = ", "", " " + "a" * 250 + " ", " = = A1 = = ", " " + "s" * 250, " = B = ",
                      " short", " " + "b" * 250])
    assert [p[0] for p in wikitext_openings(text)] == ["a", "b", "s"]


def test_wikitext_from_the_data_directory_gives_article_beginnings():
    prompts = load_prompts("wikitext-2-test", n=100)
    assert prompts[0].startswith("Robert Boulter is an English film")
    assert len(prompts) == 100


def test_missing_corpus_says_where_to_put_it(monkeypatch, tmp_path):
    monkeypatch.setenv("LAGRANGIAN_LENS_DATA", str(tmp_path))
    monkeypatch.setenv("LAGRANGIAN_LENS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"tinyshakespeare.txt.*LAGRANGIAN_LENS_DATA"):
        corpora.corpus_path("tiny-shakespeare", download=False)


def test_download_is_checked_against_its_sha256(monkeypatch, tmp_path):
    source = tmp_path / "remote.txt"
    source.write_text("to be or not to be")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    monkeypatch.setenv("LAGRANGIAN_LENS_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("LAGRANGIAN_LENS_CACHE", str(tmp_path / "cache"))
    fake = corpora.Corpus("tiny-shakespeare", ("tinyshakespeare.txt",), source.as_uri(), sha256=digest)
    monkeypatch.setitem(corpora.CORPORA, "tiny-shakespeare", fake)
    path = corpora.corpus_path("tiny-shakespeare")
    assert path.read_text() == "to be or not to be" and path.parent == tmp_path / "cache" / "data"
    path.unlink()
    monkeypatch.setitem(corpora.CORPORA, "tiny-shakespeare", fake.__class__(**{**fake.__dict__, "sha256": "0" * 64}))
    with pytest.raises(DataError, match="expected 0000"):
        corpora.corpus_path("tiny-shakespeare")


@pytest.mark.parametrize("spec", ["char", "bpe:300", "smollm2-135m-instruct"])
def test_tokenizers_round_trip_through_a_run_folder(spec, tmp_path):
    from lagrangian_lens.data.tokenizers import build_tokenizer, load_tokenizer

    text = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20
    tok = build_tokenizer(spec, text)
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    ids = tok.encode("To be, or not to be")
    assert back.encode("To be, or not to be") == ids and back.decode(ids) == "To be, or not to be"
    assert len(back) == len(tok)
    if spec == "bpe:300":
        assert len(tok) <= 300 and len(ids) < len("To be, or not to be")  # merges happened


def test_tokenizer_errors_are_explained():
    from lagrangian_lens.data.tokenizers import CharTokenizer, build_tokenizer

    with pytest.raises(DataError, match=r"characters \['z'\] are not in this character vocabulary"):
        CharTokenizer.train("abc").encode("abz")
    with pytest.raises(DataError, match="bpe:<vocab size>"):
        build_tokenizer("bpe:lots", "text")
    with pytest.raises(DataError, match="too small"):
        build_tokenizer("bpe:100", "text")
