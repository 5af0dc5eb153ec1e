"""Who may use which project on the budget server: API keys, the keys file, and grants.

A request's key (``Authorization: Bearer KEY``, or HTTP Basic auth with the key as the
password, for browsers) is looked up among the server's keys; the key's :class:`Grant` says
which projects it may read and which it may change. There is one code path for every mode:

- ``serve --keys FILE``: each key of the file has its own grant (:func:`load_keys`);
- ``serve --api-key KEY``: that one key, granted every project read-write;
- no key: every request is granted every project read-write (the server then listens on
  loopback only, see ``server.check_bind``).

Handlers and pages call :func:`projects_for` for the request's grant, e.g.
``projects_for(request).visible(names)`` to list only the projects a key may read. A grant
is decided by the keys alone, never by the stores: a 403 does not tell whether a project exists.

The keys file (JSON)::

    {"keys": [
      {"name": "search-team", "key": "<16+ characters>", "projects": ["search", "chat"], "access": "read-write"},
      {"name": "finance", "sha256": "<hex digest of the key>", "projects": ["*"], "access": "read"}
    ]}

``sha256`` (the hex SHA-256 of the key's UTF-8 bytes) keeps secrets out of the file. SIGHUP
reads the file again (:func:`reload_on_signal`); a bad file is logged and the old keys kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from .errors import ConfigurationError
from .stores.projects import check_project_name

logger = logging.getLogger(__name__)

__all__ = [
    "ALL_PROJECTS",
    "READ_OPS",
    "AccessDenied",
    "Grant",
    "Keys",
    "authenticate",
    "checked_project",
    "cross_site",
    "load_keys",
    "op_writes",
    "projects_for",
    "reload_on_signal",
]

ALL_PROJECTS = "*"
ACCESS_VALUES = ("read", "read-write")
MIN_KEY_LENGTH = 16
REALM = "litellm-budget"
# Pages that browsers open: there, and for GET only, the key may come as HTTP Basic credentials
# (any user name, the key as password), which a browser asks for and then resends by itself.
# Nowhere else: a browser would attach them to another site's forged POST (cross-site request forgery).
DASHBOARD_PATH = "/dashboard"
BROWSER_PAGES = frozenset({DASHBOARD_PATH})
# The atomic operations (``_server_requests.OPS``) that change nothing. Any other, including
# one added later, counts as a write: a read-only key is refused it.
READ_OPS = frozenset({"get", "all"})

_KEY_CHARS = re.compile(rf"[\x21-\x7e]{{{MIN_KEY_LENGTH},1024}}")  # printable ASCII, no spaces
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_ENTRY_FIELDS = frozenset({"name", "key", "sha256", "projects", "access"})


class AccessDenied(Exception):
    """The request's key may not use (or may not change) ``project``: a 403."""

    def __init__(self, project: str, write: bool) -> None:
        self.project = project
        verb = "change" if write else "use"
        super().__init__(f"this API key may not {verb} project {project!r}")


@dataclass(frozen=True)
class Grant:
    """The projects one key may read, and whether it may change them."""

    name: str
    projects: frozenset[str]  # project names, or ALL_PROJECTS
    writes: bool

    @property
    def every_project(self) -> bool:
        return ALL_PROJECTS in self.projects

    def can_read(self, project: str) -> bool:
        return self.every_project or project in self.projects

    def can_write(self, project: str) -> bool:
        return self.writes and self.can_read(project)

    def visible(self, projects: Iterable[str]) -> list[str]:
        """The given projects this key may read, in their order."""
        return [project for project in projects if self.can_read(project)]


