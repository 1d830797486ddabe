"""Model tests: the two attention paths agree, the KV cache is exact, the counts match the guide's, the
step-0 loss matches the guide's, and configuration mistakes are UserErrors. Everything here runs in seconds."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sifirdan.errors import UserError
from sifirdan.model import GPT, IGNORE_INDEX, MODEL_PRESETS, GPTConfig, KVCache
from sifirdan.model.config import GUIDE_BLOCK

BENCH = Path(__file__).resolve().parents[1] / "bench"
# the guide's (GPT-2's) block: learned positions, LayerNorm, GELU, biases everywhere, N(0, 0.02) init
GUIDE = dict(GUIDE_BLOCK, bias=True, lm_head_bias=True, init="guide")
# both blocks with every weight random: the default's zero-initialised residual projections would hide what
# attention computes from the logits (any two attention paths, or a wrong KV cache, would then agree)
BLOCKS = {"default": dict(init="guide"), "guide": GUIDE}


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=61, block_size=16, n_embd=32, n_head=4, n_layer=2, dropout=0.0)
    return GPTConfig(**{**base, **kw})


def guide(**kw) -> GPTConfig:
    """``tiny`` with the guide's block."""
    return tiny(**{**GUIDE, **kw})


def pair(**kw) -> tuple[GPT, GPT]:
    """An explicit-attention model and an sdpa model with the very same weights."""
    torch.manual_seed(0)
    explicit = GPT(tiny(attention="explicit", **kw))
    sdpa = GPT(tiny(attention="sdpa", **kw))
    sdpa.load_state_dict(explicit.state_dict())
    return explicit, sdpa


def assert_same_grads(a: GPT, b: GPT, atol=1e-5, rtol=1e-4):
    grads_b = dict(b.named_parameters())
    for name, p in a.named_parameters():
        q = grads_b[name]
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


# ------------------------------------------------------------------------------------------------ attention paths
@pytest.mark.parametrize("block", BLOCKS)
def test_explicit_and_sdpa_agree_in_outputs_and_gradients(block):
    explicit, sdpa = pair(**BLOCKS[block])
    idx = torch.randint(0, 61, (3, 16), generator=torch.Generator().manual_seed(1))
    targets = torch.roll(idx, -1, dims=1)
    logits_e, loss_e = explicit(idx, targets)
    logits_s, loss_s = sdpa(idx, targets)
    torch.testing.assert_close(logits_e, logits_s, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loss_e, loss_s, atol=1e-6, rtol=1e-6)
    loss_e.backward()
    loss_s.backward()
    assert_same_grads(explicit, sdpa)
    # the test can fail: different weights give different logits
    other = GPT(tiny(attention="sdpa", **BLOCKS[block]))
    assert not torch.allclose(other(idx)[0], logits_e, atol=1e-3)


