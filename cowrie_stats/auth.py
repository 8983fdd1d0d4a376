"""API keys: the keys file, constant-time checks and the server interceptor.

The keys file (``COWRIE_STATS_API_KEYS_FILE``) holds one key per line as
``NAME:SHA256HEX`` -- the line ``cowrie-stats hash-key --name NAME`` prints --
with blank lines and ``#`` comment lines allowed. Only hashes are stored. A
caller sends its key as ``authorization: Bearer <key>`` or ``x-api-key: <key>``
metadata; the SHA-256 of the presented key is compared with every configured
hash using :func:`hmac.compare_digest`, always all of them, so the time taken
does not tell which entry (or how much of one) matched. Several lines may be
valid at once, which is how keys are rotated: add the new key, move the
clients over, remove the old line. The file is re-read when it changes (its
modification time, size or inode), so rotation needs no restart; a changed
file that does not parse is refused with an error in the log and the keys
loaded before stay in force. Revocation fails closed: while the file is
missing, unreadable or holds no key, no key is valid (logged once per change).
The file must not be readable by others, nor by a group other than the
server's own (Kubernetes secret volumes with ``fsGroup`` are group-readable):
such a file is refused at start.

Refusals are decided from the call's metadata alone, so a caller without a
valid key never gets a thread to wait for its request message
(:func:`cowrie_stats.guard.refuse_from_metadata`), and they are logged
rate-limited (:data:`cowrie_stats.guard.REFUSALS`).

The name of the key (never the key or its hash) is recorded for the access log.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from cowrie_stats.errors import UnauthenticatedError, to_status
from cowrie_stats.guard import REFUSALS, Handler, Interceptor, refuse_from_metadata
from cowrie_stats.settings import SettingsError, check_private_file

log = logging.getLogger(__name__)

KEYS_FILE_VARIABLE = "COWRIE_STATS_API_KEYS_FILE"
AUTHORIZATION_HEADER = "authorization"
API_KEY_HEADER = "x-api-key"
BEARER = "bearer"
#: Methods callable without a key unless COWRIE_STATS_OPEN_HEALTH_AND_REFLECTION=false.
OPEN_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
HASH_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
MIN_KEY_LENGTH = 16

#: Name of the API key of the call being served (None: no key was checked).
CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cowrie_stats_caller", default=None
)


class MissingApiKeyError(UnauthenticatedError):
    reason = "API_KEY_MISSING"


class InvalidApiKeyError(UnauthenticatedError):
    reason = "API_KEY_INVALID"


def hash_key(key: str) -> str:
    """The SHA-256 hex digest stored in the keys file for ``key``."""
    return hashlib.sha256(key.strip().encode("utf-8")).hexdigest()


def key_line(name: str, key: str) -> str:
    """The keys-file line for ``key`` named ``name``; ValueError when either is unusable."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"key name {name!r} must be 1-64 characters of letters, digits and ._@- "
            "starting with a letter or digit"
        )
    if len(key.strip()) < MIN_KEY_LENGTH:
        raise ValueError(f"give an API key of at least {MIN_KEY_LENGTH} characters")
    return f"{name}:{hash_key(key)}"


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes  # raw 32-byte SHA-256


def parse_keys(
    text: str, source: str = KEYS_FILE_VARIABLE, allow_empty: bool = False
) -> tuple[ApiKey, ...]:
    """Parse a keys file; SettingsError naming the line on any malformed entry.

    Messages never quote a line: a raw key pasted by mistake must not reach a log.
    """
    keys: list[ApiKey] = []
    seen: set[bytes] = set()
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, digest = (part.strip() for part in line.partition(":"))
        if not sep:
            raise SettingsError(
                f"{source}: line {number}: expected NAME:SHA256HEX "
                "(the output of `cowrie-stats hash-key --name NAME`)"
            )
        if not NAME_PATTERN.fullmatch(name):
            raise SettingsError(
                f"{source}: line {number}: the key name must be 1-64 characters of "
                "letters, digits and ._@- starting with a letter or digit"
            )
        if not HASH_PATTERN.fullmatch(digest):
            raise SettingsError(
                f"{source}: line {number}: expected 64 hexadecimal digits (a SHA-256) "
                f"after '{name}:'; store hashes, never keys"
            )
        raw = bytes.fromhex(digest)
        if raw in seen:
            raise SettingsError(f"{source}: line {number}: the same key hash appears twice")
        seen.add(raw)
        keys.append(ApiKey(name, raw))
    if not keys and not allow_empty:
        raise SettingsError(f"{source}: the file holds no key, so every call would be refused")
    return tuple(keys)


def match_key(presented: str, keys: Sequence[ApiKey]) -> str | None:
    """Name of the key matching ``presented``; compares against every entry."""
    digest = hashlib.sha256(presented.strip().encode("utf-8")).digest()
    found: str | None = None
    for key in keys:
        # No early exit: every entry costs the same whether or not one matched.
        if hmac.compare_digest(digest, key.digest) and found is None:
            found = key.name
    return found


Stamp = tuple[int, int, int, int]


