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
loaded before stay in force.

The name of the key (never the key or its hash) is recorded for the access log.
"""

from __future__ import annotations

import contextlib
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
from typing import TYPE_CHECKING, Any

import grpc

from cowrie_stats.errors import UnauthenticatedError, to_status
from cowrie_stats.settings import SettingsError

if TYPE_CHECKING:  # grpc-stubs make these generic; the runtime classes are not
    Interceptor = grpc.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Interceptor = grpc.ServerInterceptor
    Handler = grpc.RpcMethodHandler

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


def parse_keys(text: str, source: str = KEYS_FILE_VARIABLE) -> tuple[ApiKey, ...]:
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
    if not keys:
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


class KeyStore:
    """The keys of a keys file, re-read when the file changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp, self._keys = self._read()

    def _stamp_now(self) -> tuple[int, int, int, int]:
        info = self.path.stat()
        return (info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino)

    def _read(self) -> tuple[tuple[int, int, int, int], tuple[ApiKey, ...]]:
        try:
            stamp = self._stamp_now()
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise SettingsError(f"{KEYS_FILE_VARIABLE}: cannot read {self.path}: {reason}") from exc
        return stamp, parse_keys(text)

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        """Current keys, reloading the file first if it changed."""
        try:
            changed = self._stamp_now() != self._stamp
        except OSError:
            changed = False  # replaced non-atomically; keep the keys we have
        if changed:
            with self._lock:
                try:
                    stamp = self._stamp_now()
                    if stamp != self._stamp:
                        self._stamp, self._keys = self._read()
                        log.info(
                            "API keys reloaded",
                            extra={"keys": len(self._keys), "names": self.names},
                        )
                except (OSError, SettingsError) as error:
                    # Keep serving with the keys that were valid; say so once per change.
                    with contextlib.suppress(OSError):
                        self._stamp = self._stamp_now()
                    log.error("API keys file not reloaded, previous keys stay in force: %s", error)
        return self._keys

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


def _aborting_handler(error: UnauthenticatedError, like: Handler | None) -> Handler:
    """A handler of the same kind as ``like`` that fails every call with ``error``."""
    status = to_status(error)

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
            )
        name = self.store.authenticate(presented)
        if name is None:
            log.warning("refused an invalid API key", extra={"method": method})
            return _aborting_handler(
                InvalidApiKeyError("invalid API key"), continuation(handler_call_details)
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
