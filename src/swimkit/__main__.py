"""``python -m swimkit`` (also under torchrun) runs the command line."""

from .cli import main

raise SystemExit(main())
