"""LoRA (sifirdan/model/lora.py): adapters that start as the identity, train alone, merge into plain weights that
compute the same function, and work the same with the C kernels on and off; `sifirdan finetune --lora-rank`
end to end (trained-parameter count, merged checkpoints any command loads, bit-exact resume, bad flags)."""

from __future__ import annotations

import json

import pytest
import torch
from test_finetune import TEXT, ft_args, pretrained, write_pairs  # noqa: F401  (pretrained: a fixture)
from torch import nn

import sifirdan.kernels
from sifirdan import kernels
from sifirdan.checkpoint import (
    load_model,
    load_trainer_state,
    load_weights,
    model_config,
    read_config,
    save_model,
)
from sifirdan.cli import main
from sifirdan.errors import UserError
from sifirdan.model import GPT, GPTConfig
from sifirdan.model.config import GUIDE_BLOCK
from sifirdan.model.lora import (
    LoRALinear,
    apply_lora,
    lora_layers,
    merge_lora,
    merged_copy,
    settings_of,
)
from sifirdan.tokenizer import BPETokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
needs_kernels = pytest.mark.skipif(kernels.ops._kernels is None, reason="sifirdan.kernels._kernels is not built")
PATHS = ["torch", pytest.param("kernels", marks=needs_kernels)]
V = 97
# the guide's block: the fused C kernel path (``net``) covers it only, and its MLP is fc/proj (a SwiGLU MLP's
# gate/up/proj adapters: tests/test_model_variants.py)
GUIDE = dict(GUIDE_BLOCK, bias=True, lm_head_bias=True, init="guide")


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(vocab_size=V, block_size=40, n_embd=48, n_head=3, n_layer=2), **GUIDE, **kw}))


def per_block_adapters(C: int, r: int, targets=("qkv", "proj", "ffn")) -> int:
    """A + B entries of one block: r * (in + out) for each adapted Linear."""
    sizes = {"qkv": r * (C + 3 * C), "proj": r * (C + C), "ffn": r * (C + 4 * C) + r * (4 * C + C)}
    return sum(sizes[t] for t in targets)


@pytest.fixture(params=PATHS)
def net(request, monkeypatch):
    """``net(model)``: the module a forward pass goes through -- the model itself (kernels off) or the fused C
    kernel forward (kernels on, forced even where this CPU's copy would not be the default choice)."""
    if request.param == "kernels":
        monkeypatch.setattr(sifirdan.kernels.ops, "available", lambda: True)

        def wrap(model):
            assert kernels.why_not(model) is None  # adapters keep the fused path: they are called, not bypassed
            return kernels.FusedGPT(model)

        wrap.kernels = True
        return wrap

    def plain(model):
        return model

    plain.kernels = False
    return plain


def randomize_adapters(model, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * scale)


# ------------------------------------------------------------------------------------------------ the module
@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"tie_weights": False}])
def test_step_zero_equals_the_base_model(net, kw):
    model = tiny(**kw).eval()
    idx = torch.randint(0, V, (3, 40))
    before = net(model)(idx, idx)
    n = apply_lora(model, rank=4, alpha=8)
    after = net(model)(idx, idx)
    if net.kernels:  # the plain Linear's bias is added inside a kernel, the adapted one's by F.linear: rounding
        torch.testing.assert_close(after[0], before[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(after[1], before[1], atol=1e-6, rtol=1e-6)
    else:
        assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])  # B = 0: exactly the base
    assert n == 2 * per_block_adapters(48, 4)
    assert sorted({type(m).__name__ for _, m in lora_layers(model)}) == ["LoRALinear"] and len(lora_layers(model)) == 8
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith(("lora_A", "lora_B")) for name in trainable)
    layer = model.blocks[0].attention.qkv
    assert torch.all(layer.lora_B == 0) and layer.lora_A.abs().max() <= 1 / 48**0.5  # kaiming-uniform bound
    assert settings_of(model) == {"rank": 4, "alpha": 8.0, "targets": ["qkv", "proj", "ffn"]}


def test_targets_choose_the_linears():
    model = tiny()
    n = apply_lora(model, 2, targets="ffn,qkv")
    assert n == 2 * per_block_adapters(48, 2, ("qkv", "ffn"))
    for block in model.blocks:
        assert isinstance(block.attention.qkv, LoRALinear) and type(block.attention.proj) is nn.Linear
        assert isinstance(block.feed_forward.fc, LoRALinear) and isinstance(block.feed_forward.proj, LoRALinear)
    assert type(model.lm_head) is nn.Linear and not model.lm_head.weight.requires_grad
    assert settings_of(model)["targets"] == ["qkv", "ffn"]


