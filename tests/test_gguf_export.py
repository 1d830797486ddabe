"""`sifirdan export gguf`: llama.cpp itself (llama-cpp-python) runs the file and computes what sifirdan computes.

On held-out text (not the training text): llama.cpp's f32 logits equal ours to 1e-3 once our model computes GELU
as llama.cpp's gpt2 graph does (the tanh approximation from a float16 table, ``gguf.ggml_gelu``), and the f32,
f16 and q8_0 distances from our own exact-GELU logits are printed; 64 greedy tokens are equal; llama.cpp's
tokenizer gives our ids (a tokenizer trained with llama.cpp's pre-tokenizer: always; our Turkish one: exactly
where ``as_llama_cpp_splits`` says, which is what the export's agreement figure measures); llama-cpp-python's
own chat formatting from the file's template gives the ids of ``render_prompt`` (what `sifirdan chat` sends).
Tests that need llama-cpp-python skip where it is not installed (.ci/run installs it); the rest need only gguf.
"""

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from sifirdan import checkpoint as ckpt
from sifirdan.chat.template import DEFAULT_TEMPLATE
from sifirdan.errors import UserError
from sifirdan.generate import Engine, GenerationConfig
from sifirdan.interop.jinja_template import jinja_chat_template
from sifirdan.tokenizer import BPETokenizer
from sifirdan.tokenizer.pattern import LLAMACPP_TURKISH_PATTERN, TURKISH_PATTERN

from test_hf_interop import CONVERSATIONS, HELD_OUT, TRAIN, _text, _trained

gguf = pytest.importorskip("gguf", reason="gguf is not installed (pip install -e '.[test]' installs the pinned version)")
from sifirdan.interop import gguf as gg  # noqa: E402  (needs the gguf package)

try:
    import llama_cpp
except ImportError:  # pragma: no cover - .ci/run installs it
    llama_cpp = None

needs_llama = pytest.mark.skipif(
    llama_cpp is None, reason="llama-cpp-python is not installed (.ci/run: pip install llama-cpp-python==0.3.36; it "
    "builds llama.cpp from source, 10-25 minutes)")

MEASURE = [line for line in HELD_OUT.split("\n") if line]  # agreement lines for the exports (fast; Nutuk has its own test)
SINCE_1919 = "Türkiye'nin başkenti Ankara'dır; 1923'te 29 Ekim'de ilan edildi, 1919'da Samsun'a çıktı."


@pytest.fixture(scope="module")
def toks():
    """Our Turkish pre-tokenizer and llama.cpp's ('ufakzeka'), trained on the same text."""
    return {"turkish": BPETokenizer.train(TRAIN, vocab_size=400),
            "llama.cpp": BPETokenizer.train(TRAIN, vocab_size=400, pattern=LLAMACPP_TURKISH_PATTERN)}


HEADS = {"folded": dict(lm_head_bias=True, tie_weights=True), "tied": dict(lm_head_bias=False, tie_weights=True),
         "untied": dict(lm_head_bias=False, tie_weights=False), "nobias": dict(lm_head_bias=True, bias=False, tie_weights=False)}


@pytest.fixture(scope="module")
def exported(toks, tmp_path_factory):
    """{kind: (checkpoint, {dtype: gguf path}, model, report)}: fine-tuned-style models (chat template) with the
    llama.cpp pre-tokenizer; "folded" is the default head (tied, with an LM-head bias)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gguf")
    tok = toks["llama.cpp"]
    out = {}
    for seed, (kind, head) in enumerate(HEADS.items()):
        model = _trained(tok, seed=seed, **head)
        ck = ckpt.save_model(root / f"ck-{kind}", model, tok, {"chat_template": DEFAULT_TEMPLATE.to_dict()})
        paths, reports = {}, {}
        for dtype in gg.GGUF_DTYPES if kind == "folded" else ("f32",):
            (root / f"{kind}-{dtype}").mkdir()
            paths[dtype] = root / f"{kind}-{dtype}" / "model.gguf"
            reports[dtype] = gg.export_gguf(ck, paths[dtype], dtype, measure_text=MEASURE)
        out[kind] = (ck, paths, model, reports)
    return out


def _llama(path, n_ctx=96):
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=1, logits_all=True,
                           verbose=False)


def _llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))


def _llama_greedy(llm, prompt, n):
    """n greedy tokens after ``prompt``, llama.cpp's own argmax one token at a time."""
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out