@pytest.mark.parametrize("block", BLOCKS)
def test_explicit_and_sdpa_agree_with_key_padding_mask(block):
    explicit, sdpa = pair(**BLOCKS[block])
    B, T = 3, 12
    idx = torch.randint(0, 61, (B, T), generator=torch.Generator().manual_seed(2))
    real = torch.ones(B, T, dtype=torch.bool)
    real[1, :4] = False  # left padding, as batched generation does
    real[2, :7] = False
    positions = (real.long().cumsum(1) - 1).clamp(min=0)  # real tokens start at position 0
    out = {}
    for name, m in (("explicit", explicit), ("sdpa", sdpa)):
        logits, _ = m(idx, positions=positions, key_padding_mask=real)
        logits[real].pow(2).sum().backward()  # only real positions matter
        out[name] = logits
    torch.testing.assert_close(out["explicit"][real], out["sdpa"][real], atol=1e-5, rtol=1e-4)
    assert_same_grads(explicit, sdpa)
    # padding really is hidden: a padded row's real tokens see what the same tokens alone would see
    alone, _ = explicit(idx[1:2, 4:])
    torch.testing.assert_close(out["explicit"][1, 4:], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("attention", ["explicit", "sdpa"])
def test_kv_cache_prefix_plus_continuation_equals_full(attention, block):
    torch.manual_seed(0)
    model = GPT(tiny(attention=attention, **BLOCKS[block])).eval()
    idx = torch.randint(0, 61, (2, 14), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache.for_model(model, batch_size=2)
        prefix, _ = model(idx[:, :9], kv_cache=cache)
        parts = [prefix]
        for t in range(9, 14):  # then one token at a time, as generation does
            step, _ = model(idx[:, t : t + 1], kv_cache=cache)
            parts.append(step)
    assert cache.pos == 14
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-4)


def test_our_model_computes_the_guides_function():
    """Load the guide's separate query/key/value weights into the fused qkv: identical logits."""
    sys.path.insert(0, str(BENCH))
    try:
        from guide_reference import GuideConfig, GuideGPT
    finally:
        sys.path.remove(str(BENCH))
    torch.manual_seed(0)
    gc = GuideConfig(vocab_size=61, block_size=16, n_embd=32, n_head=4, n_layer=2, dropout=0.0)
    ref = GuideGPT(gc).eval()
    ours = GPT(guide(attention="explicit", tie_weights=False)).eval()  # the guide's head: its own Linear
    sd = {
        "embeddings.token_embedding.weight": ref.token_embedding.weight,
        "embeddings.position_embedding.weight": ref.position_embedding.weight,
        "ln_f.weight": ref.ln_f.weight, "ln_f.bias": ref.ln_f.bias,
        "lm_head.weight": ref.lm_head.weight, "lm_head.bias": ref.lm_head.bias,
    }
    for i, b in enumerate(ref.blocks):
        a = b.attention
        sd[f"blocks.{i}.attention.qkv.weight"] = torch.cat([a.query.weight, a.key.weight, a.value.weight])
        sd[f"blocks.{i}.attention.qkv.bias"] = torch.cat([a.query.bias, a.key.bias, a.value.bias])
        sd[f"blocks.{i}.attention.proj.weight"], sd[f"blocks.{i}.attention.proj.bias"] = a.proj.weight, a.proj.bias
        ff = b.feed_forward.net
        sd[f"blocks.{i}.feed_forward.fc.weight"], sd[f"blocks.{i}.feed_forward.fc.bias"] = ff[0].weight, ff[0].bias
        sd[f"blocks.{i}.feed_forward.proj.weight"], sd[f"blocks.{i}.feed_forward.proj.bias"] = ff[2].weight, ff[2].bias
        for ln in ("ln1", "ln2"):
            sd[f"blocks.{i}.{ln}.weight"], sd[f"blocks.{i}.{ln}.bias"] = getattr(b, ln).weight, getattr(b, ln).bias
    ours.load_state_dict(sd, strict=True)
    idx = torch.randint(0, 61, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], ref(idx)[0], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ counts and init
def test_guide_preset_parameter_counts():
    from sifirdan.cli.params import count_components, guide_formula

    cfg = GPTConfig.from_preset("guide")
    model = GPT(cfg)
    assert model.num_parameters() == 938_228
    c = count_components(model)
    assert c == {
        "token_embedding": 64_000, "position_embedding": 16_384,
        "attention_weights": 4 * 65_536, "attention_biases": 4 * 4 * 128,
        "ffn": 4 * 131_712, "layernorms": 4 * 2 * 256, "final_ln": 256,
        "lm_head_weight": 64_000, "lm_head_bias": 500, "other": 0, "total": 938_228,
    }
    g = guide_formula(cfg)  # the guide's own numbers, §3-7
    assert (g["embeddings"], g["attention"], g["ffn"], g["block"], g["blocks"], g["lm_head"], g["total"]) == (
        80_384, 65_536, 131_712, 197_760, 791_040, 64_000, 935_680,
    )
    assert c["total"] - g["total"] == 2_048 + 500  # attention biases + LM-head bias


def test_step0_loss_matches_the_guides():
    """Guide §8: step 0 loss 6.2443 (train) / 6.2459 (val) at vocab 500 -- i.e. ~ln(500) = 6.2146 plus a
    little: N(0, 0.02) init gives near-uniform predictions. PyTorch's default init starts far higher."""
    torch.manual_seed(1337)
    idx = torch.randint(0, 500, (8, 128))
    targets = torch.randint(0, 500, (8, 128))
    losses = {}
    for init in ("guide", "pytorch"):
        torch.manual_seed(0)
        model = GPT(GPTConfig.from_preset("guide", init=init)).eval()
        with torch.no_grad():
            losses[init] = model(idx, targets)[1].item()
    assert math.log(500) - 0.02 < losses["guide"] < 6.30, losses
    assert abs(losses["guide"] - 6.244) < 0.06, losses
    assert losses["pytorch"] > losses["guide"] + 0.05, losses  # the check can tell inits apart


def test_tie_weights_shares_storage_and_gradients():
    assert GPTConfig().tie_weights and not GPTConfig.from_preset("guide").tie_weights  # default on; the guide's off
    model = GPT(tiny(tie_weights=True))
    emb, head = model.embeddings.token_embedding.weight, model.lm_head.weight
    assert head is emb and head.data_ptr() == emb.data_ptr()
    untied = GPT(tiny(tie_weights=False))
    assert untied.num_parameters() - model.num_parameters() == 61 * 32
    idx = torch.randint(0, 61, (2, 8))
    model(idx, idx)[1].backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


@pytest.mark.parametrize("block", BLOCKS)
def test_bias_false_removes_every_bias(block):
    make = guide if block == "guide" else tiny
    names = [n for n, _ in GPT(make(bias=False, lm_head_bias=False)).named_parameters()]
    assert names and not [n for n in names if n.endswith("bias")]
    assert [n for n, _ in GPT(make(bias=True)).named_parameters() if n.endswith("bias")]
    # the LM head's bias is its own field (--no-lm-head-bias)
    assert [n for n, _ in GPT(make(bias=False, lm_head_bias=True)).named_parameters() if n.endswith("bias")] == ["lm_head.bias"]
    # the default block has none; the guide's has them all
    assert not [n for n, _ in GPT(tiny()).named_parameters() if n.endswith("bias")]
    assert len([n for n, _ in GPT(guide()).named_parameters() if n.endswith("bias")]) == 1 + 2 * (2 + 2 + 2) + 1


def test_config_mistakes_are_user_errors():
    with pytest.raises(UserError, match="divisible"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(UserError, match="unknown preset 'huge'.*nano"):
        GPTConfig.from_preset("huge")
    with pytest.raises(UserError):
        GPTConfig.from_preset("guide", attention="flash")


def test_loss_ignores_minus_100_targets():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 61, (2, 10))
    targets = torch.randint(0, 61, (2, 10))
    targets[0, :6] = IGNORE_INDEX
    targets[1, 3] = -100
    logits, loss = model(idx, targets)
    keep = targets != -100
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(loss, expected)
    assert not torch.isclose(loss, F.cross_entropy(logits.flatten(0, 1), targets.clamp(min=0).flatten()))


# ------------------------------------------------------------------------------------------------ sifirdan params
@pytest.fixture
def cli(monkeypatch, capsys):
    import sifirdan.cli as cli_mod

    monkeypatch.setattr(cli_mod, "COMMANDS", ["params"])  # other subcommands may not exist yet

    def run(*argv):
        code = cli_mod.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_params_command_prints_truth_beside_the_guide(cli):
    code, out, _ = cli("params", "--preset", "guide")
    assert code == 0
    for number in ("938,228", "935,680", "80,384", "65,536", "131,712", "197,760", "791,040", "64,000", "2,048"):
        assert number in out, number
    assert "LM-head bias" in out and "attention biases" in out


def test_params_command_json_and_overrides(cli):
    code, out, _ = cli("params", "--preset", "small", "--vocab-size", "4096", "--json")
    assert code == 0
    rep = json.loads(out)
    assert rep["config"]["vocab_size"] == 4096 and rep["config"]["n_embd"] == 256
    cfg = GPTConfig.from_preset("small", vocab_size=4096)
    assert rep["total"] == GPT(cfg).num_parameters()
    code, out, _ = cli("params", "--preset", "medium", "--json")
    rep = json.loads(out)
    assert rep["total"] == 38_604_276 and rep["guide_section10"] == "~100M"
    assert any("100M" in n and "38.60M" in n for n in rep["notes"])


def test_params_command_user_errors(cli, capsys):
    with pytest.raises(SystemExit) as exit_info:  # a value outside --preset's choices: argparse's one line
        cli("params", "--preset", "huge")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "invalid choice: 'huge'" in err and err.count("\n") == 1
    code, _, err = cli("params", "--n-embd", "100", "--n-head", "3")
    assert code == 2 and "divisible" in err


def test_the_engine_generates_what_the_guides_loop_generates():
    """GPT.generate is the guide's loop (recompute everything, every step); the KV-cache Engine must pick the
    same tokens: greedily, and sampling from the same seed (one row: the Engine seeds row 0 with ``seed``)."""
    from sifirdan.generate import Engine, GenerationConfig
    from sifirdan.tokenizer import BPETokenizer

    text = "Türkiye'nin başkenti Ankara'dır. Öğretmen, öğrencilere ışığın hızını anlattı. " * 10
    tok = BPETokenizer.train(text, vocab_size=300)
    torch.manual_seed(0)
    # PyTorch's default init spreads the logits: no near-ties for argmax to trip on
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_embd=32, n_head=2, n_layer=2, init="pytorch")).eval()
    engine = Engine(model, tok)
    for prompt in ("Türkiye", "Öğretmen, öğrencilere", "a"):
        ids = tok.encode(prompt)
        n = 64 - len(ids)  # inside one context: the Engine crops differently once the context is full
        naive = model.generate(torch.tensor([ids]), n, temperature=0)[0, len(ids):].tolist()
        cfg = GenerationConfig(max_new_tokens=n, temperature=0, stop_token_ids=())
        assert engine.generate_ids(ids, cfg).token_ids == naive, prompt
        for seed in (1, 2):
            torch.manual_seed(seed)
            naive = model.generate(torch.tensor([ids]), 20, temperature=0.9, top_k=8)[0, len(ids):].tolist()
            cfg = GenerationConfig(max_new_tokens=20, temperature=0.9, top_k=8, seed=seed, stop_token_ids=())
            assert engine.generate_ids(ids, cfg).token_ids == naive, (prompt, seed)


def test_lm_head_bias_is_its_own_field():
    # on in the guide's block and presets (the guide's nn.Linear head); off by default (LLaMA's head) and in
    # GPT-2's head; bias=False removes the others
    assert GPT(guide()).lm_head.bias is not None and GPT(guide(lm_head_bias=False)).lm_head.bias is None
    assert GPT(tiny()).lm_head.bias is None and GPTConfig().lm_head_bias is False
    for preset in MODEL_PRESETS:
        assert GPTConfig.from_preset(preset).lm_head_bias is True
    assert GPT(tiny(lm_head_bias=True)).lm_head.bias.shape == (61,)
    names = [n for n, _ in GPT(tiny(bias=False, lm_head_bias=True)).named_parameters() if n.endswith("bias")]
    assert names == ["lm_head.bias"]
