"""`python -m fsqr` runs the command line."""

from fsqr.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
