#!/usr/bin/env python3
"""Runs a command on a real pseudo-terminal and prints everything the terminal showed.

argv[1]: JSON list, the command; argv[2]: JSON list of answers, each typed (followed by Enter)
when the terminal next shows a line ending in ": " (a prompt). Exits with the command's code.
"""
import json, os, pty, select, sys

command = json.loads(sys.argv[1])
answers = json.loads(sys.argv[2]) if len(sys.argv) > 2 else []
pid, fd = pty.fork()
if pid == 0:
    os.execvp(command[0], command)
seen = b""
answered = 0
last = 0
while True:
    try:
        ready, _, _ = select.select([fd], [], [], 30)
        if not ready:
            break
        chunk = os.read(fd, 65536)
    except OSError:  # EIO: the child closed the terminal
        break
    if not chunk:
        break
    seen += chunk
    if answered < len(answers) and seen.endswith(b": ") and len(seen) > last:
        os.write(fd, answers[answered].encode() + b"\r")
        answered += 1
        last = len(seen)
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(seen)
sys.exit(os.waitstatus_to_exitcode(status))
