"""Fine-tuning: growing a pre-trained model, rows and loss masks, the data readers, the CLI end to end."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from conftest import write_tiny_text
from sifirdan.chat import DEFAULT_TEMPLATE
from sifirdan.cli import main
from sifirdan.data.instructions import ReadStats, read_records, split_conversations, to_conversations
from sifirdan.errors import UserError
from sifirdan.model import GPT, GPTConfig, IGNORE_INDEX
from sifirdan.model.config import GUIDE_BLOCK
from sifirdan.model.resize import grow_context, grow_vocab
from sifirdan.tokenizer import BPETokenizer
from sifirdan.train.finetune_data import ExampleBatches, example_tensors, tokenize_conversations

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "Türk milleti Ankara'da Meclis'i açtı. Mustafa Kemal Samsun'a çıktı. Soru ve cevap. " * 40
QUESTIONS = ["Meclis nerede açıldı?", "Samsun'a kim çıktı?", "Türk milleti ne yaptı?", "Ordu nereye gitti?",
             "Halk ne istedi?", "Vatan nedir?", "İstiklal ne demek?", "Cumhuriyet ne zaman ilan edildi?"]


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TEXT, vocab_size=300)


def tiny_gpt(vocab, tie=True, block=32, **kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_embd=32, n_head=2, n_layer=2, tie_weights=tie, **kw)).eval()


# ------------------------------------------------------------------------------------------------ growing the model
@pytest.mark.parametrize("tie", [True, False])
def test_grow_vocab_keeps_old_rows_and_old_logits(tie):
    model = tiny_gpt(100, tie)
    idx = torch.randint(0, 100, (2, 20))
    before = model(idx)[0].detach()
    old_emb = model.embeddings.token_embedding.weight.detach().clone()
    old_head = model.lm_head.weight.detach().clone()
    assert grow_vocab(model, 104) == 4
    emb, head = model.embeddings.token_embedding.weight, model.lm_head.weight
    assert emb.shape == (104, 32) and model.config.vocab_size == 104
    assert torch.equal(emb[:100], old_emb) and torch.equal(head[:100], old_head)
    assert torch.allclose(emb[100:], old_emb.mean(0).expand(4, -1))
    assert torch.allclose(head[100:], old_head.mean(0).expand(4, -1))
    assert (head is emb) == tie
    after = model(idx)[0].detach()
    assert torch.equal(after[..., :100], before)  # old tokens' logits on old text: unchanged, bit for bit
    assert grow_vocab(model, 104) == 0


def test_grow_context_keeps_outputs_within_the_old_block():
    # the guide's learned position table grows (the default's rotary positions have no table)
    model = tiny_gpt(100, block=16, **GUIDE_BLOCK, bias=True, lm_head_bias=True, init="guide")
    idx = torch.randint(0, 100, (2, 16))
    before = model(idx)[0].detach()
    old = model.embeddings.position_embedding.weight.detach().clone()
    assert grow_context(model, 40) == 24
    pos = model.embeddings.position_embedding.weight
    assert torch.equal(pos[:16], old) and torch.equal(pos[16:], old[-1:].expand(24, -1))
    assert torch.equal(model(idx)[0].detach(), before)
    model(torch.randint(0, 100, (1, 40)))  # the longer context now runs


# ------------------------------------------------------------------------------------------------ rows and masks
def conv(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_each_example_is_its_own_row_and_only_answers_are_scored(tok):
    convs = [conv("Meclis nerede açıldı?", "Ankara'da."), conv("Samsun'a kim çıktı?", "Mustafa Kemal çıktı.")]
    examples, counts = tokenize_conversations(convs, tok, DEFAULT_TEMPLATE, block_size=64)
    assert counts.kept == 2 and counts.dropped == counts.truncated == 0
    x, y = example_tensors(examples, pad_id=tok.special_tokens["<PAD>"])
    for r, (e, c) in enumerate(zip(examples, convs)):
        n = len(e.ids) - 1
        assert x[r, :n].tolist() == e.ids[:-1]
        assert (x[r, n:] == tok.special_tokens["<PAD>"]).all() and (y[r, n:] == IGNORE_INDEX).all()  # padding
        scored = [int(t) for t in y[r] if t != IGNORE_INDEX]
        assert tok.decode(scored) == c[1]["content"] + "</RESP>"  # the answer and its end, nothing else
    examples, _ = tokenize_conversations(convs, tok, DEFAULT_TEMPLATE, block_size=64, train_on_prompt=True)
    x, y = example_tensors(examples[:1], pad_id=0)
    assert (y != IGNORE_INDEX).sum() == len(examples[0].ids) - 1


def test_long_examples_are_dropped_or_have_their_answer_cut(tok):
    long = conv("Meclis nerede açıldı?", "Ankara'da açıldı. " * 20)
    short = conv("Vatan nedir?", "Vatan.")
    ex, counts = tokenize_conversations([long, short], tok, DEFAULT_TEMPLATE, block_size=40, mode="drop")
    assert counts.kept == 1 and counts.dropped == 1
    ex, counts = tokenize_conversations([long, short], tok, DEFAULT_TEMPLATE, block_size=40, mode="truncate")
    assert counts.kept == 2 and counts.truncated == 1
    cut = ex[0]
    prompt = DEFAULT_TEMPLATE.render_prompt(long[:1], tok)
    assert len(cut.ids) == 41 and cut.ids[: len(prompt)] == prompt  # the prompt kept whole
    assert tok.special_tokens["</RESP>"] not in cut.ids  # a cut answer is never taught as finished
    ex, counts = tokenize_conversations([conv("soru " * 60, "cevap")], tok, DEFAULT_TEMPLATE, 40, mode="truncate")
    assert counts.dropped == 1  # the prompt alone does not fit: nothing to keep


def test_example_batches_resume_exactly(tok):
    convs = [conv(q, f"cevap {i}") for i, q in enumerate(QUESTIONS)]
    examples, _ = tokenize_conversations(convs, tok, DEFAULT_TEMPLATE, 64)
    a = ExampleBatches(examples, 3, pad_id=0, seed=5)
    for _ in range(4):
        a.next_batch()
    b = ExampleBatches(examples, 3, pad_id=0, seed=5)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for _ in range(5):
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # two streams never share an example within an epoch
    s0, s1 = ExampleBatches(examples, 1, 0, 5, rank=0, world_size=2), ExampleBatches(examples, 1, 0, 5, rank=1, world_size=2)
    assert not set(s0._order) & set(s1._order) and len(s0._order) + len(s1._order) == len(examples)


def test_a_micro_batch_with_nothing_to_score_gives_a_finite_loss():
    from sifirdan.train import Trainer, TrainConfig, TrainData

    class Empty:
        def next_batch(self):
            x = torch.randint(0, 50, (2, 8))
            return x, torch.full_like(x, IGNORE_INDEX)

        def state_dict(self):
            return {}

        def load_state_dict(self, s):
            pass

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_embd=16, n_head=2, n_layer=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, TrainConfig(max_iters=5, device="cpu", threads=1, weight_decay=0.0), TrainData(train=[Empty()]), verbose=False)
    loss, _ = trainer.train_step()
    assert torch.isfinite(loss) and float(loss) == 0.0 and trainer.empty_micro_batches == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # zero gradients, no decay


# ------------------------------------------------------------------------------------------------ data files
def test_readers_formats_duplicates_and_split(tmp_path):
    rows = [{"instruction": q, "input": "", "output": f"cevap {i}"} for i, q in enumerate(QUESTIONS)]
    rows.append(dict(rows[0]))  # an exact duplicate
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    arr = tmp_path / "d.json"
    arr.write_text(json.dumps([{"prompt": r["instruction"], "response": r["output"]} for r in rows], ensure_ascii=False), encoding="utf-8")
    csvf = tmp_path / "d.csv"
    csvf.write_text("soru,cevap\n" + "".join(f"\"{r['instruction']}\",{r['output']}\n" for r in rows), encoding="utf-8")
    stats = ReadStats()
    a = to_conversations(read_records(jl), stats=stats)
    assert len(a) == len(QUESTIONS) and stats.duplicates == 1
    b = to_conversations(read_records(arr))
    c = to_conversations(read_records(csvf), field_map={"soru": "question", "cevap": "answer"})
    assert a == b == c
    alpaca = to_conversations([{"instruction": "Çevir", "input": "hello", "output": "merhaba"}])
    assert alpaca[0][0]["content"] == "Çevir\n\nhello"
    split = split_conversations(a, 0.25, seed=1)
    assert len(split.val) == 2 and len(split.train) == 6
    key = lambda cv: json.dumps(cv, sort_keys=True)  # noqa: E731
    assert not {key(x) for x in split.train} & {key(x) for x in split.val}
    assert split_conversations(a, 0.25, seed=1) == split  # seeded
    msgs = to_conversations([{"messages": [{"role": "system", "content": "kısa"}, {"role": "user", "content": "a"},
                                           {"role": "assistant", "content": "b"}]}])
    assert msgs[0][0]["role"] == "system"


@pytest.mark.parametrize("lines,match", [
    (['{"instruction": "a", "output": "b"}', '{"instruction": "a", "output"'], "line 2"),
    (['{"soru": "a", "cevap": "b"}'], "--field-map"),
    (['{"instruction": "a", "output": "  "}'], "'output' is empty"),
    (['{"messages": [{"role": "bot", "content": "x"}]}'], "unknown role 'bot'"),
    (['[1, 2]'], "expected a JSON object"),
])
def test_bad_records_are_one_line_errors(tmp_path, lines, match):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=match):
        to_conversations(read_records(f))


def test_skip_bad_skips_and_counts(tmp_path):
    f = tmp_path / "mixed.jsonl"
    f.write_text('{"instruction": "a", "output": "b"}\nnot json\n{"x": 1}\n', encoding="utf-8")
    stats = ReadStats()
    convs = to_conversations(read_records(f, skip_bad=True, stats=stats), skip_bad=True, stats=stats)
    assert len(convs) == 1 and stats.skipped_bad == 2


def test_hf_datasets_without_the_library_or_network_is_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *a, **k):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(UserError, match="pip install datasets"):
        read_records("hf:someone/some-data:train")


# ------------------------------------------------------------------------------------------------ the CLI
def write_pairs(path, n=40, seed=0, long_answers=False):
    rng = random.Random(seed)
    words = "Türk milleti Ankara Meclis egemenlik istiklal cumhuriyet ordu halk vatan".split()
    rows = []
    for i in range(n):
        q = f"Soru {i}: " + " ".join(rng.choice(words) for _ in range(5)) + "?"
        a = " ".join(rng.choice(words) for _ in range(60 if long_answers else 6)) + "."
        rows.append({"question": q, "answer": a})
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    d = tmp_path_factory.mktemp("pre")
    text = write_tiny_text(d / "t.txt")
    rc = main(["pretrain", "--data", str(text), "--out", str(d / "run"), "--preset", "nano", "--vocab-size", "300",
               "--max-iters", "4", "--eval-interval", "2", "--eval-iters", "1", "--batch-size", "4", "--block-size", "32",
               "--threads", "1", "--sample-interval", "0", "--final-eval", "--no-final-eval"])
    assert rc == 0
    return d / "run"


def ft_args(model, data, out, *extra):
    return ["finetune", "--model", str(model), "--data", str(data), "--out", str(out), "--max-iters", "6",
            "--eval-interval", "3", "--batch-size", "4", "--threads", "1", "--checkpoint-interval", "3", *extra]


def test_finetune_end_to_end_saves_the_template_and_resumes_bit_exactly(pretrained, tmp_path, capsys):
    from sifirdan.checkpoint import load_model, read_config

    data = write_pairs(tmp_path / "qa.jsonl")
    assert main(ft_args(pretrained, data, tmp_path / "full")) == 0
    meta = read_config(tmp_path / "full" / "last")
    assert meta["chat_template"] == DEFAULT_TEMPLATE.to_dict() and meta["finetune"]["examples"]["val"] == 4
    assert meta["train"]["neftune_alpha"] == 6.0  # the default recipe's embedding noise: the resume below covers it
    # the default recipe keeps no best/: the run's model is its last step (its answers score higher held out)
    assert meta["train"]["save_best"] is False and not (tmp_path / "full" / "best").exists()
    captured = capsys.readouterr()
    assert "answer @ 3" in captured.err and "(answers only)" in captured.out and "(last/)" in captured.out
    # the default recipe mixes the base's pre-training text into a quarter of each batch (1 of 4 rows here): the
    # bit-exact resume below covers both streams; the run records the text and its split
    mix = meta["finetune"]["mix"]
    assert mix["rows"] == 1 and mix["text"] == [str(pretrained.parent / "t.txt")] and mix["data"]["val_fraction"] == 0.1
    assert "mixing pre-training text into every batch: 1 of 4 rows" in captured.err
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "sample" and "prompt" in r for r in records)
    assert any(r["kind"] == "eval" and r.get("val_bits_per_byte") for r in records)
    # the same run stopped at step 3 and resumed to 6 ends with the same weights (all six steps are inside the
    # default recipe's 20 warm-up steps, so the shorter --max-iters does not change their learning rates)
    half = ft_args(pretrained, data, tmp_path / "half")
    half[half.index("--max-iters") + 1] = "3"
    assert main(half) == 0
    assert main(["finetune", "--resume", str(tmp_path / "half"), "--max-iters", "6"]) == 0
    # a resumed run keeps its own data settings without repeating them; a different one is refused
    other = ft_args(pretrained, data, tmp_path / "other", "--val-fraction", "0.25", "--save-best")
    other[other.index("--max-iters") + 1] = "3"
    assert main(other) == 0
    assert (tmp_path / "other" / "best").is_dir() and "(best/)" in capsys.readouterr().out
    assert main(["finetune", "--resume", str(tmp_path / "other"), "--max-iters", "4"]) == 0
    assert read_config(tmp_path / "other" / "last")["finetune"]["val_fraction"] == 0.25
    capsys.readouterr()
    assert main(["finetune", "--resume", str(tmp_path / "other"), "--val-fraction", "0.5"]) != 0
    assert "--val-fraction differs" in capsys.readouterr().err
    assert main(["finetune", "--resume", str(tmp_path / "other"), "--mix-rows", "0"]) != 0
    assert "--mix-rows differs from the run's (1)" in capsys.readouterr().err
    a, _ = load_model(tmp_path / "full" / "last")
    b, _ = load_model(tmp_path / "half" / "last")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_finetune_adds_missing_special_tokens(tmp_path, capsys):
    from sifirdan.checkpoint import load_model, save_model

    bare = BPETokenizer.train(TEXT, vocab_size=280, special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=bare.vocab_size, block_size=48, n_embd=32, n_head=2, n_layer=2))
    save_model(tmp_path / "base", model, bare)
    data = write_pairs(tmp_path / "qa.jsonl", n=12)
    assert main(ft_args(tmp_path / "base", data, tmp_path / "ft", "--max-iters", "2", "--eval-interval", "2")) == 0
    tuned, tok = load_model(tmp_path / "ft")
    assert all(t in tok.special_tokens for t in ("<INST>", "</INST>", "<RESP>", "</RESP>", "<PAD>"))
    assert tuned.config.vocab_size == tok.vocab_size == bare.vocab_size + 5
    # a base that records no pre-training text (saved by hand, or imported): the examples alone, with a note
    assert "records no pre-training text to mix into the batches" in capsys.readouterr().err
    from sifirdan.checkpoint import read_config

    assert read_config(tmp_path / "ft")["finetune"]["mix"] == {"rows": 0}


@pytest.mark.parametrize("case", ["too_long", "no_model_tokenizer", "empty", "no_data", "bad_line"])
def test_finetune_bad_inputs_are_one_line_and_write_nothing(pretrained, tmp_path, capsys, case):
    out = tmp_path / "out"
    data = write_pairs(tmp_path / "qa.jsonl", n=12)
    args = ft_args(pretrained, data, out)
    if case == "too_long":
        data = write_pairs(tmp_path / "long.jsonl", n=12, long_answers=True)
        args = ft_args(pretrained, data, out, "--block-size", "32")
        match = "--truncate"
    elif case == "no_model_tokenizer":
        import shutil

        broken = tmp_path / "broken"
        shutil.copytree(pretrained / "last", broken)
        (broken / "tokenizer.json").unlink()
        args = ft_args(broken, data, out)
        match = "tokenizer.json"
    elif case == "empty":
        (tmp_path / "e.jsonl").write_text("\n", encoding="utf-8")
        args = ft_args(pretrained, tmp_path / "e.jsonl", out)
        match = "no usable examples"
    elif case == "no_data":
        args = ft_args(pretrained, tmp_path / "missing.jsonl", out)
        match = "does not exist"
    else:
        (tmp_path / "b.jsonl").write_text('{"question": "a", "answer": "b"}\n{oops\n', encoding="utf-8")
        args = ft_args(pretrained, tmp_path / "b.jsonl", out)
        match = "line 2"
    capsys.readouterr()
    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and match in err[-1] and "Traceback" not in "\n".join(err)
    assert not out.exists()


def test_template_show_marks_the_trained_tokens(pretrained, tmp_path, capsys):
    data = write_pairs(tmp_path / "qa.jsonl", n=3)
    assert main(["template", "show", "--model", str(pretrained), "--data", str(data), "--n", "2", "--color", "never"]) == 0
    out = capsys.readouterr().out
    first = json.loads(data.read_text().splitlines()[0])
    assert f"<INST>{first['question']}</INST><RESP>[[{first['answer']}]][[</RESP>]]" in out
    assert out.count("--- example") == 2


# ------------------------------------------------------------------------------------------ huge records (issue 19)
def _huge(n_chars: int) -> str:
    return json.dumps({"instruction": "soru", "output": "c" * n_chars})


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv"])
def test_every_reader_caps_a_record_before_parsing_it(tmp_path, monkeypatch, kind):
    """A record over MAX_RECORD_CHARS is refused with its line number (or skipped and counted under --skip-bad),
    and never reaches json.loads: the readers find its extent with a bounded buffer first."""
    import tracemalloc

    from sifirdan.data import instructions

    ok = {"instruction": "a", "output": "b"}
    huge = 12 * instructions.MAX_RECORD_CHARS  # 12 M characters
    f = tmp_path / f"data.{kind}"
    if kind == "jsonl":
        f.write_text("\n".join([json.dumps(ok), _huge(huge), json.dumps({**ok, "output": "c"})]) + "\n", encoding="utf-8")
        where = "line 2"
    elif kind == "json":
        f.write_text("[\n" + json.dumps(ok) + ",\n" + _huge(huge) + ",\n" + json.dumps({**ok, "output": "c"}) + "]",
                     encoding="utf-8")
        where = "record 2 (line 3)"
    else:  # each field under the csv module's cap, the record over it
        half = instructions.MAX_RECORD_CHARS // 2 + 10
        f.write_text("instruction,output,input\na,b,\n" + "x" * half + "," + "y" * half + ",\nc,d,\n", encoding="utf-8")
        where = "line 3"
    parsed = []
    real = instructions.parse_json
    monkeypatch.setattr(instructions, "parse_json", lambda text, *a: parsed.append(len(text)) or real(text, *a))
    with pytest.raises(UserError, match="longer than 1,048,576 characters") as e:
        read_records(f)
    assert where in str(e.value) and "--skip-bad" in str(e.value) and "\n" not in str(e.value)
    stats = ReadStats()
    tracemalloc.start()
    try:
        records = read_records(f, skip_bad=True, stats=stats)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(records) == 2 and stats.skipped_bad == 1 and where in stats.bad_examples[0]
    assert all(n <= instructions.MAX_RECORD_CHARS for n in parsed)
    if kind != "csv":  # the CSV reader reads the whole file (its csv module caps each field)
        assert peak < 40 << 20, peak  # the 12 MB record was never held whole (it is 24+ MB as bytes and str)


def test_a_record_at_the_cap_is_read(tmp_path):
    from sifirdan.data.instructions import MAX_RECORD_CHARS

    text = _huge(MAX_RECORD_CHARS - 40)
    assert len(text) <= MAX_RECORD_CHARS
    for name, content in (("a.jsonl", text + "\r\n" + text), ("a.json", "[" + text + ", " + text + "]"),
                          ("b.json", '{"meta": {"x": "]"}, "data": [' + text + "]}")):
        f = tmp_path / name
        f.write_text(content, encoding="utf-8")
        assert len(to_conversations(read_records(f))) == 1  # (the two equal records are one after dedup)


@pytest.mark.parametrize("value", [["x"], {"a": 1}, 5, True])
def test_a_non_string_input_or_system_is_refused(tmp_path, value):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"instruction": "a", "input": value, "output": "b"}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="'input' must be a string"):
        to_conversations(read_records(f))
    f.write_text(json.dumps({"question": "a", "answer": "b", "system": value}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="'system' must be a string"):
        to_conversations(read_records(f))
    stats = ReadStats()
    assert to_conversations(read_records(f), skip_bad=True, stats=stats) == [] and stats.skipped_bad == 1


# ------------------------------------------------------------------------------------------------ NEFTune
def test_neftune_noise_is_bounded_random_and_only_in_training():
    from sifirdan.train.neftune import add_embedding_noise

    torch.manual_seed(0)
    model = tiny_gpt(64)
    idx = torch.randint(0, 64, (3, 10))
    plain = model.embeddings(idx)
    handle = add_embedding_noise(model, alpha=5.0)
    assert torch.equal(model.embeddings(idx), plain)  # eval(): untouched (generation and evaluation)
    model.train()
    a, b = model.embeddings(idx), model.embeddings(idx)
    bound = 5.0 / (10 * 32) ** 0.5  # alpha / sqrt(T * n_embd)
    assert not torch.equal(a, b) and not torch.equal(a, plain)  # fresh noise each forward
    assert (a - plain).abs().max() <= bound + 1e-6 and (a - plain).abs().max() > 0.9 * bound  # uniform on [-m, m]
    assert abs((a - plain).pow(2).mean().item() - bound**2 / 3) < 0.2 * bound**2 / 3  # the variance of U(-m, m)
    handle.remove()
    assert torch.equal(model.embeddings(idx), plain)


def test_neftune_alpha_is_checked():
    from sifirdan.train import TrainConfig

    for bad in (-1.0, float("nan"), float("inf"), 1001.0):
        with pytest.raises(UserError, match="neftune_alpha"):
            TrainConfig(neftune_alpha=bad)
    assert TrainConfig().neftune_alpha == 0.0  # pre-training: off
    # a run saved before the field resumes as it was trained: without noise
    assert TrainConfig.upgrade_saved({"optimizer": "adamw"})["neftune_alpha"] == 0.0
    assert TrainConfig.upgrade_saved({"optimizer": "adamw"})["save_best"] is True  # older runs all kept best/


def test_neftune_flag_reaches_the_trainer(pretrained, tmp_path, capsys):
    from sifirdan.checkpoint import read_config

    data = write_pairs(tmp_path / "qa.jsonl")
    assert main(ft_args(pretrained, data, tmp_path / "off", "--neftune-alpha", "0")) == 0
    assert read_config(tmp_path / "off" / "last")["train"]["neftune_alpha"] == 0.0
    capsys.readouterr()
    assert main(ft_args(pretrained, data, tmp_path / "bad", "--neftune-alpha", "-2")) != 0
    err = capsys.readouterr().err
    assert "neftune_alpha must be a number from 0" in err and "Traceback" not in err and not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------ mixed-in text (issue 21)
def test_mixed_batches_rows_and_resume(tok):
    """batch_size - R example rows as ExampleBatches gives them, then R windows of the text cut to the examples'
    width with every target scored; a copy restored from state_dict draws the same batches."""
    from sifirdan.data.sampler import BatchSampler
    from sifirdan.train.finetune_data import MixedBatches

    records = [{"instruction": f"Soru {i}: Meclis nerede?", "output": "Ankara'da. " * (1 + i % 4)} for i in range(12)]
    examples, _ = tokenize_conversations(to_conversations(records), tok, DEFAULT_TEMPLATE, 64)
    text = np.arange(5000, dtype=np.int64) % tok.vocab_size

    def make():
        return MixedBatches(ExampleBatches(examples, 3, 0, seed=5), BatchSampler(text, 2, 64, seed=5))

    mixed, plain = make(), ExampleBatches(examples, 3, 0, seed=5)
    for _ in range(4):
        x, y = mixed.next_batch()
        px, py = plain.next_batch()
        assert x.shape == (5, px.shape[1]) and torch.equal(x[:3], px) and torch.equal(y[:3], py)
        assert (y[3:] != IGNORE_INDEX).all() and torch.equal(y[3:, :-1], x[3:, 1:])  # plain text, every target
        assert torch.equal((x[3:, 1:] - x[3:, :-1]) % tok.vocab_size, torch.ones_like(x[3:, 1:]))  # windows of it
    state = json.loads(json.dumps(mixed.state_dict()))
    again = make()
    again.load_state_dict(state)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(mixed.next_batch(), again.next_batch()))


def test_mix_flags_are_checked(pretrained, tmp_path, capsys):
    data = write_pairs(tmp_path / "qa.jsonl")
    for extra, message in [(("--mix-rows", "4"), "--mix-rows 4 leaves no room for examples in a batch of 4"),
                           (("--mix-rows", "-1"), "--mix-rows must be an integer >= 0"),
                           (("--recipe", "guide", "--mix-rows", "2"), "--mix-rows works with the default recipe"),
                           (("--mix-text", str(tmp_path / "nope.txt")), "nope.txt")]:
        assert main(ft_args(pretrained, data, tmp_path / "x", *extra)) != 0
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
        assert not (tmp_path / "x").exists()
    # --mix-rows 0: the examples alone, recorded so
    assert main(ft_args(pretrained, data, tmp_path / "off", "--mix-rows", "0", "--max-iters", "1")) == 0
    from sifirdan.checkpoint import read_config

    assert read_config(tmp_path / "off" / "last")["finetune"]["mix"] == {"rows": 0}
    assert "mixing" not in capsys.readouterr().err
