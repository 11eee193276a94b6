"""``python -m mmrecun_ray``."""

import sys

from mmrecun_ray.cli import main

sys.exit(main())
