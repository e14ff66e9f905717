"""Guest <-> host user and group id translation (``--translate-uid``/``--translate-gid``), in
the Rust virtiofsd's rule syntax.

Each rule is ``TYPE:BASE:BASE:COUNT`` (``forbid-guest:GUEST_BASE:COUNT``) and covers COUNT ids:

* ``guest:GUEST_BASE:HOST_BASE:COUNT``: guest ids to host ids (the guest's requests);
* ``host:HOST_BASE:GUEST_BASE:COUNT``: host ids to guest ids (attributes the guest is shown);
* ``map:GUEST_BASE:HOST_BASE:COUNT``: both of the above;
* ``squash-guest:GUEST_BASE:HOST_ID:COUNT``: every guest id of the range is HOST_ID on the host;
* ``squash-host:HOST_BASE:GUEST_ID:COUNT``: every host id of the range is GUEST_ID to the guest;
* ``forbid-guest:GUEST_BASE:COUNT``: a request by a guest id of the range fails with EPERM.

In each direction the first rule given that covers an id decides; an id no rule covers passes
unchanged.  Guest to host applies to the credentials new objects are created with (and their
supplementary group) and to the owner a SETATTR sets; host to guest to every attribute reply
(LOOKUP, GETATTR, SETATTR, the creating calls, READDIRPLUS).  Ids inside POSIX ACL and
capability extended attributes are passed unchanged.
"""

import errno

GUEST_TYPES = ("guest", "map", "squash-guest", "forbid-guest")
HOST_TYPES = ("host", "map", "squash-host")
TYPES = ("guest", "host", "map", "squash-guest", "squash-host", "forbid-guest")
ID_SPACE = 1 << 32


class Rule:
    __slots__ = ("type", "source", "target", "count")

    def __init__(self, text):
        kind, _, rest = text.partition(":")
        if kind not in TYPES:
            raise ValueError(f"unknown translation type {kind!r} in {text!r} (one of "
                             f"{', '.join(TYPES)})")
        fields = rest.split(":")
        want = 2 if kind == "forbid-guest" else 3
        if len(fields) != want:
            raise ValueError(f"expected {kind}:" + (
                "GUEST_BASE:COUNT" if want == 2 else "BASE:BASE:COUNT") + f", got {text!r}")
        try:
            values = [int(f) for f in fields]
        except ValueError:
            raise ValueError(f"expected decimal ids in {text!r}") from None
        if kind == "forbid-guest":
            values.insert(1, 0)
        self.type = kind
        self.source, self.target, self.count = values
        if min(values) < 0 or self.count < 1 or self.source + self.count > ID_SPACE or \
                self.target >= ID_SPACE or (kind in ("guest", "host", "map") and
                                            self.target + self.count > ID_SPACE):
            raise ValueError(f"id range out of bounds in {text!r}")

    def apply(self, ident, to_host):
        """The translated id, or None when the rule does not cover ``ident``.  A rule's
        source is in guest ids except for the ``host`` and ``squash-host`` types; ``map``
        reads backwards on the way to the guest."""
        if self.type == "map" and not to_host:
            if self.target <= ident < self.target + self.count:
                return self.source + ident - self.target
            return None
        if not self.source <= ident < self.source + self.count:
            return None
        if self.type == "forbid-guest":
            raise PermissionError(errno.EPERM, f"guest id {ident} is forbidden "
                                               f"(--translate forbid-guest)")
        if self.type.startswith("squash"):
            return self.target
        return self.target + ident - self.source


class IdTranslation:
    """The ``--translate-uid`` and ``--translate-gid`` rules (see the module docstring)."""

    def __init__(self, uid_rules=(), gid_rules=()):
        uid_rules = [r if isinstance(r, Rule) else Rule(r) for r in uid_rules]
        gid_rules = [r if isinstance(r, Rule) else Rule(r) for r in gid_rules]
        self._uid = ([r for r in uid_rules if r.type in GUEST_TYPES],
                     [r for r in uid_rules if r.type in HOST_TYPES])
        self._gid = ([r for r in gid_rules if r.type in GUEST_TYPES],
                     [r for r in gid_rules if r.type in HOST_TYPES])

    def __bool__(self):
        return any(self._uid) or any(self._gid)

    @staticmethod
    def _translate(rules, ident, to_host):
        for rule in rules:
            out = rule.apply(ident, to_host)
            if out is not None:
                return out
        return ident

    def host_uid(self, uid):
        """A guest uid as the host's; PermissionError (EPERM) for a forbidden one."""
        return self._translate(self._uid[0], uid, True)

    def host_gid(self, gid):
        return self._translate(self._gid[0], gid, True)

    def guest_uid(self, uid):
        """A host uid as the guest is shown it."""
        return self._translate(self._uid[1], uid, False)

    def guest_gid(self, gid):
        return self._translate(self._gid[1], gid, False)
