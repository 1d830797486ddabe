"""The training loop: learning, bit-exact resume, best/last checkpoints, NaN stop, schedules, optimizer groups."""

import json
import math
import random

import pytest
import torch

import sifirdan
from sifirdan.data import DataConfig, prepare_bins
from sifirdan.model import GPT, GPTConfig
from sifirdan.tokenizer import BPETokenizer
from sifirdan.train import TrainConfig, Trainer, lr_at, make_optimizer
from sifirdan.train.config import TRAIN_PRESETS, resume_differences
from sifirdan.train.pretrain_data import pretrain_data

WORDS = ("Türk milleti Ankara Meclis egemenlik istiklal cumhuriyet ordu halk vatan millet hürriyet "
         "ve bir bu için ile da de çok büyük").split()


def tiny_text(n_lines=500, seed=0) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) + ".\n" for _ in range(n_lines))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    path = d / "tiny.txt"
    path.write_text(tiny_text(), encoding="utf-8")
    tok = BPETokenizer.train(path.read_text(encoding="utf-8"), vocab_size=300)
    bins = prepare_bins(path, tok, DataConfig(), cache_dir=d / "cache", progress=False)
    return tok, bins


def make_model(tok, dropout=0.1):
    torch.manual_seed(1337)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_embd=32, n_head=2, n_layer=2, dropout=dropout))


def make_cfg(**kw):
    base = dict(batch_size=8, max_iters=20, eval_interval=10, eval_iters=2, log_interval=1, sample_interval=0,
                checkpoint_interval=0, learning_rate=3e-3, warmup_iters=3, threads=1, device="cpu")
    return TrainConfig(**{**base, **kw})


def train_losses(run_dir) -> dict[int, float]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: r["loss"] for r in recs if r["kind"] == "train"}


def test_loss_decreases_and_outputs(corpus, tmp_path):
    tok, bins = corpus
    cfg = make_cfg(max_iters=40, sample_interval=1, sample_tokens=5)
    result = Trainer(make_model(tok), cfg, pretrain_data(bins, cfg, 16), tokenizer=tok, out_dir=tmp_path, verbose=False).fit()
    assert result.status == "done" and result.step == 40
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [r["iter"] for r in evals] == [0, 10, 20, 30, 40]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    assert evals[0]["val_loss"] == pytest.approx(math.log(tok.vocab_size), abs=0.2)  # starts near uniform
    train = [r for r in recs if r["kind"] == "train"]
    assert all(r["tokens_per_s"] > 0 and r["peak_mem_mb"] > 0 and r["grad_norm"] is not None for r in train)
    final = [r for r in recs if r["kind"] == "final"][0]
    assert final["val_tokens"] == len(bins.val) - 1  # the full pass scores every validation token once
    assert final["val_bits_per_byte"] == pytest.approx(final["val_loss"] / math.log(2) / bins.bytes_per_token("val"))
    assert any(r["kind"] == "sample" for r in recs)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    # best/ holds the lowest periodic val loss; last/ the final step with trainer state
    best = json.loads((tmp_path / "best" / "config.json").read_text())
    assert best["val_loss"] == pytest.approx(min(r["val_loss"] for r in evals[1:]))
    last = json.loads((tmp_path / "last" / "config.json").read_text())
    assert last["step"] == 40 and (tmp_path / "last" / "trainer_state.safetensors").is_file()
    assert not (tmp_path / "best" / "trainer_state.json").exists()
    model, _ = sifirdan.load_model(tmp_path)  # the run dir resolves to best/
    assert model.config.n_embd == 32


def test_resume_is_bit_exact(corpus, tmp_path):
    """k steps, save, resume in a fresh Trainer, k more == 2k straight (dropout on: RNG state matters)."""
    tok, bins = corpus
    cfg = make_cfg(max_iters=12, eval_interval=5, grad_accum=2)
    straight = Trainer(make_model(tok), cfg, pretrain_data(bins, cfg, 16), tokenizer=tok, out_dir=tmp_path / "a", verbose=False)
    straight.fit()

    first = Trainer(make_model(tok), cfg, pretrain_data(bins, cfg, 16), tokenizer=tok, out_dir=tmp_path / "b", verbose=False)
    assert first.fit(stop_at=6).status == "stopped"
    torch.manual_seed(999)  # disturb the global RNG: resume must restore it
    random.seed(5)
    other_init = make_model(tok)  # different weights: they must be overwritten
    resumed = Trainer(other_init, cfg, pretrain_data(bins, cfg, 16), tokenizer=tok, out_dir=tmp_path / "b",
                      resume=True, verbose=False)
    assert resumed.step == 6
    resumed.fit()

    a, b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert a == b  # identical floats, not approximately equal
    for (n1, p1), (n2, p2) in zip(straight.raw_model.state_dict().items(), resumed.raw_model.state_dict().items()):
        assert torch.equal(p1, p2), n1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path):
    tok, bins = corpus
    cfg = make_cfg(max_iters=30, checkpoint_interval=5, eval_interval=100)
    model = make_model(tok)
    calls = {"n": 0}

    def poison(module, inputs, output):  # from the 8th training forward on, the logits turn into NaN
        if module.training:
            calls["n"] += 1
            if calls["n"] >= 8:
                return output * float("nan")
        return output

    model.lm_head.register_forward_hook(poison)
    trainer = Trainer(model, cfg, pretrain_data(bins, cfg, 16), tokenizer=tok, out_dir=tmp_path, verbose=False)
    result = trainer.fit()
    assert result.status == "diverged" and result.step == 8
    assert "learning rate" in result.message and "fp16" in result.message and "last (step 5)" in result.message
    last = json.loads((tmp_path / "last" / "config.json").read_text())
    assert last["step"] == 5
    good, _ = sifirdan.load_model(tmp_path / "last")
    assert all(torch.isfinite(p).all() for p in good.parameters())


