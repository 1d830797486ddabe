"""`sifirdan eval-instruct` and sifirdan.chat.evaluate: Turkish-aware F1, ended/leak detection on models biased
on purpose, batching that changes nothing, the CLI end to end, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sifirdan import cli
from sifirdan.chat import DEFAULT_TEMPLATE
from sifirdan.chat.evaluate import (
    SUMMARY_KEYS,
    _leaked,
    evaluate_answers,
    load_eval_data,
    normalize_tr,
    token_f1,
)
from sifirdan.checkpoint import save_model
from sifirdan.errors import UserError
from sifirdan.model import GPT, GPTConfig
from sifirdan.tokenizer import BPETokenizer

REPO = Path(__file__).resolve().parents[1]
TEXT = "Türkiye'nin başkenti Ankara'dır. Mustafa Kemal Samsun'a çıktı. Soru cevap metni. İstanbul ışık. " * 30
PAIRS = [
    {"instruction": "Türkiye'nin başkenti neresi?", "output": "Ankara"},
    {"instruction": "Samsun'a kim çıktı?", "output": "Mustafa Kemal"},
    {"question": "En büyük şehir?", "answer": "İstanbul"},
    {"prompt": "Bir soru", "response": "Bir cevap metni."},
    {"messages": [{"role": "system", "content": "Kısa cevap ver."}, {"role": "user", "content": "Merhaba"},
                  {"role": "assistant", "content": "Merhaba!"}, {"role": "user", "content": "Başkent?"},
                  {"role": "assistant", "content": "Ankara'dır."}]},
]


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", ["eval_instruct"])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TEXT, vocab_size=300)


def tiny_model(tok, winner: int | None = None, seed: int = 0, **kw) -> GPT:
    """A random GPT; with ``winner``, its LM head bias makes that id the argmax at every step."""
    torch.manual_seed(seed)
    # init="guide": random residual projections (the default zero_out would make every answer the same)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_embd=32, n_head=2, n_layer=2, lm_head_bias=True,
                          **{"init": "guide", **kw}))
    if winner is not None:
        with torch.no_grad():
            model.lm_head.bias.zero_()
            model.lm_head.bias[winner] = 100.0
    return model.eval()


def convs():
    from sifirdan.data.instructions import to_conversation

    return [to_conversation(r) for r in PAIRS]


def evaluate(tok, model, **kw):
    return evaluate_answers(model, tok, DEFAULT_TEMPLATE, convs(), **kw)


# ------------------------------------------------------------------------------------------------ F1 and normalisation
@pytest.mark.parametrize("text, tokens", [
    ("İstanbul", ["istanbul"]),
    ("istanbul", ["istanbul"]),
    ("IŞIK", ["ışık"]),  # dotless: plain str.lower() would give "işik"
    ("ISPARTA ve İZMİR", ["ısparta", "ve", "izmir"]),
    ("i\u0307stanbul", ["istanbul"]),  # "İ".lower() as Python writes it: i + combining dot
    ("I\u0307stanbul", ["istanbul"]),  # a decomposed İ
    ("Ankara'dır.", ["ankaradır"]),  # punctuation deleted, as SQuAD does
    ("Ankara’da, “Meclis” toplandı!", ["ankarada", "meclis", "toplandı"]),
    ("  1919 —  1923\n\tyılları ", ["1919", "1923", "yılları"]),
    ("$+<=>^`|~", []),
    ("", []),
])
def test_normalize_tr(text, tokens):
    assert normalize_tr(text) == " ".join(tokens)


def test_token_f1_pinned_cases():
    assert token_f1("İstanbul", "istanbul") == 1.0
    assert token_f1("IŞIK", "ışık") == 1.0
    assert token_f1("IŞIK", "işik") == 0.0  # ı and i are different letters in Turkish
    assert token_f1("Ankara.", "ankara") == 1.0
    assert token_f1("", "Ankara") == 0.0  # empty answer
    assert token_f1("Ankara", "") == 0.0
    assert token_f1("", "") == 1.0  # both empty
    assert token_f1("...", "!") == 1.0  # both empty after normalisation
    assert token_f1("Mustafa Kemal Paşa", "Mustafa Kemal") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1("ankara ankara", "ankara") == pytest.approx(2 * 0.5 * 1 / 1.5)  # a bag, not a set
    assert token_f1("bir iki", "üç dört") == 0.0


def test_leak_helper_sees_ids_and_literal_tags(tok):
    specials = frozenset(tok.special_tokens.values())
    texts = tuple(tok.special_tokens)
    ordinary = tok.encode("Ankara <PAD> var")  # typed text: ordinary ids spelling "<PAD>"
    assert not any(i in specials for i in ordinary)
    assert _leaked(ordinary, tok.decode(ordinary), specials, texts)
    assert _leaked([tok.special_tokens["<INST>"]], "", specials, texts)
    assert not _leaked(tok.encode("Ankara"), "Ankara", specials, texts)


# ------------------------------------------------------------------------------------------------ biased models
def test_resp_close_wins_every_answer_ends(tok):
    model = tiny_model(tok, tok.special_tokens["</RESP>"]).train()
    summary, records = evaluate(tok, model, max_new_tokens=8)
    assert model.training  # a trainer calling this mid-run gets its model back as it was
    assert summary == {"n": 5, "ended_rate": 1.0, "leak_rate": 0.0, "loop_rate": 0.0, "mean_answer_chars": 0.0, "f1": 0.0}
    assert tuple(summary) == SUMMARY_KEYS
    assert all(r["ended"] and r["answer"] == "" and r["finish"] == "</RESP>" and r["answer_tokens"] == 0 for r in records)
    assert [r["reference"] for r in records] == ["Ankara", "Mustafa Kemal", "İstanbul", "Bir cevap metni.", "Ankara'dır."]
    assert records[4]["instruction"] == "Başkent?"  # the last user turn of a multi-turn conversation


@pytest.mark.parametrize("name", ["<INST>", "</INST>", "<RESP>", "<PAD>"])
def test_template_tokens_are_never_generated(tok, name):
    """A model whose most likely token is a template token that does not end the answer never writes it:
    generation suppresses it (ChatTemplate.suppressed_ids), so nothing leaks, and the answer takes the next
    most likely token instead (the bias makes every other token tie: the lowest id wins the argmax)."""
    summary, records = evaluate(tok, tiny_model(tok, tok.special_tokens[name]), max_new_tokens=6)
    assert summary["leak_rate"] == 0.0
    specials = set(tok.special_tokens.values()) - set(DEFAULT_TEMPLATE.stop_ids(tok))
    assert DEFAULT_TEMPLATE.suppressed_ids(tok) == tuple(sorted(specials))
    assert all(not r["leaked"] and name not in r["answer"] and r["answer_tokens"] > 0 for r in records)


def test_endoftext_stops_but_is_not_a_proper_end(tok):
    summary, records = evaluate(tok, tiny_model(tok, tok.eot_id), max_new_tokens=5)
    assert summary["ended_rate"] == 0.0 and summary["leak_rate"] == 0.0  # a stop id, not kept in the answer
    assert all(r["finish"] == "<|endoftext|>" and r["answer"] == "" for r in records)


def test_ordinary_token_wins_no_end_no_leak(tok):
    ids = tok.encode(" ı")
    assert len(ids) == 1  # one merged token: the answer is " ı" four times
    conv = [{"role": "user", "content": "Harf?"}, {"role": "assistant", "content": "ı"}]
    summary, records = evaluate_answers(tiny_model(tok, ids[0]), tok, DEFAULT_TEMPLATE, convs() + [conv], max_new_tokens=4)
    assert summary["ended_rate"] == 0.0 and summary["leak_rate"] == 0.0
    assert all(r["answer"] == " ı" * 4 and not r["ended"] and r["finish"] == "length" for r in records)
    assert summary["mean_answer_chars"] == len(" ı") * 4
    assert [r["f1"] for r in records] == [0.0] * 5 + [pytest.approx(2 * 0.25 / 1.25)]  # 4 x ı against one ı
    assert summary["f1"] == pytest.approx(0.4 / 6)


def test_batched_answers_equal_one_at_a_time(tok):
    # untied, random: every prompt gets a different answer; the </RESP> bias makes some end and some not
    # the guide's block, whose random logits this test's </RESP> bias was tuned on (the default block's batching is
    # held to one-at-a-time in tests/test_model_variants.py)
    from sifirdan.model.config import GUIDE_BLOCK

    model = tiny_model(tok, seed=3, init="pytorch", tie_weights=False, bias=True, **GUIDE_BLOCK)
    with torch.no_grad():
        model.lm_head.bias[tok.special_tokens["</RESP>"]] += 0.5
    many = convs() * 2
    many += [[{"role": "user", "content": f"Soru {k}: " + "Ankara " * k}, {"role": "assistant", "content": "cevap"}]
             for k in range(1, 9)]
    one = evaluate_answers(model, tok, DEFAULT_TEMPLATE, many, max_new_tokens=12, batch_size=1)
    for bs in (3, 32):
        assert evaluate_answers(model, tok, DEFAULT_TEMPLATE, many, max_new_tokens=12, batch_size=bs) == one
    summary, records = one
    assert summary["n"] == len(many) and 0 < summary["ended_rate"] < 1  # both kinds are in the comparison
    assert len({r["answer"] for r in records}) > 3 and len({r["answer_tokens"] for r in records}) > 3


def test_library_rejects_bad_arguments(tok):
    model = tiny_model(tok)
    with pytest.raises(UserError, match="batch_size"):
        evaluate_answers(model, tok, DEFAULT_TEMPLATE, convs(), batch_size=0)
    with pytest.raises(UserError, match="max_new_tokens"):
        evaluate_answers(model, tok, DEFAULT_TEMPLATE, convs(), max_new_tokens=0)
    with pytest.raises(UserError, match="no conversations"):
        evaluate_answers(model, tok, DEFAULT_TEMPLATE, [])
    with pytest.raises(UserError, match="conversation 1 must end with the assistant"):
        evaluate_answers(model, tok, DEFAULT_TEMPLATE, [[{"role": "user", "content": "soru"}]])
    plain = BPETokenizer.train(TEXT, vocab_size=300, special_tokens=["<|endoftext|>"])
    with pytest.raises(UserError, match="sifirdan finetune"):
        evaluate_answers(tiny_model(plain), plain, DEFAULT_TEMPLATE, convs())


# ------------------------------------------------------------------------------------------------ CLI
def save(tmp_path, tok, model, name="ft", fine_tuned=True) -> Path:
    meta = {"chat_template": DEFAULT_TEMPLATE.to_dict()} if fine_tuned else None
    return save_model(tmp_path / name, model, tok, meta)


def write_pairs(path: Path, records=PAIRS) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_and_answers_end_to_end(tmp_path, tok):
    """Through `python -m sifirdan`, as a user runs it: one JSON line on stdout, the answers file."""
    model_dir = save(tmp_path, tok, tiny_model(tok, tok.special_tokens["</RESP>"]))
    data = write_pairs(tmp_path / "val.jsonl")
    answers = tmp_path / "out" / "answers.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "sifirdan", "eval-instruct", "--model", str(model_dir), "--data", str(data),
                        "--json", "--max-new-tokens", "8", "--answers", str(answers), "--device", "cpu"],
                       check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert set(summary) == set(SUMMARY_KEYS)
    assert summary["n"] == 5 and summary["ended_rate"] == 1.0 and summary["leak_rate"] == 0.0
    rows = [json.loads(x) for x in answers.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 5
    assert {"instruction", "reference", "answer", "ended", "leaked"} <= set(rows[0])
    assert rows[0]["instruction"] == "Türkiye'nin başkenti neresi?" and rows[0]["reference"] == "Ankara"
    assert all(r["ended"] is True and r["leaked"] is False for r in rows)
    assert not [f for f in answers.parent.iterdir() if f.name != "answers.jsonl"]  # no temp file left behind


def test_cli_readable_report(tmp_path, tok, capsys):
    model_dir = save(tmp_path, tok, tiny_model(tok, tok.encode(" ı")[0]))
    data = write_pairs(tmp_path / "val.jsonl")
    code, out, err = run(capsys, "eval-instruct", "--model", model_dir, "--data", data, "--max-new-tokens", "2",
                         "--batch-size", "2", "--device", "cpu", "--threads", "1")
    assert code == 0, err
    assert "5 instruction pair(s)" in out and "leaked a special token    0.0%" in out
    assert "(5 hit the 2-token limit)" in out and "(hit the limit; F1 0.00)" in out
    assert "ended with </RESP>" in out and "0.0%" in out and "token F1" in out
    assert "[1] instruction: Türkiye'nin başkenti neresi?" in out and "answer:       ı ı" in out
    assert "[4]" not in out  # a few examples, not all


def test_cli_field_map_max_samples_skip_bad_csv(tmp_path, tok, capsys):
    model_dir = save(tmp_path, tok, tiny_model(tok, tok.special_tokens["</RESP>"]))
    data = tmp_path / "val.jsonl"
    data.write_text('{"soru": "Başkent?", "cevap": "Ankara"}\n{not json\n{"soru": "Şehir?", "cevap": "İzmir"}\n'
                    '{"soru": "Başkent?", "cevap": "Ankara"}\n{"soru": "Kim?", "cevap": "O"}\n', encoding="utf-8")
    args = ["eval-instruct", "--model", model_dir, "--data", data, "--json", "--max-new-tokens", "3",
            "--field-map", "soru=question,cevap=answer"]
    code, out, err = run(capsys, *args)
    assert code == 2 and "val.jsonl line 2" in err and "--skip-bad" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, *args, "--skip-bad")
    assert code == 0 and json.loads(out)["n"] == 3  # one bad line skipped, one duplicate dropped
    assert "skipped 1 bad record" in err and "dropped 1 duplicate" in err
    code, out, err = run(capsys, *args, "--skip-bad", "--max-samples", "2")
    assert code == 0 and json.loads(out)["n"] == 2
    csv = tmp_path / "val.csv"
    csv.write_text("question,answer\nBaşkent?,Ankara\n\"Çok, satırlı\nsoru\",cevap\n", encoding="utf-8")
    code, out, err = run(capsys, "eval-instruct", "--model", model_dir, "--data", csv, "--json", "--max-new-tokens", "2")
    assert code == 0 and json.loads(out)["n"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be from 1"),
    (["--max-new-tokens", "lots"], "--max-new-tokens must be an integer"),
    (["--batch-size", "0"], "--batch-size must be from 1"),
    (["--max-samples", "-1"], "--max-samples must be >= 1"),
    (["--field-map", "soru"], "--field-map entry 'soru' must look like old=new"),
])
def test_cli_bad_flags(tmp_path, tok, capsys, extra, message):
    model_dir = save(tmp_path, tok, tiny_model(tok))
    data = write_pairs(tmp_path / "val.jsonl")
    code, _, err = run(capsys, "eval-instruct", "--model", model_dir, "--data", data, *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, message", [
    (["--threads", "-1"], "--threads: must be an integer from 0 (automatic)"),
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_cli_bad_flags_argparse_checks(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        run(capsys, "eval-instruct", "--model", tmp_path, "--data", tmp_path / "val.jsonl", *extra)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_bad_inputs(tmp_path, tok, capsys):
    ft = save(tmp_path, tok, tiny_model(tok))
    plain = save(tmp_path, tok, tiny_model(tok), name="pretrained", fine_tuned=False)
    data = write_pairs(tmp_path / "val.jsonl")

    def error(*argv):
        code, out, err = run(capsys, "eval-instruct", *argv)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (code, out, err)
        return err

    err = error("--model", plain, "--data", data)
    assert "not a fine-tuned model" in err and "sifirdan finetune --model" in err
    assert "does not exist" in error("--model", tmp_path / "nope", "--data", data)
    assert "does not exist" in error("--model", ft, "--data", tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    assert "holds no instruction pairs" in error("--model", ft, "--data", empty)
    bad = write_pairs(tmp_path / "bad.jsonl", [{"instruction": "a", "output": "b"}, {"soru": "x", "cevap": "y"}])
    err = error("--model", ft, "--data", bad)
    assert "bad.jsonl line 2" in err and "--field-map" in err
    all_bad = tmp_path / "allbad.jsonl"
    all_bad.write_text('{"soru": "x"}\n[1]\n', encoding="utf-8")
    err = error("--model", ft, "--data", all_bad, "--skip-bad")
    assert "holds no instruction pairs" in err and "2 bad record(s) skipped" in err
    shape = write_pairs(tmp_path / "shape.jsonl", [{"messages": [{"role": "assistant", "content": "x"},
                                                                 {"role": "assistant", "content": "y"}]}])
    err = error("--model", ft, "--data", shape)
    assert "shape.jsonl line 1" in err and "user and assistant turns" in err
    err = error("--model", ft, "--data", data, "--answers", tmp_path)
    assert "is a folder" in err


def test_load_eval_data_keeps_order_and_locations(tmp_path, tok):
    data = write_pairs(tmp_path / "val.jsonl")
    loaded = load_eval_data(data, DEFAULT_TEMPLATE, tok, max_samples=3)
    assert [c[-1]["content"] for c in loaded.conversations] == ["Ankara", "Mustafa Kemal", "İstanbul"]
    assert loaded.where == ["val.jsonl line 1", "val.jsonl line 2", "val.jsonl line 3"]


def test_answers_line_and_report_survive_a_lone_surrogate():
    from sifirdan.chat.evaluate import answer_line as _answer_line
    from sifirdan.cli.display import one_line as _short

    rec = {"instruction": "Şehir?", "reference": "İzmir", "answer": "a\ud800b\x1b", "ended": False, "leaked": False,
           "f1": 0.0, "finish": "length", "answer_tokens": 3}
    line = _answer_line(rec)
    line.encode("utf-8")  # storable
    assert json.loads(line) == rec
    assert "Şehir" in _answer_line(dict(rec, answer="ok"))  # no escapes when none are needed
    assert _short("a\ud800\nb\x1b") == "a\\ud800\\nb\\x1b"


def test_cli_default_decoding_is_greedy_with_chats_ngram_ban(tmp_path, tok, capsys):
    """eval-instruct answers as chat does by default against loops: never the same 3 tokens twice in an answer;
    --no-repeat-ngram 0 is plain greedy (a model that always wants " ı" says it 4 times)."""
    from sifirdan.chat.session import DEFAULT_NO_REPEAT_NGRAM

    assert DEFAULT_NO_REPEAT_NGRAM == 3
    ids = tok.encode(" ı")
    model_dir = save(tmp_path, tok, tiny_model(tok, ids[0]))
    data = write_pairs(tmp_path / "val.jsonl")
    answers = {}
    for n in ("default", "0"):
        path = tmp_path / f"answers-{n}.jsonl"
        flags = [] if n == "default" else ["--no-repeat-ngram", n]
        code, _, err = run(capsys, "eval-instruct", "--model", model_dir, "--data", data, "--max-new-tokens", 4,
                           "--answers", path, "--device", "cpu", *flags)
        assert code == 0, err
        answers[n] = [json.loads(x)["answer"] for x in path.read_text(encoding="utf-8").splitlines()]
    assert answers["0"] == [" ı" * 4] * 5
    for a in answers["default"]:
        assert a.startswith(" ı" * 3) and not a.startswith(" ı" * 4)  # a 4th " ı" would repeat the 3-gram ı ı ı


def test_cli_length_decay_ends_answers_that_would_run_on(tmp_path, tok, capsys):
    """A model that always wants " ı" never ends on its own; `--length-decay 0,10` pushes </RESP> up until it
    wins within a few tokens, so every answer ends with it; the default (150,1.02) leaves 8-token answers alone, and a bad
    value is one line before the model loads."""
    ids = tok.encode(" ı")
    model_dir = save(tmp_path, tok, tiny_model(tok, ids[0]))
    data = write_pairs(tmp_path / "val.jsonl")
    got = {}
    for flags in ((), ("--length-decay", "0,10")):
        path = tmp_path / f"answers-{len(flags)}.jsonl"
        code, _, err = run(capsys, "eval-instruct", "--model", model_dir, "--data", data, "--max-new-tokens", 8,
                           "--no-repeat-ngram", 0, "--answers", path, "--device", "cpu", *flags)
        assert code == 0, err
        got[flags] = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert all(r["answer"] == " ı" * 8 and not r["ended"] for r in got[()])
    pushed = got[("--length-decay", "0,10")]
    assert all(r["ended"] and r["finish"] == "</RESP>" and 1 <= r["answer_tokens"] < 8
               and r["answer"] == " ı" * r["answer_tokens"] for r in pushed), pushed
    code, out, err = run(capsys, "eval-instruct", "--model", tmp_path / "missing", "--data", data, "--length-decay", "150")
    assert code == 2 and err.count("\n") == 1 and "--length-decay takes START,FACTOR" in err
    code, out, err = run(capsys, "eval-instruct", "--model", tmp_path / "missing", "--data", data, "--prompt-boost", "4,200")
    assert code == 2 and err.count("\n") == 1 and "prompt_boost must be (boost, follow)" in err
