"""Header handling on the request path: hop-by-hop stripping, configured mutations,
request ids and the x-forwarded-* headers.

Headers are `list[tuple[bytes, bytes]]`: lower-case names, raw values, in
arrival order. Functions here mutate such lists in place unless they say
otherwise.
"""

from __future__ import annotations

import random

from trellis.core.config import AppendAction, HeaderMutation

HOP_BY_HOP: frozenset[bytes] = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te")
)
"""Headers that describe one connection and are never forwarded as they are.

This is Envoy's list; `te` survives only as `te: trailers`, and headers named by
`Connection` are dropped too (RFC 9110 section 7.6.1).
"""

# A `Connection` header may not remove these: doing so would change the framing or
# the target of the forwarded message.
_PROTECTED = frozenset((b"host", b"content-length"))
_UPGRADE_KEEP = frozenset((b"connection", b"upgrade"))
# Connection values that name only headers dropped anyway: no extra work.
_PLAIN_CONNECTION = frozenset((b"keep-alive", b"Keep-Alive", b"upgrade", b"Upgrade"))


def _has_trailers_token(value: bytes) -> bool:
    return any(item.split(b";", 1)[0].strip().lower() == b"trailers" for item in value.split(b","))


def strip_hop_by_hop(
    headers: list[tuple[bytes, bytes]], keep_upgrade: bool
) -> list[tuple[bytes, bytes]]:
    """Headers without the hop-by-hop ones; the input list itself when there are none.

    With `keep_upgrade` (an upgrade being forwarded) `connection` and `upgrade` are
    kept as they are, like Envoy does. `te` is reduced to `trailers` when it
    lists that token and removed otherwise.
    """
    listed: set[bytes] | None = None
    trailers = False
    found = False
    for name, value in headers:
        if name in HOP_BY_HOP:
            found = True
            if name == b"connection":
                if value not in _PLAIN_CONNECTION:  # the usual values name no extra header
                    listed = _listed_tokens(value, listed)
            elif name == b"te" and not trailers:
                trailers = _has_trailers_token(value)
    if not found:
        return headers
    drop: set[bytes] | frozenset[bytes] = HOP_BY_HOP
    if listed:
        drop = (HOP_BY_HOP | listed) - _PROTECTED
    if keep_upgrade:
        drop = drop - _UPGRADE_KEEP
    out: list[tuple[bytes, bytes]] = []
    for item in headers:
        name = item[0]
        if name not in drop:
            out.append(item)
        elif trailers and name == b"te":
            out.append((b"te", b"trailers"))
            trailers = False
    return out


_RESPONSE_DROP = HOP_BY_HOP | {b"server"}


def forwardable_response(
    headers: list[tuple[bytes, bytes]], keep_upgrade: bool
) -> tuple[list[tuple[bytes, bytes]], bool, bool]:
    """An upstream response's headers as the proxy forwards them, in one pass.

    Hop-by-hop headers go as `strip_hop_by_hop` says, and `server` too (the
    proxy names itself). Also returns whether the upstream sent a
    content-length and whether it chunked the body: together they tell how the
    body ends.
    """
    out: list[tuple[bytes, bytes]] = []
    has_length = chunked = False
    listed: set[bytes] | None = None
    for item in headers:
        name = item[0]
        if name not in _RESPONSE_DROP:
            if name == b"content-length":
                has_length = True
            out.append(item)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in item[1].lower()
        elif name == b"connection":
            if keep_upgrade:
                out.append(item)
            if item[1] not in _PLAIN_CONNECTION:
                listed = _listed_tokens(item[1], listed)
        elif name == b"upgrade" and keep_upgrade:
            out.append(item)
    if listed:
        keep = _PROTECTED | _UPGRADE_KEEP if keep_upgrade else _PROTECTED
        out = [item for item in out if item[0] not in listed or item[0] in keep]
    return out, has_length, chunked


def _listed_tokens(value: bytes, listed: set[bytes] | None) -> set[bytes] | None:
    """Header names a `Connection` value lists, beyond those always dropped."""
    for raw in value.split(b","):
        token = raw.strip().lower()
        if token and token not in HOP_BY_HOP:
            if listed is None:
                listed = set()
            listed.add(token)
    return listed


