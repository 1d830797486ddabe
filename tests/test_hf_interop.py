"""`sifirdan export hf` / `sifirdan import hf`: transformers computes what sifirdan computes, both ways.

Offline and in fp32: logits on held-out text equal (max abs diff <= 1e-5; a model with an LM-head bias, folded
into GPT-2's bias-free head, as close to the float64 logits as our own float32 ones), greedy generation equal
token for token, the Jinja chat template gives the ids of ``render_prompt``, the tokenizers give the same ids; import of
a randomly initialised local GPT2LMHeadModel; export -> import is lossless; refusals are one line.
Tests that need transformers skip when it is not installed (it is in the ``test`` extra).
"""

import json
import random

import pytest
import torch

from sifirdan import checkpoint as ckpt
from sifirdan.chat.template import DEFAULT_TEMPLATE, ChatTemplate
from sifirdan.errors import UserError
from sifirdan.generate import Engine, GenerationConfig
from sifirdan.interop import export_hf, import_hf, is_export, jinja_chat_template
from sifirdan.model import GPT, GPTConfig
from sifirdan.model.config import GUIDE_BLOCK
from sifirdan.tokenizer import BPETokenizer

try:
    import transformers
except ImportError:  # pragma: no cover - the test extra installs it
    transformers = None

# `export hf` writes the guide's (GPT-2's) block as GPT2LMHeadModel, the default block as Llama
# (tests/test_llama_export.py): every model here has the guide's block
GUIDE = dict(GUIDE_BLOCK, bias=True, lm_head_bias=True, init="guide")

needs_transformers = pytest.mark.skipif(
    transformers is None, reason="transformers is not installed (pip install -e '.[test]' installs the pinned version)")

WORDS = ("Türk milleti Ankara'da toplanan Büyük Millet Meclisi ile egemenliğini kazandı ; istiklal cumhuriyet "
         "ordu halk vatan için çok büyük bir gün 1919'da Samsun'a çıktı . İzmir ılık ışık ğ ü ş ö ç").split()


def _text(seed: int, lines: int) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + rng.choice([".\n", "!\n", "?\n\n"])
                   for _ in range(lines))


TRAIN = _text(0, 600)
HELD_OUT = "Türkiye'nin başkenti Ankara'dır; 23 Nisan 1920'de Meclis açıldı.\nİstiklal Marşı: \"Korkma!\" 🇹🇷 ışığı ÇĞİÖŞÜ\t" + _text(99, 20)
SYSTEM = {"role": "system", "content": "Sen Türkçe konuşan, kısa cevap veren bir yardımcısın."}
CONVERSATIONS = [
    [{"role": "user", "content": "Ankara'nın başkent oluşu ne zaman?"}],
    [SYSTEM, {"role": "user", "content": "Merhaba!"}],
    [SYSTEM, {"role": "user", "content": "Meclis ne zaman açıldı?"}, {"role": "assistant", "content": "23 Nisan 1920'de."},
     {"role": "user", "content": "Peki İzmir ne zaman kurtuldu?\nKısaca söyle."}],
    [{"role": "user", "content": "Bir"}, {"role": "assistant", "content": "İki"}, {"role": "user", "content": ""}],
]


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TRAIN, vocab_size=400)


