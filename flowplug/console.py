"""The ``flowplug`` console command: chooses the thread policy before torch loads, then runs :mod:`flowplug.cli`.

Kept free of torch imports (as is ``import flowplug``), so that :func:`flowplug.threads.prefer_passive_waiting`
runs before OpenMP reads its environment.
"""

from __future__ import annotations

from flowplug.threads import prefer_passive_waiting

__all__ = ["main"]


def main() -> int:
    """Entry point of the ``flowplug`` script and of ``python -m flowplug``."""
    prefer_passive_waiting()
    from flowplug.cli import main as cli_main

    return cli_main()
