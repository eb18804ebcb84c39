"""Finding secrets in text before it is written into memory: detect-secrets' plugins plus our rules.

``scan(text, name)`` returns every secret it finds (its value, its kind, who found it);
``screen(text, name)`` decides what may be written:

- **redact**: every secret found is replaced by ``<redacted:KIND>`` (each occurrence of its
  value, anywhere in the text) and the rest is written;
- **refuse**: a private key block, a text that is mostly secret (the secrets cover more than
  ``MOSTLY_SECRET`` of its non-blank characters: a pasted token or password is worth nothing
  once redacted), or a text that still holds a secret after redaction.

Detectors, chosen explicitly (no baseline file, no global detect-secrets settings): every
detect-secrets plugin but ``IPPublicDetector`` (addresses are not secrets), each run over one
line at a time through its ``analyze_line``, with the heuristic filters that suit a value
found by a keyword (templated ``{x}``/``<x>``/``${x}``, ``$VAR``, ``get_secret()``, ``*****``).
``KeywordDetector`` reads a named file with the regexes of its file type (quotes required in
Python, JavaScript, ...), and text without a file (debug steps) as configuration
(``key: value``, ``key = value``). Our rules add what those miss: ``curl -u user:password``,
``Authorization:`` headers, keys the keyword list lacks (``token``, ``X-Api-Key``), a password
named in prose, hex keys without quotes, and the cloud-token shapes and mixed-case
high-entropy rule dmem-lsp had before.

Allowed on purpose: hex strings that the line calls a hash (``sha``, ``commit``, ``rev``,
``digest``, ``integrity``, ...: git SHAs in docs, checksums), unquoted hex in prose or logs
with no credential word near it (a commit id in a README), and high-entropy strings in lock
files (``poetry.lock``, ``package-lock.json``, ...: their hashes are not secrets). A key word
on the line always wins: ``api_key_sha = "<40 hex>"`` is redacted.

detect-secrets (and ``requests``, which it imports) load on the first scan, not at start-up;
the plugins are built once and only read afterwards, so scans may run on several threads.
Nothing here imports torch.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Finding", "Screened", "scan", "screen", "MOSTLY_SECRET"]

MOSTLY_SECRET = 0.5
"""A text whose secrets cover more than this share of its non-blank characters is refused, not redacted."""
MAX_LINE = 4000
"""Longer lines are scanned in windows of this many characters (overlapping by ``OVERLAP``)."""
OVERLAP = 256
MIN_HEX = 20
"""Shorter hex strings (colours, short ids) are not judged as keys."""

LOCK_FILES = frozenset(
    {
        "poetry.lock", "Pipfile.lock", "uv.lock", "pdm.lock", "package-lock.json", "npm-shrinkwrap.json", "yarn.lock",
        "pnpm-lock.yaml", "bun.lock", "Cargo.lock", "go.sum", "Gemfile.lock", "composer.lock", "Podfile.lock",
        "packages.lock.json", "Package.resolved", "flake.lock", "mix.lock", "pubspec.lock",
    }
)

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
HINTS = ("key", "pw", "pass", "token", "secret", "auth", "credential", "bearer", "contrase", "cloudant", "softlayer")
"""Every keyword-style regex (ours, ``KeywordDetector``'s and the cloud plugins' ``key = value`` ones) needs one
of these (lowercased) in its line: lines without any skip them, by a substring test far cheaper than the regexes."""
NAMED_PLUGINS = frozenset(
    {"KeywordDetector", "CloudantDetector", "IbmCloudIamDetector", "IbmCosHmacDetector", "SoftlayerDetector"}
)
SKIPPED_PLUGINS = frozenset({"IPPublicDetector"})
CONFIG_NAME = "text.yaml"
"""How text without a file is read by ``KeywordDetector``: as configuration."""


@dataclass(frozen=True)
class Finding:
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


@dataclass(frozen=True)
class Screened:
    """What a text becomes: ``text`` to write (redacted) or ``refused`` (why), and what was redacted."""

    text: str | None
    refused: str | None = None
    redacted: tuple[str, ...] = ()
    """Labels of what was redacted (``Finding.label``), one per kind."""


class _Detectors:
    """detect-secrets' plugins and filters, loaded on first use (it imports requests: ~0.3 s)."""

    _lock = threading.Lock()
    _loaded: _Detectors | None = None

    def __init__(self) -> None:
        from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
        from detect_secrets.filters import heuristic
        from detect_secrets.plugins.base import RegexBasedDetector
        from detect_secrets.plugins.high_entropy_strings import HexHighEntropyString, HighEntropyStringsPlugin
        from detect_secrets.plugins.keyword import KeywordDetector

        classes = sorted(get_mapping_from_secret_type_to_class().values(), key=lambda c: c.__name__)
        self.plugins = [cls() for cls in classes if cls.__name__ not in SKIPPED_PLUGINS]
        self.entropy = tuple(p for p in self.plugins if isinstance(p, HighEntropyStringsPlugin))
        self.hex = next(p for p in self.plugins if isinstance(p, HexHighEntropyString))
        self.keyword_class = KeywordDetector
        self.regex_class = RegexBasedDetector
        self.heuristic = heuristic

    def active(self, text: str) -> list:
        """The plugins that may find something in ``text``: a token plugin whose regexes all miss the whole
        text would miss each of its lines too (their anchors accept a newline), so it is not run line by line."""
        return [
            plugin
            for plugin in self.plugins
            if type(plugin).__name__ in NAMED_PLUGINS
            or not isinstance(plugin, self.regex_class)
            or any(regex.search(text) for regex in plugin.denylist)
        ]

    @classmethod
    def get(cls) -> _Detectors:
        with cls._lock:
            if cls._loaded is None:
                cls._loaded = cls()
            return cls._loaded


