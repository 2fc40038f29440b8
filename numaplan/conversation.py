"""Conversation templates in MLC's schema and the prompt they make of a list of messages.

``mlc-chat-config.json`` carries ``conv_template`` (``mlc_llm/protocol/conversation_protocol.py``):
a system template, role prefixes, separators and stop criteria. :meth:`Conversation.prompt`
assembles the text as MLC's ``as_prompt`` does: the system text, then for every message its
role prefix, the role/content separator, the content and the separator of its side (user or
assistant); a generation prompt ends with the assistant's prefix and ``role_empty_sep``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ConfigDict, Field

from numaplan._base import Frozen
from numaplan.errors import ModelFormatError, UsageError

ROLES = ("system", "user", "assistant", "tool")


class Message(Frozen):
    """One chat message (OpenAI's fields)."""

    role: str
    content: str


class Conversation(Frozen):
    """MLC's conversation template (unknown fields of newer MLC releases are ignored)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = "plain"
    system_template: str = "{system_message}"
    system_message: str = ""
    system_prefix_token_ids: tuple[int, ...] | None = None
    add_role_after_system_message: bool = True
    roles: dict[str, str] = Field(default_factory=lambda: {"user": "", "assistant": ""})
    role_templates: dict[str, str] = Field(default_factory=dict)
    seps: tuple[str, ...] = ("\n",)
    role_content_sep: str = ""
    role_empty_sep: str = ""
    stop_str: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    def prompt(self, messages: Sequence[Message | Mapping[str, Any]], *,
               add_generation_prompt: bool = True) -> str:
        """The text of ``messages`` (a ``system`` message replaces the default system text).

        Raises
        ------
        UsageError
            An unknown role, or a system message anywhere but first.
        """
        msgs = [m if isinstance(m, Message) else Message(**m) for m in messages]
        system = self.system_message
        if msgs and msgs[0].role == "system":
            system, msgs = msgs[0].content, msgs[1:]
        parts = []
        sys_text = self.system_template.replace("{system_message}", system)
        if sys_text:
            parts.append(sys_text)
        seps = (self.seps[0], self.seps[-1])
        turns = [(m.role, m.content) for m in msgs]
        if add_generation_prompt:
            turns.append(("assistant", None))
        for i, (role, content) in enumerate(turns):
            if role not in self.roles:
                raise UsageError(f"message role {role!r} is not one of "
                                 f"{', '.join(self.roles)} (system only first)")
            if content is None:
                parts.append(self.roles[role] + self.role_empty_sep)
                continue
            template = self.role_templates.get(role, f"{{{role}_message}}")
            body = template.replace(f"{{{role}_message}}", content)
            prefix = self.roles[role] + self.role_content_sep
            if not self.add_role_after_system_message and sys_text and i == 0:
                prefix = ""
            parts.append(prefix + body + seps[role == "assistant"])
        return "".join(parts)


def conversation_from_config(doc: Mapping[str, Any], *, path: object = None) -> Conversation:
    """The template of an ``mlc-chat-config.json`` (a plain one when it has none).

    Raises
    ------
    ModelFormatError
        A ``conv_template`` that is not an object of MLC's fields.
    """
    conv = doc.get("conv_template")
    if conv is None:
        return Conversation()
    if not isinstance(conv, dict):
        raise ModelFormatError("conv_template must be an object (a bare template name is the "
                               "legacy format)", path=path)
    try:
        return Conversation(**conv)
    except ValueError as exc:
        raise ModelFormatError(f"conv_template: {str(exc).splitlines()[0]}", path=path) from None
