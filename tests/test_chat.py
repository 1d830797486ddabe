"""`sifirdan chat` and `generate --instruction`: the session logic in-process (history, fitting the context,
commands, Ctrl-C, the plain-completion fallback), `chat -p` through the CLI, and the interactive chat through a
real pseudo-terminal (pexpect)."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sifirdan.cli as cli
from sifirdan.chat.session import HELP, ChatSession, default_config
from sifirdan.chat.template import DEFAULT_TEMPLATE
from sifirdan.checkpoint import save_model
from sifirdan.errors import UserError
from sifirdan.generate import Engine, GenerationConfig, TokenEvent
from sifirdan.model import GPT, GPTConfig
from sifirdan.tokenizer import BPETokenizer

REPO = Path(__file__).resolve().parents[1]
TEXT = "Türkiye'nin başkenti Ankara'dır. Çiğdem ağaçların altında şarkı söylüyor. Merhaba nasılsın?\n" * 10
TIMEOUT = 30  # seconds, for every subprocess and pexpect wait


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TEXT, vocab_size=300)


def _model(tok, block_size=64):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_embd=32, n_head=2, n_layer=2,
                         init="pytorch", tie_weights=False, lm_head_bias=True))


FT = {"chat_template": DEFAULT_TEMPLATE.to_dict()}


@pytest.fixture(scope="module")
def dirs(tok, tmp_path_factory):
    """Tiny checkpoints: fine-tuned (a template), pre-trained (none), a "talker" that never ends a reply and
    writes only letters (for Ctrl-C), a "stopper" whose first token is always </RESP>, and one whose template
    names a token its tokenizer lacks."""
    root = tmp_path_factory.mktemp("chat")
    model = _model(tok)
    out = {"ft": save_model(root / "ft", model, tok, FT), "pt": save_model(root / "pt", model, tok)}
    talker = _model(tok)
    with torch.no_grad():
        talker.lm_head.bias.fill_(-20.0)
        readable = [tok.encode(c)[0] for c in "abcdefghijklmnoprstuvyz "]
        talker.lm_head.bias[readable] = 0.0
    out["talker"] = save_model(root / "talker", talker, tok, FT)
    stopper = _model(tok)
    with torch.no_grad():
        stopper.lm_head.bias[tok.special_tokens["</RESP>"]] = 1e4
    out["stopper"] = save_model(root / "stopper", stopper, tok, FT)
    out["stopper_pt"] = save_model(root / "stopper_pt", stopper, tok)
    out["bad"] = save_model(root / "bad", model, tok, {"chat_template": {**DEFAULT_TEMPLATE.to_dict(), "resp_close": "<|im_end|>"}})
    return out


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    # in-process CLI runs load only the commands under test (the subprocess runs use the whole CLI)
    monkeypatch.setattr(cli, "COMMANDS", ["generate", "chat"])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ a scripted engine
class ScriptedEngine:
    """Engine's interface for the session; each reply is the next scripted answer text, then </RESP>.
    Records every prompt and config it was given."""

    def __init__(self, tokenizer, answers, block_size=64, stop=True):
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.answers = list(answers)
        self.stop = stop
        self.prompts: list[list[int]] = []
        self.configs: list[GenerationConfig] = []

    def encode_prompt(self, text):
        return self.tokenizer.encode(text)

    def iter_tokens(self, prompts, config):
        config = config.validate()
        self.prompts.append(list(prompts[0]))
        self.configs.append(config)
        answer = self.answers.pop(0)
        ids = [self.tokenizer.encode(c)[0] for c in answer]  # one token per (ASCII) character
        if self.stop:
            ids.append(self.tokenizer.special_tokens["</RESP>"])
        for i in ids[: config.max_new_tokens]:
            is_stop = i in (config.stop_token_ids or ())
            yield TokenEvent(0, i, "" if is_stop else self.tokenizer.decode([i]))
            if is_stop:
                return


def user(t):
    return {"role": "user", "content": t}


def assistant(t):
    return {"role": "assistant", "content": t}


def drain(reply):
    return "".join(reply)


# ------------------------------------------------------------------------------------------------ session logic
def test_history_is_rendered_again_each_turn(tok):
    eng = ScriptedEngine(tok, ["Ankara.", "Evet."], block_size=256)
    s = ChatSession(eng, DEFAULT_TEMPLATE, system="Kısa cevap ver.")
    r = s.ask("Başkent?")
    assert drain(r) == "Ankara." and r.finish_reason == "stop" and r.notice is None
    r = s.ask("Emin misin?")
    assert drain(r) == "Evet."
    sys_msg = {"role": "system", "content": "Kısa cevap ver."}
    assert eng.prompts[0] == DEFAULT_TEMPLATE.render_prompt([sys_msg, user("Başkent?")], tok)
    assert eng.prompts[1] == DEFAULT_TEMPLATE.render_prompt([sys_msg, user("Başkent?"), assistant("Ankara."), user("Emin misin?")], tok)
    assert s.conversation() == [sys_msg, user("Başkent?"), assistant("Ankara."), user("Emin misin?"), assistant("Evet.")]
    assert eng.configs[0].stop_token_ids == tuple(sorted(DEFAULT_TEMPLATE.stop_ids(tok)))
    assert s.command("/reset").message.startswith("(conversation cleared: 2 turns forgotten; the system message stays)")
    assert s.conversation() == [sys_msg]


def test_old_turns_are_dropped_to_fit_the_context_with_one_notice(tok):
    eng = ScriptedEngine(tok, ["abcdefghij"] * 8, block_size=64)
    s = ChatSession(eng, DEFAULT_TEMPLATE, system="sen", config=dataclasses.replace(default_config(), max_new_tokens=16))
    notices = []
    for k in range(8):
        r = s.ask(f"soru {k}")
        drain(r)
        notices.append(r.notice)
        assert len(eng.prompts[-1]) + s.reply_room <= 64  # the prompt always leaves room for the reply
        assert eng.prompts[-1][:3] == DEFAULT_TEMPLATE.render_prompt([{"role": "system", "content": "sen"}, user("x")], tok)[:3]
    assert notices[0] is None
    first = next(n for n in notices if n)
    assert first.count("\n") == 0 and "dropped the oldest" in first and "64-token context" in first and "system message" in first
    # the newest turns survive, oldest first, and the system message stays
    conv = s.conversation()
    assert conv[0] == {"role": "system", "content": "sen"} and conv[-2] == user("soru 7")
    assert [m["content"] for m in conv[1::2]] == [f"soru {k}" for k in range(8 - (len(conv) - 1) // 2, 8)]


def test_room_for_the_reply_is_at_most_half_the_context(tok):
    s = ChatSession(ScriptedEngine(tok, [], block_size=64), DEFAULT_TEMPLATE,
                    config=dataclasses.replace(default_config(), max_new_tokens=5000))
    assert s.reply_room == 32


def test_a_message_that_cannot_fit_is_refused_and_changes_nothing(tok):
    eng = ScriptedEngine(tok, ["ok"], block_size=64)
    s = ChatSession(eng, DEFAULT_TEMPLATE)
    drain(s.ask("kısa"))
    before = s.conversation()
    with pytest.raises(UserError, match="does not fit the model's 64-token context; shorten it or lower /max-tokens"):
        s.ask("çok uzun bir mesaj " * 20)
    assert s.conversation() == before
    with pytest.raises(UserError, match="system message takes"):
        ChatSession(eng, DEFAULT_TEMPLATE, system="uzun sistem mesajı " * 20)


def test_commands_change_settings_and_bad_arguments_are_one_line(tok):
    s = ChatSession(ScriptedEngine(tok, ["x"]), DEFAULT_TEMPLATE)
    assert s.config.temperature == 0.3 and s.config.top_p == 0.9 and s.config.max_new_tokens == 256
    assert s.command("/temperature 0.5").message == "(temperature = 0.5)" and s.config.temperature == 0.5
    assert s.command("/top-p 0.8").message == "(top-p = 0.8)" and s.config.top_p == 0.8
    assert s.command("/top-k 40").message == "(top-k = 40)" and s.config.top_k == 40
    assert s.command("/max-tokens 12").message == "(max-tokens = 12)" and s.config.max_new_tokens == 12
    for bad in ["/temperature sıcak", "/temperature -1", "/temperature nan", "/top-p 0", "/top-p 1.5", "/top-k -2",
                "/top-k 2.5", "/max-tokens 0", "/max-tokens 99999999", "/max-tokens on"]:
        msg = s.command(bad).message
        assert msg.count("\n") == 0 and " needs " in msg and "stays" in msg, bad
    assert (s.config.temperature, s.config.top_p, s.config.top_k, s.config.max_new_tokens) == (0.5, 0.8, 40, 12)
    assert s.command("/temperature").message.startswith("temperature is 0.5")
    assert "unknown command /nope" in s.command("/nope 3").message
    assert s.command("/exit").exit and s.command("/quit").exit and not s.command("/help").exit
    help_text = s.command("/help").message
    for name in ["/reset", "/temperature", "/top-p", "/top-k", "/max-tokens", "/exit", "Ctrl-C"]:
        assert name in help_text
    assert "stays in the conversation" in HELP  # the help says what Ctrl-C keeps
    assert "/length-decay" in help_text and "length-decay 150,1.02" in help_text  # listed, with its value now
    assert s.command("/length-decay").message.startswith("length-decay is 150,1.02")
    assert s.command("/length-decay 100,1.05").message == "(length-decay = 100,1.05)"
    assert s.config.exponential_decay_length_penalty == (100, 1.05)
    for bad in ["/length-decay 100", "/length-decay 100,0.5", "/length-decay a,b", "/length-decay -1,1.02"]:
        msg = s.command(bad).message
        assert msg.count("\n") == 0 and " needs " in msg and "stays 100,1.05" in msg, (bad, msg)
    assert s.command("/length-decay off").message == "(length-decay = off)"
    assert s.config.exponential_decay_length_penalty is None
    assert "/prompt-boost" in help_text and "prompt-boost 4,2" in help_text
    assert s.command("/prompt-boost").message.startswith("prompt-boost is 4,2")
    assert s.command("/prompt-boost 6,0").message == "(prompt-boost = 6,0)" and s.config.prompt_boost == (6, 0)
    for bad in ["/prompt-boost 6", "/prompt-boost -1,2", "/prompt-boost a,b", "/prompt-boost 6,101"]:
        msg = s.command(bad).message
        assert msg.count("\n") == 0 and " needs " in msg and "stays 6,0" in msg, (bad, msg)
    assert s.command("/prompt-boost off").message == "(prompt-boost = off)" and s.config.prompt_boost is None
    assert s.is_command("/reset") and not s.is_command("//etc yolu") and s.message_text("//etc yolu") == "/etc yolu"
    with pytest.raises(UserError, match="empty"):
        s.ask("   ")


def test_cancel_keeps_what_was_shown_and_drops_an_empty_reply(tok):
    eng = ScriptedEngine(tok, ["abcdef", "xyz", "ok"])
    s = ChatSession(eng, DEFAULT_TEMPLATE)
    r = s.ask("uzun anlat")
    it = iter(r)
    shown = next(it) + next(it)
    r.cancel()
    assert list(it) == [] and r.finish_reason == "interrupted"
    assert r.text == shown == "ab" and s.conversation() == [user("uzun anlat"), assistant("ab")]
    r = s.ask("bir daha")
    r.cancel()
    assert drain(r) == "" and r.finish_reason == "interrupted"
    assert s.conversation() == [user("uzun anlat"), assistant("ab")]  # nothing shown: the exchange is not kept
    r = s.ask("son")
    assert drain(r) == "ok" and s.turns == 2


def test_a_reply_cut_by_max_tokens_says_length(tok):
    s = ChatSession(ScriptedEngine(tok, ["abcdefghij"]), DEFAULT_TEMPLATE,
                    config=dataclasses.replace(default_config(), max_new_tokens=4))
    r = s.ask("anlat")
    assert drain(r) == "abcd" and r.finish_reason == "length"
    assert s.conversation()[-1] == assistant("abcd")


def test_seed_gives_reply_k_seed_plus_k(tok):
    eng = ScriptedEngine(tok, ["a", "b", "c"])
    s = ChatSession(eng, DEFAULT_TEMPLATE, seed=10)
    for t in "xyz":
        drain(s.ask(t))
    assert [c.seed for c in eng.configs] == [10, 11, 12]
    eng = ScriptedEngine(tok, ["a"])
    drain(ChatSession(eng, DEFAULT_TEMPLATE).ask("x"))
    assert eng.configs[0].seed is None


def test_plain_model_falls_back_to_completion(tok):
    eng = ScriptedEngine(tok, ["devam", "yine"], stop=False)
    s = ChatSession(eng, None)
    assert s.mode == "completion"
    drain(s.ask("Türkiye'nin başkenti"))
    drain(s.ask("Çiğdem"))
    assert eng.prompts == [tok.encode("Türkiye'nin başkenti"), tok.encode("Çiğdem")]  # no template, no history
    assert eng.configs[0].stop_token_ids == (tok.eot_id,)
    assert s.conversation() == [] and "nothing to reset" in s.command("/reset").message
    eng = ScriptedEngine(tok, ["x"], stop=False)
    r = ChatSession(eng, None).ask("Merhaba nasılsın? " * 30)
    assert r.notice and r.notice.count("\n") == 0 and "reads only its last 32" in r.notice
    drain(r)
    assert eng.prompts[0] == tok.encode("Merhaba nasılsın? " * 30)[-32:]


def test_template_tokens_missing_from_the_tokenizer(tok):
    from sifirdan.chat.template import ChatTemplate
    with pytest.raises(UserError, match=r"needs the special token\(s\) <\|im_end\|>"):
        ChatSession(ScriptedEngine(tok, []), ChatTemplate(resp_close="<|im_end|>"))


def test_real_engine_reply_streams_whole_characters_and_matches_generate(tok, dirs):
    from sifirdan.checkpoint import load_model
    model, t = load_model(dirs["ft"])
    engine = Engine(model, t)
    cfg = GenerationConfig(max_new_tokens=40, temperature=0.0)
    s = ChatSession(engine, DEFAULT_TEMPLATE, config=cfg)
    r = s.ask("Başkent neresi?")
    pieces = list(r)
    expected = engine.generate_ids(DEFAULT_TEMPLATE.render_prompt([user("Başkent neresi?")], t),
                                   dataclasses.replace(cfg, stop_token_ids=DEFAULT_TEMPLATE.stop_ids(t),
                                                       suppress_token_ids=DEFAULT_TEMPLATE.suppressed_ids(t)))
    assert "".join(pieces) == expected.text and r.finish_reason == expected.finish_reason
    assert "<INST>" not in expected.text  # this model's greedy text had <INST> in it before the template's
    # other tokens were suppressed
    assert all(p.encode("utf-8").decode("utf-8") == p for p in pieces)


# ------------------------------------------------------------------------------------------------ the CLI
def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TERM="dumb", PYTHONPATH=str(REPO))
    return env


def chat_p(model_dir, *extra):
    p = subprocess.run([sys.executable, "-m", "sifirdan", "chat", "--model", str(model_dir), *extra],
                       capture_output=True, timeout=TIMEOUT, env=_env(), cwd=REPO)
    # decoded by hand: text=True would turn a "\r" the random test model writes into "\n"
    p.stdout, p.stderr = p.stdout.decode("utf-8"), p.stderr.decode("utf-8")
    return p


def test_prompt_flag_answers_once_on_stdout(dirs, tok):
    p = chat_p(dirs["ft"], "-p", "Başkent neresi?", "--temperature", "0", "--max-tokens", "30", "--system", "Kısa yaz.")
    assert p.returncode == 0 and p.stderr == ""
    from sifirdan.checkpoint import load_model
    model, t = load_model(dirs["ft"])
    ids = DEFAULT_TEMPLATE.render_prompt([{"role": "system", "content": "Kısa yaz."}, user("Başkent neresi?")], t)
    from sifirdan.chat.session import DEFAULT_LENGTH_DECAY, DEFAULT_NO_REPEAT_NGRAM, DEFAULT_PROMPT_BOOST

    expected = Engine(model, t).generate_ids(ids, GenerationConfig(max_new_tokens=30, temperature=0.0,
                                                                   no_repeat_ngram_size=DEFAULT_NO_REPEAT_NGRAM,
                                                                   exponential_decay_length_penalty=DEFAULT_LENGTH_DECAY,
                                                                   prompt_boost=DEFAULT_PROMPT_BOOST,
                                                                   stop_token_ids=DEFAULT_TEMPLATE.stop_ids(t),
                                                                   suppress_token_ids=DEFAULT_TEMPLATE.suppressed_ids(t)))
    assert p.stdout == expected.text + "\n"  # chat's n-gram ban, length decay and prompt boost apply by default


def test_prompt_flag_on_a_pretrained_model_says_so_and_completes(dirs):
    p = chat_p(dirs["pt"], "-p", "Türkiye'nin", "--max-tokens", "10", "--seed", "1")
    assert p.returncode == 0 and "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1 and "no chat template" in p.stderr and "sifirdan finetune --model DIR --data FILE --out RUN" in p.stderr
    assert p.stdout.endswith("\n")


def test_chat_errors_are_one_line(dirs, capsys):
    code, out, err = run(capsys, "chat", "--model", str(dirs["bad"]), "-p", "x")
    assert code == 2 and out == "" and err.count("\n") == 1 and "<|im_end|>" in err
    code, out, err = run(capsys, "chat", "--model", str(dirs["ft"]), "--temperature", "-1", "-p", "x")
    assert code == 2 and err.count("\n") == 1 and "temperature" in err
    code, out, err = run(capsys, "chat", "--model", str(dirs["ft"]), "-p", "  ")
    assert code == 2 and err.count("\n") == 1 and "--prompt is empty" in err
    code, out, err = run(capsys, "chat", "--model", str(dirs["ft"].parent / "nope"))
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err


def test_interactive_loop_without_a_terminal(dirs, capsys, monkeypatch):
    """Lines from a pipe: the loop, commands and EOF work without a tty too (exit 0 at the end of input)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("/max-tokens 5\nMerhaba\n/temperature x\n/help\n"))
    code, out, err = run(capsys, "chat", "--model", str(dirs["talker"]), "--seed", "1")
    assert code == 0 and err == ""
    assert "(max-tokens = 5)" in out and "model> " in out and "(reply cut at 5 tokens" in out
    assert "/temperature needs a number" in out and "1 turn in the conversation" in out


