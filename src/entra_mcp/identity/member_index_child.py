"""A cold start's users table, member lists and reverse memberships (MemberOf), loaded and built by a child process
while the server imports the MCP SDK and loads the rest of the mirror: a large tenant's first index on two CPUs.

A server start with no prepared index (views.py ViewCache: the first start after an upgrade, or a cache that cannot
be written) loads the mirror and indexes it before its first answer. On the large mirror (100,000 users, 604,157
memberships) three parts of that hand over cheaply: the users table (its 1,024 buckets load in ~0.45 s; the whole
table, one pickle of concatenated columns, unpickles in ~0.07 s), the member lists (~0.5 s to load; sent as users'
rows, 2.4 MB of numbers) and the reverse memberships (~0.5 s to build; two arrays and a small list).

So `entra-mcp serve` forks a child first thing (`start`, from views.ViewProvider.start_early_index, before the SDK
import: the process is still small, so the fork is cheap and the two share almost no memory pages to copy). The
child reads with its own SQLite connections and sends three messages on a pipe: the users table, the member lists,
the reverse memberships. The server's load takes the first two instead of reading those buckets (`given`, as
MirrorStore.given) and DirectoryView.build takes the third (`take`), each only when the child read the same buckets
(bucket counts and revisions) as the root the server read: then they are exactly what the server would have made,
in the same order, with shared id objects (the pool of the server's load starts from the users table it took).

Anything else costs only time, never the answer: no fork or one CPU (never started), a commit between the two
loads that rewrote users or member lists, a child that failed, was killed, or has not sent a part within TAKE_WAIT
seconds once the server needs it (then killed): the server does that part itself. A child nobody took from
(the start loaded a prepared index after all) is ended by `discard`, which the start's warm() calls. The child's
memory (~140-190 MB for ~1.5 s) is its own and goes back to the system when it exits.
"""

from __future__ import annotations

import gc
import os
import pickle
import selectors
import signal
import time
from array import array
from collections import deque
from collections.abc import Iterator
from itertools import accumulate, chain, repeat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entra_mcp.logs import get_logger

log = get_logger("identity")

# seconds the server waits for a child still at work once it needs a result, then does the work itself: about what
# that work costs it on the large mirror (~0.5 s each), so a late child never costs much more than no child
TAKE_WAIT = 1.0


def cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_TAGS = ("users", "members", "member_of")  # the child's messages, in the order it sends them


@dataclass
class _Child:
    tenant: str
    pid: int
    fd: int
    buffer: bytearray = field(default_factory=bytearray)
    done: bool = False  # the child closed its end
    got: dict[str, bytes] = field(default_factory=dict)  # messages read, not yet taken: tag -> pickle
    other_ids: list[str] | None = None  # the members that are not users, as the member lists' message names them

    def wait_for(self, tag: str, wait: float) -> Any:
        """The payload of the child's `tag` message (each frame: 8-byte length, a tag byte, a pickle), waiting at
        most `wait` seconds for it; None when the child ended without it or is still at work. Messages before it
        are kept, unread, for whoever asks for them."""
        deadline = time.monotonic() + wait
        with selectors.DefaultSelector() as sel:
            sel.register(self.fd, selectors.EVENT_READ)
            while tag not in self.got:
                if len(self.buffer) >= 9:
                    size = int.from_bytes(self.buffer[:8], "little")
                    if len(self.buffer) >= 9 + size:
                        with memoryview(self.buffer) as view:  # one copy of a message (the users table: ~30 MB)
                            self.got[_TAGS[view[8]]] = bytes(view[9 : 9 + size])
                        del self.buffer[: 9 + size]
                        continue
                if self.done:
                    return None
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(self.fd, 1 << 22)
                if chunk:
                    self.buffer += chunk
                else:
                    self.done = True
        return pickle.loads(self.got.pop(tag))  # noqa: S301 - our own child's, over a private pipe

    def end(self) -> None:
        """Close the pipe, kill the child unless it is done, reap it."""
        os.close(self.fd)
        if not self.done:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
        os.waitpid(self.pid, 0)


_pending: dict[str, _Child] = {}
taken = {"users": 0, "member_lists": 0, "member_of": 0}  # what loads and builds took from a child (tests read it)