def _trained(tok, seed=0, steps=40, **overrides) -> GPT:
    """A tiny GPT trained a few steps (so its logits, biases and LayerNorms are far from their init)."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=tok.vocab_size, block_size=96, n_embd=32, n_head=4, n_layer=2, **{**GUIDE, "init": "pytorch"})
    model = GPT(GPTConfig(**{**cfg, **overrides}))
    ids = torch.tensor(tok.encode(TRAIN))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 65, (8,), generator=g)
        x = torch.stack([ids[s : s + 64] for s in starts])
        y = torch.stack([ids[s + 1 : s + 65] for s in starts])
        opt.zero_grad()
        model(x, y)[1].backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def exported(tok, tmp_path_factory):
    """{kind: (checkpoint dir, export dir, model)} for fine-tuned-style (chat template) models: True / False a
    tied / untied one without an LM-head bias, "folded" a tied one with the bias (the default)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for kind in (True, False, "folded"):
        head = dict(lm_head_bias=True, tie_weights=True) if kind == "folded" else dict(lm_head_bias=False, tie_weights=kind)
        model = _trained(tok, seed={True: 1, False: 0, "folded": 2}[kind], **head)
        ck = ckpt.save_model(root / f"ck-{kind}", model, tok, {"chat_template": DEFAULT_TEMPLATE.to_dict()})
        export_hf(ck, root / f"hf-{kind}")
        out[kind] = (ck, root / f"hf-{kind}", model)
    return out


def _float64_logits(model, x):
    import copy

    with torch.no_grad():
        return copy.deepcopy(model).double()(x)[0]


def _hf_model(path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert type(model).__name__ == "GPT2LMHeadModel"
    return model.float().eval()


def _hf_tokenizer(path):
    return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)


def _ids(result):
    """apply_chat_template(tokenize=True) returns a list of ids, or (newer transformers) a BatchEncoding."""
    return list(result["input_ids"]) if hasattr(result, "keys") else list(result)


# ------------------------------------------------------------------------------------------------ export
@needs_transformers
@pytest.mark.parametrize("tied", [True, False, "folded"])
def test_transformers_logits_equal_ours_on_unseen_text(exported, tok, tied):
    _, hf_dir, model = exported[tied]
    hf = _hf_model(hf_dir)
    assert hf.config.tie_word_embeddings is (tied is True) and hf.config.activation_function == "gelu"
    ids = tok.encode(HELD_OUT)
    assert len(ids) >= 2 * 96 and HELD_OUT not in TRAIN
    x = torch.tensor([ids[:96], ids[96:192]])  # two full windows of held-out text
    with torch.no_grad():
        ours, theirs = model(x)[0], hf(x).logits
    diff = (ours - theirs).abs().max().item()
    assert ours.std() > 0.5  # trained: the logits are not a near-constant that anything would match
    if tied != "folded":
        assert diff <= 1e-5, diff
        return
    # the head bias is folded into an untied bias-free head: exact algebra, computed in another order, so the
    # two float32 results differ by rounding -- transformers' may be no further from the exact (float64) logits
    # than ours are
    assert model.lm_head.bias.abs().max() > 0.01
    exact = _float64_logits(model, x)
    ours_err, theirs_err = (ours.double() - exact).abs().max().item(), (theirs.double() - exact).abs().max().item()
    assert theirs_err <= 2 * ours_err + 1e-6, (theirs_err, ours_err)
    assert diff <= 3e-5, diff


@needs_transformers
@pytest.mark.parametrize("tied", [True, False, "folded"])
def test_greedy_generation_is_the_same_token_for_token(exported, tok, tied):
    ck, hf_dir, _ = exported[tied]
    model, tokenizer = ckpt.load_model(ck)
    hf, hf_tok = _hf_model(hf_dir), _hf_tokenizer(hf_dir)
    text = "Türk milleti Ankara'da"
    ours = Engine(model, tokenizer).generate(text, GenerationConfig(max_new_tokens=64, temperature=0, stop_token_ids=()))
    # as a transformers user writes it: the tokenizer's output straight into generate (no token_type_ids, which
    # GPT-2 would add to its input as embeddings)
    enc = hf_tok(text, return_tensors="pt")
    assert set(enc.keys()) == {"input_ids", "attention_mask"}
    theirs = hf.generate(**enc, max_new_tokens=64, do_sample=False, eos_token_id=None)
    n = enc["input_ids"].shape[1]
    assert len(ours.token_ids) == 64
    assert theirs[0, n:].tolist() == ours.token_ids
    assert hf_tok.decode(theirs[0, n:]) == ours.text