def _our_logits(model, ids, llama_gelu=False):
    with torch.no_grad():
        if llama_gelu:
            with gg.llama_cpp_gelu(model):
                return model(torch.tensor([ids]))[0][0]
        return model(torch.tensor([ids]))[0][0]


# ------------------------------------------------------------------------------------------------ the file
def test_the_file_holds_gpt2_and_the_tokenizer(exported, toks):
    ck, paths, model, _ = exported["folded"]
    tok = toks["llama.cpp"]
    reader = gguf.GGUFReader(str(paths["f32"]))
    f = reader.fields

    def value(key):
        return f[key].contents()

    assert value("general.architecture") == "gpt2"
    c = model.config
    assert (value("gpt2.context_length"), value("gpt2.embedding_length"), value("gpt2.block_count"),
            value("gpt2.attention.head_count"), value("gpt2.feed_forward_length")) == (
        c.block_size, c.n_embd, c.n_layer, c.n_head, 4 * c.n_embd)
    tokens = value("tokenizer.ggml.tokens")
    assert len(tokens) == tok.vocab_size and tokens[tok.special_tokens["</RESP>"]] == "</RESP>"
    assert tokens[ord("a")] == "a" and tokens[ord(" ")] == "Ġ"  # byte-level strings, as tokenizer.json
    assert len(value("tokenizer.ggml.merges")) == len(tok.merge_list)
    types = value("tokenizer.ggml.token_type")
    assert {types[i] for i in tok.special_tokens.values()} == {int(gguf.TokenType.CONTROL)}
    assert types[0] == int(gguf.TokenType.NORMAL)
    assert value("tokenizer.ggml.pre") == "ufakzeka"
    assert value("tokenizer.ggml.eos_token_id") == tok.special_tokens["</RESP>"]
    assert value("tokenizer.ggml.eot_token_id") == tok.special_tokens["<|endoftext|>"]
    assert value("tokenizer.ggml.add_bos_token") is False
    assert value("tokenizer.chat_template") == jinja_chat_template(DEFAULT_TEMPLATE)
    names = {t.name: t for t in reader.tensors}
    assert "output.weight" in names  # the folded head is untied
    assert tuple(names["blk.0.attn_qkv.weight"].shape) == (c.n_embd, 3 * c.n_embd)  # ggml order: (in, out)
    # f16 / q8_0 matrices; vectors stay f32
    for dtype, want in (("f16", gguf.GGMLQuantizationType.F16), ("q8_0", gguf.GGMLQuantizationType.Q8_0)):
        t = {t.name: t for t in gguf.GGUFReader(str(paths[dtype])).tensors}
        assert t["blk.0.ffn_up.weight"].tensor_type == want
        assert t["blk.0.ffn_up.bias"].tensor_type == gguf.GGMLQuantizationType.F32


def _go_render(template: str, messages: list[dict]) -> str:
    """A tiny interpreter for the Go-template subset `ollama_template` writes (range .Messages, if / else if /
    end, eq, and, variables, string literals, .Role / .Content), with Go's `{{-` whitespace trimming."""
    parts = re.split(r"(\{\{-?\s*.*?\s*-?\}\})", template)
    items = []
    for p in parts:
        if p.startswith("{{"):
            if p.startswith("{{-") and items and items[-1][0] == "text":
                items[-1] = ("text", items[-1][1].rstrip())
            items.append(("act", p.strip("{}").strip("-").strip()))
        elif p:
            items.append(("text", p))
    out, env = [], {}

    def ev(expr, dot):
        expr = expr.strip()
        if expr.startswith('"'):
            return expr[1:-1].encode("latin-1", "backslashreplace").decode("unicode-escape")
        if expr.startswith("eq "):
            a, b = expr[3:].split(" ", 1)
            return ev(a, dot) == ev(b, dot)
        if expr.startswith("and "):
            return all(ev(x, dot) for x in expr[4:].split())
        if expr.startswith("$"):
            return env[expr]
        if expr in ("true", "false"):
            return expr == "true"
        return dot[expr[1:].lower()]

    def run(i, dot, emit):
        while i < len(items):
            kind, x = items[i]
            if kind == "text":
                if emit:
                    out.append(x)
                i += 1
            elif x == "end" or x.startswith("else"):
                return i
            elif x.startswith("range "):
                body = i + 1
                end = body
                for m in messages if emit else [None]:
                    end = run(body, m, emit and m is not None)
                i = end + 1
            elif x.startswith("if "):
                taken = False
                cond = emit and bool(ev(x[3:], dot))
                j = run(i + 1, dot, cond)
                taken = cond
                while items[j][1].startswith("else"):
                    c = items[j][1][4:].strip()
                    cond = emit and not taken and bool(ev(c[3:], dot) if c.startswith("if ") else True)
                    j = run(j + 1, dot, cond)
                    taken = taken or cond
                i = j + 1
            elif ":=" in x or " = " in x:
                name, expr = re.split(r"\s*:?=\s*", x, maxsplit=1)
                if emit:
                    env[name] = ev(expr, dot)
                i += 1
            else:
                if emit:
                    out.append(str(ev(x, dot)))
                i += 1
        return i

    run(0, None, True)
    return "".join(out)


