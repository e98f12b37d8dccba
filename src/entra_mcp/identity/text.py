"""Text and time helpers shared by the identity answers: name folding, Graph timestamps, input guards."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from anyascii import anyascii

from ..errors import InvalidArgument

# ---------------------------------------------------------------- names

# Letters that NFKD does not decompose but people type without the mark.
_EXTRA_FOLDS = str.maketrans({"ø": "o", "đ": "d", "ł": "l", "ß": "ss", "æ": "ae", "œ": "oe", "ı": "i", "þ": "th"})
_APOSTROPHES = re.compile("['’`ʼ]")
_TOKEN_RE = re.compile(r"[^\W_]+")


@lru_cache(maxsize=65536)
def _fold_word(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return stripped.translate(_EXTRA_FOLDS)


def fold(text: str | None) -> str:
    """Case- and diacritics-insensitive form: "José Müller" -> "jose muller"."""
    if not text:
        return ""
    if text.isascii():
        return text.casefold()
    return " ".join(_fold_word(part) for part in text.split(" "))


def name_tokens(text: str | None) -> list[str]:
    """Folded word tokens of a name; apostrophes join ("O'Brien" -> "obrien"), other punctuation splits."""
    if not text:
        return []
    return _TOKEN_RE.findall(_APOSTROPHES.sub("", fold(text)))


def folded_name(text: str | None) -> str:
    """A name as one folded string of its tokens: the key of exact name indexes."""
    return " ".join(name_tokens(text))


# Scripts whose words anyascii spells as one run of capitalised syllables ("王伟" -> "WangWei"): Han ideographs and
# Hangul syllables are one syllable each, so each becomes its own token as well ("wang", "wei").
_SYLLABIC = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
# Abjads (Arabic, Hebrew, Syriac, Thaana) write no short vowels: "محمد" is "mhmd", which no typo search links to
# "Mohammed". Their names are matched on consonant skeletons (see `skeleton`).
_ABJAD = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc]")
_NOT_SKELETON = re.compile("[aeiouyw\\W_]+")
_DOUBLED = re.compile(r"(.)\1+")


@lru_cache(maxsize=65536)
def latin_tokens(token: str) -> tuple[str, ...]:
    """The Latin spellings of one folded name token written in another script, as the desk types them:
    "иван" -> ("ivan",), "王伟" -> ("wangwei", "wang", "wei"); () for a token already in Latin letters."""
    if token.isascii():
        return ()
    spelled = name_tokens(anyascii(token))
    if _SYLLABIC.search(token):
        syllables = [t for ch in token for t in name_tokens(anyascii(ch))]
        spelled = list(dict.fromkeys(("".join(spelled), *syllables))) if len(syllables) > 1 else spelled
    return tuple(t for t in spelled if t and t != token)


def latin_name(text: str | None) -> str:
    """A whole name spelled in Latin letters and folded ("Иван Петров" -> "ivan petrov", "王伟" -> "wang wei"); ""
    when it is already Latin."""
    tokens = name_tokens(text)
    if all(t.isascii() for t in tokens):
        return ""
    out: list[str] = []
    for token in tokens:
        if token.isascii():
            out.append(token)
        elif _SYLLABIC.search(token):
            out.extend(t for ch in token for t in name_tokens(anyascii(ch)))
        else:
            out.extend(name_tokens(anyascii(token)))
    return " ".join(out)


def is_abjad(token: str) -> bool:
    return bool(_ABJAD.search(token))


def skeleton(latin: str) -> str:
    """Consonant skeleton of a Latin spelling, the same for "mhmd" (محمد) and "Mohammed": vowels and the
    semi-vowels w and y dropped, doubled letters single, a final h (ta marbuta) dropped."""
    bare = _DOUBLED.sub(r"\1", _NOT_SKELETON.sub("", latin.casefold()))
    return bare[:-1] if len(bare) > 1 and bare.endswith("h") else bare


# ---------------------------------------------------------------- time

_FRACTION = re.compile(r"\.(\d+)")


def parse_time(value: Any) -> datetime | None:
    """A Graph timestamp as an aware UTC datetime; None for missing, unparseable or the 0001-01-01 'never' value."""
    if value is None:
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip()
        if not text or text.startswith("0001-01-01"):
            return None
        text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            return None
    if dt.year <= 1601:  # 0001-01-01 and the Windows FILETIME zero both mean "never"
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, as Graph writes it."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def utcnow(now: datetime | None = None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    return now if now.tzinfo else now.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------- input guards

MAX_IDENTIFIER = 512  # the tools publish this limit in their input schema
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_ODATA_RE = re.compile(
    r"\$(filter|select|top|expand|search|orderby|count|skiptoken)\b"
    r"|'\s*\)?\s*(or|and)\s"
    r"|\b(or|and)\s+(\S+\s+)?(eq|ne|gt|ge|lt|le)\s"
    r"|\s(eq|ne|gt|ge|lt|le)\s+('|\d|true\b|false\b|null\b)"
    r"|\b(startswith|endswith|contains|substringof|tolower|toupper)\s*\("
    r"|\b(any|all)\s*\(\s*\w+\s*:"
    r"|;\s*(drop|select|delete|update|insert)\b",
    re.IGNORECASE,
)

USER_EXPECTED = (
    "a UPN, email, object id, employee id, on-premises account name (DOMAIN\\sam or sam) or a person's name"
)
GROUP_EXPECTED = "a group's object id, name or email address"
APP_EXPECTED = "an application (client) id, an object id, or an app's display name"


def clean_identifier(value: Any, *, argument: str, expected: str) -> str:
    """The stripped identifier, or InvalidArgument saying what was expected."""
    what = f"{argument} must be {expected} (1–{MAX_IDENTIFIER} characters)"
    if not isinstance(value, str):
        raise InvalidArgument(f"{what}; got {type(value).__name__}.")
    if _CONTROL_RE.search(value):
        raise InvalidArgument(f"{what}; it contains control or invisible characters.")
    text = " ".join(value.split())
    if not text:
        raise InvalidArgument(f"{what}; it is empty.")
    if len(text) > MAX_IDENTIFIER:
        raise InvalidArgument(f"{what}; it is {len(value)} characters long.")
    if _ODATA_RE.search(text):
        raise InvalidArgument(
            f"{what}; it looks like a query expression (OData/SQL syntax is not accepted, give a plain value)."
        )
    return text


def clean_limit(value: Any, *, default: int, maximum: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidArgument(f"limit must be a whole number from 1 to {maximum}; got {value!r}.")
    return value