NOBODY = Grant("nobody", frozenset(), writes=False)
EVERYONE = Grant("everyone", frozenset({ALL_PROJECTS}), writes=True)


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class Keys:
    """The server's keys, each with its grant; looked up by SHA-256 digest in constant time.

    ``required`` false (no key configured): every request gets :data:`EVERYONE`.
    """

    def __init__(
        self,
        grants: Mapping[bytes, Grant],
        *,
        required: bool = True,
        source: str = "",
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        self._grants = dict(grants)
        self.required = required
        self.source = source
        self.path = path  # the keys file, read again by reload()

    @classmethod
    def single(cls, api_key: str | None) -> Keys:
        """``--api-key``: that key opens every project read-write; None or empty: no key."""
        if not api_key:
            return cls({}, required=False, source="no API key")
        return cls({_digest(api_key.encode()): EVERYONE}, source="one API key")

    def __len__(self) -> int:
        return len(self._grants)

    def reload(self) -> str:
        """Read the keys file again and use its keys from now on (SIGHUP); a bad file changes
        nothing and raises ConfigurationError. Returns the new :attr:`source`."""
        if self.path is None:
            raise ConfigurationError("these keys come from no file: nothing to reload")
        fresh = load_keys(self.path)
        # one assignment each, on the event loop's thread: a request sees old keys or new ones
        self._grants, self.source = fresh._grants, fresh.source
        return self.source

    def grant(self, key: bytes | None) -> Grant | None:
        """The grant of ``key``; None for a wrong or missing key when keys are required."""
        if not self.required:
            return EVERYONE
        if key is None:
            return None
        sent = _digest(key)
        found: Grant | None = None
        for digest, grant in self._grants.items():  # every entry compared: no early exit
            if hmac.compare_digest(sent, digest):
                found = grant
        return found


# --- requests ---------------------------------------------------------------------------

KEYS = web.AppKey("keys", Keys)
_GRANT = web.RequestKey("grant", Grant)


def _sent_key(request: web.Request) -> bytes | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    # Header bytes that are not UTF-8 arrive as surrogates: compare them as bytes all the same.
    raw = token.strip().encode("utf-8", "surrogateescape")
    if scheme.lower() == "bearer":
        return raw
    if scheme.lower() == "basic" and request.method in ("GET", "HEAD") and request.path in BROWSER_PAGES:
        try:
            decoded = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return None
        _user, colon, password = decoded.partition(b":")  # any user name; the key is the password
        return password if colon else None
    return None


def cross_site(request: web.Request) -> bool:
    """Whether a browser sends this request from another site's page: a form or script there
    may not change budgets, even on a server that needs no key (loopback) or whose key the
    browser holds. Clients that are not browsers send neither header."""
    fetched_from = request.headers.get("Sec-Fetch-Site")
    if fetched_from is not None and fetched_from not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    return origin is not None and origin != f"{request.scheme}://{request.host}"


def authenticate(request: web.Request) -> bool:
    """Whether the request carries a key of the server (or none is needed); keeps its grant."""
    grant = request.app[KEYS].grant(_sent_key(request))
    if grant is None:
        return False
    request[_GRANT] = grant
    return True


def projects_for(request: web.Request) -> Grant:
    """The request's grant: what its key may read and change (nothing, unauthenticated)."""
    try:
        return request[_GRANT]
    except KeyError:
        return request.app[KEYS].grant(_sent_key(request)) or NOBODY


def reload_on_signal(keys: Keys, announce: Callable[[str], None]) -> None:
    """The SIGHUP handler: read the keys file again; a bad one is logged and the keys kept."""
    try:
        announce(f"keys reloaded: {keys.reload()}")
    except ConfigurationError as exc:
        logger.error("keys not reloaded, the previous keys stay in use: %s", exc)


def op_writes(op: str) -> bool:
    """Whether atomic operation ``op`` may change a store (any op not known to read does)."""
    return op not in READ_OPS


def checked_project(request: web.Request, name: object, *, write: bool) -> str:
    """The request's ``project_name``, checked, and allowed to its key.

    :raises ConfigurationError: an invalid name (400).
    :raises AccessDenied: the key may not read it, or not change it (403).
    """
    project = check_project_name(name)
    grant = projects_for(request)
    if not (grant.can_write(project) if write else grant.can_read(project)):
        logger.warning("key %r refused %s project %r", grant.name, "writing" if write else "reading", project)
        raise AccessDenied(project, write)
    return project


# --- the keys file ----------------------------------------------------------------------


def load_keys(path: str | os.PathLike[str]) -> Keys:
    """The keys of a keys file (see the module's docstring), every entry checked.

    A world-writable file is refused (anyone could add a key); a world-readable one that holds
    plain keys is accepted with a warning. Links are followed (Kubernetes mounts secrets so).

    :raises ConfigurationError: naming the file and the entry, never a key.
    """
    where = str(path)
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):  # checked first: reading a FIFO would block
            raise ConfigurationError(f"keys file {where}: not a regular file")
        if mode & stat.S_IWOTH:
            raise ConfigurationError(f"keys file {where}: anyone may write it (chmod o-w {where})")
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"keys file {where}: cannot read it: {exc}") from None
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"keys file {where}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or set(raw) != {"keys"} or not isinstance(raw["keys"], list):
        raise ConfigurationError(f'keys file {where}: must be an object {{"keys": [...]}} and nothing else')
    if not raw["keys"]:
        raise ConfigurationError(f"keys file {where}: has no keys")
    grants: dict[bytes, Grant] = {}
    names: set[str] = set()
    plain = False
    for index, entry in enumerate(raw["keys"]):
        digest, grant = _entry(entry, index, f"keys file {where}: keys[{index}]")
        entry_where = f"keys file {where}: keys[{index}] ({grant.name!r})"
        if digest in grants:
            raise ConfigurationError(f"{entry_where}: the same key as {grants[digest].name!r}")
        if grant.name in names:
            raise ConfigurationError(f"{entry_where}: another entry has this name")
        names.add(grant.name)
        grants[digest] = grant
        plain = plain or "key" in entry
    if plain and mode & stat.S_IROTH:
        logger.warning("keys file %s holds keys and anyone may read it: chmod o-r, or store sha256 digests", where)
    return Keys(grants, source=f"{len(grants)} key(s) from {where}", path=path)