@needs_transformers
def test_a_chat_prompt_generates_the_same_answer(exported, tok):
    ck, hf_dir, _ = exported[True]
    model, tokenizer = ckpt.load_model(ck)
    hf, hf_tok = _hf_model(hf_dir), _hf_tokenizer(hf_dir)
    conv = CONVERSATIONS[1]  # system + user
    prompt = DEFAULT_TEMPLATE.render_prompt(conv, tokenizer)
    n_new = model.config.block_size - len(prompt)  # transformers cannot go past its n_positions (sifirdan crops)
    assert n_new >= 8
    # stopping as sifirdan chat stops (</RESP> or <|endoftext|>): transformers reads it from generation_config.json
    ours = Engine(model, tokenizer).generate_ids(prompt, GenerationConfig(
        max_new_tokens=n_new, temperature=0, stop_token_ids=DEFAULT_TEMPLATE.stop_ids(tokenizer)))
    enc = hf_tok.apply_chat_template(conv, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    theirs = hf.generate(**enc, max_new_tokens=n_new, do_sample=False)[0, len(prompt):].tolist()
    if theirs and theirs[-1] in DEFAULT_TEMPLATE.stop_ids(tokenizer):
        theirs = theirs[:-1]  # transformers keeps the stop token, sifirdan leaves it out
    assert theirs == ours.token_ids


@needs_transformers
@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["user", "system", "multi-turn", "empty-user"])
def test_apply_chat_template_gives_the_ids_of_render_prompt(exported, tok, conversation):
    hf_tok = _hf_tokenizer(exported[True][1])
    want = DEFAULT_TEMPLATE.render_prompt(conversation, tok)
    assert _ids(hf_tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)) == want
    text = hf_tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|endoftext|><INST>") and text.endswith("</INST><RESP>")


@needs_transformers
def test_chat_template_of_a_whole_conversation_and_of_another_template(exported, tok):
    hf_tok = _hf_tokenizer(exported[True][1])
    whole = CONVERSATIONS[2][:3]  # ends with the assistant: what fine-tuning renders
    assert _ids(hf_tok.apply_chat_template(whole, tokenize=True)) == DEFAULT_TEMPLATE.render(whole, tok)[0]
    with pytest.raises(Exception, match="in turn"):
        hf_tok.apply_chat_template([{"role": "assistant", "content": "önce ben"}], tokenize=True)
    # a template with other separators, no bos, and characters Jinja literals must escape
    odd = ChatTemplate(bos=None, system_separator="\n---'\\\"\n")
    hf_tok.chat_template = jinja_chat_template(odd)
    conv = CONVERSATIONS[2]
    assert _ids(hf_tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)) == odd.render_prompt(conv, tok)


@needs_transformers
def test_tokenizer_ids_equal_ours_on_turkish_text(exported, tok):
    hf_tok = _hf_tokenizer(exported[False][1])
    texts = [HELD_OUT, _text(7, 50), "  çift  boşluk\r\n\ttab, 'tırnak' İIıi 12345678 ₺ 😀 \u0307", ""]
    for text in texts:
        ids = tok.encode(text)
        assert hf_tok(text, add_special_tokens=True)["input_ids"] == ids
        assert hf_tok.decode(ids) == text
    assert hf_tok.bos_token == "<|endoftext|>" and hf_tok.eos_token == "</RESP>" and hf_tok.pad_token == "<PAD>"
    assert hf_tok.convert_tokens_to_ids("<INST>") == tok.special_tokens["<INST>"]


