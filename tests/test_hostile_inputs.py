"""Hostile or hand-edited files are refused with one line before they cost memory: checkpoint configs,
safetensors headers, deep nestings, bad flag values (issue: run-dir hardening, items 5, 7, 9, 10; the fuzz
test over all three checkpoint files)."""

import contextlib
import json
import resource
import struct
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sifirdan
import sifirdan.cli as cli
from sifirdan import checkpoint as ckpt
from sifirdan.fileio import sha256_hex
from sifirdan.errors import UserError
from sifirdan.model import GPT, GPTConfig
from sifirdan.model.config import GUIDE_BLOCK
from sifirdan.tokenizer import BPETokenizer

TEXT = "Türk milleti, Ankara'da toplanan Büyük Millet Meclisi ile egemenliğini kazandı.\n" * 20


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    tok = BPETokenizer.train(TEXT, vocab_size=300)
    torch.manual_seed(0)
    # the guide's block: its learned position table is the tensor a forged block_size must not fit
    model = GPT(GPTConfig(vocab_size=300, block_size=16, n_embd=32, n_head=4, n_layer=2, tie_weights=False,
                          **GUIDE_BLOCK, bias=True, lm_head_bias=True, init="guide"))
    d = tmp_path_factory.mktemp("ck") / "ck"
    ckpt.save_model(d, model, tok)
    return d


