"""Running a program as an unprivileged user, for the tests of a daemon not started as root.

``ensure_user`` creates the test user (with the subordinate id ranges ``useradd`` delegates in
/etc/subuid and /etc/subgid); ``unprivileged_argv`` wraps a command so that it runs as that
user with no supplementary groups and no capabilities, while the interpreter and the source
tree stay reachable where they live under a directory the user may not traverse.
"""

import os
import pwd
import stat
import subprocess
import sys

USER = "fvfs-rootless"


def ensure_user(name=USER):
    """(uid, gid) of ``name``, created with ``useradd`` (as root) if missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "--user-group", name], check=True)
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def subordinate_ids(path, name=USER):
    """(start, count) of ``name``'s range in /etc/subuid or /etc/subgid, or None."""
    try:
        with open(path) as f:
            for line in f:
                owner, start, count = line.strip().split(":")
                if owner == name:
                    return int(start), int(count)
    except (OSError, ValueError):
        pass
    return None


def _hidden_ancestors(paths, uid):
    """Directories on the way to ``paths`` the user may not traverse (such as a 0700 /root
    holding the interpreter), each with the children below it that are needed."""
    hidden = {}
    for path in paths:
        parts = os.path.realpath(path).split("/")[1:]
        for i in range(len(parts) - 1):
            parent = "/" + "/".join(parts[:i])
            st = os.stat(parent)
            if not (st.st_mode & stat.S_IXOTH or st.st_uid == uid and st.st_mode & stat.S_IXUSR):
                hidden.setdefault(parent, set()).add(parts[i])
                break
    return hidden


def unprivileged_argv(argv, uid, gid, hold_dir):
    """``argv`` run as ``uid``:``gid`` with no supplementary groups and no capabilities (the
    bounding set stays full, as a login's does: ``newuidmap`` is setuid root).

    The program must be reachable by that user: where an ancestor directory of the interpreter,
    the working directory, PYTHONPATH or ``argv[0]`` is not (root's 0700 home holding a pyenv
    interpreter), the command runs in a private mount namespace where that directory is a
    world-traversable tmpfs holding bind mounts of what lies below it (staged in ``hold_dir``,
    an empty directory).  Only the paths to the program change; the command's own view of the
    host and its privileges are the user's."""
    drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
            "--"]
    needed = [sys.executable, sys.prefix, os.getcwd(), argv[0],
              *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    hidden = _hidden_ancestors([p for p in needed if p and os.path.exists(p)], uid)
    if not hidden:
        return drop + argv
    script = []
    for n, (parent, children) in enumerate(sorted(hidden.items())):
        holds = {child: os.path.join(hold_dir, f"{n}-{child}") for child in sorted(children)}
        for child, hold in holds.items():
            os.mkdir(hold)
            script.append(f"mount --bind '{parent}/{child}' '{hold}'")
        script.append(f"mount -t tmpfs -o mode=0755 fvfs-path '{parent}'")
        for child, hold in holds.items():
            script.append(f"mkdir '{parent}/{child}'")
            script.append(f"mount --move '{hold}' '{parent}/{child}'")
    script.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec",
            " && ".join(script), "sh", *drop, *argv]
