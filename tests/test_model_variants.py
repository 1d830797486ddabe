"""The beyond-the-guide block (model/rope.py, norms.py, mlp_variants.py) and Muon (train/muon.py): each piece
against its definition, and the whole model against the generation engine's guarantees (KV cache == recompute,
a left-padded batch == one at a time), LoRA merge equality and a Llama export transformers reads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sifirdan.generate import Engine, GenerationConfig
from sifirdan.model import GPT, GPTConfig
from sifirdan.model.config import GUIDE_BLOCK
from sifirdan.model.mlp_variants import swiglu_hidden
from sifirdan.model.norms import RMSNorm
from sifirdan.model.rope import RotaryEmbedding, apply_rotary
from sifirdan.train.muon import Muon, orthogonalize

pytestmark = pytest.mark.usefixtures("one_thread")

MODERN = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, lm_head_bias=False)
VARIANTS = {
    "guide": dict(GUIDE_BLOCK),
    "modern": MODERN,
    "relu2-qknorm-softcap": dict(position="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, logit_softcap=10.0),
    "learned-swiglu": dict(position="learned", norm="layernorm", mlp="swiglu"),
}


TEXT = ("Türkiye'nin başkenti Ankara'dır. Çiğdem ağaçların altında şarkı söylüyor. Öğretmen, öğrencilere ışığın "
        "hızını anlattı. Güzel bir gün ve İstanbul'da yağmur yağıyor.\n") * 20


@pytest.fixture(scope="module")
def tok():
    from sifirdan.tokenizer import BPETokenizer

    return BPETokenizer.train(TEXT, vocab_size=300)


def make(variant: str, vocab=97, block_size=48, seed=0, **extra) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab, block_size=block_size, n_embd=32, n_head=2, n_layer=2,
                    **{"init": "pytorch", **VARIANTS[variant], **extra})
    return GPT(cfg).eval()


def test_rmsnorm_is_its_formula():
    torch.manual_seed(0)
    norm = RMSNorm(16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
    x = torch.randn(3, 5, 16)
    want = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
    torch.testing.assert_close(norm(x), want, rtol=1e-5, atol=1e-6)


def test_rotary_scores_depend_on_the_offset_only():
    rope = RotaryEmbedding(8, 64)
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m, n):
        cq, sq = rope.tables(torch.tensor([m]), 64, q.device, q.dtype)
        ck, sk = rope.tables(torch.tensor([n]), 64, q.device, q.dtype)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum().item()

    assert score(10, 7) == pytest.approx(score(33, 30), abs=1e-5)
    assert score(10, 7) != pytest.approx(score(10, 3), abs=1e-3)
    # position 0 is no rotation; a rotation keeps the norm
    c0, s0 = rope.tables(torch.tensor([0]), 64, q.device, q.dtype)
    torch.testing.assert_close(apply_rotary(q, c0, s0), q)
    c, s = rope.tables(torch.tensor([40]), 64, q.device, q.dtype)
    assert apply_rotary(q, c, s).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)
    # the table grows past its first length without changing the rows it had
    before = rope.tables(torch.arange(64), 64, q.device, q.dtype)[0]
    after = rope.tables(torch.arange(200), 200, q.device, q.dtype)[0][:64]
    torch.testing.assert_close(before, after)


def test_parameter_counts():
    guide, modern = make("guide"), make("modern")
    assert guide.embeddings.position_embedding is not None and modern.embeddings.position_embedding is None
    assert swiglu_hidden(128) == 352 and swiglu_hidden(32) == 96
    ff = modern.blocks[0].feed_forward
    assert (ff.gate.weight.shape, ff.up.weight.shape, ff.proj.weight.shape) == ((96, 32), (96, 32), (32, 96))
    assert all(m.bias is None for m in modern.modules() if isinstance(m, torch.nn.Linear))


def test_zero_out_init_starts_every_block_as_the_identity():
    model = make("modern", init="zero_out")
    x = model.embeddings(torch.randint(0, 97, (2, 9)))
    for block in model.blocks:
        torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kv_cache_equals_recompute_and_the_guides_loop(tok, variant):
    model = make(variant, vocab=tok.vocab_size)
    engine = Engine(model, tok)
    g = torch.Generator().manual_seed(1)
    for n in (1, 11, 30):  # 30 + 40 > block_size 48: the crop-and-prefill path too
        prompt = torch.randint(0, tok.vocab_size, (n,), generator=g).tolist()
        cached = engine.generate_ids(prompt, GenerationConfig(max_new_tokens=40, temperature=0))
        recomputed = engine.generate_ids(prompt, GenerationConfig(max_new_tokens=40, temperature=0, use_cache=False))
        assert cached.token_ids == recomputed.token_ids
    prompt = torch.randint(0, tok.vocab_size, (1, 11), generator=g)
    ref = model.generate(prompt, 25, temperature=0)[0, 11:].tolist()  # within block_size: no crop rule involved
    assert engine.generate_ids(prompt[0].tolist(), GenerationConfig(max_new_tokens=25, temperature=0)).token_ids == ref


@pytest.mark.parametrize("variant", ["modern", "relu2-qknorm-softcap"])
def test_left_padded_batch_equals_one_at_a_time(tok, variant):
    model = make(variant, vocab=tok.vocab_size)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, tok.vocab_size, (n,), generator=g).tolist() for n in (3, 17, 9, 1)]
    cfg = GenerationConfig(max_new_tokens=12, temperature=0)
    engine = Engine(model, tok)
    together = engine.generate_ids(prompts, cfg)
    alone = [engine.generate_ids(p, cfg) for p in prompts]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]


def test_logit_softcap_bounds_the_logits():
    model = make("relu2-qknorm-softcap")
    with torch.no_grad():
        model.lm_head.weight.mul_(100.0)
    logits, _ = model(torch.randint(0, 97, (2, 10)))
    assert logits.abs().max().item() <= 10.0


def test_lora_merge_equals_adapters_on_swiglu():
    from sifirdan.model.lora import apply_lora, lora_layers, merged_copy

    model = make("modern")
    apply_lora(model, rank=4, generator=torch.Generator().manual_seed(0))
    names = {n.split(".", 2)[2] for n, _ in lora_layers(model)}
    assert names == {"attention.qkv", "attention.proj", "feed_forward.gate", "feed_forward.up", "feed_forward.proj"}
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.normal_(0, 0.05)
    x = torch.randint(0, 97, (2, 12))
    torch.testing.assert_close(merged_copy(model)(x)[0], model(x)[0], rtol=1e-5, atol=1e-5)


def test_orthogonalize_pushes_singular_values_towards_one():
    torch.manual_seed(0)
    G = torch.randn(32, 96) * torch.logspace(-2, 1, 96)  # badly conditioned
    s = torch.linalg.svdvals(orthogonalize(G))
    assert s.min().item() > 0.3 and s.max().item() < 1.3
    assert orthogonalize(G.T).shape == (96, 32)


def test_muon_refuses_vectors_and_steps_matrices():
    w = torch.nn.Parameter(torch.randn(8, 4))
    w.grad = torch.randn(8, 4)
    before = w.detach().clone()
    Muon([w], lr=0.1).step()
    assert not torch.equal(w, before)
    b = torch.nn.Parameter(torch.randn(4))
    b.grad = torch.randn(4)
    with pytest.raises(ValueError, match="2-D"):
        Muon([b], lr=0.1).step()


def test_muon_optimizer_groups_and_state_round_trip():
    from sifirdan.train import TrainConfig, make_optimizer

    model = make("modern")
    cfg = TrainConfig(optimizer="muon", learning_rate=1e-3, muon_lr_scale=2.0)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    muon_ids = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    assert muon_ids == {id(p) for p in model.blocks.parameters() if p.dim() == 2}
    assert all(g["lr_scale"] == 2.0 for g in opt.muon.param_groups)
    x = torch.randint(0, 97, (2, 12))
    for _ in range(2):
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
    state = opt.state_dict()
    again = make_optimizer(model, cfg, torch.device("cpu"))
    again.load_state_dict(state)
    for a, b in zip(opt.param_groups, again.param_groups):
        for p in a["params"]:
            for key, value in opt.state[p].items():
                torch.testing.assert_close(again.state[p][key], value)
    with pytest.raises(ValueError, match="Muon"):
        again.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())


def test_a_config_saved_before_the_new_fields_loads_as_the_guides_block():
    old = {"vocab_size": 97, "block_size": 48, "n_embd": 32, "n_head": 2, "n_layer": 2}
    cfg = GPTConfig.from_dict(GPTConfig.upgrade_saved(old))
    assert cfg.gpt2_block and cfg.position == "learned" and cfg.norm == "layernorm" and cfg.mlp == "gelu"


@pytest.mark.parametrize("kwargs, match", [
    (dict(position="alibi"), "position"), (dict(norm="batchnorm"), "norm"), (dict(mlp="geglu"), "mlp"),
    (dict(logit_softcap=-1.0), "logit_softcap"), (dict(logit_softcap=math.inf), "logit_softcap"),
    (dict(rope_theta=0.5), "rope_theta"), (dict(position="rope", n_embd=45, n_head=5), "even head size"),
])
def test_bad_variant_settings_are_one_line_errors(kwargs, match):
    from sifirdan.errors import UserError

    with pytest.raises(UserError, match=match):
        GPTConfig(**{"vocab_size": 97, **kwargs})


@pytest.mark.parametrize("variant", ["modern", "relu2-qknorm-softcap", "learned-swiglu"])
def test_the_kernels_path_of_the_new_block_equals_gpt_forward(variant):
    from sifirdan import kernels

    if not kernels.available():
        pytest.skip(f"C kernels unavailable here: {kernels.describe()}")
    model = make(variant).train()
    fused = kernels.accelerate(model)
    assert fused is not model, kernels.why_not(model)
    x, y = torch.randint(0, 97, (3, 40)), torch.randint(0, 97, (3, 40))
    y[0, :5] = -100
    ref_logits, ref_loss = model(x, y)
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
    logits, loss = fused(x, y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
