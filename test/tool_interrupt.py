"""Ctrl-C for the offline tools, as a user gives it: a real SIGINT to the tool's own process once it is under way."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

# tqdm's "| 12/2000 [00:01<...": the frames done so far (the tools know their totals here).
_PROGRESS = re.compile(rb"\| *(\d+)/\d+ \[")


def interrupt_after(module: str, argv: list[str], frames: int, deadline_s: float = 600.0) -> tuple[int, str]:
    """Run ``python -m module argv``, send SIGINT once its progress bar counts ``frames``; ``(status, stderr)``.

    The child gets Python's SIGINT handler back: a shell without job control starts background jobs with
    SIGINT ignored, which Python would inherit and never turn into KeyboardInterrupt.
    """
    # Restored in the child's own Python, not with a preexec_fn: that runs Python between fork and exec in the
    # suite's process, which the node tests leave with DDS threads.
    start = (
        "import signal, runpy; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    process = subprocess.Popen([sys.executable, "-c", start, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen, deadline = b"", time.monotonic() + deadline_s
    try:
        while not any(int(n) >= frames for n in _PROGRESS.findall(seen)):
            chunk = os.read(process.stderr.fileno(), 4096)
            if not chunk or time.monotonic() > deadline:
                raise AssertionError(f"{module} ended or stalled before {frames} frames: {seen.decode()[-2000:]}")
            seen += chunk
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        status = process.wait(timeout=deadline_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return status, (seen + rest).decode()
