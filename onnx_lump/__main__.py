import sys

from onnx_lump.cli import main

sys.exit(main())