def test_generate_instruction_on_a_fine_tuned_model(dirs, capsys):
    code, out, err = run(capsys, "generate", "--model", str(dirs["ft"]), "--instruction", "Başkent neresi?",
                         "--temperature", "0", "--max-new-tokens", "30")
    assert code == 0 and err == ""
    from sifirdan.checkpoint import load_model
    model, t = load_model(dirs["ft"])
    ids = DEFAULT_TEMPLATE.render_prompt([user("Başkent neresi?")], t)
    expected = Engine(model, t).generate_ids(ids, GenerationConfig(max_new_tokens=30, temperature=0.0,
                                                                   stop_token_ids=DEFAULT_TEMPLATE.stop_ids(t),
                                                                   suppress_token_ids=DEFAULT_TEMPLATE.suppressed_ids(t)))
    assert out == expected.text + "\n"  # the answer only: no instruction, no tags
    # the template's stop ids end the answer: a model that always says </RESP> answers nothing, while plain
    # --prompt (which stops only at <|endoftext|>) prints the tag as text
    code, out, _ = run(capsys, "generate", "--model", str(dirs["stopper"]), "--instruction", "Merhaba", "--max-new-tokens", "5")
    assert code == 0 and out == "\n"
    code, out, _ = run(capsys, "generate", "--model", str(dirs["stopper"]), "--prompt", "Merhaba", "--max-new-tokens", "3",
                       "--completion-only")
    assert code == 0 and out == "</RESP>" * 3 + "\n"
    code, out, _ = run(capsys, "generate", "--model", str(dirs["stopper"]), "--instruction", "Merhaba", "--num-samples", "2",
                       "--stream")
    assert code == 0 and out.count("--- sample") == 2


