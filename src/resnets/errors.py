"""The library's one error type for bad input (issue 14, item 5).

A check that refuses a value, option, key or file the user gave raises :class:`InputError` (or
:class:`UnknownNameError` for a name not found); the ``resnets`` command prints those in one line and
exits 2. Anything else that escapes a command is a bug or an environment failure: the command shows
its traceback and exits 1, so it is reported rather than mistaken for a typo.

Both subclass the built-in types callers already catch (``ValueError``; ``KeyError`` for names).
"""


class InputError(ValueError):
    """Bad input from the user: the message names the value, option, key or file and what is expected."""


class UnknownNameError(InputError, KeyError):
    """A model, config key or other name that does not exist; the message lists the closest ones."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class MissingExtraError(InputError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def need(module: str, extra: str, what: str):
    """Import ``module`` for ``what`` (a command or feature), or raise :class:`MissingExtraError`
    saying which extra to install (issue 17, item 5). The one place that says it, so every command
    with optional dependencies says it the same way. Returns the module."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name or module
        raise MissingExtraError(f'{what}: {missing} is missing; it comes with the {extra} extra: pip install '
                                f'"resnets[{extra}]" (in a checkout: pip install -e ".[{extra}]")') from None
