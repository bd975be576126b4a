"""`python -m client`: see client.cli."""
import sys

from s3d_retrieval.client.cli import main

sys.exit(main())
