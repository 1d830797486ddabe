"""`sifirdan demo`: every stage offline (--tiny, as CI runs it), Ctrl-C and resume, and the folder's rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sifirdan.cli import demo as demo_cli
from sifirdan.cli import main

# Runs the CLI with every outgoing connection refused and recorded: the demo must not even try the network.
GUARD = r"""
import socket, sys
tried = []
def refuse(*args, **kwargs):
    tried.append(repr(args[1:] if args and isinstance(args[0], socket.socket) else args))
    open(sys.argv[1], "a").write(tried[-1] + "\n")
    raise OSError("network access attempted in an offline test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
from sifirdan.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _env(tmp_path: Path) -> dict:
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens, so any proxied request fails at once
    env = {**os.environ, "SIFIRDAN_CACHE": str(tmp_path / "cache"), "HTTP_PROXY": dead, "HTTPS_PROXY": dead,
           "ALL_PROXY": dead, "http_proxy": dead, "https_proxy": dead, "all_proxy": dead, "NO_PROXY": "",
           "no_proxy": "", "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "PYTHONUNBUFFERED": "1"}
    return env


def _demo(tmp_path: Path, out: Path, *flags: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", GUARD, str(tmp_path / "net.log"), "demo", "--tiny", "--out", str(out), *flags],
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "demo"
    p = _demo(tmp, out)
    text, _ = p.communicate(timeout=600)
    return tmp, out, p.returncode, text


def test_tiny_demo_runs_every_stage_offline(tiny_run):
    tmp, out, code, text = tiny_run
    assert code == 0, text[-3000:]
    assert not (tmp / "net.log").exists(), (tmp / "net.log").read_text()
    state = json.loads((out / "demo.json").read_text())
    assert list(state["stages"]) == list(demo_cli.STAGES)
    for i, stage in enumerate(demo_cli.STAGES, start=1):
        assert f"[{i}/5] {demo_cli.TITLES[stage]}: " in text  # each stage reports its own time
    # the tokenizer saw the train split only; pre-training scored every val token
    pre = state["stages"]["pretrain"]
    assert pre["steps"] == 600 and pre["val_bits_per_char"] is not None and 1.5 < pre["val_bits_per_char"] < 6
    ans = state["stages"]["answers"]
    lines = (out / "answers.jsonl").read_text(encoding="utf-8").splitlines()
    assert ans["n"] == len(lines) == 30  # 10 % of the 300 Nutuk QA pairs, never trained on
    assert text.count("    kaynak:   ") == demo_cli.N_SHOWN
    # the default's LM-head bias is folded into GPT-2's bias-free head: equal logits up to float32 rounding
    assert state["stages"]["export"]["logits_max_abs_diff"] <= 3e-5
    for row in ("parameters", "val bits/char", "PPMd", "held-out answers", "time: total", "artifact: export"):
        assert row in text
    assert f"sifirdan chat --model {out / 'finetune'}" in text and "sifirdan serve --model" in text
    assert (out / "summary.md").read_text(encoding="utf-8").count("time: ") == 6


def test_rerun_reuses_every_stage(tiny_run, tmp_path):
    tmp, out, code, _ = tiny_run
    assert code == 0
    p = _demo(tmp, out)
    text, _ = p.communicate(timeout=120)
    assert p.returncode == 0, text
    assert text.count("done earlier") == 5 and "iter " not in text


def test_ctrl_c_then_rerun_continues_where_it_stopped(tmp_path):
    out = tmp_path / "demo"
    p = _demo(tmp_path, out)
    seen = []
    deadline = time.monotonic() + 300
    for line in p.stdout:  # bounded: the run ends by itself if the signal never comes
        seen.append(line)
        if line.startswith("iter 250/600"):
            p.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline
    rest, _ = p.communicate(timeout=120)
    text = "".join(seen) + rest
    assert p.returncode == 130, text[-2000:]
    assert "interrupted in the pretrain stage" in text and f"sifirdan demo --out {out} --tiny" in text
    state = json.loads((out / "demo.json").read_text())
    assert list(state["stages"]) == ["tokenizer"]
    assert (out / "pretrain" / "last" / "config.json").is_file()  # the trainer saved where it stopped

    p = _demo(tmp_path, out)
    text, _ = p.communicate(timeout=600)
    assert p.returncode == 0, text[-3000:]
    assert "[1/5] tokenizer (guide §2): done earlier" in text
    assert "resumed" in text and "iter 50/600" not in text  # continued, not restarted
    assert json.loads((out / "demo.json").read_text())["stages"]["pretrain"]["steps"] == 600


# ------------------------------------------------------------------------------------------------ the folder
def test_a_users_folder_is_never_written(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("benim\n", encoding="utf-8")
    assert main(["demo", "--tiny", "--out", str(out)]) == 2
    assert "not a sifirdan demo" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_another_profile_needs_fresh(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "demo.json").write_text(json.dumps({"format": "sifirdan-demo", "profile": "tiny", "stages": {}}))
    assert main(["demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "made with the tiny profile" in err and "--tiny" in err and "--fresh" in err


def test_not_enough_disk_is_said_before_any_stage(tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 30, 10 << 30, 5 << 20))
    out = tmp_path / "d"
    assert main(["demo", "--tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not enough disk space" in err and "5 MB free" in err and "--out DIR on another disk" in err
    assert not out.exists()


def test_fresh_starts_over_and_reruns_reuse(tmp_path, monkeypatch, capsys):
    calls = []

    def fake(stage):
        def run(demo, profile):
            calls.append(stage)
            (demo.path / f"{stage}.out").write_text("x")
            checked = {"logits_max_abs_diff": 0.0} if stage == "export" else {}  # the export's reload check ran
            return {"path": str(demo.path / f"{stage}.out"), **checked}
        return run

    monkeypatch.setattr(demo_cli, "STAGE_FUNCS", {s: fake(s) for s in demo_cli.STAGES})
    out = tmp_path / "d"
    assert main(["demo", "--tiny", "--out", str(out)]) == 0
    assert calls == list(demo_cli.STAGES)
    assert main(["demo", "--tiny", "--out", str(out)]) == 0
    assert calls == list(demo_cli.STAGES)  # nothing ran again
    (out / "pretrain").mkdir()
    (out / "pretrain" / "run.json").write_text("{}")
    assert main(["demo", "--tiny", "--out", str(out), "--fresh"]) == 0
    assert calls == 2 * list(demo_cli.STAGES) and not (out / "pretrain").exists()
    capsys.readouterr()


def test_a_rerun_runs_an_export_check_skipped_before_transformers_was_installed(tmp_path, monkeypatch, capsys):
    calls = []

    def fake(stage):
        def run(demo, profile):
            calls.append(stage)
            return {"path": str(demo.path)}  # no logits_max_abs_diff: the reload check was skipped
        return run

    monkeypatch.setattr(demo_cli, "STAGE_FUNCS", {s: fake(s) for s in demo_cli.STAGES})
    monkeypatch.setattr(demo_cli, "has_transformers", lambda: False)
    out = tmp_path / "d"
    assert main(["demo", "--tiny", "--out", str(out)]) == 0
    assert main(["demo", "--tiny", "--out", str(out)]) == 0
    assert calls == list(demo_cli.STAGES)  # still no transformers: nothing ran again
    monkeypatch.setattr(demo_cli, "has_transformers", lambda: True)
    assert main(["demo", "--tiny", "--out", str(out)]) == 0
    assert calls == list(demo_cli.STAGES) + ["export"]  # transformers now there: the skipped check runs
    capsys.readouterr()
