"""``python -m swimkit`` (also under torchrun) runs the command line."""

from swimkit_launcher import main

raise SystemExit(main())
