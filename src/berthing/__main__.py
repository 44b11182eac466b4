"""The `berthing` command: `serve` first starts the read-ahead of the files its last start read, then the CLI loads."""

from __future__ import annotations

import sys


def main() -> None:
    """Entry point of the `berthing` script and of `python -m berthing`."""
    if sys.argv[1:2] == ["serve"]:
        import threading

        from berthing import prefetch

        helper = prefetch.start(sys.argv[2:])
        if helper is not None:  # reaped when it ends (a few tens of ms), not left a zombie for the server's life
            threading.Thread(target=helper.wait, name="berthing-prefetch", daemon=True).start()
    from berthing.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
