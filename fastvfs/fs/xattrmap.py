"""Extended attribute name mapping (``--xattrmap``), in the reference daemons' rule syntax.

A mapping is a series of rules ``:type:scope:key:prepend:``; the first character of each rule
is its field separator (any character), white space may stand between rules.  Rules are tried
in order and the first match decides:

* scope ``client`` matches names the guest uses (get/set/removexattr) that start with *key*;
  ``server`` matches names the host lists (listxattr) that start with *prepend*; ``all`` both.
* type ``prefix``: a guest name gets *prepend* put in front of it on its way to the host, and
  a host name has *prepend* stripped on its way back;
  ``ok``: the name passes unchanged;
  ``bad``: the guest gets EPERM (ENODATA from getxattr) and the host name is hidden;
  ``unsupported``: the guest gets ENOTSUP and the host name is hidden.

A guest name no rule matches is refused with EPERM and a host name no rule matches is hidden,
so a mapping normally ends with a catch-all such as ``:ok:all:::`` or ``:bad:all:::``.
Example: ``:prefix:all:trusted.:user.virtiofs.::ok:all:::`` stores the guest's ``trusted.*``
attributes as ``user.virtiofs.trusted.*`` on the host, where an unprivileged daemon may write
them, and passes everything else through.
"""

import errno

TYPES = ("prefix", "ok", "bad", "unsupported")
SCOPES = ("client", "server", "all")


class Rule:
    __slots__ = ("type", "client", "server", "key", "prepend")

    def __init__(self, type_, scope, key, prepend):
        self.type = type_
        self.client = scope in ("client", "all")
        self.server = scope in ("server", "all")
        self.key = key
        self.prepend = prepend

    def __repr__(self):
        scope = "all" if self.client and self.server else "client" if self.client else "server"
        return f"Rule({self.type}, {scope}, {self.key!r}, {self.prepend!r})"


def parse(spec):
    """The rules of a mapping string; raises ValueError with the position of a bad rule."""
    rules = []
    pos = 0
    while True:
        while pos < len(spec) and spec[pos].isspace():
            pos += 1
        if pos == len(spec):
            break
        sep = spec[pos]
        fields = []
        cursor = pos + 1
        for _ in range(4):
            end = spec.find(sep, cursor)
            if end < 0:
                raise ValueError(f"xattrmap rule at offset {pos} is not closed by {sep!r}")
            fields.append(spec[cursor:end])
            cursor = end + 1
        type_, scope, key, prepend = fields
        if type_ not in TYPES:
            raise ValueError(f"xattrmap rule at offset {pos}: unknown type {type_!r}")
        if scope not in SCOPES:
            raise ValueError(f"xattrmap rule at offset {pos}: unknown scope {scope!r}")
        rules.append(Rule(type_, scope, key.encode(), prepend.encode()))
        pos = cursor
    if not rules:
        raise ValueError("empty xattrmap")
    return rules


class XattrMap:
    def __init__(self, spec):
        self.rules = parse(spec)

    def to_host(self, name, getting=False):
        """The host name for a guest name; raises OSError when the rules refuse it."""
        for rule in self.rules:
            if rule.client and name.startswith(rule.key):
                if rule.type == "prefix":
                    return rule.prepend + name
                if rule.type == "ok":
                    return name
                if rule.type == "unsupported":
                    raise OSError(errno.ENOTSUP, "xattr name unsupported by the mapping")
                break
        # 'bad', or no rule at all.  A refused getxattr reads as "no such attribute".
        raise OSError(errno.ENODATA if getting else errno.EPERM, "xattr name refused by mapping")

    def to_guest(self, name):
        """The guest name for a host name, or None when the rules hide it."""
        for rule in self.rules:
            if rule.server and name.startswith(rule.prepend):
                if rule.type == "prefix":
                    return name[len(rule.prepend):]
                if rule.type == "ok":
                    return name
                return None
        return None
