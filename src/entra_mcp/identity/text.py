"""Text helpers shared by the identity answers: name folding and transliteration, Graph timestamps, input guards,
and the detector of instruction-like text."""

from __future__ import annotations

import base64
import html
import re
import unicodedata
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, overload
from urllib.parse import unquote

from anyascii import anyascii

from ..errors import InvalidArgument
from ..pacing import COARSE, checkpoint

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


@overload
def iso(dt: datetime) -> str: ...
@overload
def iso(dt: None) -> None: ...
@overload
def iso(dt: datetime | None) -> str | None: ...
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


# ---------------------------------------------------------------- instruction-like text
#
# Directory fields and ticket texts are untrusted: a value that reads like an instruction to a model is flagged
# (SUSPICIOUS_FIELD / SUSPICIOUS_TICKET_TEXT) and never repeated in a message; the answer still carries it as data.
# The detector must not cry wolf on ordinary tickets ("reset my password now", "System: SAP", "Model: Latitude
# 5420") and must not be fooled by spelling: text is normalised before matching (NFKC folds fullwidth and
# mathematical letters, look-alike Cyrillic/Greek letters are read as Latin, zero-width and bidi characters are an
# alarm of their own) and decoded once where it is encoded (HTML entities, percent-encoding, base64 runs). The
# patterns cover English and the languages a desk commonly receives. tests/data/instruction_corpus_*.txt keep it
# honest on both sides; the misses it still has are listed in test_instruction_detector.py.

# Zero-width and bidirectional control characters (used to hide or reorder text shown to people and models).
HIDDEN_CHARS = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\u00ad]")
# Normalise at most this much text (NFKC output); what follows is matched as written. Characters that grow most under
# NFKC (Arabic presentation-form ligatures: "ﷺ" becomes 18 characters, "﷽" 33; CJK squared words) are matched as
# written too: they spell no instruction, and padding made of them neither costs 18x the work nor pushes anything
# out of sight.
MAX_NORMALISED = 40_000
_EXPANDING = re.compile("([\ufb50-\ufdff\u3300-\u33ff]+)")
_SHORT = 512

