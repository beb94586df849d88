"""The fixture generator's old command line, ``python tools/make_fixtures.py ...``, kept for
one release: it runs ``python -m tools.make_fixtures ...``, the ``tools/make_fixtures/``
package (see its ``__init__`` for the fixtures and the manifest). Run that from the project
root instead."""

from __future__ import annotations

import sys
from pathlib import Path

# The project root replaces tools/ as the path's first entry, as under -m from the root.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from tools.make_fixtures.__main__ import main  # noqa: E402

if __name__ == "__main__":
    main()
