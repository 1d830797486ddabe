"""Chat: the conversation template (render / render_prompt with a loss mask), shared by fine-tuning, chat and
generation."""

from sifirdan.chat.template import DEFAULT_TEMPLATE, ROLES, TEMPLATE_KEY, ChatTemplate, template_of

__all__ = ["DEFAULT_TEMPLATE", "ROLES", "TEMPLATE_KEY", "ChatTemplate", "template_of"]