_EN = [
    # override the instructions
    r"\b(ignore|disregard|forget|override|overrule|bypass|skip|discard|abandon|set aside|pay no attention to|"
    r"stop following|do not follow|don't follow|no longer follow)\b.{0,40}?\b(previous|prior|above|earlier|preceding|"
    r"original|all|any|your|system|existing|initial|safety|every|those|these|current)\b.{0,30}?\b(instructions?|"
    r"prompts?|rules?|guidelines?|directions?|directives?|polic(y|ies)|constraints?|guardrails?|programming|orders|"
    r"commands|restrictions?|safeguards?|context)\b",
    r"\b(ignore|disregard|forget)\b.{0,12}\b(everything|anything|all)\b.{0,25}\b(above|before|prior|previously|"
    r"you were told|you know|so far)\b",
    # a new identity or mode
    r"\byou are now (a|an|in|the|my new|no longer|dan|unrestricted|free|jailbroken|operating|acting|admin\w*|root|"
    r"developer|god|allowed|authori[sz]ed|permitted)\b",
    r"\bfrom now on\b.{0,20}\byou (are|will|must|should|shall)\b",
    r"\b(pretend|imagine) (that )?you are\b",
    r"\bact as (an? |the )?(unrestricted|unfiltered|jailbroken|evil|system|root|superuser|dan)\b",
    r"\b(jailbreak\w*|roleplay|role-play|dan mode|developer mode|god mode|do anything now)\b",
    r"\byour (new|real|true) (role|task|job|instructions?|goal|purpose|orders)\b",
    r"\b(new|updated|hidden|secret|revised|override|real) (system )?(instructions?|directives?|prompt)\s*:",
    r"\b(system|developer|hidden|initial) prompt\b",
    r"\b(reveal|print|show|output|repeat|leak|dump|disclose)\b.{0,12}\byour (full |entire |exact )?(system prompt|"
    r"prompt|instructions|rules|guidelines|configuration)\b",
    # chat and tool markup
    r"<\s*/?\s*(system|assistant|user|instructions?|tool[\w-]*|function[\w-]*|im_start|im_end|prompt|developer|"
    r"context)\b[^>]*>",
    r"<\|[\w-]*\|>",
    r"\[/?(inst|sys|system)\]",
    r"<<\s*/?sys\s*>>",
    r"(^|\n)\s*#{2,}\s*(system|instructions?|assistant)\b",
    r"\b(tool_calls?|tool_use|tool_result|function_call|functions\.\w+)\b",
    r"\{\s*\"(name|tool|function|tool_name)\"\s*:\s*\"[^\"]{1,80}\"\s*,\s*\"(arguments|parameters|input|args)\"",
    r"\{\s*\"(tool|function)\"\s*:",
    # a role speaking, or the model addressed
    r"(^|[\s\[(<{|>\"'*-])(system|assistant|developer|ai|llm|chatbot|chatgpt|gpt|claude)\s*:\s*(you|ignore|disregard|"
    r"forget|grant|reset|disable|approve|add|remove|delete|elevate|bypass|skip|always|never|do|don't|new|from now|"
    r"obey|follow|execute|run|call|respond|reply|answer|print|output|reveal|override|set|make|give|assign|unlock|"
    r"send|transfer)\b",
    r"\bas an? (ai|assistant|language model|llm)\b",
    r"\b(if|when|since) you are an? (ai|assistant|language model|llm|bot|automated)\b",
    r"\b(note|message|attention|instructions?|reminder) (to|for) (the |any |all )?(ai|assistant|llm|agent|model|bot|"
    r"copilot|chatbot|automated system)s?\b",
    r"\b(ai|assistant|agent|model|llm|bot)s? (reading|processing|handling|triaging|summari[sz]ing|parsing) this\b",
    # the model told what to do, or not to tell
    r"\byou (must|should|will|need to|are required to|have to|are instructed to|shall)\s+(now\s+|immediately\s+)?"
    r"(ignore|bypass|skip|forget|obey|comply|output|print|reveal|execute|disregard|override)\b",
    r"\byou (must|will|shall|are required to|are instructed to) (now|immediately) (grant|reset|disable|approve|"
    r"elevate|add|remove|delete|assign|give|make)\b",
    r"\byou (are|have been) (authori[sz]ed|allowed|permitted|cleared) to (grant|reset|disable|approve|elevate|bypass|"
    r"skip|assign|give|remove|delete)\b",
    r"\b(do not|don't|never|without) (tell|telling|inform|informing|alert|alerting|notify|notifying|warn|warning|"
    r"mention|mentioning|report|reporting|flag|flagging) (this |it |anything )?(to )?(the |my |your |our |any )?"
    r"(user|users|admins?|administrators?|security|soc|anyone|anybody|human|humans|operator|engineer|service desk|"
    r"servicedesk|help ?desk|it team|supervisor|auditors?)\b",
    r"\b(do not|don't|never) (mention|reveal|log|report|disclose|record) (this|these|that) (instruction|message|"
    r"request|conversation|note|change|action)s?\b",
    r"\b(skip|bypass|waive|no need for|don't need|do not need)\b.{0,20}\b(verification|identity check|approval|callback"
    r"|mfa check|the checks?|security checks?)\b",
    r"\b(verification|approval|identity check|callback)s? (is|are) (not|n't|no longer) (needed|required|necessary)\b",
    r"\b(send|email|forward|post|upload|paste|exfiltrate)\b.{0,50}\b(tokens?|secrets?|credentials|api keys?|client "
    r"secret|passwords|password hash(es)?|private key|session (id|cookie)s?)\b.{0,50}\b(to|at|into)\s+(https?://|"
    r"[\w.+-]+@[\w-]+\.|this (address|url|webhook))",
]

