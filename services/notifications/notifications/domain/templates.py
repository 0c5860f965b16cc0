"""Message templates: Jinja2 in a sandbox, where a missing variable is an error.

Templates are written by people through the API, so they render in an immutable sandbox
(no attributes starting with ``_``, no mutation of the context). A variable the context
lacks raises `TemplateError` naming it (``contact.first_name``) instead of rendering a
blank: "Hi ," is worse than a delivery held back. A value that may legitimately be empty
is passed as None or "" and guarded in the template with ``{% if %}``.

Text templates are not autoescaped: they go out as plain text, where HTML escaping would
only garble "&" and quotes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType, TracebackType

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_FILENAME = "<template>"


class TemplateError(Exception):
    """A template that cannot render, with a reason a template author can act on."""

    def __init__(self, reason: str, *, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


@dataclass(frozen=True)
class Template:
    """A message template for one channel; `subject` is None where a channel has none."""

    id: str
    channel: str
    subject: str | None
    body: str


# How deep the context's mappings may nest: customers' attributes and previews' sample
# values are JSON from outside, and a template has no use for deeper values.
MAX_DEPTH = 32


class _Scope(dict[str, object]):
    """A mapping of the context that knows its path, so a missing key can be named."""

    def __init__(self, path: str, values: Mapping[str, object], depth: int) -> None:
        if depth > MAX_DEPTH:
            raise TemplateError(f"{path}: nested more than {MAX_DEPTH} levels deep")
        super().__init__(
            {key: _scoped(f"{path}.{key}", value, depth + 1) for key, value in values.items()}
        )
        self._crm_path = path


def _scoped(path: str, value: object, depth: int = 0) -> object:
    if isinstance(value, Mapping):
        return _Scope(path, value, depth)
    return value


class _NamingUndefined(jinja2.StrictUndefined):
    """StrictUndefined whose message gives the full path of the missing variable."""

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:  # the sandbox's "access to attribute ... is unsafe"
            return self._undefined_hint
        name = self._undefined_name
        owner = self._undefined_obj
        if isinstance(owner, _Scope):
            name = f"{owner._crm_path}.{name}"
        return f"missing variable {name!r}"


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, naming what was refused in the template's own terms."""

    def unsafe_undefined(self, obj: object, attribute: str) -> jinja2.Undefined:
        owner = obj._crm_path if isinstance(obj, _Scope) else f"a {type(obj).__name__} value"
        return self.undefined(
            f"access to {attribute!r} of {owner} is not allowed",
            name=attribute,
            obj=obj,
            exc=SecurityError,
        )


_ENV = _Sandbox(
    undefined=_NamingUndefined,
    autoescape=False,
    trim_blocks=True,
    lstrip_blocks=True,
)


@lru_cache(maxsize=512)
def _compile(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def render(template: Template, context: Mapping[str, object]) -> tuple[str | None, str]:
    """The template's (subject, body) for `context`; raises `TemplateError`."""
    scoped = {key: _scoped(key, value) for key, value in context.items()}
    subject = None
    if template.subject is not None:
        # A subject is one header line: a line break in a value must not end it.
        subject = " ".join(_render_part("subject", template.subject, scoped).split())
    return subject, _render_part("body", template.body, scoped)


def check(template: Template, sample_context: Mapping[str, object]) -> tuple[str | None, str]:
    """Preview: render with sample values and enforce what the channel needs."""
    subject, body = render(template, sample_context)
    if template.channel == "email" and not subject:
        raise TemplateError("an email template needs a subject")
    if not body.strip():
        raise TemplateError("the body renders empty")
    return subject, body


def _render_part(part: str, source: str, context: Mapping[str, object]) -> str:
    try:
        return _compile(source).render(context)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{part} line {exc.lineno}: {exc.message}", line=exc.lineno) from exc
    except jinja2.TemplateError as exc:  # missing variable, unsafe access
        raise _located(part, exc.message or repr(exc), exc) from exc
    except (TypeError, ValueError, ArithmeticError) as exc:  # e.g. {{ 1 / 0 }}, "a" + 1
        raise _located(part, f"cannot evaluate: {exc}", exc) from exc
    except Exception as exc:  # a filter on a value it cannot take, "{0}".format(), ...
        reason = f"cannot evaluate: {type(exc).__name__}: {exc}"
        raise _located(part, reason, exc) from exc


def _located(part: str, reason: str, exc: BaseException) -> TemplateError:
    line = _template_line(exc.__traceback__)
    where = f"{part} line {line}" if line is not None else part
    return TemplateError(f"{where}: {reason}", line=line)


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line an error came from: Jinja rewrites tracebacks to show it."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == TEMPLATE_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _greeting() -> str:
    return "Hi{% if contact.first_name %} {{ contact.first_name }}{% else %} there{% endif %},"


_SIGN_OFF = "Best wishes,\nThe team"
_UNSUBSCRIBE = "You can unsubscribe from these emails at any time: {{ unsubscribe_url }}"


def _email(template_id: str, subject: str, paragraphs: list[str], *, marketing: bool) -> Template:
    parts = [_greeting(), *paragraphs, _SIGN_OFF]
    if marketing:
        parts.append(_UNSUBSCRIBE)
    return Template(template_id, "email", subject, "\n\n".join(parts) + "\n")


_DEFAULTS = (
    _email(
        "welcome",
        "Welcome{% if contact.first_name %}, {{ contact.first_name }}{% endif %}!",
        [
            "Thank you for joining us. We are glad to have you here.",
            "If you have a question, reply to this email: a person reads every answer.",
        ],
        marketing=True,
    ),
    _email(
        "care",
        "How are things going?",
        [
            "We wanted to check that everything is working well for you.",
            "If something could be better, reply and tell us. We read every message.",
        ],
        marketing=False,
    ),
    _email(
        "wake_up",
        "It has been a while",
        [
            "We have not seen you for some time, and a few things have changed since"
            " your last visit.",
            "Come and have a look whenever it suits you. We would be happy to see you again.",
        ],
        marketing=True,
    ),
    _email(
        "win_back",
        "We would love to have you back",
        [
            "It has been a long time since we last saw you, and we miss you.",
            "If something made you leave, reply and tell us: we would like to put it right.",
        ],
        marketing=True,
    ),
    _email(
        "churn_warning",
        "Is everything all right?",
        [
            "We noticed you have not been around as much lately.",
            "If something is not working for you, reply to this email and it goes straight"
            " to our team.",
        ],
        marketing=True,
    ),
    _email(
        "detractor_follow_up",
        "Thank you for your honest feedback",
        [
            "We are sorry we fell short of what you expected.",
            "Would you tell us what went wrong? Reply to this email and someone from our"
            " team will get back to you personally.",
        ],
        marketing=False,
    ),
    _email(
        "birthday",
        "Happy birthday{% if contact.first_name %}, {{ contact.first_name }}{% endif %}!",
        ["Everyone here wishes you a wonderful day and a very happy year ahead."],
        marketing=True,
    ),
)

DEFAULT_TEMPLATES: Mapping[str, Template] = MappingProxyType({t.id: t for t in _DEFAULTS})
"""The templates a new installation starts with, by id.

Every one needs ``contact`` with a ``first_name`` key (None or "" when unknown); the
marketing ones (all but ``care`` and ``detractor_follow_up``) also need ``unsubscribe_url``.
"""

SAMPLE_CONTEXT: Mapping[str, object] = MappingProxyType(
    {
        "contact": {"first_name": "Ada"},
        "unsubscribe_url": "https://example.com/unsubscribe/sample",
    }
)
"""Values that every default template renders with: for previews and tests."""
