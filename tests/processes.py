"""The processes a test started, as Linux shows them in /proc: their descendants (with their
command lines) and whether one still runs."""

import os
from pathlib import Path


def descendants(pid: int) -> list:
    """(pid, command line) of the processes started by `pid`, and of theirs."""
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parents.setdefault(parent, []).append((int(entry), command))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += [child for child, _ in children]
    return found


def alive(pid: int) -> bool:
    """Whether a process still runs (a zombie holds no memory: not alive)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
