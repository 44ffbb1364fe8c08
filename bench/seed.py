"""Seed a QI benchmark database: testkit/history.py's command line (see its docstring)."""

from testkit.history import main

if __name__ == "__main__":
    main()