def test_the_modelfile_parses_and_its_template_renders_our_prompt(exported, toks):
    _, paths, _, _ = exported["folded"]
    text = (paths["f32"].parent / "Modelfile").read_text(encoding="utf-8")
    directives = re.findall(r'^(FROM|TEMPLATE|PARAMETER)\s+(.*?)$(?=\n(?:FROM|TEMPLATE|PARAMETER|#)|\Z)', text,
                            re.MULTILINE | re.DOTALL)
    by = {}
    for key, arg in directives:
        by.setdefault(key, []).append(arg.strip())
    assert by["FROM"] == ["./model.gguf"]
    assert by["PARAMETER"][:2] == ['stop "</RESP>"', 'stop "<|endoftext|>"']
    (template,) = by["TEMPLATE"]
    assert template.startswith('"""') and template.endswith('"""')
    tok = toks["llama.cpp"]
    for conv in CONVERSATIONS:
        want = tok.decode(DEFAULT_TEMPLATE.render_prompt(conv, tok))
        assert _go_render(template[3:-3], conv) == want


def test_pre_tokenizer_agreement_is_measured(toks):
    lines = [SINCE_1919, "Ankara'da toplanan Meclis", "Türkiye’nin istiklali"]
    ours = gg.pre_tokenizer_agreement(toks["turkish"], "ufakzeka", lines)
    assert ours["lines"] == 3 and ours["lines_same"] == 2  # only the line with numbers is cut differently
    assert ours["tokens_same"] < ours["tokens"]
    same = gg.pre_tokenizer_agreement(toks["llama.cpp"], "ufakzeka", lines)
    assert same["lines_same"] == 3 and same["tokens_same"] == same["tokens"]
    assert gg.gguf_pre(TURKISH_PATTERN) == ("ufakzeka", False)
    assert gg.gguf_pre(LLAMACPP_TURKISH_PATTERN) == ("ufakzeka", True)


def test_the_export_says_when_text_is_split_differently(toks, tmp_path, capsys):
    from sifirdan import cli

    model = _trained(toks["turkish"], seed=5, steps=2)
    ck = ckpt.save_model(tmp_path / "ck", model, toks["turkish"], {})
    assert cli.main(["export", "gguf", "--model", str(ck), "--out", str(tmp_path / "m.gguf")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"llama\.cpp splits this model's text differently.*on Nutuk's validation split \d+\.\d % of lines",
                     out)
    assert "ollama create m -f" in out and "Modelfile" in out
    modelfile = (tmp_path / "Modelfile").read_text()
    assert 'TEMPLATE """{{ .Prompt }}"""' in modelfile and 'PARAMETER stop "<|endoftext|>"' in modelfile
    # a model trained with llama.cpp's pre-tokenizer gets no such line
    ck2 = ckpt.save_model(tmp_path / "ck2", _trained(toks["llama.cpp"], seed=5, steps=2), toks["llama.cpp"], {})
    assert cli.main(["export", "gguf", "--model", str(ck2), "--out", str(tmp_path / "b" / "m.gguf")]) == 0
    assert "splits this model's text differently" not in capsys.readouterr().out


def test_refusals_are_one_line(toks, tmp_path, capsys, monkeypatch):
    from sifirdan import cli

    model = _trained(toks["llama.cpp"], seed=6, steps=1)
    ck = ckpt.save_model(tmp_path / "ck", model, toks["llama.cpp"], {})
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(b"my own file")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "Modelfile").write_text("FROM llama3\n")
    cases = [
        (["--out", str(mine)], "is not a GGUF that `sifirdan export gguf` wrote"),
        (["--out", str(tmp_path / "x.bin")], "does not end in .gguf"),
        (["--out", str(tmp_path / "other" / "m.gguf")], "was not written by `sifirdan export gguf`"),
        (["--out", str(tmp_path / "m.gguf"), "--outtype", "q4"], "invalid choice"),
    ]
    for extra, match in cases:
        try:
            code = cli.main(["export", "gguf", "--model", str(ck), *extra])
        except SystemExit as e:  # argparse's own errors
            code = e.code
        assert code != 0
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err, err
    assert mine.read_bytes() == b"my own file"
    # a block neither llama.cpp architecture computes is refused, naming the field
    import dataclasses

    from sifirdan.model import GPTConfig

    with pytest.raises(UserError, match="norm='rmsnorm': llama.cpp's gpt2 architecture"):
        gg.architecture_of(dataclasses.replace(model.config, norm="rmsnorm"))
    # a tokenizer with no merges: llama.cpp would not load the file
    from sifirdan.model import GPT
    from sifirdan.tokenizer import DEFAULT_SPECIAL_TOKENS

    monkeypatch.undo()
    bare = BPETokenizer(special_tokens={t: 256 + i for i, t in enumerate(DEFAULT_SPECIAL_TOKENS)})
    ck0 = ckpt.save_model(tmp_path / "bare", GPT(GPTConfig(vocab_size=bare.vocab_size, n_layer=1, n_embd=32, n_head=2)),
                          bare, {})
    with pytest.raises(UserError, match="no merges"):
        gg.export_gguf(ck0, tmp_path / "bare.gguf", measure_text=[])
    assert not (tmp_path / "bare.gguf").exists()
    # an earlier export is replaced
    for _ in range(2):
        assert cli.main(["export", "gguf", "--model", str(ck), "--out", str(tmp_path / "m.gguf")]) == 0
    assert gg.is_sifirdan_gguf(tmp_path / "m.gguf")


