"""The `forgellm` command line: `forgellm generate`, `forgellm chat` (see main.py)."""