def test_lr_schedules():
    cos = TrainConfig(learning_rate=1e-3, warmup_iters=10, max_iters=110, min_lr_ratio=0.1)
    assert lr_at(0, cos) == pytest.approx(1e-4)
    assert lr_at(9, cos) == pytest.approx(1e-3)
    assert lr_at(60, cos) == pytest.approx(0.55e-3)
    assert lr_at(110, cos) == pytest.approx(1e-4)
    guide = TrainConfig(**TRAIN_PRESETS["guide"])
    assert {lr_at(s, guide) for s in (0, 500, 999)} == {3e-4}


def test_guide_preset_is_the_guides_recipe():
    g = TrainConfig(**TRAIN_PRESETS["guide"])
    assert (g.batch_size, g.max_iters, g.learning_rate, g.eval_interval, g.lr_schedule) == (32, 1000, 3e-4, 100, "constant")
    # torch.optim.AdamW(model.parameters(), lr=3e-4) defaults, no clipping
    assert (g.beta1, g.beta2, g.weight_decay, g.decay_all, g.grad_clip) == (0.9, 0.999, 0.01, True, 0.0)


def test_weight_decay_only_on_matrices(corpus):
    tok, _ = corpus
    model = make_model(tok)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    assert embeddings
    for decay_embeddings in (True, False):
        opt = make_optimizer(model, make_cfg(weight_decay=0.1, decay_embeddings=decay_embeddings), torch.device("cpu"))
        decayed, plain = opt.param_groups
        assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
        assert all(p.dim() >= 2 for p in decayed["params"])
        assert all(p.dim() < 2 or (id(p) in embeddings and not decay_embeddings) for p in plain["params"])
        assert any(id(p) in embeddings for p in decayed["params"]) == decay_embeddings
        assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_resume_differences_ignore_allowed_fields():
    old = {"model": {"n_layer": 2}, "train": {"max_iters": 10, "learning_rate": 1e-3}, "data": {}}
    new = {"model": {"n_layer": 3}, "train": {"max_iters": 99, "learning_rate": 1e-2}, "data": {}}
    assert resume_differences(old, new) == ["--n-layer 2 -> 3", "--learning-rate 0.001 -> 0.01"]


def test_bad_config_values():
    from sifirdan.errors import UserError

    with pytest.raises(UserError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(UserError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(UserError, match="unknown training config key"):
        TrainConfig.from_dict({"lr": 1})


def test_device_cuda_without_gpu_is_user_error():
    from sifirdan.errors import UserError
    from sifirdan.train.runtime import resolve_device, resolve_dtype

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        resolve_dtype("fp16", torch.device("cpu"))


class FixedBatches:
    """A BatchSource that hands out the given batches in order (and back to the start)."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def next_batch(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def test_accumulated_gradients_equal_one_big_batch(corpus, monkeypatch):
    """grad_accum 2 x batch B must produce exactly the gradient of one batch of 2B (the mean over all its
    tokens). Compared as the gradients reach clipping: clipping and AdamW are scale invariant enough that a
    missing ``/ grad_accum`` passes every test that only looks at losses."""
    from sifirdan.data import BatchSampler
    from sifirdan.train.trainer import TrainData

    tok, bins = corpus
    x, y = BatchSampler(bins.train, 8, 16, seed=3).next_batch()
    real_clip = torch.nn.utils.clip_grad_norm_
    grads = {}
    for accum in (1, 2):
        model = make_model(tok, dropout=0.0)
        rows = 8 // accum  # the same 8 rows: one batch, or two micro-batches of 4
        sources = [FixedBatches([(x[m * rows:(m + 1) * rows], y[m * rows:(m + 1) * rows])]) for m in range(accum)]
        cfg = make_cfg(batch_size=rows, grad_accum=accum, max_iters=1, grad_clip=1.0)
        trainer = Trainer(model, cfg, TrainData(train=sources), verbose=False)
        seen = []

        def recording_clip(params, max_norm, _seen=seen, _model=trainer.raw_model):
            _seen.append({n: p.grad.detach().clone() for n, p in _model.named_parameters()})
            return real_clip(params, max_norm)

        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
        trainer.train_step()
        assert len(seen) == 1
        grads[accum] = seen[0]
    for name, g in grads[1].items():
        torch.testing.assert_close(grads[2][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_cpu_share_uses_the_cores_others_leave_free(monkeypatch):
    """Threads follow what other processes use (measured from /proc/stat minus this process's CPU time)."""
    from sifirdan.train import runtime

    clock = {"t": 100.0, "all": 0.0, "mine": 0.0}
    monkeypatch.setattr(runtime, "_cpu_times", lambda: (clock["t"], clock["all"], clock["mine"]))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        share = runtime.CpuShare(cores=2)

        def tick(seconds, mine, others):
            clock["t"] += seconds
            clock["mine"] += mine * seconds
            clock["all"] += (mine + others) * seconds

        tick(1.0, mine=2.0, others=0.0)
        assert share.adjust() is None and torch.get_num_threads() == 2  # idle machine: all cores
        tick(1.0, mine=1.0, others=1.0)  # another program keeps a core busy
        assert share.adjust() == 1 and torch.get_num_threads() == 1
        tick(1.0, mine=1.0, others=0.9)
        assert share.adjust() is None
        tick(1.0, mine=1.0, others=0.0)  # it stopped
        assert share.adjust() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
