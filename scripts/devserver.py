"""Run the web server, a Celery worker and Celery beat together; Ctrl-C stops all three."""

import os
import signal
import subprocess
import sys
import time

PY = sys.executable
HOST = os.environ.get("HOST", "127.0.0.1")
PORT = os.environ.get("PORT", "8000")
PROCESSES = {
    "web": [PY, "manage.py", "runserver", f"{HOST}:{PORT}", "--noreload"],
    "worker": [
        PY,
        "-m",
        "celery",
        "-A",
        "exchange",
        "worker",
        "-Q",
        "default,delivery,settlement,notifications",
        "-c",
        "2",
        "-l",
        "info",
        "-n",
        "worker@%h",
    ],
    "beat": [PY, "-m", "celery", "-A", "exchange", "beat", "-l", "info"],
}

BANNER = f"""
  Data Exchange is running at http://{HOST}:{PORT}/

  Demo logins (password: exchange-demo)
    staff reviewer  reviewer@demo.exchange   (admin at http://{HOST}:{PORT}/admin/)
    merchants       merchant1@demo.exchange, merchant2@demo.exchange
    buyers          buyer1@demo.exchange, buyer2@demo.exchange

  Processes: web (runserver), Celery worker (default, delivery, settlement, notifications queues), Celery beat.
  Press Ctrl-C to stop all three.
"""


def main() -> int:
    children = {name: subprocess.Popen(cmd, start_new_session=True) for name, cmd in PROCESSES.items()}
    print(BANNER, flush=True)
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while not stopping:
        for name, proc in children.items():
            if proc.poll() is not None:
                print(f"{name} exited with code {proc.returncode}; stopping the others.", flush=True)
                stopping, exit_code = True, 1
                break
        time.sleep(0.5)
    for proc in children.values():
        if proc.poll() is None:
            # Only the leader: Celery's main process shuts its own pool down warmly.
            proc.terminate()
    deadline = time.time() + 15
    for proc in children.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    print("Stopped web, worker and beat.", flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