# Other languages: override the instructions, a new identity, new instructions, checks waived. Matched on the
# normalised text in its own script (and for Latin scripts also with diacritics read as plain letters).
_OTHER = [
    # French
    r"(?<!\bai )(?<!\bas )(?<!\ba )(?<!\bavons )(?<!\bavez )(?<!\bont )\b(ignore[rz]?|oublie[rz]?|ne tiens? pas compte|ne tenez pas compte|fais abstraction|faites abstraction)\b.{0,40}"
    r"\b(instructions?|consignes?|regles|directives|prompt)\b",
    r"\b(tu es|vous etes) (maintenant|desormais|dorenavant)\b",
    r"\bnouvelles? (instructions|consignes)\s*:",
    r"\bprompt systeme\b",
    r"\b(reinitialise\w*|donne\w*|accorde\w*|ajoute\w*|desactive\w*|supprime\w*)\b.{0,60}\b(mot de passe|mfa|acces|"
    r"admin\w*|droits)\b.{0,60}\bsans (aucune |la |le )?(verification|validation|approbation|controle|confirmation)\b",
    # Spanish / Portuguese
    r"\b(ignora|ignore|ignorar|olvida|olvide|olvidar|omite|omitir|haz caso omiso|esqueca|desconsidere)\b.{0,40}"
    r"\b(instrucciones|reglas|indicaciones|directrices|ordenes|instrucoes|regras|diretrizes|orientacoes)\b",
    r"\b(ahora eres|agora voce e|a partir de ahora eres)\b",
    r"\b(nuevas instrucciones|novas instrucoes)\s*:",
    r"\b(restablece\w*|resetea\w*|otorga\w*|concede\w*|anade\w*|desactiva\w*|elimina\w*|redefin\w*|conced\w*)\b.{0,60}"
    r"\b(contrasena|senha|mfa|acceso|acesso|admin\w*|permisos|permissoes)\b.{0,60}\b(sin|sem) (ninguna |nenhuma |la |a )?"
    r"(verificacion|verificacao|aprobacion|aprovacao|validacion|validacao|comprobacion)\b",
    # German / Dutch
    r"\b(ignoriere|ignorieren sie|ignorier|vergiss|vergessen sie|missachte|ubergehe|negeer|vergeet)\b.{0,40}"
    r"\b(anweisungen|anweisung|regeln|vorgaben|richtlinien|instruktionen|befehle|prompt|instructies|regels|"
    r"richtlijnen|opdrachten)\b",
    r"\b(du bist (jetzt|nun|ab sofort)|je bent nu|jij bent nu)\b",
    r"\b(neue anweisungen|nieuwe instructies)\s*:",
    r"\b(setze|zurucksetzen|gib|erteile|fuge|deaktiviere|losche|entferne)\w*\b.{0,60}\b(passwort|kennwort|mfa|zugriff|"
    r"admin\w*|rechte|berechtigung\w*)\b.{0,60}\bohne (jede |weitere |eine |die )?(prufung|uberprufung|verifizierung|"
    r"freigabe|genehmigung|ruckfrage|kontrolle)\b",
    # Italian / Polish
    r"\b(ignora|ignori|ignorare|dimentica|dimentichi|trascura|zignoruj|ignoruj|zapomnij)\b.{0,40}\b(istruzioni|regole|"
    r"indicazioni|direttive|instrukcje|instrukcji|polecenia|polecen|zasady)\b",
    r"\b((ora|adesso) sei|jestes teraz)\b",
    r"\b(nuove istruzioni|nowe instrukcje)\s*:",
    # Russian / Ukrainian
    r"(игнорируй|проигнорируй|игнорируйте|забудь|забудьте|не обращай внимания на|не учитывай|ігноруй|забудь)"
    r"[^.!?\n]{0,40}(инструкци|указани|правил|команд|промпт|інструкці|вказівк)",
    r"(\bты теперь\b|\bтеперь ты\b|\bвы теперь\b|\bти тепер\b)",
    r"\bновые инструкции\s*:",
    r"(сбрось|сбросьте|выдай|выдайте|дай|дайте|отключи|отключите|удали|удалите|добавь|добавьте|предоставь|предоставьте)"
    r"[^.!?\n]{0,60}(парол|mfa|доступ|админ|прав)[^.!?\n]{0,60}без (какой-либо |любой |всякой )?(проверк|подтвержден|"
    r"согласовани)",
    # Chinese / Japanese / Korean
    r"(忽略|无视|忘记|忘掉|不要理会|跳过|無視|忽視)[^。！？\n]{0,15}(指令|指示|说明|規則|规则|提示词|设定|設定|命令)",
    r"(你现在是|你現在是|从现在开始[^。]{0,10}你|從現在開始[^。]{0,10}你|系统提示|系統提示|新的?指令\s*[:：])",
    r"(重置|授予|给予|添加|禁用|删除|开通|开放)[^。！？\n]{0,30}(不需要|无需|不用|跳过)(任何)?(验证|审批|核实|批准|审核)(?!码)",
    r"(以前|前|上記|これまで|全て|すべて)の(指示|命令|ルール|指令)を?(無視|忘れ)",
    r"((指示|命令|ルール)を無視|あなたは今から|システムプロンプト)",
    r"((이전|모든|위의)\s*(지시|명령|지침|규칙)[을를]?\s*(무시|잊어)|(너는|당신은) 이제)",
    # Arabic / Turkish
    r"(تجاهل|انس|إنس)[^.!؟\n]{0,40}(التعليمات|الأوامر|القواعد|تعليمات)",
    r"أنت الآن",
    r"\b(onceki|tum|yukaridaki) (talimatlari|kurallari|komutlari) (yok say|unut|gormezden gel)",
    r"\bartik sen\b",
]

