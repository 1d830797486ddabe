"""The training stages as library calls (issue 20): pretrain -> finetune -> eval-instruct in-process, bit-exact
resume through the library, typed settings, and the code's layout rules (thin CLI, one-way imports)."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import write_tiny_text
from sifirdan.errors import UserError
from sifirdan.train import FinetuneSettings, PretrainSettings, RunSettings, StageResult, finetune, pretrain

PKG = Path(__file__).resolve().parents[1] / "sifirdan"
TINY_MODEL = dict(n_embd=32, n_head=2, n_layer=2, block_size=32, vocab_size=300)
TINY_TRAIN = dict(batch_size=4, max_iters=4, eval_interval=2, eval_iters=1, threads=1, sample_interval=0)


def write_pairs(path: Path, n: int = 24) -> Path:
    words = "Türk milleti Ankara Meclis egemenlik istiklal cumhuriyet ordu halk vatan".split()
    rows = [{"question": f"Soru {i}: {words[i % 10]} {words[(3 * i) % 10]}?", "answer": f"{words[(7 * i) % 10]} {words[i % 10]}."}
            for i in range(n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipeline")
    lines: list[str] = []
    result = pretrain(PretrainSettings(source=[write_tiny_text(d / "t.txt")], model=TINY_MODEL, train=TINY_TRAIN),
                      RunSettings(out=d / "pre"), log=lines.append)
    return d, result, lines


def test_pretrain_finetune_eval_instruct_in_process(base_run, tmp_path, capsys):
    from sifirdan.chat import template_of
    from sifirdan.chat.evaluate import evaluate_answers, load_eval_data
    from sifirdan.checkpoint import load_model, read_config

    d, pre, lines = base_run
    assert isinstance(pre, StageResult) and pre.status == "done" and pre.step == 4
    assert pre.run_dir == d / "pre" and (pre.run_dir / "last" / "config.json").is_file()
    assert pre.final is not None and math.isfinite(pre.final["loss"]) and pre.final["bits_per_char"] > 0
    # progress went to the callback: the settings' summary, an evaluation and the final pass
    assert any(ln.startswith("model: ") for ln in lines) and any(ln.startswith("final: ") for ln in lines)

    ft_lines: list[str] = []
    data = write_pairs(tmp_path / "qa.jsonl")
    ft = finetune(FinetuneSettings(model=pre.run_dir, data=str(data), train=dict(TINY_TRAIN, max_iters=6)),
                  RunSettings(out=tmp_path / "ft"), log=ft_lines.append)
    assert ft.status == "done" and ft.step == 6 and ft.best_val_loss is not None
    assert any(ln.startswith("data: ") for ln in ft_lines)
    assert capsys.readouterr().out == ""  # a library call prints nothing on stdout

    directory = ft.run_dir / "last"
    template = template_of(read_config(directory))
    model, tokenizer = load_model(directory)
    eval_data = load_eval_data(str(data), template, tokenizer, max_samples=5)
    summary, records = evaluate_answers(model, tokenizer, template, eval_data.conversations, max_new_tokens=8)
    assert summary["n"] == len(records) == 5 and 0 <= summary["ended_rate"] <= 1 and 0 <= summary["f1"] <= 1


def test_library_resume_is_bit_exact(base_run, tmp_path):
    from sifirdan.checkpoint import load_model

    d, pre, _ = base_run
    data = write_pairs(tmp_path / "qa.jsonl")
    train = dict(TINY_TRAIN, max_iters=6, eval_interval=3, checkpoint_interval=3)
    full = finetune(FinetuneSettings(model=pre.run_dir, data=str(data), train=train), RunSettings(out=tmp_path / "full"),
                    log=lambda m: None)
    half = finetune(FinetuneSettings(model=pre.run_dir, data=str(data), train=dict(train, max_iters=3)),
                    RunSettings(out=tmp_path / "half"), log=lambda m: None)
    assert half.step == 3
    resumed = finetune(FinetuneSettings(train={"max_iters": 6}), RunSettings(resume=tmp_path / "half"), log=lambda m: None)
    assert resumed.step == full.step == 6
    a, _ = load_model(full.run_dir / "last")
    b, _ = load_model(resumed.run_dir / "last")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_typed_sections_and_bad_settings(base_run, tmp_path):
    from sifirdan.model import GPTConfig
    from sifirdan.train import TrainConfig

    d, _, _ = base_run
    text = d / "t.txt"
    # a dataclass sets every field of its section: this one (vocab 300, 2 steps) trains as given
    result = pretrain(PretrainSettings(source=[text], model=GPTConfig(**TINY_MODEL),
                                       train=TrainConfig(**dict(TINY_TRAIN, max_iters=2))),
                      RunSettings(out=tmp_path / "typed"), log=lambda m: None)
    assert result.status == "done" and result.step == 2
    with pytest.raises(UserError, match="--out RUN_DIR is required"):
        pretrain(PretrainSettings(source=[text]), RunSettings())
    with pytest.raises(UserError, match="unknown model config key"):
        pretrain(PretrainSettings(source=[text], model={"n_embed": 32}), RunSettings(out=tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()  # nothing written for a bad setting
    with pytest.raises(UserError, match="unknown recipe"):
        finetune(FinetuneSettings(model=d / "pre", recipe="mine"), RunSettings(out=tmp_path / "ft"))
    with pytest.raises(UserError, match="cannot resume .* changed configuration"):
        pretrain(PretrainSettings(model={"n_layer": 3}), RunSettings(resume=d / "pre"))


# ------------------------------------------------------------------------------------------------ README
README_TINY = {
    "pretrain": ["--preset", "nano", "--vocab-size", "300", "--max-iters", "2", "--eval-interval", "2", "--eval-iters",
                 "1", "--batch-size", "4", "--block-size", "32", "--threads", "1", "--sample-interval", "0"],
    "finetune": ["--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1", "--batch-size", "4", "--threads", "1"],
    "eval-instruct": ["--max-samples", "3", "--max-new-tokens", "4", "--threads", "1"],
}


def readme_own_data_commands() -> list[str]:
    text = (PKG.parent / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- OWN-DATA")[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("sifirdan ")]


def test_the_readme_own_data_commands_run(tmp_path, monkeypatch, capsys):
    """README "Your own data": each command as shown (plus tiny settings), on small files named as there."""
    import csv
    import random
    import shlex

    from sifirdan.cli import main

    monkeypatch.chdir(tmp_path)
    write_tiny_text(tmp_path / "kitap.txt")
    (tmp_path / "metinler").mkdir()
    write_tiny_text(tmp_path / "metinler" / "a.txt")
    rng = random.Random(1)
    lines = (tmp_path / "metinler" / "a.txt").read_text(encoding="utf-8").splitlines()
    rng.shuffle(lines)
    (tmp_path / "metinler" / "b.txt").write_text("\n".join(" ".join(reversed(ln.split())) for ln in lines), encoding="utf-8")
    pairs = write_pairs(tmp_path / "sorular.jsonl")
    with open(tmp_path / "sorular.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["soru", "cevap"])
        for line in pairs.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            w.writerow([row["question"], row["answer"]])
    commands = readme_own_data_commands()
    assert [shlex.split(c)[1] for c in commands] == ["pretrain", "pretrain", "finetune", "finetune", "eval-instruct"]
    for command in commands:
        argv = shlex.split(command)[1:]
        assert main(argv + README_TINY[argv[0]]) == 0, (command, capsys.readouterr().err[-2000:])
    assert "2 steps" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ layout rules
COMMANDS = ["demo", "data", "tokenizer", "params", "pretrain", "finetune", "template", "eval", "eval_instruct",
            "generate", "chat", "serve", "interop", "attention"]


def _imports(path: Path):
    """Every ``sifirdan...`` module a file imports (at the top or inside a function), with its line."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sifirdan"):
            if node.module in ("sifirdan", "sifirdan.cli"):
                yield from ((f"{node.module}.{a.name}", node.lineno) for a in node.names)
            else:
                yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names if a.name.startswith("sifirdan"))


