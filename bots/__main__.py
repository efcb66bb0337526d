"""`python -m bots`: the `streambot` command, for when its script is not on PATH."""

from bots.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
