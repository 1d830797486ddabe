"""`sifirdan export hf` of the default (LLaMA-style) block: transformers loads it as LlamaForCausalLM and computes
what sifirdan computes (logits within 1e-4 on unseen text, greedy tokens equal, the chat template's ids equal
render_prompt's); `import hf` of it and export of what Llama cannot compute are refused in one line."""

import json

import pytest
import torch

from sifirdan import checkpoint as ckpt
from sifirdan.chat.template import DEFAULT_TEMPLATE
from sifirdan.errors import UserError
from sifirdan.generate import Engine, GenerationConfig
from sifirdan.interop import export_hf, import_hf, is_export
from sifirdan.model import GPT, GPTConfig
from sifirdan.tokenizer import BPETokenizer

try:
    import transformers
except ImportError:  # pragma: no cover - the test extra installs it
    transformers = None

needs_transformers = pytest.mark.skipif(transformers is None, reason="transformers is not installed")

# the same training text, held-out text and conversations as the GPT-2 export's tests
from test_hf_interop import CONVERSATIONS, HELD_OUT, TRAIN  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TRAIN, vocab_size=400)


def _trained(tok, seed=0, steps=40, **overrides) -> GPT:
    """A tiny GPT with the default block (every field but the size), trained a few steps: its zero-initialised
    output projections, RMSNorm gains and logits are far from their init."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**dict(vocab_size=tok.vocab_size, block_size=96, n_embd=32, n_head=4, n_layer=2), **overrides}))
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
    """{tied: (checkpoint, export, model)}: fine-tuned-style (a chat template) default-block models."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("llama")
    out = {}
    for tied in (True, False):
        model = _trained(tok, seed=int(tied), tie_weights=tied)
        assert model.config.position == "rope" and model.config.mlp == "swiglu" and not model.config.lm_head_bias
        assert model.blocks[0].attention.proj.weight.abs().max() > 0  # trained away from zero_out's zeros
        ck = ckpt.save_model(root / f"ck-{tied}", model, tok, {"chat_template": DEFAULT_TEMPLATE.to_dict()})
        export_hf(ck, root / f"hf-{tied}")
        out[tied] = (ck, root / f"hf-{tied}", model)
    return out


def _hf_model(path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    return model.float().eval()


def _ids(result):
    return list(result["input_ids"]) if hasattr(result, "keys") else list(result)


@needs_transformers
@pytest.mark.parametrize("tied", [True, False])
def test_llama_logits_equal_ours_on_unseen_text(exported, tok, tied):
    _, hf_dir, model = exported[tied]
    hf = _hf_model(hf_dir)
    assert hf.config.tie_word_embeddings is tied
    cfg = json.loads((hf_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"] and is_export(hf_dir)
    ids = tok.encode(HELD_OUT)
    assert len(ids) >= 2 * 96 and HELD_OUT not in TRAIN
    x = torch.tensor([ids[:96], ids[96:192]])
    with torch.no_grad():
        ours, theirs = model(x)[0], hf(x).logits
    assert ours.std() > 0.5  # trained: not a near-constant that anything would match
    diff = (ours - theirs).abs().max().item()
    assert diff <= 1e-4, diff


@needs_transformers
@pytest.mark.parametrize("tied", [True, False])
def test_llama_greedy_generation_is_the_same_token_for_token(exported, tok, tied):
    ck, hf_dir, _ = exported[tied]
    model, tokenizer = ckpt.load_model(ck)
    hf = _hf_model(hf_dir)
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    text = "Türk milleti Ankara'da"
    ours = Engine(model, tokenizer).generate(text, GenerationConfig(max_new_tokens=32, temperature=0, stop_token_ids=()))
    enc = hf_tok(text, return_tensors="pt")
    theirs = hf.generate(**enc, max_new_tokens=32, do_sample=False, eos_token_id=None)
    n = enc["input_ids"].shape[1]
    assert len(ours.token_ids) == 32
    assert theirs[0, n:].tolist() == ours.token_ids


@needs_transformers
@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["user", "system", "multi-turn", "empty-user"])
def test_llama_export_chat_template_gives_the_ids_of_render_prompt(exported, tok, conversation):
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported[True][1], local_files_only=True)
    want = DEFAULT_TEMPLATE.render_prompt(conversation, tok)
    assert _ids(hf_tok.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)) == want


def test_import_of_a_llama_export_is_refused_in_one_line(exported, tmp_path, capsys):
    from sifirdan.cli import main

    hf_dir = exported[True][1]
    with pytest.raises(UserError, match="llama") as e:
        import_hf(hf_dir, tmp_path / "back")
    assert "\n" not in str(e.value) and not (tmp_path / "back").exists()
    assert main(["import", "hf", "--from", str(hf_dir), "--out", str(tmp_path / "back")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "llama" in err and "Traceback" not in err


@pytest.mark.parametrize("overrides,match", [
    (dict(qk_norm=True), "qk_norm"),
    (dict(logit_softcap=15.0), "logit_softcap"),
    (dict(lm_head_bias=True), "lm_head_bias"),
    (dict(bias=True), "bias"),
    (dict(mlp="relu2"), "neither GPT-2's"),
])
def test_export_refuses_what_llama_cannot_compute(tok, tmp_path, capsys, overrides, match):
    from sifirdan.cli import main

    model = _trained(tok, steps=3, n_layer=1, **overrides)
    if overrides.get("lm_head_bias"):
        assert model.lm_head.bias.abs().max() > 0  # trained: a non-zero head bias
    ck = ckpt.save_model(tmp_path / "ck", model, tok)
    with pytest.raises(UserError, match=match) as e:
        export_hf(ck, tmp_path / "hf")
    assert "\n" not in str(e.value) and not (tmp_path / "hf").exists()
    assert main(["export", "hf", "--model", str(ck), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match.split("'")[0] in err and "Traceback" not in err
    assert not (tmp_path / "hf").exists()