def _windows(line: str) -> Iterator[str]:
    if len(line) <= MAX_LINE:
        yield line
        return
    for start in range(0, len(line), MAX_LINE - OVERLAP):
        yield line[start : start + MAX_LINE]


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _is_metadata(line: str, value: str) -> bool:
    """The value is assigned to a name about a credential (``secret_type``), or is no value at all (``xxxxxxxx``)."""
    at = line.find(value)
    return len(set(value)) <= 3 or (at > 0 and bool(METADATA_NAME.search(line[max(0, at - 200) : at])))


def _looks_like_a_credential(value: str) -> bool:
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


def _hash_context(line: str) -> bool:
    return bool(HASH_WORD.search(line)) and not KEY_NAME.search(line)


def _plugin_findings(
    detectors: _Detectors, plugins: list, line: str, named: bool, name: str, lock_file: bool
) -> Iterator[Finding]:
    heuristic = detectors.heuristic
    for plugin in plugins:
        if (lock_file and plugin in detectors.entropy) or (not named and type(plugin).__name__ in NAMED_PLUGINS):
            continue
        try:
            found = plugin.analyze_line(filename=name, line=line, line_number=0)
        except Exception:  # a plugin's bug must not let the text through unchecked
            found = ()
        for secret in found:
            value = secret.secret_value or ""
            detector = f"detect-secrets {type(plugin).__name__}"
            if type(plugin).__name__ == "PrivateKeyDetector":
                yield Finding(value, secret.type, detector, whole=True)
                continue
            if (
                not value.strip()
                or PLACEHOLDER.match(value.strip())
                or heuristic.is_templated_secret(value.strip())
                or _is_metadata(line, value)
            ):
                continue  # user:password@host in a README, ACxxxxxxxx in docs, secret_type = "Slack Token"
            if isinstance(plugin, detectors.keyword_class):
                value = value.strip()
                if (
                    heuristic.is_templated_secret(value)
                    or heuristic.is_prefixed_with_dollar_sign(value)
                    or heuristic.is_not_alphanumeric_string(value)
                    or heuristic.is_indirect_reference(line)
                    or PLACEHOLDER.match(value)
                    or len(value) < 4
                    or value.lower() in line[: line.find(value)].lower()  # CLIENT_KEY = "client"
                ):
                    continue
            elif plugin is detectors.hex:
                if len(value) < MIN_HEX or heuristic.is_sequential_string(value) or _hash_context(line):
                    continue
            elif plugin in detectors.entropy and (heuristic.is_sequential_string(value) or _hash_context(line)):
                continue
            yield Finding(value, secret.type, detector)


