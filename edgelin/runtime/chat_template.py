"""Chat templates: a package's Jinja template rendered in a sandbox, as transformers renders it.

Templates come from strangers (the package, and the checkpoint before it), so rendering one is data
processing, never code execution:

- jinja2's `ImmutableSandboxedEnvironment`, as in transformers: no attribute that starts with `_`, no
  Python internals (`''.__class__` is a SecurityError), no changing lists or dicts in place;
- the source is at most MAX_TEMPLATE_CHARS characters (also checked with the manifest);
- a render may take at most MAX_STEPS Python line events, counted by a trace function: loops nested
  over `range(100000)` stop there rather than run for hours;
- every string or list the template's operators build (`+`, `*`, `~`, `%`), every value a call or a
  filter returns, the widths it pads or formats to (`center(10**9)`, `'%999999999d'`), every join
  (before it is built) and the whole output stay within MAX_RENDERED characters or items; powers
  stay under MAX_POWER_BITS bits;
- any failure is one EdgelinError line naming the template.

What a template sees is transformers' `apply_chat_template` context: `messages` (keys whose value is
None dropped), `add_generation_prompt`, `tools`, `documents`, the special tokens (`bos_token`,
`eos_token`, ...), `raise_exception`, `strftime_now`, a `tojson` filter that does not escape HTML, a
`namespace` that refuses names starting with `_`, a `dict` without class access and the loop
controls, with `trim_blocks` and `lstrip_blocks` on. The output is transformers'.

jinja2 (>= 3.1.6, the release without the known sandbox escapes) is imported only when a template is
compiled; it comes with `pip install 'edgelin[tokenizers]'`.
"""
from __future__ import annotations

import contextlib
import functools
import json
import re
import sys
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.package import Manifest
from edgelin.runtime.schema import Checker, check_template, short

MAX_STEPS = 2_000_000  # Python line events of one render (a long conversation takes tens of thousands)
MAX_RENDERED = 1 << 22  # characters of the output, and of any one value built while rendering
MAX_POWER_BITS = 1 << 12
MAX_DEPTH = 32  # nesting of the messages' data
MIN_JINJA = (3, 1, 6)
SIZED_FILTERS = {"center", "indent", "wordwrap", "truncate", "batch", "slice", "tojson"}  # numbers that size output
SIZED_METHODS = {"center", "ljust", "rjust", "zfill", "expandtabs"}  # str methods padding to a number
_WIDTH = re.compile(r"%[^a-zA-Z%]*?(\*|\d{7,})|\{[^{}]*:[^{}]*?\d{7,}")  # %*d, %9999999d, {:>9999999}


class _OutOfSteps(BaseException):
    """Raised by the step counter. Not an Exception: no `except Exception` on the way can swallow it."""


class _TooLarge(Exception):
    """A value or the output grew past MAX_RENDERED, or a number asked for more."""


@contextlib.contextmanager
def _step_budget(limit: int) -> Iterator[None]:
    """Count the Python line events of everything this thread runs inside; past `limit`, stop it."""
    left = limit

    def trace(frame, event, arg):
        nonlocal left
        if event == "line":
            left -= 1
            if left < 0:
                raise _OutOfSteps
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        yield
    finally:
        sys.settrace(previous)


def _check_size(size: int) -> None:
    if size > MAX_RENDERED:
        raise _TooLarge(f"a value of {size} characters or items (the limit is {MAX_RENDERED})")


def _bounded(value: Any) -> Any:
    if isinstance(value, (str, list, tuple, dict)):
        _check_size(len(value))
    return value


def _check_arguments(args: tuple, kwargs: dict) -> None:
    for v in (*args, *kwargs.values()):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_RENDERED:
            raise _TooLarge(f"a call with the number {short(v)} (the limit is {MAX_RENDERED})")


def _check_format(text: Any) -> None:
    """A format string (`%` or `str.format`) must not ask for a width or precision past MAX_RENDERED."""
    if isinstance(text, str) and _WIDTH.search(text):
        raise _TooLarge(f"a format with a width over {MAX_RENDERED}")