def _entry(entry: Any, index: int, where: str) -> tuple[bytes, Grant]:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where}: must be an object, got {type(entry).__name__}")
    name = entry.get("name", f"key {index}")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ConfigurationError(f"{where}: name must be a non-empty string of at most 200 characters")
    where = f"{where} ({name!r})"
    unknown = sorted(set(entry) - _ENTRY_FIELDS)
    if unknown:
        raise ConfigurationError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
    if ("key" in entry) == ("sha256" in entry):
        raise ConfigurationError(f'{where}: give exactly one of "key" and "sha256"')
    if "key" in entry:
        key = entry["key"]
        if not isinstance(key, str) or not _KEY_CHARS.fullmatch(key):
            raise ConfigurationError(
                f"{where}: key must be {MIN_KEY_LENGTH} to 1024 printable ASCII characters without spaces"
            )
        digest = _digest(key.encode())
    else:
        hex_digest = entry["sha256"]
        if not isinstance(hex_digest, str) or not _HEX_DIGEST.fullmatch(hex_digest):
            raise ConfigurationError(f"{where}: sha256 must be 64 hex digits (the SHA-256 of the key)")
        digest = bytes.fromhex(hex_digest)
    access = entry.get("access")
    if access not in ACCESS_VALUES:
        raise ConfigurationError(f"{where}: access must be one of {', '.join(map(repr, ACCESS_VALUES))}")
    projects = entry.get("projects")
    if not isinstance(projects, list) or not projects:
        raise ConfigurationError(f'{where}: projects must be a non-empty list of project names, or ["*"]')
    if ALL_PROJECTS in projects and len(projects) > 1:
        raise ConfigurationError(f'{where}: "*" (every project) must stand alone in projects')
    for project in projects:
        if project != ALL_PROJECTS:
            try:
                check_project_name(project)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{where}: {exc}") from None
    return digest, Grant(name, frozenset(projects), writes=access == "read-write")