def _rule_findings(detectors: _Detectors, line: str, named: bool, lock_file: bool) -> Iterator[Finding]:
    rule = "dmem-lsp rule"
    for match in ASSIGNED.finditer(line) if named else ():
        value = match.group("value")
        if match.group("after") in ("(", "[") or not KEY_NAME.search(match.group("name")):
            continue
        if not _looks_like_a_credential(value) or _is_metadata(line, value):
            continue
        yield Finding(value, "Secret Keyword", rule)
    for match in PROSE_PASSWORD.finditer(line) if named else ():
        value = match.group("value").rstrip(".,;:!)")
        if _looks_like_a_credential(value):
            yield Finding(value, "Password", rule)
    for pattern, kind in RULES:
        for match in pattern.finditer(line):
            value = match.group("value")
            bare = value.strip("`'\".,;:")
            if bare and not PLACEHOLDER.match(bare) and not detectors.heuristic.is_templated_secret(bare):
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
            and detectors.hex.calculate_shannon_entropy(value) > detectors.hex.entropy_limit
        ):
            if not detectors.heuristic.is_sequential_string(value):
                yield Finding(value, "Hex High Entropy String", rule)
    for match in MIXED_TOKEN.finditer(line):
        value = match.group(0)
        classes = sum(bool(re.search(p, value)) for p in ("[a-z]", "[A-Z]", "[0-9]"))
        before = line[: match.start()]
        word = before.split()[-1] if before.strip() and not before[-1].isspace() else ""
        if "/" in value and "://" in word:  # a path in a URL (https://hg.python.org/cpython/file/7aaba721ebc0/Lib/socket)
            continue
        if classes >= 3 and _entropy(value) >= 4.2 and not _hash_context(line):
            if detectors.heuristic.is_sequential_string(value):
                continue
            yield Finding(value, "High Entropy String", rule)


def scan(text: str, name: str | None = None) -> list[Finding]:
    """Every secret in ``text``; ``name`` is the file it is (or belongs to), None for free text."""
    detectors = _Detectors.get()
    filename = name or CONFIG_NAME
    lock_file = filename.rsplit("/", 1)[-1] in LOCK_FILES
    findings: dict[tuple[str, str], Finding] = {}
    plugins = detectors.active(text)
    if CERTIFICATE.search(text):
        findings[("", "Private Key")] = Finding("", "Private Key or Certificate", "dmem-lsp rule", whole=True)
    for raw in text.splitlines():
        if not raw.strip():
            continue
        for line in _windows(raw):
            lowered = line.lower()
            named = any(hint in lowered for hint in HINTS)
            found = (
                *_plugin_findings(detectors, plugins, line, named, filename, lock_file),
                *_rule_findings(detectors, line, named, lock_file),
            )
            for finding in found:
                if "redacted:" not in finding.value:  # our own placeholders are not secrets
                    findings.setdefault((finding.value, finding.kind), finding)
    return list(findings.values())


def screen(text: str, name: str | None = None) -> Screened:
    """Redact the secrets in ``text``, or refuse it (see the module docstring)."""
    findings = scan(text, name)
    if not findings:
        return Screened(text)
    whole = [f for f in findings if f.whole]
    if whole:
        return Screened(None, f"refused: holds a {whole[0].kind.lower()} ({whole[0].detector})")
    labels = tuple(dict.fromkeys(f.label for f in findings))
    redacted, covered = text, 0
    for finding in sorted(findings, key=lambda f: len(f.value), reverse=True):
        covered += redacted.count(finding.value) * len(finding.value)
        redacted = redacted.replace(finding.value, f"<redacted:{finding.kind}>")
    blank = sum(1 for c in text if not c.isspace()) or 1
    if covered / blank > MOSTLY_SECRET:
        return Screened(None, f"refused: a secret or access token makes up most of the text ({'; '.join(labels)})")
    left = scan(redacted, name)
    if left:
        return Screened(None, f"refused: still holds a secret after redaction ({left[0].label})")
    return Screened(redacted, None, labels)


def loaded() -> bool:
    """Whether detect-secrets has been imported yet (start-up must not import it)."""
    return _Detectors._loaded is not None