def _check_join(separator: Any, items: Any) -> None:
    """A join's size, before it is built: its strings and the separator between them."""
    if isinstance(separator, str) and isinstance(items, (list, tuple)):
        _check_size(sum(len(x) for x in items if isinstance(x, str)) + len(separator) * len(items))


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse an operation whose result would be too large, before computing it."""
    sized = (str, list, tuple)
    if operator == "*":
        seq, n = (left, right) if isinstance(left, sized) else (right, left)
        if isinstance(seq, sized) and isinstance(n, int) and len(seq) * max(n, 0) > MAX_RENDERED:
            raise _TooLarge(f"{short(n)} repeats of {len(seq)} characters or items")
    elif operator == "+" and isinstance(left, sized) and isinstance(right, sized):
        _check_size(len(left) + len(right))
    elif operator == "**" and all(isinstance(v, int) and not isinstance(v, bool) for v in (left, right)):
        if abs(left) > 1 and right > 0 and abs(left).bit_length() * right > MAX_POWER_BITS:
            raise _TooLarge(f"a power of over {MAX_POWER_BITS} bits")
    elif operator == "%":
        _check_format(left)


def _bounded_filter(name: str, fn):
    """Filter `fn` with its parameters (not the value it filters) and its result checked."""
    value = 1 if getattr(fn, "jinja_pass_arg", None) else 0  # after the context / environment jinja passes

    @functools.wraps(fn)  # keeps jinja's pass_context / pass_environment marks
    def call(*args, **kwargs):
        if name in SIZED_FILTERS:
            _check_arguments(args[value + 1:], kwargs)
        if name == "format" and len(args) > value:
            _check_format(args[value])
        if name == "join" and len(args) > value:
            _check_join(args[value + 1] if len(args) > value + 1 else kwargs.get("d", ""), args[value])
        return _bounded(fn(*args, **kwargs))

    return call


def _jinja():
    try:
        import jinja2
    except ImportError:
        raise EdgelinError("chat templates need jinja2, which is not installed: pip install 'edgelin[tokenizers]'") from None
    version = tuple(int(p) for p in re.findall(r"\d+", jinja2.__version__)[:3])
    if version < MIN_JINJA:
        raise EdgelinError(f"chat templates need jinja2 >= {'.'.join(map(str, MIN_JINJA))} (older releases have "
                           f"known sandbox escapes); this is {jinja2.__version__}: pip install -U jinja2")
    return jinja2


@functools.lru_cache(maxsize=1)
def _environment():
    """The sandbox every template compiles in (built once: jinja2 is imported here)."""
    jinja2 = _jinja()
    from jinja2.compiler import CodeGenerator
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import Namespace

    class Codegen(CodeGenerator):
        def visit_Concat(self, node, frame) -> None:  # `a ~ b` through the size check
            self.write("environment.bounded_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class Sandbox(ImmutableSandboxedEnvironment):
        code_generator_class = Codegen
        intercepted_binops = frozenset({"+", "*", "%", "**"})

        def call_binop(self, context, operator, left, right):
            _check_binop(operator, left, right)
            return _bounded(super().call_binop(context, operator, left, right))

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's names: no clash with kwargs)
            bound = getattr(__obj, "__wrapped__", __obj)  # str.format arrives wrapped by the sandbox
            receiver, method = getattr(bound, "__self__", None), getattr(bound, "__name__", "")
            if isinstance(receiver, str) and method in SIZED_METHODS:
                _check_arguments(args, kwargs)
            if method in ("format", "format_map"):
                _check_format(receiver)
            if method == "join" and args:
                _check_join(receiver, args[0])
            return _bounded(super().call(__context, __obj, *args, **kwargs))

        @staticmethod
        def bounded_concat(parts: tuple) -> str:
            texts = [str(p) for p in parts]
            _check_size(sum(map(len, texts)))
            return "".join(texts)

    class TemplateNamespace(Namespace):
        """jinja's namespace, refusing names that start with `_` (as transformers')."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check(name)
            Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check(name)
            Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a namespace cannot hold {name!r}")

    class TemplateDict:
        """`dict(...)` and `dict.fromkeys(...)`, without the class behind them."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def raise_exception(message):
        raise Refused(str(message))

    class Refused(jinja2.exceptions.TemplateError):
        """The template's own `raise_exception(...)`."""

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.globals.pop("lipsum", None)  # a text generator with a size argument; no template uses it
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=TemplateDict(), namespace=TemplateNamespace)
    return env, jinja2, Refused


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """The data a template may see: JSON-like values only (dicts, lists, strings, numbers, bools, None)."""
    if depth > MAX_DEPTH:
        raise EdgelinError(f"{where} nests deeper than {MAX_DEPTH} levels")
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, np.generic):
        return _plain(value.item(), where, depth)
    if isinstance(value, Mapping):
        return {_plain(k, f"{where} key", depth + 1): _plain(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise EdgelinError(f"{where} must be text, a number, a list or a dict, not {type(value).__name__}")


def _messages(messages: Any) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, (list, tuple)):
        raise EdgelinError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, not {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise EdgelinError(f"messages[{i}] must be a dict with 'role' and 'content', not {type(m).__name__}")
        out.append({k: v for k, v in _plain(m, f"messages[{i}]").items() if v is not None})
    return out


class ChatTemplate:
    """A chat template compiled in the sandbox; `render` gives the prompt text transformers would.

    Args:
        source: the Jinja template.
        special_tokens: the strings a template reads as `bos_token`, `eos_token`, ... (the manifest's
            `tokenizer.special_tokens`).
        where: how errors name the template.
    Example:
        >>> t = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
        >>> t.render([{"role": "user", "content": "hi"}])
        '<user>hi'
    """

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None, *,
                 where: str = "the chat template") -> None:
        check_template(Checker(where), source, "the template")
        env, jinja2, self._refused = _environment()
        self.where, self.special_tokens = where, dict(special_tokens or {})
        self._errors = (jinja2.TemplateError, _TooLarge, TypeError, ValueError, LookupError, AttributeError,
                        ArithmeticError, RecursionError, MemoryError)
        self._security = jinja2.exceptions.SecurityError
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise EdgelinError(f"{where} is not a valid Jinja template: {e.message} (line {e.lineno})") from None
        except (jinja2.TemplateError, SyntaxError, RecursionError, MemoryError, ValueError) as e:
            raise EdgelinError(f"{where} does not compile: {type(e).__name__}: {_line(e)}") from None

    @classmethod
    def from_manifest(cls, manifest: Manifest, name: str | None = None) -> "ChatTemplate":
        """The package's template `name` (default: its "default" one).

        Raises:
            EdgelinError: the package has no chat template (byte-level packages, the zoo models, have
                none: they are plain language models), or none of that name.
        """
        spec = manifest.tokenizer
        where = f"{manifest.raw.get('source_layout', 'the package')}'s chat template"
        templates = spec.get("chat_template")
        if templates is None:
            kind = "a byte-level package (a plain language model)" if spec.get("type", "bytes") == "bytes" else \
                "exported from a checkpoint without one"
            raise EdgelinError(f"the package has no chat template: it is {kind}; use `edgelin generate` for plain text")
        templates = {"default": templates} if isinstance(templates, str) else templates
        chosen = name or "default"
        if chosen not in templates:
            raise EdgelinError(f"the package has no chat template named {chosen!r} (it has {', '.join(sorted(templates))})")
        return cls(templates[chosen], spec.get("special_tokens"), where=where if chosen == "default" else f"{where} {chosen!r}")

    def render(self, messages: list[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               tools: list[Any] | None = None, documents: list[Any] | None = None, **extra: Any) -> str:
        """The conversation as prompt text.

        Args:
            messages: [{"role": "system" | "user" | "assistant" | ..., "content": "..."}, ...].
            add_generation_prompt: end with the header of the assistant's turn.
            tools, documents, extra: more template variables, as transformers passes them.
        Raises:
            EdgelinError: bad messages, or the template fails, refuses the conversation
                (`raise_exception`), touches what the sandbox forbids, or runs past its limits.
        """
        context = {**self.special_tokens, **_plain(extra, "the template variables"), "messages": _messages(messages),
                   "tools": _plain(tools, "tools"), "documents": _plain(documents, "documents"),
                   "add_generation_prompt": bool(add_generation_prompt)}
        pieces, size = [], 0
        stream = self._template.generate(context)
        try:
            with _step_budget(MAX_STEPS):
                for piece in stream:
                    size += len(piece)
                    if size > MAX_RENDERED:
                        raise _TooLarge(f"an output over {MAX_RENDERED} characters")
                    pieces.append(piece)
        except _OutOfSteps:
            raise EdgelinError(f"{self.where} did not finish within {MAX_STEPS} steps; refusing it") from None
        except self._refused as e:
            raise EdgelinError(f"{self.where} refused the conversation: {_line(e)}") from None
        except self._security as e:
            raise EdgelinError(f"{self.where} did something the sandbox forbids: {_line(e)}") from None
        except _TooLarge as e:
            raise EdgelinError(f"{self.where} builds {e}; refusing it") from None
        except self._errors as e:
            raise EdgelinError(f"{self.where} failed to render: {type(e).__name__}: {_line(e)}") from None
        finally:
            stream.close()
        return "".join(pieces)


def _line(e: BaseException) -> str:
    """An exception's message as one line of at most 200 characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