def _batches(seed=0):
    class Batches:
        def __init__(self):
            self.g = torch.Generator().manual_seed(seed)

        def next_batch(self):
            x = torch.randint(0, V, (4, 41), generator=self.g)
            return x[:, :-1], x[:, 1:]

        def state_dict(self):
            return {"rng": self.g.get_state().tolist()}

        def load_state_dict(self, s):
            self.g.set_state(torch.tensor(s["rng"], dtype=torch.uint8))

    return Batches()


def test_training_moves_only_the_adapters(net):
    """Through the one training loop (AdamW, weight decay, clipping): frozen weights stay bit-identical."""
    from sifirdan.train import TrainConfig, TrainData, Trainer

    model = tiny(dropout=0.1)
    apply_lora(model, 4)
    frozen = {k: v.detach().clone() for k, v in model.named_parameters() if not v.requires_grad}
    adapters = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    cfg = TrainConfig(max_iters=10, final_eval=False, device="cpu", threads=1, cpu_kernels=net.kernels,
                      learning_rate=1e-2, weight_decay=0.1)
    trainer = Trainer(model, cfg, TrainData(train=[_batches()]), verbose=False)
    assert isinstance(trainer.model, kernels.FusedGPT) is net.kernels
    for _ in range(3):
        loss, _ = trainer.train_step()
        assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]) and p.grad is None, name
        else:
            assert not torch.equal(p, adapters[name]), name  # every A and every B has moved
    assert sum(p.numel() for group in trainer.optimizer.param_groups for p in group["params"]) == 2 * per_block_adapters(48, 4)


@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"tie_weights": False}])
def test_the_merged_model_computes_base_plus_adapters(net, kw):
    model = tiny(**kw).eval()
    apply_lora(model, 4, alpha=16)
    randomize_adapters(model)
    idx = torch.randint(0, V, (3, 40))
    adapted = net(model)(idx, idx)
    merged = merged_copy(model)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert lora_layers(model)  # the original keeps its adapters
    assert set(merged.state_dict()) == set(tiny(**kw).state_dict())  # an ordinary GPT's names
    assert all(p.requires_grad for p in merged.parameters())
    assert (merged.lm_head.weight is merged.embeddings.token_embedding.weight) == model.config.tie_weights
    out = net(merged)(idx, idx)
    torch.testing.assert_close(out[0], adapted[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], adapted[1], atol=1e-5, rtol=0)
    base_logits = tiny(**kw).eval()(idx)[0]
    assert (out[0] - base_logits).abs().max() > 1e-3  # and the adapters do change the function
    # the merged weight is W + (alpha / r) B A, the bias untouched
    layer = model.blocks[1].feed_forward.fc
    expected = layer.base.weight + 4.0 * layer.lora_B @ layer.lora_A
    torch.testing.assert_close(merged.blocks[1].feed_forward.fc.weight, expected, atol=1e-6, rtol=0)
    if layer.base.bias is not None:
        assert torch.equal(merged.blocks[1].feed_forward.fc.bias, layer.base.bias)
    same = merge_lora(model)  # in place
    assert same is model and not lora_layers(model)
    assert torch.equal(model(idx)[0], merged(idx)[0])


def test_gradients_reach_a_and_b_and_agree_between_paths(monkeypatch):
    if kernels.ops._kernels is None:
        pytest.skip("sifirdan.kernels._kernels is not built")
    monkeypatch.setattr(sifirdan.kernels.ops, "available", lambda: True)
    model = tiny().eval()
    apply_lora(model, 4)
    idx = torch.randint(0, V, (3, 40))

    def grads():
        out = []
        for net in (model, kernels.FusedGPT(model)):
            model.zero_grad(set_to_none=True)
            net(idx, idx)[1].backward()
            out.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
            assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
        return out

    # step 0 (B = 0): B gets a gradient, A none yet (dL/dA = scale * B^T dL/dy x) -- as in the paper
    torch_path, fused_path = grads()
    assert all(g.abs().sum() > 0 for n, g in torch_path.items() if n.endswith("lora_B"))
    assert all(torch.all(g == 0) for n, g in torch_path.items() if n.endswith("lora_A"))
    for n in torch_path:
        torch.testing.assert_close(fused_path[n], torch_path[n], atol=1e-5, rtol=1e-4, msg=n)
    randomize_adapters(model)  # once B has moved, A learns too
    torch_path, fused_path = grads()
    assert all(g.abs().sum() > 0 for g in torch_path.values())
    for n in torch_path:
        torch.testing.assert_close(fused_path[n], torch_path[n], atol=1e-5, rtol=1e-4, msg=n)