def test_tokenizer_train_with_the_llama_cpp_pre_tokenizer(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TRAIN, encoding="utf-8")
    out = tmp_path / "tok.json"
    r = subprocess.run([sys.executable, "-m", "sifirdan", "tokenizer", "train", "--input", str(corpus), "--vocab-size",
                        "300", "--pre-tokenizer", "llama.cpp", "--out", str(out), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert BPETokenizer.load(out).pattern == LLAMACPP_TURKISH_PATTERN


# ------------------------------------------------------------------------------------------------ llama.cpp
HELD_IDS_TEXT = HELD_OUT.split("\n")[0] + "\n" + _text(123, 3)


@needs_llama
@pytest.mark.parametrize("kind", list(HEADS))
def test_llama_cpp_logits_equal_ours(exported, toks, kind):
    _, paths, model, reports = exported[kind]
    ids = toks["llama.cpp"].encode(HELD_IDS_TEXT)[: model.config.block_size]
    assert len(ids) >= 48
    theirs = _llama_logits(_llama(paths["f32"]), ids)
    same_gelu = (theirs - _our_logits(model, ids, llama_gelu=True)).abs().max().item()
    exact = (theirs - _our_logits(model, ids)).abs().max().item()
    print(f"\n{kind} f32: max|diff| {same_gelu:.2e} vs ours with llama.cpp's GELU, {exact:.2e} vs ours "
          f"(the export measured the GELU at {reports['f32'].gelu_logit_diff:.2e})")
    assert same_gelu <= 1e-3
    assert exact <= 2 * reports["f32"].gelu_logit_diff + 1e-3  # what the export said, no more


@needs_llama
def test_f16_and_q8_0_logits(exported, toks):
    _, paths, model, _ = exported["folded"]
    ids = toks["llama.cpp"].encode(HELD_IDS_TEXT)[: model.config.block_size]
    ours = _our_logits(model, ids, llama_gelu=True)
    spread = (ours.max(-1).values - ours.min(-1).values).mean().item()
    diffs = {}
    for dtype in gg.GGUF_DTYPES:
        diffs[dtype] = (_llama_logits(_llama(paths[dtype]), ids) - ours).abs().max().item()
    print(f"\nmax|diff| vs ours (llama.cpp's GELU): " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
          + f" (mean logit range {spread:.1f})")
    assert diffs["f32"] <= 1e-3 < diffs["f16"] <= 0.05 * spread
    assert diffs["f16"] <= diffs["q8_0"] <= 0.15 * spread


@needs_llama
@pytest.mark.parametrize("kind", ["folded", "untied"])
def test_64_greedy_tokens_are_equal(exported, toks, kind):
    ck, paths, _, _ = exported[kind]
    model, tokenizer = ckpt.load_model(ck)
    prompt = tokenizer.encode("Türk milleti Ankara'da")
    ours = Engine(model, tokenizer).generate_ids(prompt, GenerationConfig(max_new_tokens=64, temperature=0,
                                                                          stop_token_ids=()))
    theirs = _llama_greedy(_llama(paths["f32"]), prompt, 64)
    assert len(ours.token_ids) == 64 and theirs == ours.token_ids


def _nutuk_lines():
    return gg.nutuk_val_lines()


@needs_llama
def test_llama_cpp_tokenizer_gives_our_ids(exported, toks, tmp_path):
    """With llama.cpp's pre-tokenizer: our ids on every Nutuk validation line; with our Turkish one: exactly the
    ids ``as_llama_cpp_splits`` predicts (so the export's agreement figure is llama.cpp's), and ours wherever
    that prediction agrees with us."""
    _, paths, _, _ = exported["tied"]
    llm = _llama(paths["f32"])
    lines = _nutuk_lines() + [HELD_OUT, SINCE_1919, "  çift  boşluk\r\n\ttab, 'tırnak' İIıi 12345678 ₺ 😀"]
    tok = toks["llama.cpp"]
    for line in lines:
        assert llm.tokenize(line.encode("utf-8"), add_bos=False, special=False) == tok.encode(line), line
    # the Turkish pre-tokenizer: export a model with it and compare line by line
    turkish = toks["turkish"]
    ck = ckpt.save_model(tmp_path / "ck", _trained(turkish, seed=3, steps=1), turkish, {})
    gg.export_gguf(ck, tmp_path / "t.gguf", measure_text=MEASURE)
    llm = _llama(tmp_path / "t.gguf")
    predicted = gg.as_llama_cpp_splits(turkish, "ufakzeka")
    same = 0
    for line in lines:
        theirs = llm.tokenize(line.encode("utf-8"), add_bos=False, special=False)
        assert theirs == predicted.encode(line), line
        same += theirs == turkish.encode(line)
    print(f"\nTurkish pre-tokenizer, llama.cpp 'ufakzeka': {same}/{len(lines)} lines give our ids")
    assert 0 < same < len(lines)


@needs_llama
@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["user", "system", "multi-turn", "empty-user"])
def test_llama_cpp_chat_formatting_gives_the_ids_of_sifirdan_chat(exported, toks, conversation):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    _, paths, _, _ = exported["folded"]
    llm = _llama(paths["f32"])
    template = llm.metadata["tokenizer.chat_template"]
    # as llama-cpp-python's chat handler for a GGUF template does (llama.py: chat_template.default)
    eos, bos = llm.token_eos(), llm.token_bos()
    formatter = Jinja2ChatFormatter(template=template, eos_token=llm._model.token_get_text(eos),
                                    bos_token=llm._model.token_get_text(bos), stop_token_ids=[eos])
    result = formatter(messages=conversation)
    ids = llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
    assert ids == DEFAULT_TEMPLATE.render_prompt(conversation, toks["llama.cpp"])


@needs_llama
def test_chat_completion_stops_at_the_closing_tag(exported, toks):
    ck, paths, _, _ = exported["folded"]
    model, tokenizer = ckpt.load_model(ck)
    conv = CONVERSATIONS[1]
    prompt = DEFAULT_TEMPLATE.render_prompt(conv, tokenizer)
    n_new = model.config.block_size - len(prompt)
    ours = Engine(model, tokenizer).generate_ids(prompt, GenerationConfig(
        max_new_tokens=n_new, temperature=0, stop_token_ids=DEFAULT_TEMPLATE.stop_ids(tokenizer)))
    llm = _llama(paths["f32"])
    eog = {t for t in DEFAULT_TEMPLATE.stop_ids(tokenizer)}
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    assert all(llama_cpp.llama_vocab_is_eog(vocab, t) for t in eog)  # llama.cpp stops where sifirdan chat stops
    llm.reset()
    llm.eval(prompt)
    theirs = []
    for _ in range(n_new):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if t in eog:
            break
        theirs.append(t)
        llm.eval([t])
    assert theirs == ours.token_ids


# ------------------------------------------------------------------------------------------------ the README
def _readme_blocks():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("## Run it in llama.cpp / Ollama", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.DOTALL), re.findall(r"```python\n(.*?)```", section, re.DOTALL)


# what the test adds to the README's commands so that they take seconds, not minutes (the flags change sizes only)
FAST = {"pretrain": ["--max-iters", "4", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "128",
                     "--batch-size", "4", "--eval-iters", "1", "--eval-interval", "4", "--sample-interval", "0",
                     "--checkpoint-interval", "0", "--no-final-eval"],
        "finetune": ["--max-iters", "3", "--batch-size", "2", "--eval-iters", "1", "--eval-interval", "3",
                     "--sample-interval", "0", "--checkpoint-interval", "0", "--no-final-eval"],
        "tokenizer": ["--quiet"]}


@pytest.mark.slow
def test_the_readme_commands_run(tmp_path):
    import os
    import shlex

    (bash,), (python,) = _readme_blocks()
    lines = [line.split("  #")[0].strip() for line in bash.strip().splitlines()]
    assert lines[0].startswith("pip install") and lines[-1].startswith("ollama create")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(__import__("pathlib").Path(__file__).resolve().parents[1]),
                                                          os.environ.get("PYTHONPATH", "")])}
    for line in lines[1:-1]:
        argv = shlex.split(line)
        assert argv[0] == "sifirdan"
        r = subprocess.run([sys.executable, "-m", "sifirdan", *argv[1:], *FAST.get(argv[1], [])], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{line}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert "ollama create qa -f" in r.stdout  # the export prints the next command
    model = tmp_path / "gguf" / "qa.gguf"
    assert gg.is_sifirdan_gguf(model) and (tmp_path / "gguf" / "Modelfile").is_file()
    assert "splits this model's text differently" not in r.stdout  # trained with llama.cpp's pre-tokenizer
    ollama = shlex.split(lines[-1].split("&&")[0])
    assert ollama[:2] == ["ollama", "create"] and (tmp_path / ollama[-1]).is_file()
    if llama_cpp is not None:
        r = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]