def _set(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> None:
    """Replace the first `name` in place, drop later ones; append if absent."""
    first = -1
    duplicates = False
    for index, item in enumerate(headers):
        if item[0] == name:
            if first < 0:
                first = index
            else:
                duplicates = True
    if first < 0:
        headers.append((name, value))
        return
    headers[first] = (name, value)
    if duplicates:
        headers[first + 1 :] = [item for item in headers[first + 1 :] if item[0] != name]


def _literal(value: str) -> bytes:
    return value.replace("%%", "%").encode("utf-8")


class CompiledMutation:
    """A `HeaderMutation` with names and values converted to bytes once.

    `apply` follows Envoy's order: removals first; then every addition is decided
    against the headers as they are after removal; overwrites are applied before
    appends. An overwrite replaces the first header of that name where it stands
    (Envoy moves it to the end; order between names does not matter in HTTP).
    Values are literals, except that `%%` stands for `%` as in Envoy's format strings.
    """

    __slots__ = ("_appends", "_entries", "_remove", "_simple")

    def __init__(self, mutation: HeaderMutation) -> None:
        self._remove = frozenset(name.lower().encode("latin-1") for name in mutation.remove)
        entries = tuple(
            (add.name.lower().encode("latin-1"), _literal(add.value), add.action)
            for add in mutation.add
            if add.value or add.keep_empty_value
        )
        self._entries = entries
        self._simple = all(e[2] is AppendAction.APPEND_IF_EXISTS_OR_ADD for e in entries)
        self._appends = tuple((name, value) for name, value, _ in entries)

    @property
    def empty(self) -> bool:
        return not self._remove and not self._entries

    def apply(self, headers: list[tuple[bytes, bytes]]) -> None:
        remove = self._remove
        if remove and any(item[0] in remove for item in headers):
            headers[:] = [item for item in headers if item[0] not in remove]
        if self._simple:
            headers.extend(self._appends)
            return
        present = {item[0] for item in headers}
        overwrites: list[tuple[bytes, bytes]] = []
        appends: list[tuple[bytes, bytes]] = []
        for name, value, action in self._entries:
            if action is AppendAction.APPEND_IF_EXISTS_OR_ADD:
                appends.append((name, value))
            elif action is AppendAction.ADD_IF_ABSENT:
                if name not in present:
                    appends.append((name, value))
            elif action is AppendAction.OVERWRITE_IF_EXISTS_OR_ADD or name in present:
                overwrites.append((name, value))
        for name, value in overwrites:
            _set(headers, name, value)
        headers.extend(appends)


def has_formatter(value: str) -> bool:
    """Whether an Envoy header value uses a `%...%` formatter (`%%` is a literal `%`)."""
    return "%" in value.replace("%%", "")


_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)


def generate_request_id(rng: random.Random) -> bytes:
    """A random (version 4) UUID in its lower-case 8-4-4-4-12 text form.

    The 16 bytes are hex-encoded with a dash every two bytes, and the three
    dashes a UUID does not have are cut out: cheaper than formatting the 128-bit
    integer as text and joining its groups (this runs per request).
    """
    text = ((rng.getrandbits(128) & _UUID_CLEAR) | _UUID_SET).to_bytes(16).hex("-", 2)
    # "aaaa-bbbb-cccc-dddd-eeee-ffff-gggg-hhhh" -> "aaaabbbb-cccc-dddd-eeee-ffffgggghhhh"
    return (text[:4] + text[5:29] + text[30:34] + text[35:]).encode("ascii")


_IDS_PER_DRAW = 64
_DRAW_CLEAR = sum((_UUID_CLEAR & ((1 << 128) - 1)) << (128 * i) for i in range(_IDS_PER_DRAW))
_DRAW_SET = sum(_UUID_SET << (128 * i) for i in range(_IDS_PER_DRAW))


class RequestIds:
    """The ids `generate_request_id` makes from the same generator, in the same order,
    made 64 at a time: one draw of random bits and one hex conversion per batch,
    and a `pop` per request."""

    __slots__ = ("_ids", "_rng")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._ids: list[bytes] = []

    def take(self) -> bytes:
        ids = self._ids
        if not ids:
            self._draw()
        return ids.pop()

    def _draw(self) -> None:
        bits = (self._rng.getrandbits(128 * _IDS_PER_DRAW) & _DRAW_CLEAR) | _DRAW_SET
        # Each id is 40 characters of the text, its dash to the next one included;
        # the last id drawn sits first (big-endian), so `pop` hands them out in order.
        text = bits.to_bytes(16 * _IDS_PER_DRAW).hex("-", 2).encode("ascii")
        self._ids[:] = [
            text[i : i + 4] + text[i + 5 : i + 29] + text[i + 30 : i + 34] + text[i + 35 : i + 39]
            for i in range(0, 40 * _IDS_PER_DRAW, 40)
        ]


def append_forwarded_for(headers: list[tuple[bytes, bytes]], client_ip: str) -> None:
    """Append `client_ip` to `x-forwarded-for` (joined with "," as Envoy does).

    The runtime calls this only when the listener has `use_remote_address` (and
    not `skip_xff_append`), passing the peer address. Several `x-forwarded-for`
    lines are merged into the first one, keeping their order.
    """
    ip = client_ip.encode("latin-1")
    first = -1
    merged = b""
    extra = False
    for index, (name, value) in enumerate(headers):
        if name == b"x-forwarded-for":
            if first < 0:
                first = index
                merged = value
            else:
                merged = merged + b"," + value if merged else value
                extra = True
    if first < 0:
        headers.append((b"x-forwarded-for", ip))
        return
    headers[first] = (b"x-forwarded-for", merged + b"," + ip if merged else ip)
    if extra:
        headers[first + 1 :] = [h for h in headers[first + 1 :] if h[0] != b"x-forwarded-for"]


def set_forwarded_proto(
    headers: list[tuple[bytes, bytes]], scheme: bytes, *, overwrite: bool = False
) -> None:
    """Set `x-forwarded-proto` to the downstream scheme.

    Envoy overwrites it when `use_remote_address` is set (the peer is not trusted
    to have set it; pass `overwrite=True`) and otherwise adds it only if absent.
    """
    if overwrite:
        _set(headers, b"x-forwarded-proto", scheme)
        return
    for item in headers:
        if item[0] == b"x-forwarded-proto":
            return
    headers.append((b"x-forwarded-proto", scheme))