def test_a_merged_model_round_trips_as_a_plain_gpt(tmp_path):
    tok = BPETokenizer.train(TEXT, vocab_size=300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_embd=32, n_head=2, n_layer=2)).eval()
    apply_lora(model, 8, targets="qkv,ffn")
    randomize_adapters(model)
    idx = torch.randint(0, tok.vocab_size, (2, 32))
    adapted = model(idx)[0].detach()
    save_model(tmp_path / "m", merged_copy(model), tok)
    loaded, _ = load_model(tmp_path / "m")
    assert type(loaded) is GPT and all(type(m) is not LoRALinear for m in loaded.modules())
    assert kernels.why_not(loaded) in (None, f"kernels unavailable ({kernels.describe()})")
    torch.testing.assert_close(loaded(idx)[0], adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw,match", [
    (dict(rank=0), "--lora-rank must be a positive integer"),
    (dict(rank=-3), "--lora-rank must be a positive integer"),
    (dict(rank=49), "larger than the model's n_embd 48"),
    (dict(rank=4, alpha=0), "--lora-alpha must be a positive number"),
    (dict(rank=4, alpha=-1.5), "--lora-alpha must be a positive number"),
    (dict(rank=4, alpha=float("nan")), "--lora-alpha must be a positive number"),
    (dict(rank=4, targets="qkv,mlp"), "unknown target(s) 'mlp'; choose from qkv, proj, ffn"),
    (dict(rank=4, targets=""), "empty name"),
])
def test_bad_settings_are_one_line_errors(kw, match):
    model = tiny()
    with pytest.raises(UserError, match=__import__("re").escape(match)) as e:
        apply_lora(model, **kw)
    assert "\n" not in str(e.value)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())  # nothing changed
    apply_lora(model, 4)
    with pytest.raises(ValueError, match="adapters already"):
        apply_lora(model, 4)


@pytest.mark.parametrize("tie", [True, False])
def test_the_trainer_saves_merged_weights_and_resumes_the_adapters_bit_exactly(net, tmp_path, tie):
    """export_model: model.safetensors holds the merged plain GPT; the trainer state the exact unmerged one."""
    from sifirdan.train import TrainConfig, TrainData, Trainer

    def run(out, stop_at=None, resume=False):
        model = tiny(tie_weights=tie, dropout=0.1)
        apply_lora(model, 4, generator=torch.Generator().manual_seed(3))
        cfg = TrainConfig(max_iters=6, final_eval=False, device="cpu", threads=1, cpu_kernels=net.kernels,
                          learning_rate=1e-2, eval_interval=100, checkpoint_interval=0, sample_interval=0)
        trainer = Trainer(model, cfg, TrainData(train=[_batches()]), out_dir=out, verbose=False, resume=resume,
                          export_model=merged_copy)
        trainer.fit(stop_at=stop_at)
        return model

    full = run(tmp_path / "full")
    run(tmp_path / "half", stop_at=3)
    resumed = run(tmp_path / "half", resume=True)
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    last = tmp_path / "full" / "last"  # (no tokenizer here, so not load_model)
    plain = GPT(model_config(read_config(last), last)).eval()
    load_weights(plain, last)  # strict: an ordinary GPT's tensors, nothing else
    assert type(plain) is GPT and set(plain.state_dict()) == set(tiny(tie_weights=tie).state_dict())
    idx = torch.randint(0, V, (2, 40))
    assert torch.equal(plain(idx)[0], merged_copy(full).eval()(idx)[0])


# ------------------------------------------------------------------------------------------------ the CLI
def _trained_count(err: str) -> tuple[int, int]:
    line = next(line for line in err.splitlines() if line.startswith("model: "))
    total, rest = line[len("model: "):].split(" parameters (", 1)
    return int(total.replace(",", "")), int(rest.split(" trained", 1)[0].replace(",", ""))