def copy_ck(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def edit_config(d: Path, **model_fields):
    meta = json.loads((d / "config.json").read_text())
    meta["model"].update(model_fields)
    (d / "config.json").write_text(json.dumps(meta))


def refused(d: Path, *words: str) -> str:
    t0 = time.perf_counter()
    with pytest.raises(UserError) as info:
        sifirdan.load_model(d)
    assert time.perf_counter() - t0 < 10  # refused, not computed
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


# ------------------------------------------------------------------------------------------- 5. shapes, memory
@pytest.mark.parametrize("field, value, tensor", [
    ("block_size", 100_000, "position_embedding"),
    ("n_embd", 10**9, "larger than any file can hold"),  # n_embd % n_head still holds; 3e18-element qkv
    ("vocab_size", 10**9, "token_embedding"),
    ("n_layer", 10**6, None),
])
@pytest.mark.parametrize("record", ["architecture record", "shapes only (older checkpoints)"])
def test_config_shapes_are_checked_against_the_weights(checkpoint_dir, tmp_path, field, value, tensor, record):
    d = copy_ck(checkpoint_dir, tmp_path / "ck")
    if record.startswith("shapes"):
        forge_header(d, lambda header: header.pop("__metadata__"))
        named = f"{tensor}" if tensor else "n_layer is 1000000 but the weights hold 2 blocks"
    else:
        named = f"{field} {value}" if tensor else "n_layer is 1000000 but the weights hold 2 blocks"
    edit_config(d, **{field: value})
    refused(d, "config.json does not fit", named, "restore the original config.json")


def test_causal_mask_is_not_a_block_size_squared_buffer():
    # the old (block_size, block_size) bool buffer per layer was 10 GB at block_size 100000
    with torch.device("meta"):
        model = GPT(GPTConfig(block_size=100_000, n_layer=2))
    assert not list(model.buffers())


@pytest.mark.parametrize("mutate, words", [
    (lambda b: struct.pack("<Q", len(b) * 10) + b[8:], "header in a"),  # header length beyond the file
    (lambda b: b[: len(b) - 4], "bytes"),  # truncated data section
    (lambda b: b[:4], "fewer than a safetensors header needs"),
])
def test_safetensors_header_is_checked_against_the_file(checkpoint_dir, tmp_path, mutate, words):
    d = copy_ck(checkpoint_dir, tmp_path / "ck")
    f = d / "model.safetensors"
    f.write_bytes(mutate(f.read_bytes()))
    refused(d, "model.safetensors", words)


def forge_header(d: Path, edit) -> None:
    """Rewrite model.safetensors' header with ``edit(header)`` and record the new checksum, as an attacker
    who also edits config.json would: only the header checks stand between that file and the allocator."""
    f = d / "model.safetensors"
    data = f.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    new = struct.pack("<Q", len(raw)) + raw + data[8 + n :]
    f.write_bytes(new)
    meta = json.loads((d / "config.json").read_text())
    meta["sha256"]["model.safetensors"] = sha256_hex(new)
    (d / "config.json").write_text(json.dumps(meta))


def test_forged_tensor_shape_in_header_is_refused(checkpoint_dir, tmp_path):
    d = copy_ck(checkpoint_dir, tmp_path / "ck")

    def huge(header):
        header["embeddings.token_embedding.weight"]["shape"] = [10**9, 32]

    forge_header(d, huge)
    refused(d, "embeddings.token_embedding.weight", "bytes")


# ------------------------------------------------------------------------------------------- 9. architecture
def test_hand_edited_n_head_with_the_same_shapes_is_refused(checkpoint_dir, tmp_path):
    d = copy_ck(checkpoint_dir, tmp_path / "ck")
    edit_config(d, n_head=2)  # 32 / 2: every tensor keeps its shape, but the model computes another function
    refused(d, "n_head 2 (the weights were saved with 4)")
    edit_config(d, n_head=4, attention="explicit")  # how it is computed may change
    model, _ = sifirdan.load_model(d)
    assert model.config.attention == "explicit"


# ------------------------------------------------------------------------------------------- 7, 10. values, nesting
@pytest.mark.parametrize("field, value, words", [
    ("dropout", None, "dropout must be a number"),
    ("bias", "yes", "bias must be true or false"),
    ("tie_weights", "no", "tie_weights must be true or false"),
    ("n_head", 4.0, "n_head must be an integer"),
    ("block_size", True, "block_size must be an integer"),
])
def test_config_json_null_or_wrong_types(checkpoint_dir, tmp_path, field, value, words):
    d = copy_ck(checkpoint_dir, tmp_path / "ck")
    edit_config(d, **{field: value})
    refused(d, "config.json", words)


def test_deeply_nested_config_json(checkpoint_dir, tmp_path):
    d = copy_ck(checkpoint_dir, tmp_path / "ck")
    (d / "config.json").write_text("[" * 100_000)
    refused(d, "config.json", "nests")


def test_deeply_nested_data_and_toml(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("[" * 100_000 + "\n", encoding="utf-8")
    toml = tmp_path / "c.toml"
    toml.write_text("a = " + "[" * 100_000 + "\n")
    for argv in (["tokenizer", "train", "--input", str(data), "--vocab-size", "300", "--out", str(tmp_path / "t.json")],
                 ["pretrain", "--data", str(data), "--out", str(tmp_path / "r"), "--max-iters", "1"],
                 ["pretrain", "--config", str(toml), "--out", str(tmp_path / "r")]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        errors = [ln for ln in err.splitlines() if "error:" in ln]
        assert "Traceback" not in err and len(errors) == 1 and "nest" in errors[0], err


@pytest.mark.parametrize("argv, words", [
    (["pretrain", "--out", "X", "--grad-clip", "nan"], "grad_clip must be a finite number"),
    (["pretrain", "--out", "X", "--weight-decay", "nan"], "weight_decay must be a finite number"),
    (["pretrain", "--out", "X", "--learning-rate", "inf"], "learning_rate must be a finite number"),
    (["pretrain", "--out", "X", "--seed", str(10**23)], "seed must be an integer from 0"),
    (["pretrain", "--out", "X", "--seed", "1.5"], "invalid int value"),
    (["pretrain", "--out", "X", "--grad-accum", str(10**9)], "grad_accum must be at most"),
    (["tokenizer", "train", "--vocab-size", "1e20"], "invalid int value"),
    (["tokenizer", "train", "--vocab-size", str(10**20)], "larger than any BPE vocabulary needs"),
    (["eval", "--model", "X", "--errors", "foo"], "invalid choice"),
    (["generate", "--model", "X", "--seed", str(10**23)], "seed must be an integer from 0"),
])
def test_bad_values_are_one_line(tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) if "invalid" in words else contextlib.nullcontext():
        rc = cli.main(argv)
        assert rc == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "X").exists()


def test_toml_values_of_the_wrong_type(tmp_path, capsys):
    for line, words in (('learning_rate = "3e-4"', "learning_rate must be a number, got '3e-4'"),
                        ("seed = 1.5", "seed must be an integer, got 1.5"),
                        ('compile = "false"', "compile must be true or false")):
        cfg = tmp_path / "c.toml"
        cfg.write_text(line + "\n")
        assert cli.main(["pretrain", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err


# ------------------------------------------------------------------------------------------- fuzz
def _mutations():
    return st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 1, 2**31, 2**63, 10**12]),
        st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False), st.text(max_size=8), st.just([[[[[]]]]]),
        st.lists(st.integers(-5, 10**10), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )


def _paths(obj, prefix=()):
    """Every (path, value) inside a JSON tree, so a mutation can land at any depth."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:50]):
            yield from _paths(v, prefix + (i,))


def _set(obj, path, value):
    for key in path[:-1]:
        obj = obj[key]
    if path:
        obj[path[-1]] = value


class MemoryLimit:
    """Cap this process's address space for the duration: an allocation past it fails (MemoryError) instead
    of taking the machine; the soft limit goes back afterwards."""

    def __init__(self, extra_bytes: int):
        self.extra = extra_bytes

    def __enter__(self):
        self.old = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/statm") as f:
            vsize = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (vsize + self.extra, self.old[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_AS, self.old)


@pytest.mark.parametrize("target", ["config.json", "tokenizer.json", "model.safetensors"])
def test_fuzz_any_mutation_loads_or_is_refused(checkpoint_dir, tmp_path_factory, target):
    pytest.importorskip("resource")
    originals = {f.name: f.read_bytes() for f in checkpoint_dir.iterdir()}

    @settings(max_examples=300, deadline=10_000, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data):
        d = tmp_path_factory.mktemp("fuzz")
        for name, raw in originals.items():
            (d / name).write_bytes(raw)
        if target == "model.safetensors":
            raw = originals[target]
            n = struct.unpack("<Q", raw[:8])[0]
            header = json.loads(raw[8 : 8 + n])
            paths = list(_paths(header))
            _set(header, data.draw(st.sampled_from(paths[1:])), data.draw(_mutations()))
            body = json.dumps(header).encode()
            length = data.draw(st.one_of(st.just(len(body)), st.integers(0, 2**64 - 1)))
            new = struct.pack("<Q", length) + body + raw[8 + n :]
            (d / target).write_bytes(new)
            meta = json.loads(originals["config.json"])
            meta["sha256"][target] = sha256_hex(new)  # the checksum is forged too: the header checks must hold
            (d / "config.json").write_text(json.dumps(meta))
        else:
            obj = json.loads(originals[target])
            paths = list(_paths(obj))
            _set(obj, data.draw(st.sampled_from(paths[1:])), data.draw(_mutations()))
            text = json.dumps(obj)
            (d / target).write_text(text)
            if target == "tokenizer.json":
                meta = json.loads(originals["config.json"])
                meta["sha256"][target] = sha256_hex(text.encode())
                (d / "config.json").write_text(json.dumps(meta))
        with MemoryLimit(2 * 2**30):
            try:
                sifirdan.load_model(d)
            except UserError as e:
                assert "\n" not in str(e)

    run()