# An action on an account with the checks waived: ("the waiver", "the action and its object in the 140 characters
# before it"). Anchored on the rare waiver, so a text repeating "reset ... password" costs nothing.
_WAIVED = (
    r"\b(without (any |the |further |a )?(verification|verifying|approval|approving|checks?|checking|confirmation|"
    r"confirming|asking|mfa|identity|authori[sz]ation|ticket|questions|callback)|no (need|verification|approval|"
    r"questions|checks)\b|skip(ping)? (the )?(verification|approval|checks?|identity)|bypass\w*)",
    r"\b(reset|disable|delete|remove|grant|elevate|approve|add|assign|give|make|turn off|unlock|change|exclude)\b.{0,60}"
    r"\b(password|mfa|2fa|multi-?factor|account|admin\w*|access|roles?|privileges?|permissions?|conditional access|"
    r"owner|global)\b",
)
_WINDOW = 140
_MAX_ANCHORS = 32


def _required_literals(items: Any) -> frozenset[str] | None:
    """Strings one of which every match of a parsed regex sequence contains (None when none can be told)."""
    run: list[str] = []
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            run.append(chr(arg))
            continue
        if len(run) >= 2:
            return frozenset({"".join(run)})
        run = []
        found: frozenset[str] | None = None
        if name == "SUBPATTERN":
            found = _required_literals(arg[-1])
        elif name == "BRANCH":
            options = [_required_literals(alt) for alt in arg[1]]
            found = None if any(o is None for o in options) else frozenset[str]().union(*(o for o in options if o is not None))
        elif name in ("MAX_REPEAT", "MIN_REPEAT") and arg[0] >= 1:
            found = _required_literals(arg[2])
        if found:
            return found
    return frozenset({"".join(run)}) if len(run) >= 2 else None


