# -*- test-case-name: harbor.test.test_cli -*-
"""
C{python -m harbor.cli}: the C{mailharbor} command, for a checkout or an
environment without the installed console script.
"""

import sys

from harbor.cli.main import main

sys.exit(main())
