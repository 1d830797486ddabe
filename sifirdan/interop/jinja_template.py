"""Our chat template (``sifirdan.chat.template.ChatTemplate``) as the Jinja ``chat_template`` transformers applies.

    tokenizer.apply_chat_template(messages, add_generation_prompt=True)  ==  ChatTemplate.render_prompt(messages)

The Jinja text renders the conversation to the string whose tokens are ours: the tags are the tokenizer's
special tokens, so transformers splits them out of the rendered text first and encodes each piece between
them on its own -- exactly as ``render_prompt`` encodes each message on its own and puts the tag ids between.

    <|endoftext|><INST>system\\n\\nuser</INST><RESP>assistant</RESP><INST>user</INST><RESP>

``add_generation_prompt`` changes nothing: our template opens the answer (``<RESP>``) right after every
instruction, so a conversation ending with a user message already ends with the generation prompt.

One difference no template can remove: a message that itself contains a tag (a user typing ``</RESP>``) is
that control token for transformers, which finds added tokens anywhere in the rendered text, and plain
characters for sifirdan, which encodes message text with no special tokens allowed.

The conversation's shape is checked as ``ChatTemplate`` checks it (an optional system message first, then
user and assistant in turn, starting with user); a conversation of another shape raises.
"""

from __future__ import annotations

from sifirdan.chat.template import ChatTemplate


def _literal(text: str) -> str:
    """A Jinja string literal for ``text``. Jinja decodes its literals with Python's ``unicode-escape``, so this
    is that encoding (which also keeps the template ASCII), plus the quote."""
    return "'" + text.encode("unicode-escape").decode("ascii").replace("'", "\\'") + "'"


def jinja_chat_template(template: ChatTemplate) -> str:
    """The Jinja source of ``template`` (one line per statement; whitespace outside the literals is trimmed)."""
    q = _literal
    bos = f"{{{{- {q(template.bos)} -}}}}\n" if template.bos else ""
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}\n"
        "{%- set system = messages[0]['content'] -%}\n"
        "{%- set turns = messages[1:] -%}\n"
        "{%- else -%}\n"
        "{%- set system = none -%}\n"
        "{%- set turns = messages -%}\n"
        "{%- endif -%}\n"
        "{%- if not turns -%}\n"
        "{{- raise_exception('a conversation needs a user message after the optional system message') -}}\n"
        "{%- endif -%}\n"
        f"{bos}"
        "{%- for message in turns -%}\n"
        "{%- if message['content'] is not string -%}\n"
        "{{- raise_exception('message content must be a string') -}}\n"
        "{%- endif -%}\n"
        "{%- if message['role'] == 'user' and loop.index0 % 2 == 0 -%}\n"
        f"{{{{- {q(template.inst_open)} -}}}}\n"
        "{%- if loop.first and system is not none -%}\n"
        f"{{{{- system + {q(template.system_separator)} -}}}}\n"
        "{%- endif -%}\n"
        f"{{{{- message['content'] + {q(template.inst_close + template.resp_open)} -}}}}\n"
        "{%- elif message['role'] == 'assistant' and loop.index0 % 2 == 1 -%}\n"
        f"{{{{- message['content'] + {q(template.resp_close)} -}}}}\n"
        "{%- else -%}\n"
        "{{- raise_exception('a conversation is an optional system message, then user and assistant messages in "
        "turn, starting with user') -}}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
    )