def test_generate_instruction_on_a_pretrained_model_names_the_fix(dirs, capsys):
    code, out, err = run(capsys, "generate", "--model", str(dirs["stopper_pt"]), "--instruction", "Merhaba")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "no chat template" in err and "sifirdan finetune --model DIR --data FILE --out RUN" in err
    code, out, err = run(capsys, "generate", "--model", str(dirs["bad"]), "--instruction", "Merhaba")
    assert code == 2 and err.count("\n") == 1 and "<|im_end|>" in err
    code, out, err = run(capsys, "generate", "--model", str(dirs["ft"]), "--instruction", "Merhaba " * 80)
    assert code == 2 and err.count("\n") == 1 and "shorten it" in err
    with pytest.raises(SystemExit) as e:  # argparse's own check (cli.main leaves its exit alone)
        cli.main(["generate", "--model", str(dirs["ft"]), "--instruction", "a", "--prompt", "b"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "not allowed with" in err


# ------------------------------------------------------------------------------------------------ a real terminal
def _spawn(model_dir, *extra):
    pexpect = pytest.importorskip("pexpect")
    log = io.StringIO()
    child = pexpect.spawn(sys.executable, ["-m", "sifirdan", "chat", "--model", str(model_dir), *extra], cwd=str(REPO),
                          env=_env(), encoding="utf-8", timeout=TIMEOUT, dimensions=(40, 200))
    child.logfile_read = log
    return pexpect, child, log


def test_interactive_chat_in_a_terminal(dirs):
    pexpect, child, log = _spawn(dirs["talker"], "--seed", "1")
    try:
        child.expect_exact("/help for commands")
        child.expect_exact("you> ")
        child.sendline("/max-tokens 20")
        child.expect_exact("(max-tokens = 20)")
        child.expect_exact("you> ")
        child.sendline("Merhaba")
        child.expect_exact("model> ")
        child.expect_exact("(reply cut at 20 tokens")  # the talker never says </RESP>
        assert child.before.strip(), "the reply streamed some text"
        child.expect_exact("you> ")
        child.sendline("/temperature 0.5")
        child.expect_exact("(temperature = 0.5)")
        child.sendline("/temperature sıcak")
        child.expect_exact("/temperature needs a number")
        child.expect_exact("you> ")
        child.sendline("/reset")
        child.expect_exact("(conversation cleared: 1 turn forgotten)")
        child.expect_exact("you> ")
        # Ctrl-C during a long reply stops the reply, not the program
        child.sendline("/max-tokens 30000")
        child.expect_exact("(max-tokens = 30000)")
        child.expect_exact("you> ")
        child.sendline("Uzun anlat")
        child.expect_exact("model> ")
        child.expect(r"[a-z ]{20}")  # it is streaming
        child.sendintr()
        child.expect_exact("(stopped; the reply so far stays in the conversation)")
        child.expect_exact("you> ")
        assert child.isalive()
        child.sendline("/help")
        child.expect_exact("1 turn in the conversation")  # the partial reply was kept
        child.expect_exact("you> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0 and child.signalstatus is None
    assert "Traceback" not in log.getvalue()


def test_ctrl_c_at_the_prompt_exits_cleanly(dirs):
    pexpect, child, log = _spawn(dirs["pt"])
    try:
        child.expect_exact("no chat template")
        child.expect_exact("you> ")
        child.sendintr()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0 and "Traceback" not in log.getvalue()


def test_tiny_temperature_is_greedy_in_chat(dirs, capsys, monkeypatch):
    """Issue 19: --temperature 1e-300 (or /temperature 1e-300) gave NaN logits and a traceback that ended the chat."""
    code, greedy, _ = run(capsys, "chat", "--model", str(dirs["talker"]), "-p", "Merhaba", "--temperature", "0",
                          "--max-tokens", "8")
    assert code == 0
    code, out, err = run(capsys, "chat", "--model", str(dirs["talker"]), "-p", "Merhaba", "--temperature", "1e-300",
                         "--max-tokens", "8", "--top-p", "1e-320")
    assert code == 0 and out == greedy and "Traceback" not in err
    monkeypatch.setattr(sys, "stdin", io.StringIO("/temperature 1e-45\n/top-p 1e-300\nMerhaba\nMerhaba\n"))
    code, out, err = run(capsys, "chat", "--model", str(dirs["talker"]), "--max-tokens", "5")
    assert code == 0 and err == "" and out.count("model> ") == 2 and "(temperature = 1e-45)" in out


def test_chat_with_stdin_closed_exits_0_like_eof(dirs):
    """`sifirdan chat ... 0<&-`: Python starts with sys.stdin None; that is the end of input, not a traceback."""
    cmd = f'exec 0<&-; exec "{sys.executable}" -m sifirdan chat --model "{dirs["ft"]}"'
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, encoding="utf-8", timeout=TIMEOUT * 4,
                       env=_env(), cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and p.stderr == ""
