"""`python -m moe_core …`: see moe_core.cli.main."""

import sys

from moe_core.cli.main import main

sys.exit(main())