def test_export_files_say_what_transformers_needs(exported, tok, tmp_path):
    _, hf_dir, model = exported[False]
    cfg = json.loads((hf_dir / "config.json").read_text())
    c = model.config
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"]
    assert cfg["activation_function"] == "gelu" and cfg["layer_norm_epsilon"] == 1e-5
    assert (cfg["n_positions"], cfg["n_ctx"], cfg["n_embd"], cfg["n_head"], cfg["n_layer"], cfg["vocab_size"]) == (
        c.block_size, c.block_size, c.n_embd, c.n_head, c.n_layer, c.vocab_size)
    assert cfg["tie_word_embeddings"] is False
    sp = tok.special_tokens
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (sp["<|endoftext|>"], sp["</RESP>"], sp["<PAD>"])
    gen = json.loads((hf_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [sp["</RESP>"], sp["<|endoftext|>"]]  # where sifirdan chat stops
    assert (hf_dir / "tokenizer.json").read_text() == tok.to_json_str()
    names = set(json.loads((hf_dir / "model.safetensors").read_bytes()[8:8 + int.from_bytes(
        (hf_dir / "model.safetensors").read_bytes()[:8], "little")]))
    assert "transformer.h.1.attn.c_attn.weight" in names and "lm_head.weight" in names
    assert is_export(hf_dir)
    # a pre-trained (not fine-tuned) model: no chat template, eos <|endoftext|>
    pre = ckpt.save_model(tmp_path / "pre", model, tok)
    export_hf(pre, tmp_path / "pre-hf")
    gen = json.loads((tmp_path / "pre-hf" / "generation_config.json").read_text())
    tok_cfg = json.loads((tmp_path / "pre-hf" / "tokenizer_config.json").read_text())
    assert gen["eos_token_id"] == sp["<|endoftext|>"] and "chat_template" not in tok_cfg
    assert tok_cfg["eos_token"] == "<|endoftext|>"


def test_the_default_and_the_guide_head_export_and_a_head_that_cannot_fold_is_refused(tok, tmp_path):
    assert GPTConfig.from_preset("guide").lm_head_bias is True and GPTConfig().lm_head_bias is False
    # the guide's block with the head the default had before issue 21 (tied, with a bias), trained so that its
    # head bias is no longer the init's zeros
    default = _trained(tok, steps=5, init="guide", n_layer=1, n_embd=32, n_head=2, block_size=GPTConfig.block_size)
    assert default.config.lm_head_bias and default.config.tie_weights and default.lm_head.bias.abs().max() > 0
    report = export_hf(ckpt.save_model(tmp_path / "d", default, tok), tmp_path / "d-hf")
    assert is_export(tmp_path / "d-hf") and any("folded" in n for n in report.notes)
    cfg = json.loads((tmp_path / "d-hf" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False  # the embedding stays the input's; the head carries the bias
    guide = _trained(tok, steps=2, lm_head_bias=True, tie_weights=False)
    export_hf(ckpt.save_model(tmp_path / "g", guide, tok), tmp_path / "g-hf")
    with torch.no_grad():  # a LayerNorm gain of 0 leaves no direction to fold the bias along
        guide.ln_f.weight[3] = 0.0
    with pytest.raises(UserError, match="ln_f.weight.*--no-lm-head-bias") as e:
        export_hf(ckpt.save_model(tmp_path / "z", guide, tok), tmp_path / "z-hf")
    assert "\n" not in str(e.value) and not (tmp_path / "z-hf").exists()
    with torch.no_grad():  # an all-zero head bias is exact to drop: the head stays tied
        default.lm_head.bias.zero_()
    report = export_hf(ckpt.save_model(tmp_path / "d0", default, tok), tmp_path / "d0-hf")
    assert any("exactly zero" in n for n in report.notes)
    assert json.loads((tmp_path / "d0-hf" / "config.json").read_text())["tie_word_embeddings"] is True


def test_fold_head_bias_is_exact_algebra():
    from sifirdan.interop.gpt2 import fold_head_bias

    g = torch.Generator().manual_seed(0)
    n, V = 24, 50
    for ln_bias in (torch.randn(n, generator=g, dtype=torch.float64), None):
        w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
        head, bias = torch.randn(V, n, generator=g, dtype=torch.float64), torch.randn(V, generator=g, dtype=torch.float64) * 3
        x = torch.randn(64, n, generator=g, dtype=torch.float64) * 5
        want = torch.nn.functional.layer_norm(x, (n,), w, ln_bias, 1e-5) @ head.t() + bias
        new_b, new_head = fold_head_bias(w, ln_bias, head, bias)
        got = torch.nn.functional.layer_norm(x, (n,), w, new_b, 1e-5) @ new_head.t()
        assert (got - want).abs().max() < 1e-11
        assert not torch.allclose(new_head, head)  # the fold did change the head (this test is not vacuous)


def test_export_refuses_a_folder_that_is_not_an_export(exported, tmp_path):
    ck = exported[True][0]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty and is not an earlier `sifirdan export hf`"):
        export_hf(ck, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="not empty"):  # the checkpoint itself
        export_hf(ck, ck)
    export_hf(ck, tmp_path / "again")
    export_hf(ck, tmp_path / "again")  # an unchanged export may be replaced
    (tmp_path / "again" / "extra.bin").write_bytes(b"user data")
    with pytest.raises(UserError, match="not empty"):
        export_hf(ck, tmp_path / "again")


# ------------------------------------------------------------------------------------------------ export -> import
def _same_model(a: GPT, b: GPT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (a.lm_head.weight is a.embeddings.token_embedding.weight) == (b.lm_head.weight is b.embeddings.token_embedding.weight)


@pytest.mark.parametrize("overrides", [
    dict(tie_weights=True, lm_head_bias=False), dict(tie_weights=False, lm_head_bias=False),
    dict(bias=False, dropout=0.1, lm_head_bias=False),
    dict(tie_weights=True, lm_head_bias=True), dict(tie_weights=False, lm_head_bias=True),
    dict(bias=False, lm_head_bias=True)],
    ids=["tied", "untied", "no-bias-dropout", "head-bias-tied", "head-bias-untied", "head-bias-only"])
def test_export_then_import_is_lossless(tok, tmp_path, overrides):
    model = _trained(tok, steps=10, **overrides)
    ck = ckpt.save_model(tmp_path / "ck", model, tok, {"chat_template": DEFAULT_TEMPLATE.to_dict()})
    export_hf(ck, tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "back")
    back, tok2 = ckpt.load_model(tmp_path / "back")
    assert back.config == model.config
    _same_model(model, back)
    assert tok2.fingerprint() == tok.fingerprint() and tok2.encode(HELD_OUT) == tok.encode(HELD_OUT)
    x = torch.tensor([tok.encode(HELD_OUT)[:96]])
    with torch.no_grad():
        assert torch.equal(model(x)[0], back(x)[0])
    meta = ckpt.read_config(tmp_path / "back")
    assert meta["chat_template"] == DEFAULT_TEMPLATE.to_dict() and "imported_from" in meta
    # and a fine-tuned model stays chat-able: the template is its own again
    from sifirdan.chat.template import template_of

    assert template_of(meta) == DEFAULT_TEMPLATE


def test_a_changed_export_of_a_head_bias_imports_as_its_folded_head(exported, tok, tmp_path):
    import shutil

    _, hf_dir, model = exported["folded"]
    mine = tmp_path / "mine"
    shutil.copytree(hf_dir, mine)
    (mine / "README.md").write_text("my notes")  # no longer the export as written: its originals are not trusted
    report = import_hf(mine, tmp_path / "back")
    back, _ = ckpt.load_model(tmp_path / "back")
    assert back.config.lm_head_bias is False and back.config.tie_weights is False
    assert any("folded" in n for n in report.notes)
    x = torch.tensor([tok.encode(HELD_OUT)[:96]])
    with torch.no_grad():
        ours, theirs = model(x)[0], back(x)[0]
    exact = _float64_logits(model, x)
    assert (theirs.double() - exact).abs().max() <= 2 * (ours.double() - exact).abs().max() + 1e-6


# ------------------------------------------------------------------------------------------------ import
def _random_gpt2(tok, tmp_path, tied=True, prefix=True, **config):
    """A randomly initialised local GPT2LMHeadModel (every weight, bias included, random) + our tokenizer.json."""
    torch.manual_seed(3)
    cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=80, n_embd=48, n_layer=3, n_head=4,
                                  activation_function="gelu", tie_word_embeddings=tied, bos_token_id=tok.eot_id,
                                  eos_token_id=tok.eot_id, **config)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    path = tmp_path / "gpt2"
    model.save_pretrained(path, safe_serialization=True)
    tok.save(path / "tokenizer.json")
    if not prefix:  # as the original gpt2 repository stores it: no "transformer." prefix, with the mask buffers
        from safetensors.torch import load_file, save_file

        state = load_file(path / "model.safetensors")
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
        for i in range(3):
            state[f"h.{i}.attn.bias"] = torch.ones(1, 1, 80, 80)
        save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return model, path


@needs_transformers
@pytest.mark.parametrize("tied,prefix", [(True, True), (False, True), (True, False)], ids=["tied", "untied", "no-prefix"])
def test_import_of_a_random_local_gpt2(tok, tmp_path, tied, prefix):
    hf, path = _random_gpt2(tok, tmp_path, tied, prefix)
    report = import_hf(path, tmp_path / "ours")
    assert any("dropout" in n for n in report.notes)  # GPT-2's default pdrop 0.1: said, not silently kept
    model, tokenizer = ckpt.load_model(tmp_path / "ours")
    assert model.config.tie_weights is tied and model.config.lm_head_bias is False and model.config.block_size == 80
    x = torch.tensor([tok.encode(HELD_OUT)[:80]])
    with torch.no_grad():
        diff = (model(x)[0] - hf(x).logits).abs().max().item()
    assert diff <= 1e-5, diff
    prompt = tok.encode("Ankara")
    ours = Engine(model, tokenizer).generate_ids(prompt, GenerationConfig(max_new_tokens=20, temperature=0, stop_token_ids=()))
    theirs = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert theirs[0, len(prompt):].tolist() == ours.token_ids


@needs_transformers
def test_imported_checkpoint_works_with_the_cli(tok, tmp_path, capsys):
    from sifirdan.cli import main

    _, path = _random_gpt2(tok, tmp_path)
    assert main(["import", "hf", "--from", str(path), "--out", str(tmp_path / "ours")]) == 0
    out = capsys.readouterr().out
    assert "imported" in out and "sifirdan generate --model" in out
    assert main(["generate", "--model", str(tmp_path / "ours"), "--prompt", "Türk", "--max-new-tokens", "8",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("Türk")
    assert main(["export", "hf", "--model", str(tmp_path / "ours"), "--out", str(tmp_path / "re")]) == 0
    assert "AutoModelForCausalLM.from_pretrained" in capsys.readouterr().out
    # import -> export gives GPT-2 the same tensors back
    from safetensors.torch import load_file

    a, b = load_file(path / "model.safetensors"), load_file(tmp_path / "re" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ refusals
def _gpt2_dir(tmp_path, tok, name="g", **config):
    """A GPT-2 directory written without transformers: config.json, zero weights, our tokenizer.json."""
    from safetensors.torch import save_file

    from sifirdan.interop.gpt2 import expected_gpt2_shapes

    hf = {"model_type": "gpt2", "vocab_size": tok.vocab_size, "n_positions": 16, "n_embd": 8, "n_layer": 1, "n_head": 2,
          "activation_function": "gelu", "tie_word_embeddings": True, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
          "attn_pdrop": 0.0, **config}
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(hf))
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_embd=8, n_head=2, n_layer=1, **GUIDE)
    save_file({k: torch.zeros(s) for k, s in expected_gpt2_shapes(cfg).items()}, path / "model.safetensors")
    tok.save(path / "tokenizer.json")
    return path


def test_a_valid_hand_made_gpt2_directory_imports(tok, tmp_path):
    import_hf(_gpt2_dir(tmp_path, tok), tmp_path / "ok")
    model, _ = ckpt.load_model(tmp_path / "ok")
    assert model.config.n_embd == 8 and model.config.dropout == 0.0


@pytest.mark.parametrize("config,match", [
    ({"model_type": "llama"}, "model_type is 'llama'"),
    ({"activation_function": "gelu_new"}, "activation_function is 'gelu_new' \\(the tanh approximation\\)"),
    ({"activation_function": None}, "activation_function"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn"),
    ({"scale_attn_weights": False}, "scale_attn_weights"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
    ({"n_inner": 64}, "n_inner"),
    ({"add_cross_attention": True}, "add_cross_attention"),
    ({"n_head": 3}, "divisible"),
    ({"n_layer": 2}, "n_layer 2 but the weights hold 1 blocks"),
    ({"tie_word_embeddings": False}, "lm_head.weight"),
    ({"n_positions": 10**12}, "wpe.weight is \\(16, 8\\)"),
])
def test_import_refuses_what_sifirdan_cannot_represent(tok, tmp_path, config, match):
    path = _gpt2_dir(tmp_path, tok, **config)
    with pytest.raises(UserError, match=match) as e:
        import_hf(path, tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_import_refuses_pickles_tokenizers_and_foreign_folders(tok, tmp_path):
    path = _gpt2_dir(tmp_path, tok)
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(UserError, match="pytorch_model.bin, a pickle.*never unpickles.*save_pretrained"):
        import_hf(path, tmp_path / "out")
    path = _gpt2_dir(tmp_path, tok, "no-tok")
    (path / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="has no tokenizer.json"):
        import_hf(path, tmp_path / "out")
    path = _gpt2_dir(tmp_path, tok, "wordlevel")
    (path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordLevel", "vocab": {"a": 0}}, "normalizer": None}))
    with pytest.raises(UserError, match="WordLevel model, not BPE"):
        import_hf(path, tmp_path / "out")
    path = _gpt2_dir(tmp_path, tok, "post")
    obj = tok.to_json()
    obj["post_processor"] = {"type": "TemplateProcessing", "single": [], "pair": [], "special_tokens": {}}
    (path / "tokenizer.json").write_text(json.dumps(obj))
    with pytest.raises(UserError, match="TemplateProcessing post_processor"):
        import_hf(path, tmp_path / "out")
    path = _gpt2_dir(tmp_path, tok, "f64")
    from safetensors.torch import load_file, save_file

    save_file({k: v.double() for k, v in load_file(path / "model.safetensors").items()}, path / "model.safetensors")
    with pytest.raises(UserError, match="F64"):
        import_hf(path, tmp_path / "out")
    good = _gpt2_dir(tmp_path, tok, "good")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "a.txt").write_text("x")
    with pytest.raises(UserError, match="not empty and is not an earlier `sifirdan import hf`"):
        import_hf(good, tmp_path / "busy")
    import_hf(good, tmp_path / "twice")
    import_hf(good, tmp_path / "twice")  # an earlier import may be replaced


def test_refusals_are_one_line_on_the_cli(tok, tmp_path, capsys):
    from sifirdan.cli import main

    path = _gpt2_dir(tmp_path, tok, activation_function="gelu_new")
    assert main(["import", "hf", "--from", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "activation_function" in err and "Traceback" not in err
    guide = GPT(GPTConfig.from_preset("nano", vocab_size=tok.vocab_size, init="pytorch"))
    with torch.no_grad():  # a head bias with no direction to fold along
        guide.ln_f.weight[0] = 0.0
    ck = ckpt.save_model(tmp_path / "nano", guide, tok)
    assert main(["export", "hf", "--model", str(ck), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lm_head_bias" in err