def _trie_pattern(words: list[str]) -> str:
    """An alternation of literal strings as a prefix tree ("ab|ac" -> "a(?:b|c)"): the regex engine then reads each
    character once instead of trying every alternative at every position (ten times faster for a few hundred)."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def walk(node: dict[str, Any]) -> str:
        branches = [re.escape(ch) + walk(child) for ch, child in sorted(node.items()) if ch]
        if "" in node:  # a word ends here: whatever follows is optional
            return f"(?:{'|'.join(branches)})?" if branches else ""
        return branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"

    return walk(trie)


def _literals_re(literals: frozenset[str] | None) -> re.Pattern[str] | None:
    return re.compile(_trie_pattern(sorted(literals))) if literals else None


def _compile(pattern: str) -> tuple[re.Pattern[str] | None, re.Pattern[str], frozenset[str] | None]:
    """A pattern, and a search for the literals one of which must be in a text for it to match (one C-speed search
    before the pattern runs: most patterns never run on an ordinary ticket or directory value)."""
    compiled = re.compile(pattern, re.IGNORECASE)
    try:
        parser = getattr(re, "_parser")
        literals = _required_literals(parser.parse(pattern))
    except Exception:  # an unparseable pattern simply always runs
        literals = None
    return _literals_re(literals), compiled, literals


_PATTERNS = [_compile(p) for p in (*_EN, *_OTHER)]
_WAIVER_TRIGGERS, _WAIVER_RE, _ = _compile(_WAIVED[0])
_WAIVED_ACTION_RE = re.compile(_WAIVED[1], re.IGNORECASE)
# Any literal of any pattern: a text without one (most directory values) is cleared by a single search.
_ANY_TRIGGER = (
    None if any(lits is None for _, _, lits in _PATTERNS) or _WAIVER_TRIGGERS is None
    else _literals_re(frozenset().union(*(lits for _, _, lits in _PATTERNS if lits)))
)


def _instruction_in(view: str) -> bool:
    if _ANY_TRIGGER is not None and not _ANY_TRIGGER.search(view):
        return False
    for triggers, pattern, _ in _PATTERNS:
        if len(view) > 2000:  # a ticket text: each search is a tenth of a millisecond or more
            checkpoint(COARSE)
        if (triggers is None or triggers.search(view)) and pattern.search(view):
            return True
    if _WAIVER_TRIGGERS is None or _WAIVER_TRIGGERS.search(view):
        for n, waiver in enumerate(_WAIVER_RE.finditer(view)):
            if n >= _MAX_ANCHORS:
                break
            if _WAIVED_ACTION_RE.search(view, max(0, waiver.start() - _WINDOW), waiver.start()):
                return True
    return False

# Every pattern needs a space, markup, a colon, a non-ASCII letter or encoded text: single plain words (UPNs, ids,
# departments) are skipped with one search.
_MAYBE_INSTRUCTION = re.compile(
    r"[\s<>{}\[\]:|&%]|[^\x00-\x7f]|tool_|function|[A-Za-z0-9+/_-]{16,}", re.IGNORECASE
)
# "SMTP:alias@domain", "sip:...": an address's scheme is not the colon of "system: ..." (proxy addresses are unique
# per user, so they cannot lean on the verdict cache)
_SCHEME = re.compile(r"^[A-Za-z0-9]{1,10}:(?=\S+$)")
_SPACES = re.compile(r"[^\S\n]+")
_LETTER_SPACED = re.compile(r"\b(?:[a-z][ .\-_*]){3,}[a-z]\b")
_LEET_WORD = re.compile(r"\b(?=[a-z0-9@$]*[a-z])(?=[a-z0-9@$]*[013457@$])[a-z0-9@$]{3,}\b")
_LEET = str.maketrans("013457@$", "oieastas")
_PERCENT = re.compile(r"%[0-9a-f]{2}", re.IGNORECASE)
_ENTITY = re.compile(r"&(#\d{1,7}|#x[0-9a-f]{1,6}|[a-z]{2,8});", re.IGNORECASE)
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_MAX_DECODED = 8


# Letters that LOOK like Latin ones where anyascii would transliterate by sound (Cyrillic "с" is "s" to anyascii
# but looks like "c"): from Unicode TR39 confusables.txt (https://www.unicode.org/Public/security/latest/confusables.txt).
_CONFUSABLES = {
    "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "ё": "e", "һ": "h", "н": "h", "і": "i", "ї": "i", "ј": "j",
    "к": "k", "ӏ": "l", "м": "m", "п": "n", "о": "o", "р": "p", "ԛ": "q", "г": "r", "ѕ": "s", "т": "t", "ц": "u",
    "ѵ": "v", "ԝ": "w", "х": "x", "у": "y", "з": "3", "α": "a", "β": "b", "ϲ": "c", "ε": "e", "η": "n", "ι": "i",
    "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "γ": "y", "ω": "w", "ɑ": "a", "ɡ": "g",
    "ɩ": "i", "ʟ": "l", "ɴ": "n", "ʀ": "r", "ꜱ": "s", "ᴀ": "a", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ᴊ": "j", "ᴋ": "k",
    "ᴍ": "m", "ᴏ": "o", "ᴘ": "p", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z",
}


@lru_cache(maxsize=1)
def _look_alikes() -> dict[int, str]:
    """Letters of other scripts that look like Latin ones (Cyrillic "о", Greek "ο", Cherokee, small capitals,
    IPA) and accented Latin letters, read as the plain Latin letters anyascii gives them. Built once; used with
    str.translate, which is C speed on any length."""
    table: dict[int, str] = {}
    for lo, hi in ((0x00C0, 0x024F), (0x0250, 0x02AF), (0x0370, 0x03FF), (0x0400, 0x052F), (0x13A0, 0x13FF),
                   (0x1D00, 0x1DBF), (0x1E00, 0x1EFF), (0x2C60, 0x2C7F), (0xA720, 0xA7FF)):
        for code in range(lo, hi + 1):
            spelled = anyascii(chr(code))
            if spelled and spelled.isascii() and spelled != chr(code):
                table[code] = spelled.casefold()
    table.update({ord(letter): latin for letter, latin in _CONFUSABLES.items()})
    return table


def _bounded_nfkc(text: str) -> str:
    """NFKC of `text`, leaving the heavily expanding characters as they are, and at most MAX_NORMALISED characters
    of it normalised (the rest as written)."""
    if text.isascii():
        return text
    out: list[str] = []
    budget = MAX_NORMALISED
    for i, part in enumerate(_EXPANDING.split(text)):
        if i % 2 or budget <= 0:  # an expanding run, or past the budget: as written
            out.append(part)
            continue
        normal = unicodedata.normalize("NFKC", part[:budget])
        out.append(normal + part[budget:])
        budget -= len(normal)
    return "".join(out)


def _decoded(text: str) -> list[str]:
    """What encoded runs inside `text` say: HTML entities, percent-encoding, base64 (printable text only)."""
    out: list[str] = []
    if "&" in text and _ENTITY.search(text):
        out.append(html.unescape(text))
    if "%" in text and _PERCENT.search(text):
        out.append(unquote(text))
    for run in _BASE64_RUN.findall(text)[:_MAX_DECODED]:
        try:
            raw = base64.b64decode(run.replace("-", "+").replace("_", "/") + "=" * (-len(run) % 4), validate=True)
            decoded = raw[:4096].decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            continue
        if len(decoded) >= 8 and sum(ch.isprintable() or ch.isspace() for ch in decoded) >= 0.95 * len(decoded):
            out.append(decoded)
    return out


def _views(normalised: str) -> list[str]:
    """The forms one (NFKC-normalised) text is matched in: casefolded, and the same read in Latin letters
    (look-alikes and accents folded, letter-spaced and leet words joined)."""
    native = _SPACES.sub(" ", normalised.casefold())
    latin = native if native.isascii() else native.translate(_look_alikes())
    if _LETTER_SPACED.search(latin):
        latin = _LETTER_SPACED.sub(lambda m: re.sub(r"[ .\-_*]", "", m.group(0)), latin)
    if _LEET_WORD.search(latin):
        latin = _LEET_WORD.sub(lambda m: m.group(0).translate(_LEET), latin)
    return [native] if latin == native else [native, latin]


def _matches(text: str, depth: int) -> bool:
    if HIDDEN_CHARS.search(text):
        return True
    normalised = _bounded_nfkc(text)
    if any(_instruction_in(view) for view in _views(normalised)):
        return True
    if depth < 2:
        return any(_matches(decoded, depth + 1) for decoded in _decoded(normalised))
    return False


def looks_like_instruction(text: str) -> bool:
    """True when `text` reads like an instruction to a model (in English or another common language, however it is
    spelled or encoded) or hides characters that reorder or hide text."""
    if not _MAYBE_INSTRUCTION.search(_SCHEME.sub("", text, count=1)):
        return False
    if len(text) > _SHORT:  # ticket texts and long descriptions: not worth caching
        return _matches(text, 0)
    return _short_text_instruction(text)


@lru_cache(maxsize=32768)
def _short_text_instruction(text: str) -> bool:
    # directory values repeat a lot (titles, departments, offices, names): remember the verdict
    return _matches(text, 0)