def start(cache_dir: str | os.PathLike[str], tenant: str, store: Any = None) -> bool:
    """Fork a child that loads `tenant`'s users table and member lists from `cache_dir` and sends them, then their
    reverse memberships; `store` (the server's MirrorStore) is told to take the first two from it (`given`). False
    when there is no fork, one CPU only, or a child is already under way for the tenant."""
    if not hasattr(os, "fork") or cpus() < 2 or tenant in _pending:
        return False
    try:
        r, w = os.pipe()
    except OSError:
        return False
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return False
    if pid == 0:  # the child: nothing of the parent's is used but the arguments; it leaves with os._exit
        code = 0
        try:
            os.close(r)
            for tag, payload in _child(Path(cache_dir), tenant):
                data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
                view = memoryview(len(data).to_bytes(8, "little") + bytes([_TAGS.index(tag)]) + data)
                while view:
                    view = view[os.write(w, view):]
        except BaseException:
            code = 1
        os._exit(code)
    os.close(w)
    _pending[tenant] = _Child(tenant, pid, r)
    if store is not None:
        store.given = given
    return True


def _child(cache_dir: Path, tenant: str) -> Iterator[tuple[str, Any]]:
    """In the child: the users table, the member lists (users as rows of that table), the reverse memberships."""
    gc.disable()
    from entra_mcp.mirror.member_lists import MemberLists
    from entra_mcp.mirror.store import MirrorStore

    store = MirrorStore(cache_dir)  # its own connections: SQLite's of the parent are never used across a fork
    loaded = store.load_collections(tenant, ("users",))
    if loaded is None:
        raise LookupError("no mirror")
    specs, data, counts = loaded
    users_spec, user_ids = specs["users"], data["users"].ids
    # the whole table: one pickle of concatenated columns unpickles ~6x faster than the table's 1,024 buckets load
    yield "users", (users_spec, data["users"], counts["users"])
    data = None  # type: ignore[assignment]
    loaded = store.load_collections(tenant, ("members",))  # another read: a commit may have come in between
    if loaded is None:
        raise LookupError("no mirror")
    specs, data, counts = loaded
    if specs["users"] != users_spec:  # the users changed meanwhile: their rows as of this read
        reread = store.load_collections(tenant, ("users", "members"), ids_only=("users",))
        if reread is None:
            raise LookupError("no mirror")
        specs, data, counts = reread
        user_ids = data["users"]
    members = data["members"]
    if not isinstance(members, MemberLists):
        raise LookupError("member lists of another form")
    both = (specs["users"], specs["members"])
    ids = members.member_ids
    n = len(user_ids)
    # each membership as a number: a user's row, or n + the position of another member (group, device...) in `others`
    found: list[Any] = list(map(dict(zip(user_ids, range(n))).get, ids))
    others: dict[str, int] = {}
    for j in [j for j, r in enumerate(found) if r is None]:
        found[j] = n + others.setdefault(ids[j], len(others))
    yield "members", (both, n, members.group_ids, members.starts, array("I", found), list(others), members.kinds,
                      members.kind_names, counts["members"])
    # the reverse memberships from those numbers (as MemberOf.build makes them from the ids: each member's groups in
    # member-list order; the other members in the order they first appear), list positions instead of id lookups
    sizes = members.sizes()
    lists: list[list[int]] = [[] for _ in range(n + len(others))]
    deque(map(list.append, map(lists.__getitem__, found), chain.from_iterable(map(repeat, range(len(sizes)), sizes))),
          maxlen=0)
    offsets = array("I", accumulate(map(len, lists[:n]), initial=0))
    rows = array("I", chain.from_iterable(lists[:n]))
    # the other members by their place in the member lists' message: the server takes its own id objects
    yield "member_of", (both, n, offsets, rows, [(k, array("I", lists[n + k])) for k in range(len(others))])


