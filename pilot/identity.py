"""Who the payload runs as: the queue's `identity` and `sandbox` settings pick the Launcher.

- `none` (pilot.launcher.NoSwitch): the payload runs as the pilot's own account (its environment is
  still clean of the pilot's credentials unless the queue names some for production jobs).
- `uid` (pilot.uidswitch): the user's DN is mapped to a local account through a grid-mapfile
  (pilot.accounts) and the pilot switches to it, directly as root (setpriv) or through `uid_command`.
- `glexec` (pilot.glexec): the glexec binary maps the user's proxy to an account and switches.
- `sandbox: bubblewrap` (pilot.sandbox) wraps any of them in a sandbox that hides the pilot's files.
Switched modes start the payload through the wrapper of pilot.launcher, with the user's proxy of
pilot.userproxy. Whatever goes wrong before the payload starts fails the job with its code; the payload
never runs as the pilot instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from pilot.config import QueueConfig
from pilot.glexec import Glexec
from pilot.launcher import Launcher, NoSwitch
from pilot.sandbox import Sandbox
from pilot.uidswitch import UidSwitch

LAUNCHERS: dict[str, type[Launcher]] = {"none": NoSwitch, "uid": UidSwitch, "glexec": Glexec}


def make_launcher(queue: QueueConfig, pilot_dir: Path) -> Launcher:
    """The queue's launcher (`identity`, `sandbox`); a ValueError names what is wrong."""
    kind = LAUNCHERS.get(queue.identity)
    if kind is None:
        raise ValueError(f"queue setting identity={queue.identity!r}: one of {', '.join(LAUNCHERS)}")
    launcher = kind(queue)
    if queue.sandbox in ("", "none"):
        return launcher
    if queue.sandbox != "bubblewrap":
        raise ValueError(f"queue setting sandbox={queue.sandbox!r}: bubblewrap or none")
    hidden = [os.environ[var] for var in ("X509_USER_PROXY", "BEARER_TOKEN_FILE") if os.environ.get(var)]
    return Sandbox(queue, launcher, pilot_dir, hidden)


def needs_user_proxy(queue: QueueConfig) -> bool:
    """Ask the dispatcher for the user's proxy with each job (getProxyKey): glexec queues, and uid
    queues that hand the user's proxy to the payload."""
    return queue.identity == "glexec" or (queue.identity == "uid" and queue.get_proxy_key)
