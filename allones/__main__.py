"""`python -m allones` is the `allones` command."""
import sys

from .cli import main

sys.exit(main())