def test_the_cli_is_thin_no_subcommand_imports_another_and_no_function_is_long():
    from sifirdan.cli import COMMANDS as registered

    assert sorted(registered) == sorted(COMMANDS)
    problems = []
    for f in sorted((PKG / "cli").glob("*.py")):
        for module, line in _imports(f):
            parts = module.split(".")
            if len(parts) > 2 and parts[1] == "cli" and parts[2] in COMMANDS and parts[2] != f.stem:
                problems.append(f"{f.name}:{line} imports {module}")
            if module == "sifirdan.cli.main":
                problems.append(f"{f.name}:{line} runs the CLI by argv")
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                problems.append(f"{f.name}:{node.lineno} {node.name} is {node.end_lineno - node.lineno + 1} lines")
    assert not problems, problems


# package -> packages it must never import (the layers above it, or beside it where the guide keeps them apart)
FORBIDDEN = {
    "tokenizer": {"data", "train", "cli", "model", "checkpoint", "generate", "chat", "serve", "interop"},
    "model": {"tokenizer", "data", "train", "cli", "checkpoint", "generate", "chat", "serve", "interop"},
    "data": {"model", "train", "cli", "checkpoint", "generate", "serve", "interop"},
    "checkpoint": {"train", "cli", "data", "generate", "serve", "interop"},
    "generate": {"train", "cli", "data", "serve", "interop"},
    "train": {"cli", "serve", "interop"},
    "interop": {"train", "cli", "serve"},
    "serve": {"cli", "interop"},
}


def test_imports_run_one_way():
    problems = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).with_suffix("").parts
        own = rel[0]
        for module, line in _imports(f):
            parts = module.split(".")
            target = parts[1] if len(parts) > 1 else ""
            if target in FORBIDDEN.get(own, ()):
                problems.append(f"{'/'.join(rel)}.py:{line} ({own}) imports {module}")
    assert not problems, problems