@needs_llama
def test_the_default_block_runs_in_llama_cpp_as_llama(toks, tmp_path):
    """GPTConfig()'s own block (RoPE, RMSNorm, SwiGLU, no biases) goes to llama.cpp's ``llama`` architecture:
    a fine-tuned-style checkpoint (chat template) of the default shape, its vocabulary larger than the
    tokenizer's. Logits equal ours to 1e-3 (no GELU caveat: the llama graph computes SiLU exactly), 64 greedy
    tokens are the same, and llama.cpp's chat formatting gives the ids of our template."""
    from sifirdan.model import GPT, GPTConfig

    tok = toks["llama.cpp"]
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, init="guide")).eval()  # non-zero residual projections: a real test
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ck = ckpt.save_model(tmp_path / "ck", model, tok, {"chat_template": DEFAULT_TEMPLATE.to_dict()})
    report = gg.export_gguf(ck, tmp_path / "d.gguf", measure_text=MEASURE)
    assert report.architecture == "llama" and report.gelu_logit_diff is None
    reader = gguf.GGUFReader(str(tmp_path / "d.gguf"))
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "llama"
    ids = tok.encode(HELD_IDS_TEXT)[:128]
    llm = _llama(tmp_path / "d.gguf", n_ctx=256)
    assert llm.n_vocab() == 512
    diff = (_llama_logits(llm, ids) - _our_logits(model, ids)).abs().max().item()
    print(f"\ndefault block (llama) f32: max|diff| {diff:.2e}")
    assert diff <= 1e-3
    prompt = tok.encode("Türk milleti Ankara'da")
    ours = Engine(model, tok).generate_ids(prompt, GenerationConfig(max_new_tokens=64, temperature=0, stop_token_ids=()))
    assert _llama_greedy(llm, prompt, 64) == ours.token_ids
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos, bos = llm.token_eos(), llm.token_bos()
    formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"],
                                    eos_token=llm._model.token_get_text(eos), bos_token=llm._model.token_get_text(bos),
                                    stop_token_ids=[eos])
    for conversation in CONVERSATIONS:
        result = formatter(messages=conversation)
        ids = llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        assert ids == DEFAULT_TEMPLATE.render_prompt(conversation, tok)


def test_a_block_llama_cpp_cannot_compute_is_refused_in_one_line(toks, tmp_path):
    from sifirdan.model import GPT, GPTConfig

    tok = toks["llama.cpp"]
    for kw, what in ((dict(qk_norm=True), "qk_norm"), (dict(mlp="relu2"), "mlp")):
        ck = ckpt.save_model(tmp_path / f"ck-{what}", GPT(GPTConfig(vocab_size=512, **kw)), tok, {})
        with pytest.raises(UserError, match=what):
            gg.export_gguf(ck, tmp_path / f"{what}.gguf", measure_text=MEASURE)