def check_private(path: Path) -> None:
    """SettingsError unless only the owner (at most also the server's own group) reads ``path``."""
    try:
        check_private_file(path, KEYS_FILE_VARIABLE)
    except OSError as exc:
        raise SettingsError(f"{KEYS_FILE_VARIABLE}: cannot read {path}: {exc.strerror}") from exc


class KeyStore:
    """The keys of a keys file, re-read when the file changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        check_private(self.path)
        self._stamp = self._stamp_now()
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{KEYS_FILE_VARIABLE}: {self._unreadable(exc)}") from exc
        self._keys = parse_keys(text)  # at start, a file without keys is a mistake
        self._problem: str | None = None

    def _stamp_now(self) -> Stamp | None:
        try:
            info = self.path.stat()
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino)

    def _unreadable(self, exc: OSError | UnicodeDecodeError) -> str:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        return f"cannot read {self.path}: {reason}"

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        """Current keys, reloading the file first if it changed."""
        if self._stamp_now() != self._stamp:
            with self._lock:
                if self._stamp_now() != self._stamp:
                    self._reload()
        return self._keys

    def _reload(self) -> None:
        """Read the changed file (lock held): fail closed unless it is merely malformed."""
        self._stamp = self._stamp_now()
        try:
            text = self.path.read_text(encoding="utf-8")
            keys = parse_keys(text, allow_empty=True)
        except OSError as exc:  # missing or unreadable: revocation must not be undone
            self._revoke_all(self._unreadable(exc))
            return
        except (SettingsError, UnicodeDecodeError) as error:
            # A typo in an edit: keep serving with the keys that were valid; say so once.
            if isinstance(error, UnicodeDecodeError):
                error = SettingsError(f"{KEYS_FILE_VARIABLE}: {self._unreadable(error)}")
            log.error("API keys file not reloaded, previous keys stay in force: %s", error)
            return
        if not keys:
            self._revoke_all(f"{self.path} holds no key")
            return
        self._keys, self._problem = keys, None
        log.info("API keys reloaded", extra={"keys": len(keys), "names": self.names})

    def _revoke_all(self, problem: str) -> None:
        self._keys = ()
        if problem != self._problem:
            log.error("no API key is valid: %s: %s", KEYS_FILE_VARIABLE, problem)
        self._problem = problem

    @property
    def names(self) -> list[str]:
        return sorted({key.name for key in self._keys})

    def authenticate(self, presented: str) -> str | None:
        return match_key(presented, self.keys)


def presented_key(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The key in ``authorization: Bearer`` (preferred) or ``x-api-key`` metadata."""
    bearer: str | None = None
    api_key: str | None = None
    for name, value in metadata or ():
        if isinstance(value, bytes):
            continue  # binary (-bin) headers never carry a key
        header = name.lower()
        if header == AUTHORIZATION_HEADER and bearer is None:
            scheme, _, credentials = value.strip().partition(" ")
            if scheme.lower() == BEARER and credentials.strip():
                bearer = credentials.strip()
        elif header == API_KEY_HEADER and api_key is None and value.strip():
            api_key = value.strip()
    return bearer if bearer is not None else api_key


def _aborting_handler(error: UnauthenticatedError, like: Handler | None, method: str) -> Handler:
    """A handler of the same kind as ``like`` that fails every call with ``error``.

    It never reads the request, and says so to the call guard, which then refuses
    the call without waiting for the message.
    """
    status = to_status(error)
    REFUSALS.refused(error.reason, method)
    refuse_from_metadata()

    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        CALLER.set(None)
        context.abort_with_status(status)

    if like is not None and like.request_streaming and like.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if like is not None and like.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if like is not None and like.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class ApiKeyInterceptor(Interceptor):
    """Refuses calls without a valid API key (UNAUTHENTICATED), except open methods."""

    def __init__(self, store: KeyStore, open_prefixes: Sequence[str] = OPEN_METHOD_PREFIXES):
        self.store = store
        self.open_prefixes = tuple(open_prefixes)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method = handler_call_details.method
        if method.startswith(self.open_prefixes):
            return continuation(handler_call_details)
        presented = presented_key(handler_call_details.invocation_metadata)
        if presented is None:
            return _aborting_handler(
                MissingApiKeyError(
                    "missing API key: send metadata 'authorization: Bearer <key>' "
                    "or 'x-api-key: <key>'"
                ),
                continuation(handler_call_details),
                method,
            )
        name = self.store.authenticate(presented)
        if name is None:
            return _aborting_handler(
                InvalidApiKeyError("invalid API key"), continuation(handler_call_details), method
            )
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        def authenticated(request: Any, context: grpc.ServicerContext) -> Any:
            CALLER.set(name)
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            authenticated,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def build_auth_interceptor(
    keys_file: str | None, open_methods_without_key: bool
) -> ApiKeyInterceptor | None:
    """The API key interceptor for the settings, or None when no keys file is set."""
    if not keys_file:
        return None
    store = KeyStore(keys_file)
    log.info(
        "API keys required",
        extra={
            "keys": len(store.keys),
            "names": store.names,
            "open_methods": open_methods_without_key,
        },
    )
    prefixes = OPEN_METHOD_PREFIXES if open_methods_without_key else ()
    return ApiKeyInterceptor(store, prefixes)
