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
(``key: value``, ``key = value``). Our rules (``secret_rules``) add what those miss:
``curl -u user:password``, ``Authorization:`` headers, keys the keyword list lacks (``token``,
``X-Api-Key``), a password named in prose, hex keys without quotes, and the cloud-token shapes
and mixed-case high-entropy rule dmem-lsp had before; their context rules filter the plugins'
findings too.

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

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from dmem_lsp.workspace.secret_rules import (
    CERTIFICATE,
    MIN_HEX,
    PLACEHOLDER,
    Finding,
    hash_context,
    is_metadata,
    rule_findings,
)

__all__ = ["Finding", "Screened", "loaded", "scan", "screen", "MOSTLY_SECRET"]

MOSTLY_SECRET = 0.5
"""A text whose secrets cover more than this share of its non-blank characters is refused, not redacted."""
MAX_LINE = 4000
"""Longer lines are scanned in windows of this many characters (overlapping by ``OVERLAP``)."""
OVERLAP = 256
LOCK_FILES = frozenset(
    {
        "poetry.lock", "Pipfile.lock", "uv.lock", "pdm.lock", "package-lock.json", "npm-shrinkwrap.json", "yarn.lock",
        "pnpm-lock.yaml", "bun.lock", "Cargo.lock", "go.sum", "Gemfile.lock", "composer.lock", "Podfile.lock",
        "packages.lock.json", "Package.resolved", "flake.lock", "mix.lock", "pubspec.lock",
    }
)
"""High-entropy strings in these are hashes, not secrets: the entropy plugins and rules skip them."""
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
                or is_metadata(line, value)
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
                if len(value) < MIN_HEX or heuristic.is_sequential_string(value) or hash_context(line):
                    continue
            elif plugin in detectors.entropy and (heuristic.is_sequential_string(value) or hash_context(line)):
                continue
            yield Finding(value, secret.type, detector)


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
                *rule_findings(line, named, lock_file, detectors.heuristic, detectors.hex),
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

