"""DDP: 2 CPU processes x batch B == 1 process x batch B x grad_accum 2 (same data streams, same loss curve),
and a DDP run stopped and resumed == the same DDP run straight through."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys, torch
from sifirdan.data import DataConfig, prepare_bins
from sifirdan.model import GPT, GPTConfig
from sifirdan.tokenizer import BPETokenizer
from sifirdan.train import TrainConfig, Trainer
from sifirdan.train.distributed import env_dist_info, shutdown_distributed
from sifirdan.train.pretrain_data import pretrain_data

data_dir, out, accum = sys.argv[1], sys.argv[2], int(sys.argv[3])
stop_at = (int(sys.argv[4]) or None) if len(sys.argv) > 4 else None  # stop (with a checkpoint) after this many steps
resume = len(sys.argv) > 5 and sys.argv[5] == "resume"
tok = BPETokenizer.load(data_dir + "/tok.json")
bins = prepare_bins(data_dir + "/tiny.txt", tok, DataConfig(), cache_dir=data_dir + "/cache", progress=False)
dist = env_dist_info()
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_embd=32, n_head=2, n_layer=2, dropout=0.0))
cfg = TrainConfig(batch_size=4, grad_accum=accum, max_iters=8, eval_interval=4, eval_iters=2, log_interval=1,
                  sample_interval=0, checkpoint_interval=4, threads=1, final_eval=False, learning_rate=3e-3)
trainer = Trainer(model, cfg, pretrain_data(bins, cfg, 16, dist), tokenizer=tok, out_dir=out, dist_info=dist,
                  resume=resume, verbose=False)
trainer.fit(stop_at=stop_at)
shutdown_distributed()
"""


def _losses(run: Path) -> dict:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {(r["kind"], r["iter"]): r.get("loss", r.get("val_loss")) for r in recs if r["kind"] in ("train", "eval")}


@pytest.mark.slow
def test_two_processes_match_grad_accumulation(tmp_path):
    from sifirdan.data import DataConfig, prepare_bins
    from sifirdan.tokenizer import BPETokenizer

    rng = random.Random(0)
    words = "Türk milleti Ankara Meclis egemenlik istiklal cumhuriyet ordu halk vatan ve bir bu için".split()
    (tmp_path / "tiny.txt").write_text(
        "".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 12))) + ".\n" for _ in range(300)), encoding="utf-8"
    )
    tok = BPETokenizer.train((tmp_path / "tiny.txt").read_text(encoding="utf-8"), vocab_size=300)
    tok.save(tmp_path / "tok.json")
    prepare_bins(tmp_path / "tiny.txt", tok, DataConfig(), cache_dir=tmp_path / "cache", progress=False)  # warm the cache
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)

    single = subprocess.run([sys.executable, str(script), str(tmp_path), str(tmp_path / "single"), "2"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(tmp_path), str(tmp_path / "ddp"), "1"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    a, b = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert sorted(a) == sorted(b) and len(a) == 8 + 3
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
    # rank 0 saved a checkpoint holding both ranks' sampler/RNG states
    state = json.loads((tmp_path / "ddp" / "last" / "trainer_state.json").read_text())
    assert len(state["ranks"]) == 2

    # stop the same DDP run after 4 steps, resume it in fresh processes: the same losses as straight through
    def ddp_run(*extra):
        run = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
             str(tmp_path), str(tmp_path / "ddp_resumed"), "1", *extra],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert run.returncode == 0, run.stderr[-3000:]

    ddp_run("4")
    ddp_run("0", "resume")
    c = _losses(tmp_path / "ddp_resumed")
    assert sorted(c) == sorted(b)
    for key in b:
        assert c[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
