"""`python -m service.admin`: the operator's CLI (see service/admin/__init__.py)."""

import sys

from service.admin import main

if __name__ == "__main__":
    sys.exit(main())
