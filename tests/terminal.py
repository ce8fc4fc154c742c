"""Run a command the way a person does: in a pseudo-terminal that is its controlling
terminal, so stderr is a tty (rich's live display is on) and Ctrl-C is the byte 0x03,
which the terminal's line discipline turns into SIGINT for the whole foreground process
group (make and its charrnn child alike), exactly as in a real terminal window."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time

import pytest

CTRL_C = b"\x03"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_pty = pytest.mark.skipif(
    sys.platform != "linux" or shutil.which("setsid") is None,
    reason="needs Linux's pseudo-terminals and util-linux setsid",
)


class Terminal:
    """One command in a fresh session whose controlling terminal is a new pty (setsid
    --ctty: no Python code runs between fork and exec). Everything it writes is kept in
    `text`; reading never stops while we wait, so the command never blocks on a full pty."""

    def __init__(self, argv: list[str], cwd: str | None = None, cols: int = 120, rows: int = 40):
        import fcntl
        import termios

        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols)}
        for name in ("NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR"):
            env.pop(name, None)
        self.proc = subprocess.Popen(
            ["setsid", "--ctty", *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env,
            close_fds=True,
        )
        os.close(slave)
        self.fd = master
        self.raw = bytearray()

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", "replace")

    def _pump(self, timeout: float) -> bool:
        """Read what is there (waiting up to `timeout`); False once the pty is closed."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: every process holding the terminal has gone
            return False
        self.raw += chunk
        return bool(chunk)

    def expect(self, pattern: str, timeout: float = 60.0) -> re.Match:
        regex = re.compile(pattern)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            match = regex.search(self.text)
            if match:
                return match
            if not self._pump(0.1) and self.proc.poll() is not None:
                break
        raise AssertionError(f"{pattern!r} not seen in {timeout}s; the screen had:\n{self.tail()}")

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 60.0) -> int:
        """The exit status (negative: killed by a signal), reading output all along."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                while self._pump(0.05):  # what is still in the pty
                    pass
                return self.proc.returncode
            self._pump(0.1)
        self.kill()
        raise AssertionError(f"still running after {timeout}s; the screen had:\n{self.tail()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        os.close(self.fd)

    def tail(self, chars: int = 3000) -> str:
        return self.text[-chars:]

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
