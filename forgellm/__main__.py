"""`python -m forgellm`: the same as the `forgellm` command."""

from forgellm.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
