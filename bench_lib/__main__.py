import sys

from bench_lib.cli import main

if __name__ == "__main__":  # worker processes import this module as __mp_main__
    sys.exit(main())
