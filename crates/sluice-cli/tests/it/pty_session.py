"""Drives an interactive program through a pseudo-terminal, as a person at a terminal would.

    python3 pty_session.py PROMPTS PROGRAM [ARG ...] -- LINE [LINE ...]

Starts PROGRAM on a new pseudo-terminal, waits for a prompt (PROMPTS: the prompts it
shows, separated by `|`, such as a first line's and a continuation line's), then types
each LINE (and Enter) and waits for a prompt to come back (the last line may end the
program instead). A LINE `^C` types Ctrl-C (no Enter); a LINE `text<TAB>seen` types
`text` and waits for `seen` to show instead of a prompt.
Prints what the terminal showed, escape sequences removed, each typed line marked with
`>>> `. Exits 1 if the prompt does not come back within 60 seconds, or the program
exits with an error.
"""

import os
import pty
import re
import select
import sys
import time

ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")


def read_until(fd, prompts, seen, timeout=60.0, text=None):
    """Reads into `seen` until it ends with a prompt, or shows `text` if given (True), or
    the program ends (False)."""
    deadline = time.monotonic() + timeout
    while True:
        shown = ESCAPES.sub(b"", bytes(seen)).rstrip(b" ")
        if text is not None and text in shown:
            return True
        if text is None and any(shown.endswith(p.rstrip(b" ")) for p in prompts):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return False
        if not chunk:
            return False
        seen.extend(chunk)


def main():
    args = sys.argv[1:]
    split = args.index("--")
    prompt = [p.encode() for p in args[0].split("|")]
    program, lines = args[1:split], args[split + 1 :]
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(program[0], program)
    transcript = bytearray()
    seen = bytearray()
    try:
        read_until(fd, prompt, seen)
        transcript.extend(seen)
        for line in lines:
            seen = bytearray()
            typed, _, wait_for = line.partition("\t")
            if typed == "^C":
                os.write(fd, b"\x03")
            else:
                os.write(fd, typed.encode() + b"\r")
            alive = read_until(fd, prompt, seen, text=wait_for.encode() or None)
            transcript.extend(b"\n>>> " + line.encode() + b"\n")
            transcript.extend(seen)
            if not alive:
                break
    except TimeoutError:
        sys.stdout.write(ESCAPES.sub(b"", bytes(transcript + seen)).decode(errors="replace"))
        sys.stdout.write("\n<<< the prompt did not come back within 60 s\n")
        os.kill(pid, 9)
        sys.exit(1)
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(ESCAPES.sub(b"", bytes(transcript)).decode(errors="replace"))
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.stdout.write(f"\n<<< exited with {code}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