def given(tenant: str, coll: str, specs: dict[str, Any], data: dict[str, Any], pool: dict[Any, Any]) -> Any:
    """MirrorStore.given: the users table, then the member lists, from the tenant's child when they are exactly
    the root's (the same buckets), their ids this load's objects (`pool`); else None (the store loads them)."""
    child = _pending.get(tenant)
    if child is None or coll not in ("users", "members") or (coll == "members" and "users" not in data):
        return None
    started = time.monotonic()
    try:
        found = child.wait_for(coll, TAKE_WAIT)
        if found is None:
            log.info("tenant %s: the child gave no %s within %.1f s; loading them here", tenant, coll, time.monotonic() - started)
            return None
        if coll == "users":
            spec, table, counts = found
            if spec != specs.get("users") or any(oid in pool for oid in table.ids[:1]):
                log.info("tenant %s: the mirror changed since the child's load; loading the users here", tenant)
                return None
            pool.update(zip(table.ids, table.ids))  # as the store's own load of the first table leaves it
            result: Any = (table, tuple(counts))
        else:
            from entra_mcp.mirror.member_lists import MemberLists

            both, n, group_ids, starts, codes, others, kinds, kind_names, counts = found
            users = data["users"]
            if both != (specs.get("users"), specs.get("members")) or n != len(users.ids):
                log.info("tenant %s: the mirror changed since the child's load; loading the member lists here", tenant)
                return None
            get = pool.get
            child.other_ids = list(map(get, others, others))
            ids = users.ids + child.other_ids
            result = (MemberLists(list(map(get, group_ids, group_ids)), starts, list(map(ids.__getitem__, codes)), kinds,
                                  kind_names), tuple(counts))
    except Exception as exc:  # noqa: BLE001 - malformed: the store loads it
        log.warning("tenant %s: the child's %s are unusable (%s); loading them here", tenant, coll, type(exc).__name__)
        return None
    taken["users" if coll == "users" else "member_lists"] += 1
    log.info("tenant %s: %s taken from the child (%.0f ms)", tenant, "users table" if coll == "users" else "member lists",
             (time.monotonic() - started) * 1000)
    return result


def take(snapshot: Any, user_ids: tuple[str, ...]) -> Any:
    """The child's MemberOf for `snapshot` (its users in `user_ids` order) when one was started for this tenant and
    read the same users and member-list buckets; else None (the caller builds it). The child is reaped either way."""
    child = _pending.pop(getattr(snapshot, "tenant", None), None)  # type: ignore[arg-type]
    if child is None:
        return None
    try:
        started = time.monotonic()
        if child.other_ids is None:  # the member lists were not taken: only their other members' names are needed
            lists = child.wait_for("members", TAKE_WAIT)
            if lists is not None:
                child.other_ids = lists[5]
        message = child.wait_for("member_of", TAKE_WAIT) if child.other_ids is not None else None
        if message is None:
            log.info("tenant %s: the child gave no reverse memberships within %.1f s; building them here",
                     child.tenant, time.monotonic() - started)
            return None
        try:
            found = _decode(message, snapshot, user_ids, child.other_ids)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - malformed or of another shape: build here
            log.warning("tenant %s: the child's reverse memberships are unusable (%s); building them here", child.tenant,
                        type(exc).__name__)
            return None
    finally:
        child.end()
    if found is None:
        log.info("tenant %s: the mirror changed since the child's load; building the reverse memberships here", child.tenant)
        return None
    taken["member_of"] += 1
    log.info("tenant %s: reverse memberships taken from the child", child.tenant)
    return found


def _decode(message: Any, snapshot: Any, user_ids: tuple[str, ...], other_ids: list[str]) -> Any:
    from entra_mcp.identity.member_index import MemberOf
    from entra_mcp.mirror.member_lists import MemberLists

    both, n_users, offsets, rows, others = message
    members = snapshot.members
    buckets = getattr(snapshot, "buckets", {})
    if (both != (buckets.get("users"), buckets.get("members")) or not isinstance(members, MemberLists)
            or n_users != len(user_ids)):
        return None
    if (not isinstance(offsets, array) or not isinstance(rows, array) or len(offsets) != n_users + 1
            or offsets[-1] != len(rows) or len(others) != len(other_ids)):
        raise ValueError("reverse memberships of another shape")
    group_ids = list(members)
    get = group_ids.__getitem__
    return MemberOf(user_ids, group_ids, offsets, rows, {other_ids[k]: tuple(map(get, groups)) for k, groups in others})


def discard(store: Any = None) -> None:
    """End the children whose result was not taken (the start loaded a prepared index after all, or failed), and
    stop `store` asking for theirs."""
    if store is not None and getattr(store, "given", None) is given:
        store.given = None
    while _pending:
        _, child = _pending.popitem()
        child.end()


__all__ = ["TAKE_WAIT", "cpus", "discard", "start", "take"]
