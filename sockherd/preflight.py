"""The pre-flight of an in-place upgrade, child side: load the new code, run nothing.

The supervisor starts this as its own command line with `SOCKHERD_PREFLIGHT=1`
(see `supervisor.preflight_run`).  It does what a new image would do before it
serves -- read the configuration, import the handler or factory, build the
server class and check the pool settings -- and nothing that binds, forks or
serves.  Exit 0 with "preflight ok" on the last line; otherwise the traceback (or
the one-line reason for a mistake sockherd recognises), and exit 1.
"""

from __future__ import annotations

import socket
import sys
import traceback
from typing import Any

from .launch import LaunchError, load_target, prefork_settings, server_class
from .supervisor.settings import validate_setting


def preflight(target_path: str, options: dict[str, Any]) -> int:
    """Load `target_path` as `sockherd serve` would with `options`; 0 if it all works."""
    try:
        target = load_target(target_path)
        if target.handler is not None:
            mode = str(options["mode"])
            server_class(mode, socket.AF_INET, bool(options["udp"]))
            if mode == "prefork":
                for name, value in prefork_settings(options).items():
                    validate_setting(name, value)
    except LaunchError as error:
        print(f"sockherd: {error}", file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    print("sockherd: preflight ok", file=sys.stderr, flush=True)
    return 0
