"""What a process tree is doing, read from /proc: for the reports of tests that time out.

A guest that stops making progress leaves two suspects, QEMU and the backend; each thread's state,
wait channel and kernel stack (proc(5): ``/proc/PID/task/TID/{stat,wchan,stack}``; the stack needs
root) say which one waits on the other, e.g. QEMU's main thread in ``unix_stream_read_generic``
waiting for a vhost-user reply, or a backend worker in ``io_uring_cqring_wait``.
"""

from pathlib import Path

STACK_FRAMES = 8  # of each thread's kernel stack, innermost first


def _read(path):
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _stat_fields(pid):
    """Fields 3 onwards of /proc/PID/stat (after the command name), or None once it is gone."""
    text = _read(f"/proc/{pid}/stat")
    return text.rsplit(")", 1)[1].split() if text else None


def tree(pid):
    """``pid`` and every process whose parent chain or session leads to it, parents first."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
                if int(fields[3]) == pid and int(entry.name) != pid:  # same session
                    children.setdefault(pid, []).append(int(entry.name))
    found, seen, todo = [], set(), [pid]
    while todo:
        member = todo.pop(0)
        if member not in seen:
            seen.add(member)
            found.append(member)
            todo.extend(sorted(children.get(member, ())))
    return found


def report(pid, title="process"):
    """One block per thread of ``pid``'s tree: name, state, wait channel ("?" where it cannot
    be read, "0" or "-" for a thread not waiting), kernel stack.  Processes and threads may
    end while it reads: those are left out, a process with none left is "gone"."""
    lines = [f"--- {title} {pid}: threads (state, wait channel, kernel stack) ---"]
    for member in tree(pid):
        try:
            tasks = sorted(Path(f"/proc/{member}/task").iterdir(), key=lambda p: int(p.name))
        except OSError:
            tasks = []
        shown = len(lines)
        for task in tasks:
            fields = _stat_fields(f"{member}/task/{task.name}")
            if fields is None:
                continue
            comm = (_read(task / "comm") or "?").strip()
            wchan = _read(task / "wchan")
            wchan = "?" if wchan is None else wchan.strip() or "-"
            lines.append(f"{member}/{task.name} {comm} {fields[0]} wchan={wchan}")
            stack = _read(task / "stack")
            if stack:
                frames = [frame.split("] ", 1)[-1] for frame in stack.splitlines()]
                lines.append("    " + " < ".join(frames[:STACK_FRAMES]))
        if len(lines) == shown:
            lines.append(f"{member}: gone")
    return "\n".join(lines)
