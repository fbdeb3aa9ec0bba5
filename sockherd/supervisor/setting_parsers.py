"""How a setting's text becomes its value: the parsers of the settings table.

Each `Parser` converts the text of a flag, a variable or a TOML value and checks
the rules every value obeys; `check` applies the same rules to a value given in
Python.  `settings.TABLE` names one parser per setting.  A leaf module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

Value: TypeAlias = str | int | float | bool | tuple[str, ...] | None


@dataclass(frozen=True)
class Parser:
    """How a setting's text becomes its value, and the rules every value obeys.

    Calling it parses text (a flag, a variable, a TOML value); `check` applies the
    same rules to a value given in Python (a class attribute or keyword argument).
    Both raise ValueError with a short reason, e.g. "must be at least 1".  This base
    class takes any string.
    """

    metavar: str = "TEXT"

    def __call__(self, text: str) -> Value:
        return self.check(self.convert(text))

    def convert(self, text: str) -> Value:
        """The value `text` spells, before the rules are applied."""
        return text

    def check(self, value: object) -> Value:
        """`value` if it obeys the rules; ValueError with a short reason otherwise."""
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value

    def show(self, value: Value) -> str:
        """How the docs write a value."""
        return str(value)


@dataclass(frozen=True)
class Word(Parser):
    """A string, lower-cased when `lower`, with `aliases` (other spelling -> value)."""

    lower: bool = False
    aliases: tuple[tuple[str, str], ...] = ()

    def convert(self, text: str) -> Value:
        text = text.strip().lower() if self.lower else text
        return dict(self.aliases).get(text, text)


@dataclass(frozen=True)
class Number(Parser):
    """An int (or float, `real`) of at least `minimum`, or more than it when `exclusive`."""

    metavar: str = "N"
    real: bool = False
    minimum: float = 0
    exclusive: bool = False
    unit: str = ""

    def convert(self, text: str) -> Value:
        try:
            return float(text) if self.real else int(text)
        except ValueError:
            raise ValueError("must be a number" if self.real else "must be a whole number")

    def check(self, value: object) -> Value:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number" if self.real else "must be a whole number")
        if not self.real and not isinstance(value, int):
            raise ValueError("must be a whole number")
        bound = f"{self.minimum:g}"
        if self.exclusive and not value > self.minimum:
            raise ValueError(f"must be more than {bound}")
        if not self.exclusive and not value >= self.minimum:
            raise ValueError(f"must be at least {bound}" if self.minimum else "must be 0 or more")
        return float(value) if self.real else value

    def show(self, value: Value) -> str:
        number = f"{value:g}" if isinstance(value, float) else str(value)
        return f"{number} {self.unit}".rstrip()


SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass(frozen=True)
class Size(Number):
    """A positive number of bytes, optionally with a K, M or G suffix (powers of 1024)."""

    metavar: str = "BYTES"
    minimum: float = 1

    def convert(self, text: str) -> Value:
        text = text.strip().lower()
        factor = SIZE_SUFFIXES.get(text[-1:], 1)
        digits = text[:-1] if factor > 1 else text
        if not digits.isdigit():
            raise ValueError("must be a number of bytes, optionally with K, M or G")
        return int(digits) * factor


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Switch(Parser):
    """On or off: a flag without a value; 1/true/yes/on or 0/false/no/off as text."""

    metavar: str = ""
    auto: bool = False  # "auto" means None: the code decides

    def convert(self, text: str) -> Value:
        word = text.strip().lower()
        if self.auto and word == "auto":
            return None
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValueError("must be auto, true or false" if self.auto else "must be true or false")

    def check(self, value: object) -> Value:
        if value is None and self.auto:
            return None
        if not isinstance(value, bool):
            raise ValueError("must be True or False" + (" or None" if self.auto else ""))
        return value

    def show(self, value: Value) -> str:
        return "auto" if value is None else "on" if value else "off"


TEXT = Parser()
PATH = Parser(metavar="PATH")
FILE = Parser(metavar="FILE")
COUNT = Number(minimum=1)
COUNT_OR_ZERO = Number(minimum=0)
SECONDS = Number(metavar="S", real=True, exclusive=True, unit="s")
SWITCH = Switch()