def test_finetune_lora_end_to_end_and_resume(pretrained, tmp_path, capsys):
    data = write_pairs(tmp_path / "qa.jsonl")
    capsys.readouterr()
    assert main(ft_args(pretrained, data, tmp_path / "full", "--lora-rank", "4")) == 0
    err = capsys.readouterr().err
    base_cfg = read_config(pretrained / "last")["model"]
    C, L = base_cfg["n_embd"], base_cfg["n_layer"]
    total, trained = _trained_count(err)
    assert trained == L * per_block_adapters(C, 4) and "LoRA rank 4, alpha 4 on qkv,proj,ffn" in err
    if kernels.available():
        assert "C kernels: off" not in err  # the adapted model trained on the fused path
    meta = read_config(tmp_path / "full" / "last")
    assert meta["finetune"]["lora"] == {"rank": 4, "alpha": 4.0, "targets": ["qkv", "proj", "ffn"]}

    # the checkpoint is a plain GPT, equal to the training model merged
    plain, _ = load_model(tmp_path / "full" / "last")
    assert type(plain) is GPT and all(type(m) is not LoRALinear for m in plain.modules())
    assert plain.num_parameters() == total
    state = load_trainer_state(tmp_path / "full" / "last")
    training = GPT(plain.config)
    apply_lora(training, 4)
    training.load_state_dict(state["model"])
    idx = torch.randint(0, plain.config.vocab_size, (2, 24))
    torch.testing.assert_close(plain(idx)[0], merged_copy(training).eval()(idx)[0], atol=1e-5, rtol=0)
    # the frozen base is the pre-trained model's, bit for bit (its old rows, where the vocabulary grew)
    base, _ = load_model(pretrained)
    for name, p in base.state_dict().items():
        key = name
        for t in ("attention.qkv", "attention.proj", "feed_forward.fc", "feed_forward.proj"):
            key = key.replace(f"{t}.", f"{t}.base.")
        q = state["model"][key]
        assert torch.equal(q[: p.shape[0]], p), name
    # every command reads it: generation, and chat / eval load the same way
    assert main(["generate", "--model", str(tmp_path / "full"), "--prompt", "Türk", "--max-new-tokens", "4",
                 "--seed", "1"]) == 0

    # stopped at step 3 and resumed to 6 = the uninterrupted run (all inside the default recipe's 20 warm-up
    # steps, so the shorter --max-iters does not change the learning rates)
    half = ft_args(pretrained, data, tmp_path / "half", "--lora-rank", "4")
    half[half.index("--max-iters") + 1] = "3"
    assert main(half) == 0
    capsys.readouterr()
    assert main(["finetune", "--resume", str(tmp_path / "half"), "--max-iters", "6", "--lora-rank", "4"]) == 0
    err = capsys.readouterr().err
    assert "resumed" in err and _trained_count(err)[1] == trained
    for sub in ("model", "optimizer"):
        a = load_trainer_state(tmp_path / "full" / "last")[sub]
        b = load_trainer_state(tmp_path / "half" / "last")[sub]
        assert json.dumps(_flat(a)) == json.dumps(_flat(b)), sub
    a, _ = load_model(tmp_path / "full" / "last")
    b, _ = load_model(tmp_path / "half" / "last")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name

    # resuming with other LoRA settings, or LoRA flags on a run without LoRA, is refused
    capsys.readouterr()
    assert main(["finetune", "--resume", str(tmp_path / "half"), "--lora-rank", "8"]) != 0
    assert "--lora-rank differs from the run's (4); drop it when resuming" in capsys.readouterr().err


def _flat(tree):
    """A nested state with tensors -> JSON-able (tensors as lists), to compare two states exactly."""
    if isinstance(tree, torch.Tensor):
        return [str(tree.dtype), tree.tolist()]
    if isinstance(tree, dict):
        return {str(k): _flat(v) for k, v in sorted(tree.items(), key=lambda kv: str(kv[0]))}
    if isinstance(tree, (list, tuple)):
        return [_flat(v) for v in tree]
    return tree


@pytest.mark.parametrize("flags,match", [
    (["--lora-rank", "0"], "--lora-rank must be a positive integer, got 0; try --lora-rank 8"),
    (["--lora-rank", "-2"], "--lora-rank must be a positive integer"),
    (["--lora-rank", "100000"], "larger than the model's n_embd"),
    (["--lora-rank", "4", "--lora-alpha", "0"], "--lora-alpha must be a positive number"),
    (["--lora-rank", "4", "--lora-alpha", "-1"], "--lora-alpha must be a positive number"),
    (["--lora-rank", "4", "--lora-targets", "qkv,mlp"], "unknown target(s) 'mlp'"),
    (["--lora-alpha", "16"], "--lora-alpha needs --lora-rank"),
])
def test_finetune_bad_lora_flags_are_one_line_and_write_nothing(pretrained, tmp_path, capsys, flags, match):
    out = tmp_path / "out"
    data = write_pairs(tmp_path / "qa.jsonl", n=12)
    capsys.readouterr()
    assert main(ft_args(pretrained, data, out, *flags)) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert match in err[-1] and "Traceback" not in "\n".join(err)
    assert not out.exists()


def test_lora_flags_on_a_run_without_lora_are_refused(pretrained, tmp_path, capsys):
    data = write_pairs(tmp_path / "qa.jsonl", n=12)
    assert main(ft_args(pretrained, data, tmp_path / "ft", "--max-iters", "2", "--eval-interval", "2")) == 0
    assert "finetune" in read_config(tmp_path / "ft" / "last") and "lora" not in read_config(tmp_path / "ft" / "last")["finetune"]
    capsys.readouterr()
    assert main(["finetune", "--resume", str(tmp_path / "ft"), "--max-iters", "3", "--lora-rank", "4"]) != 0
    assert "fine-tuned without LoRA" in capsys.readouterr().err
