"""dmem-lsp's own secret rules: what detect-secrets' plugins miss, and when a found value is no secret.

``rule_findings(line, ...)`` finds, in one line: ``key = value`` and ``key: value`` where the
name holds a credential (``token``, ``X-Api-Key``, ``POSTGRES_PASSWORD``) and the value reads as
one (``KEY_NAME``, ``looks_like_a_credential``); a password named in prose; ``curl -u
user:password``, ``--password``, ``sshpass -p``, ``mysql -p``, ``Authorization:`` headers,
``user:pw@host`` and XML elements (``RULES``); cloud-token shapes (``TOKEN_SHAPES``); hex keys
without quotes next to a credential word; and mixed-case high-entropy strings.

The context rules here also filter what the plugins find (``secret_scan``): a value assigned to
a name about a credential (``secret_type = "GitHub Token"``, ``is_metadata``), a placeholder
(``PLACEHOLDER``), hex or high-entropy strings that the line calls a hash (``hash_context``).

Plain regexes and arithmetic: nothing here imports detect-secrets; what ``rule_findings`` needs of
it (its heuristic filters and its hex entropy plugin) is passed in.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CERTIFICATE", "Finding", "KEY_NAME", "MIN_HEX", "PLACEHOLDER", "hash_context", "is_metadata",
    "looks_like_a_credential", "rule_findings",
]

MIN_HEX = 20
"""Shorter hex strings (colours, short ids) are not judged as keys."""

CREDENTIAL_WORD = (
    r"(?:token|api[-_ ]?key|apikey|access[-_]?key|secret|password|passwd|passphrase|pwd|pass|credentials?|bearer"
    r"|auth|private[-_]?key|client[-_]?secret|signing[-_]?key|session[-_]?key|license[-_]?key)"
)
KEY_NAME = re.compile(rf"(?:(?<=[_-])|(?<![A-Za-z0-9])){CREDENTIAL_WORD}(?![A-Za-z0-9])", re.I)
"""A name that holds a credential: ``token``, ``X-Api-Key``, ``POSTGRES_PASSWORD``, ``db_pass`` (not ``tokens``)."""
ASSIGNED = re.compile(
    r"(?<![\w-])(?P<name>[\w-]+)['\"\]]?\s*(?::=|=>|[:=])\s*(?:[rbu]?['\"`])?"
    r"(?P<value>[^\s'\"`,;()\[\]{}<>]{8,})(?P<after>.?)"
)
"""``name = value``, ``name: value``, ``"name": "value"``; the name must be a ``KEY_NAME`` (each name is tried from
its first character only, so a long run of names costs linear time)."""
PROSE_PASSWORD = re.compile(
    r"\b(?:password|passwd|passphrase|pwd)\b(?:\s+(?:is|was|of|for\s+\S+\s+is))?\s+['\"]?(?P<value>[^\s'\"]{6,})", re.I
)
RULES = (
    (
        re.compile(r"(?:^|\s)(?:-u|--user)(?:\s+|=)['\"]?[^\s:'\"@]+:(?P<value>[^\s'\"@]{4,})"),
        "Command-line Credentials",
    ),
    (
        re.compile(r"(?:^|\s)--(?:password|passwd|pass|token|api-key)(?:\s+|=)['\"]?(?P<value>[^\s'\"]{4,})"),
        "Command-line Credentials",
    ),
    (re.compile(r"\bsshpass\s+-p\s*['\"]?(?P<value>[^\s'\"]{4,})"), "Command-line Credentials"),
    (re.compile(r"\bmysql(?:dump|admin)?\b[^\n|;&]*\s-p(?P<value>[^\s'\"]{4,})"), "Command-line Credentials"),
    (
        re.compile(r"\bAuthorization\s*[:=]\s*['\"]?(?:Basic|Bearer|Token|Digest|Key)\s+(?P<value>[^\s'\"]{8,})", re.I),
        "Authorization Header",
    ),
    (re.compile(r"://[^\s/:@]*:(?P<value>[^\s/@]{3,})@"), "Basic Auth Credentials"),  # redis://:pw@host too
    (
        re.compile(rf"<(?P<tag>[\w.-]*{CREDENTIAL_WORD}[\w.-]*)>(?P<value>[^<\s]{{4,}})</(?P=tag)>", re.I),
        "Secret Keyword",
    ),
)
"""Shapes detect-secrets has no plugin for: curl -u, --password, sshpass, mysql -p, headers, XML elements."""
TOKEN_SHAPES = re.compile(
    r"\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bgithub_pat_[A-Za-z0-9_]{40,}\b"
    r"|\bsk-[A-Za-z0-9_-]{20,}\b|\bxox[abposr]-[A-Za-z0-9-]{10,}\b|\bAIza[0-9A-Za-z_-]{35}\b"
    r"|\bhf_[A-Za-z0-9]{30,}\b|\bglpat-[A-Za-z0-9_-]{20,}\b|\bnpm_[A-Za-z0-9]{36}\b|\bpypi-[A-Za-z0-9_-]{50,}\b"
    r"|\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"
)
CERTIFICATE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----|-----BEGIN CERTIFICATE-----|PuTTY-User-Key-File")
MIXED_TOKEN = re.compile(r"[A-Za-z0-9+/=_\-]{32,}")
HEX_RUN = re.compile(rf"(?<![A-Za-z0-9_-])[0-9A-Fa-f]{{{MIN_HEX},}}(?![A-Za-z0-9_-])")
HASH_WORD = re.compile(
    r"(?<![A-Za-z])(?:sha\d*|md5|blake\d*\w*|commit|commits|rev|revision|hash|digest|checksum|integrity|etag|oid"
    r"|object|tree|blob|parent|merge|ref|head|fixed in|cherry-picked|revert\w*|build[-_ ]?id|uuid|fingerprint)"
    r"(?![A-Za-z])",
    re.I,
)
PLACEHOLDER = re.compile(
    r"^(?:none|null|nil|true|false|undefined|empty|required|optional|string|str|bytes|int|secret|password|token"
    r"|pass|passwd|pwd|user|username|value|key|x{3,}|\*{3,}|\.{3,}|-+|_+|your[-_]?\w*|my[-_]?\w*|example\w*"
    r"|placeholder\w*|redacted\w*|changeit)$",
    re.I,
)
METADATA_NAME = re.compile(
    r"[_-](?:type|name|id|field|header|label|length|len|path|file|dir|env|var|prefix|pattern|regex|format|kind"
    r"|count|hint|policy|ttl|expiry|expires|url|endpoint|algorithm|scheme|mode)['\"\]]?\s*(?::=|=>|[:=]|==|!=)\s*"
    r"[rbu]?['\"`]?\s*$",
    re.I,
)
"""A name about a credential rather than holding one (``secret_type = "GitHub Token"``, ``password_field:``)."""
CAMEL_WORDS = re.compile(r"[A-Za-z][a-z]+(?:[A-Z][a-z]+|_[a-z]+)*")


@dataclass(frozen=True)
class Finding:
    """One secret found in a text, by a detect-secrets plugin or one of our rules."""

    value: str
    """The secret itself (never logged, never stored)."""
    kind: str
    """What it is, e.g. ``Basic Auth Credentials``; the placeholder says it."""
    detector: str
    """Who found it: ``detect-secrets BasicAuthDetector`` or ``dmem-lsp rule``."""
    whole: bool = False
    """The whole text is the secret (a private key block): refuse, never redact."""

    @property
    def label(self) -> str:
        return f"{self.kind} ({self.detector})"


def entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def is_metadata(line: str, value: str) -> bool:
    """The value is assigned to a name about a credential (``secret_type``), or is no value at all (``xxxxxxxx``)."""
    at = line.find(value)
    return len(set(value)) <= 3 or (at > 0 and bool(METADATA_NAME.search(line[max(0, at - 200) : at])))


def looks_like_a_credential(value: str) -> bool:
    """A value next to a key word that reads as a credential, not a name or a word."""
    if PLACEHOLDER.match(value) or value.startswith(("$", "%", "{", "<", "#", "\\")) or "://" in value:
        return False
    letters, digits = any(c.isalpha() for c in value), any(c.isdigit() for c in value)
    mixed_case = any(c.islower() for c in value) and any(c.isupper() for c in value)
    if re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+", value):  # settings.api_token, os.environ
        return False
    if digits:
        return letters
    return mixed_case and len(value) >= 20 and not CAMEL_WORDS.fullmatch(value)  # not ProgressTokenFactory


def hash_context(line: str) -> bool:
    """The line calls its hex or high-entropy strings a hash (``sha``, ``commit``, ...) and names no credential."""
    return bool(HASH_WORD.search(line)) and not KEY_NAME.search(line)


def rule_findings(line: str, named: bool, lock_file: bool, heuristic: Any, hex_plugin: Any) -> Iterator[Finding]:
    """Our rules' findings in ``line``. ``named``: the line holds a credential hint (the keyword rules run);
    ``lock_file``: no entropy rules; ``heuristic``: detect-secrets' ``filters.heuristic``; ``hex_plugin``: its
    ``HexHighEntropyString``."""
    rule = "dmem-lsp rule"
    for match in ASSIGNED.finditer(line) if named else ():
        value = match.group("value")
        if match.group("after") in ("(", "[") or not KEY_NAME.search(match.group("name")):
            continue
        if not looks_like_a_credential(value) or is_metadata(line, value):
            continue
        yield Finding(value, "Secret Keyword", rule)
    for match in PROSE_PASSWORD.finditer(line) if named else ():
        value = match.group("value").rstrip(".,;:!)")
        if looks_like_a_credential(value):
            yield Finding(value, "Password", rule)
    for pattern, kind in RULES:
        for match in pattern.finditer(line):
            value = match.group("value")
            bare = value.strip("`'\".,;:")
            if bare and not PLACEHOLDER.match(bare) and not heuristic.is_templated_secret(bare):
                yield Finding(value, kind, rule)
    for match in TOKEN_SHAPES.finditer(line):
        yield Finding(match.group(0), "Access Token", rule)
    if lock_file:
        return
    for match in HEX_RUN.finditer(line):  # unquoted hex keys: only with a credential word on the line
        value = match.group(0)
        if (
            named
            and KEY_NAME.search(line)
            and hex_plugin.calculate_shannon_entropy(value) > hex_plugin.entropy_limit
        ):
            if not heuristic.is_sequential_string(value):
                yield Finding(value, "Hex High Entropy String", rule)
    for match in MIXED_TOKEN.finditer(line):
        value = match.group(0)
        classes = sum(bool(re.search(p, value)) for p in ("[a-z]", "[A-Z]", "[0-9]"))
        before = line[: match.start()]
        word = before.split()[-1] if before.strip() and not before[-1].isspace() else ""
        if "/" in value and "://" in word:  # a path in a URL (https://hg.python.org/cpython/file/7aaba721ebc0/Lib/socket)
            continue
        if classes >= 3 and entropy(value) >= 4.2 and not hash_context(line):
            if heuristic.is_sequential_string(value):
                continue
            yield Finding(value, "High Entropy String", rule)
